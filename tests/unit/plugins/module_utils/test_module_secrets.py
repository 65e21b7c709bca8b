"""PhoenixModule keeps secrets out of module output (issue 9, item 15): the infra option is no_log,
but only its secret leaves are masked in the result; secret_env values are masked; plain infra
values (platform, artifact names, ports) stay readable. The real -vvv check is
tests/pytest/test_secrets.py."""
import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule, argspec, secret_leaves
from ansible_collections.phoenix.deploy.plugins.module_utils.targets import COMMON_SPEC

INFRA = {"platform": "local", "artifacts": ["catalog"], "state_dir": "/srv/phoenix/ci",
         "database": {"host": "127.20.0.1", "port": 25432, "name": "catalog", "user": "phoenix",
                      "password": "Pw-0f9e8d7c6b"},
         "load_balancer": {"url": "http://127.20.0.1:25080", "api_token": "tok-123456"}}


def run_module(capsys, spec, args, **result):
    with patch_module_args(args):
        module = PhoenixModule(argument_spec=argspec(spec))
        with pytest.raises(SystemExit):
            module.exit_json(**result)
    return json.loads(capsys.readouterr().out), module


def test_infra_is_no_log_but_only_its_secrets_are_masked(capsys):
    spec = dict(COMMON_SPEC, secret_env=dict(type="dict", default={}, no_log=True))
    assert spec["infra"]["no_log"] is True
    out, module = run_module(capsys, spec, {"artifact": "catalog", "environment": "ci", "infra": INFRA,
                                            "secret_env": {"API_KEY": "k-55aa77"}},
                             msg="catalog-ci-v001 live on local at 127.20.0.1:25080 (key k-55aa77, pw Pw-0f9e8d7c6b)")
    text = json.dumps(out)
    for secret in ("Pw-0f9e8d7c6b", "tok-123456", "k-55aa77"):
        assert secret not in text
    assert out["msg"].startswith("catalog-ci-v001 live on local at 127.20.0.1:25080")
    shown = out["invocation"]["module_args"]["infra"]
    assert shown["platform"] == "local" and shown["database"]["port"] == 25432
    assert shown["database"]["password"] in ("********", "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER")


def test_secret_leaves():
    assert secret_leaves(INFRA) == {"Pw-0f9e8d7c6b", "tok-123456"}
    assert secret_leaves({"db": {"password": 1234}, "tokens": ["a1", "b2"], "x": "y"}) == {"1234", "a1", "b2"}


PULUMI_SPEC = dict(config=dict(type="dict", default={}, no_log=True), show_secrets=dict(type="bool", default=False),
                   passphrase=dict(type="str", no_log=True))
CONFIG = {"platform": "local", "artifacts": ["catalog"], "db_password": {"value": "db-Pw-77aa", "secret": True},
          "keys": {"value": ["k-1a2b", "k-3c4d"], "secret": True}}


@pytest.mark.parametrize("show", [False, True])
def test_pulumi_stack_config_masks_only_its_secret_values(capsys, show):
    from ansible_collections.phoenix.deploy.plugins.module_utils.module import secret_config_leaves
    args = {"config": CONFIG, "show_secrets": show, "passphrase": "pp-9z9z"}
    with patch_module_args(args):
        module = PhoenixModule(argument_spec=argspec(PULUMI_SPEC), partly_secret={"config": secret_config_leaves})
        if show:
            module.reveal(secret_config_leaves(CONFIG))
        with pytest.raises(SystemExit):
            module.exit_json(outputs={"platform": "local", "database": {"password": "db-Pw-77aa"}},
                             msg='keys ["k-1a2b", "k-3c4d"] pp-9z9z')
    out = json.loads(capsys.readouterr().out)
    text = json.dumps(out)
    assert "pp-9z9z" not in text  # the passphrase stays masked either way
    assert out["invocation"]["module_args"]["config"]["platform"] == "local"
    if show:  # asked for: returned in clear (the action plugin hides the whole result from callbacks)
        assert out["outputs"]["database"]["password"] == "db-Pw-77aa"
    else:
        for secret in ("db-Pw-77aa", "k-1a2b", "k-3c4d"):
            assert secret not in text
        assert out["outputs"]["platform"] == "local"
