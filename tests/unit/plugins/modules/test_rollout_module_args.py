"""The rollout module refuses NaN / infinity and bad ``analysis`` values naming the
option, before it reads the infra outputs or touches anything (the module runs
as its own process, as Ansible runs it)."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]


def run_module(tmp_path, **args):
    base = {"artifact": "catalog", "environment": "ci", "version": "1.0.0",
            "infra": {"platform": "local"}, "store": str(tmp_path / "releases")}
    base.update(args)
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": base}))
    proc = subprocess.run([sys.executable, "-m",
                           "ansible_collections.phoenix.deploy.plugins.modules.rollout",
                           str(path)], capture_output=True, text=True, timeout=60, check=False,
                          env={"PYTHONPATH": str(ROOT / ".tools" / "collections"),
                               "PATH": "/usr/bin:/bin"})
    result = json.loads(proc.stdout)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "releases").exists()  # nothing changed
    return result


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_drain_timeout_must_be_finite(tmp_path, value):
    result = run_module(tmp_path, drain_timeout=value)
    assert result["failed"] and result["msg"].startswith("drain_timeout: ")
    assert "allowed a finite number of seconds from 0 to 600" in result["msg"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", 0])
def test_timeout_must_be_finite_and_positive(tmp_path, value):
    """``timeout: inf`` used to end in a traceback (ansible-core's int check
    raises OverflowError on infinity); NaN/infinity are refused by name."""
    result = run_module(tmp_path, timeout=value)
    assert result["failed"] and result["param"] == "timeout"
    assert result["msg"].startswith("timeout: ")
    assert "allowed a finite number of seconds above 0" in result["msg"]


@pytest.mark.parametrize("value", ["off", ["max_error_rate"], 0.05])
def test_analysis_is_a_dict_or_none(tmp_path, value):
    result = run_module(tmp_path, analysis=value)
    assert result["failed"] and result["param"] == "analysis"
    assert result["msg"] == "analysis: %r; allowed a dict of checks or 'none'" % (value,)
