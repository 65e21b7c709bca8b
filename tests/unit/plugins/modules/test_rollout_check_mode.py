"""Check mode of every rollout action goes through ``Rollout.plan(action)``;
an OCI image reference is checked for shape by the engine and refused by the
local driver, naming ``image`` (no platform process is needed for either)."""
import json

from .test_bad_input import rollout_args, run_module, tree

OCI = "registry.example/team/catalog@sha256:" + "ab" * 32


def platform_tree(tmp_path):
    """What a rollout could change besides the release store's directory."""
    return [p for p in tree(tmp_path) if not p.startswith(("releases", "state"))]


def run(tmp_path, **args):
    (tmp_path / "include").mkdir(exist_ok=True)  # no instances: the platform is never called
    proc = run_module("rollout", rollout_args(tmp_path, **args), tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_check_mode_of_promote_abort_and_rollback_plans_without_failing(tmp_path):
    for action, msg in (("promote", "nothing to promote: no paused release"),
                        ("abort", "nothing to abort: no paused release"),
                        ("rollback", "nothing to roll back to: no live release")):
        (tmp_path / "include").mkdir(exist_ok=True)
        before = platform_tree(tmp_path)
        result = run(tmp_path, action=action, _ansible_check_mode=True)
        assert not result.get("failed") and not result["changed"], result
        assert result["state"] == "planned" and result["msg"] == msg and result["plan"] == []
        assert platform_tree(tmp_path) == before


def test_an_oci_reference_is_refused_by_the_local_driver_naming_image(tmp_path):
    (tmp_path / "include").mkdir()
    before = platform_tree(tmp_path)
    result = run(tmp_path, image=OCI, version=None)
    assert result.get("failed") is True and result.get("param") == "image", result
    assert "runs baked local images" in result["msg"] and OCI in result["msg"]
    assert platform_tree(tmp_path) == before


def test_a_malformed_image_reference_names_the_allowed_forms(tmp_path):
    result = run(tmp_path, image="registry.example/catalog:latest", version=None)
    assert result.get("failed") is True and result.get("param") == "image", result
    assert "registry/repository@sha256:<64 hex digits>" in result["msg"]
