"""Every module refuses bad input with a message naming the option, exits
non-zero without a traceback, and changes nothing (issue 9, "Done when").

Modules run as Ansible runs them: a child Python process reading
``ANSIBLE_MODULE_ARGS``.  The rollout infra points at sockets that do not
exist, so any platform call would fail differently: a bad option must be
refused before the platform is ever asked anything."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
COLLECTIONS = ROOT / ".tools" / "collections"
MODULES = ROOT / "plugins" / "modules"


def fake_infra(tmp):
    return {"platform": "local", "state_dir": str(tmp / "stack"),
            "instance_manager": {"endpoint": "unix://%s/none.sock" % tmp,
                                 "include_dir": str(tmp / "include")},
            "load_balancer": {"backends": {"catalog": "be_catalog"},
                              "runtime_api": str(tmp / "none-haproxy.sock"), "url": "http://127.0.0.1:1/"},
            "network": {"address": "127.0.0.1", "port_range": [30000, 30010]},
            "database": {"host": "127.0.0.1", "port": 1, "name": "x", "user": "x",
                         "password": "s3cr3t-never-shown"}}


def run_module(name, args, tmp):
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), PHOENIX_STATE_DIR=str(tmp / "state"))
    proc = subprocess.run([sys.executable, str(MODULES / (name + ".py"))],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    return proc


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def rollout_args(tmp, **extra):
    args = {"artifact": "catalog", "environment": "ci", "version": "1.0.0",
            "infra": fake_infra(tmp), "store": str(tmp / "releases"),
            "image_store": str(tmp / "images")}
    args.update(extra)
    return args


NAN = float("nan")
CASES = [
    ("rollout", {"size": 0}, "size"),
    ("rollout", {"size": 100000}, "size"),
    ("rollout", {"size": float("inf")}, "size"),
    ("rollout", {"timeout": float("inf")}, "timeout"),
    ("release_info", {"history": float("inf")}, "history"),
    ("image_bake", {"retain": float("inf")}, "retain"),
    ("rollout", {"strategy": "rainbow"}, "strategy"),
    ("rollout", {"strategy_settings": {"max_surge": "many"}}, "strategy.max_surge"),
    ("rollout", {"strategy_settings": {"bogus": 1}}, "strategy"),
    ("rollout", {"strategy": "canary", "strategy_settings": {"steps": []}}, "strategy.steps"),
    ("rollout", {"strategy_settings": {"progress_deadline": NAN}}, "progress_deadline"),
    ("rollout", {"analysis": {"max_error_rate": NAN}}, "analysis.max_error_rate"),
    ("rollout", {"analysis": {"max_error_rate": 2}}, "analysis.max_error_rate"),
    ("rollout", {"analysis": {"bogus": 1}}, "analysis"),
    ("rollout", {"timeout": 0}, "timeout"),
    ("rollout", {"drain_timeout": -1}, "drain_timeout"),
    ("rollout", {"drain_timeout": NAN}, "drain_timeout"),
    ("rollout", {"env": {"PORT": 1}}, "env.PORT"),
    ("rollout", {"env": {"DB_PASSWORD": "x"}}, "env.DB_PASSWORD"),
    ("rollout", {"env": {"A-B": "x"}}, "env"),
    ("rollout", {"secret_env": {"DB_PASSWORD": "x"}}, "secret_env.DB_PASSWORD"),
    ("rollout", {"env": {"K": "a"}, "secret_env": {"K": "b"}}, "secret_env"),
    ("rollout", {"version": "latest"}, "version"),
    ("rollout", {"version": "1.0"}, "version"),
    ("rollout", {"environment": "ci\n"}, "environment"),
    ("rollout", {"artifact": "../etc"}, "artifact"),
    ("rollout", {"action": "explode"}, "action"),
    ("release_info", {"history": -1}, "history"),
    ("release_info", {"environment": "ci\nprod"}, "environment"),
    ("image_bake", {"version": "latest"}, "version"),
    ("image_bake", {"artifact": "Bad_Name"}, "artifact"),
    ("image_bake", {"retain": -1}, "retain"),
    ("image_bake", {"target": "floppy"}, "target"),
    ("image_promote", {"version": "latest"}, "version"),
    ("image_promote", {"artifact": "Bad_Name"}, "artifact"),
    ("pulumi_stack", {"stack": "bad name!"}, "stack"),
    ("pulumi_stack", {"state": "gone"}, "state"),
]


def base_args(module, tmp):
    if module in ("rollout", "release_info"):
        args = rollout_args(tmp)
        if module == "release_info":
            args.pop("version")
        return args
    if module == "image_bake":
        src = tmp / "src"
        src.mkdir(exist_ok=True)
        return {"artifact": "catalog", "version": "1.0.0", "source": str(src),
                "store": str(tmp / "images")}
    if module == "image_promote":
        return {"artifact": "catalog", "version": "1.0.0", "test_store": str(tmp / "images"),
                "prod_store": str(tmp / "prod-images"), "release_store": str(tmp / "releases")}
    project = tmp / "project"
    project.mkdir(exist_ok=True)
    (project / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    return {"project_path": str(project), "stack": "local"}


@pytest.mark.parametrize("module, bad, option", CASES,
                         ids=["%s-%s" % (m, "-".join(b)) for m, b, _o in CASES])
def test_bad_input_names_the_option_and_changes_nothing(tmp_path, module, bad, option):
    args = base_args(module, tmp_path)
    args.update(bad)
    before = tree(tmp_path)
    proc = run_module(module, args, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result.get("failed") is True and not result.get("changed")
    assert option in result["msg"], result["msg"]
    assert "s3cr3t-never-shown" not in proc.stdout + proc.stderr
    created = [p for p in tree(tmp_path) if p not in before and not p.startswith("state")]
    assert created == [] or all(p.startswith("releases") and "/" not in p.split("releases", 1)[1]
                                .strip("/") for p in created), created


# engine errors carry the module option they come from as ``param`` (issue 10, item 4)
PARAM_CASES = [
    ("rollout", {"size": 0}, "size"),
    ("rollout", {"strategy_settings": {"max_surge": "many"}}, "strategy_settings"),
    ("rollout", {"analysis": {"bogus": 1}}, "analysis"),
    ("rollout", {"artifact": "../etc"}, "artifact"),
    ("release_info", {"environment": "ci\nprod"}, "environment"),
    ("release_info", {"history": -1}, "history"),
    ("image_bake", {"version": "latest"}, "version"),
    ("image_promote", {"artifact": "Bad_Name"}, "artifact"),
]


@pytest.mark.parametrize("module, bad, param", PARAM_CASES,
                         ids=["%s-%s" % (m, "-".join(b)) for m, b, _p in PARAM_CASES])
def test_engine_errors_name_the_option_as_param(tmp_path, module, bad, param):
    args = base_args(module, tmp_path)
    args.update(bad)
    result = json.loads(run_module(module, args, tmp_path).stdout)
    assert result.get("failed") is True and result.get("param") == param, result
