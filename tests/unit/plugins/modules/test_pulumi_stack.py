"""phoenix.deploy.pulumi_stack: its options parsed by AnsibleModule and
refusals naming the option, before any Pulumi program runs; secret config
values never appear in the result."""
from .module_runner import run_failing

SECRET = "s3cr3t-never-in-output"


def args(tmp_path, **extra):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    base = {"project_path": str(project), "stack": "local", "backend_url": "file://%s" % (tmp_path / "backend"),
            "passphrase": "unit-test"}
    base.update(extra)
    return base


def test_missing_stack_is_named(tmp_path):
    bad = args(tmp_path)
    del bad["stack"]
    assert "missing required arguments: stack" in run_failing("pulumi_stack", bad)["msg"]


def test_unknown_state_names_the_choices(tmp_path):
    msg = run_failing("pulumi_stack", args(tmp_path, state="gone"))["msg"]
    assert "state" in msg and "present" in msg and "absent" in msg


def test_release_lock_needs_its_suboptions(tmp_path):
    msg = run_failing("pulumi_stack", args(tmp_path, release_lock={"store": str(tmp_path / "r")}))["msg"]
    assert "release_lock" in msg and "environment" in msg and "artifacts" in msg


def test_bad_stack_name_is_refused_naming_the_option(tmp_path):
    result = run_failing("pulumi_stack", args(tmp_path, stack="bad name!",
                                              config={"token": {"value": SECRET, "secret": True}}))
    assert "stack" in result["msg"]
    assert SECRET not in repr(result)
    assert not (tmp_path / "backend").exists()


def test_missing_project_is_refused_naming_the_option(tmp_path):
    result = run_failing("pulumi_stack", args(tmp_path, project_path=str(tmp_path / "nowhere")))
    assert "project_path" in result["msg"]


def test_release_lock_store_backend_names_the_choices(tmp_path):
    lock = {"store": str(tmp_path / "r"), "environment": "ci", "artifacts": ["catalog"], "store_backend": "s3"}
    msg = run_failing("pulumi_stack", args(tmp_path, release_lock=lock))["msg"]
    assert "store_backend" in msg and "auto, file, kubernetes" in msg
