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
    assert "target is local but all of the following are missing: prod_store" in \
        run_failing("image_promote", bad)["msg"]


def test_target_oci_needs_the_registries(tmp_path):
    msg = run_failing("image_promote", {"artifact": "catalog", "version": "1.0.0+abcdef0.b1", "target": "oci",
                                        "release_store": str(tmp_path / "releases")})["msg"]
    assert "target is oci but all of the following are missing: registries" in msg


def test_target_oci_refuses_a_registry_url_with_credentials(tmp_path):
    result = run_failing("image_promote", {"artifact": "catalog", "version": "1.0.0+abcdef0.b1", "target": "oci",
                                           "registries": {"dev": "http://u:s3cret@127.0.0.1:1", "prod": "x"},
                                           "release_store": str(tmp_path / "releases")})
    assert result["param"] == "registries.dev" and "s3cret" not in str(result)


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
