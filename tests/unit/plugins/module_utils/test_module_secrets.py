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
