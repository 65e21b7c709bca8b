"""phoenix.deploy.release_info: its options parsed by AnsibleModule and
refusals naming the option, before any platform is asked anything."""
from .module_runner import run_failing


def args(tmp_path, **extra):
    base = {"artifact": "catalog", "environment": "ci", "store": str(tmp_path / "releases"),
            "infra": {"platform": "local", "state_dir": str(tmp_path / "stack")}}
    base.update(extra)
    return base


def test_missing_environment_is_named(tmp_path):
    bad = args(tmp_path)
    del bad["environment"]
    assert "missing required arguments: environment" in run_failing("release_info", bad)["msg"]


def test_infra_and_project_path_exclude_each_other(tmp_path):
    msg = run_failing("release_info", args(tmp_path, project_path=str(tmp_path), stack="ci"))["msg"]
    assert "mutually exclusive" in msg and "infra" in msg and "project_path" in msg


def test_project_path_needs_stack(tmp_path):
    bad = args(tmp_path, project_path=str(tmp_path))
    del bad["infra"]
    msg = run_failing("release_info", bad)["msg"]
    assert "project_path" in msg and "stack" in msg


def test_history_must_be_an_integer(tmp_path):
    assert "history" in run_failing("release_info", args(tmp_path, history="all"))["msg"]


def test_negative_history_is_refused_naming_the_option(tmp_path):
    result = run_failing("release_info", args(tmp_path, history=-1))
    assert result["param"] == "history"


def test_neither_infra_nor_project_is_refused_naming_infra(tmp_path):
    bad = args(tmp_path)
    del bad["infra"]
    result = run_failing("release_info", bad)
    assert result["param"] == "infra" and "project_path" in result["msg"]
    assert not (tmp_path / "releases").exists()
