"""phoenix.deploy.image_promote: its options parsed by AnsibleModule and
refusals naming the option, with nothing written to the prod store."""
from .module_runner import run_failing


def args(tmp_path, **extra):
    base = {"artifact": "catalog", "version": "1.0.0+abcdef0.b1", "test_store": str(tmp_path / "images"),
            "prod_store": str(tmp_path / "prod-images"), "release_store": str(tmp_path / "releases")}
    base.update(extra)
    return base


def test_missing_prod_store_is_named(tmp_path):
    bad = args(tmp_path)
    del bad["prod_store"]
    assert "missing required arguments: prod_store" in run_failing("image_promote", bad)["msg"]


def test_promotion_needs_the_release_store(tmp_path):
    bad = args(tmp_path)
    del bad["release_store"]
    msg = run_failing("image_promote", bad)["msg"]
    assert "verify_only is False" in msg and "release_store" in msg


def test_sources_must_be_a_list_of_strings(tmp_path):
    msg = run_failing("image_promote", args(tmp_path, sources={"ci": 1}))["msg"]
    assert "sources" in msg


def test_mutable_version_is_refused_naming_the_option(tmp_path):
    result = run_failing("image_promote", args(tmp_path, version="latest"))
    assert result["param"] == "version"
    assert not (tmp_path / "prod-images").exists()


def test_an_image_never_baked_is_not_promoted(tmp_path):
    result = run_failing("image_promote", args(tmp_path))
    assert "1.0.0+abcdef0.b1" in result["msg"]
    assert not (tmp_path / "prod-images").exists()


def test_verify_only_refuses_an_unpromoted_image(tmp_path):
    bad = args(tmp_path, verify_only=True)
    del bad["release_store"]
    result = run_failing("image_promote", bad)
    assert "1.0.0+abcdef0.b1" in result["msg"]
