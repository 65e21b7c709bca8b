"""The driver factory (dependencies checked there, not by the modules) and
image references: the engine checks an OCI reference's shape, the driver
decides whether it can run it."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    Platform, PlatformError, is_oci_ref)

DIGEST = "sha256:" + "ab" * 32
OCI = "registry.example:5000/team/catalog@" + DIGEST


def local_infra(tmp_path):
    return {"platform": "local",
            "instance_manager": {"include_dir": str(tmp_path), "endpoint": "unix://%s/s" % tmp_path},
            "load_balancer": {"backends": {"catalog": "be_catalog"},
                              "runtime_api": str(tmp_path / "haproxy.sock")},
            "network": {"address": "127.0.0.1", "port_range": [30000, 30010]},
            "state_dir": str(tmp_path)}


def test_the_factory_builds_the_local_roles(tmp_path):
    platform = targets.make_platform(local_infra(tmp_path))
    assert isinstance(platform, Platform) and platform.name == "local"
    assert platform.groups.driver is platform.traffic.driver is platform.metrics.driver


def test_the_factory_names_the_drivers_that_exist():
    with pytest.raises(PhoenixError) as err:
        targets.make_platform({"platform": "azure"})
    assert err.value.param == "infra" and "allowed: local" in err.value.msg and "gce" in err.value.msg


def test_the_factory_builds_the_gce_roles_without_credentials():
    gce = {"project": "phoenix-test", "region": "europe-west1", "subnetwork": "sub",
           "service_account": "sa@phoenix-test.iam.gserviceaccount.com", "health_check": "hc",
           "url_map": "urls", "backend_services": {"catalog": "phoenix-catalog"}}
    platform = targets.make_platform({"platform": "gce", "gce": gce})
    assert isinstance(platform, Platform) and platform.name == "gce"
    assert platform.groups.driver is platform.traffic.driver is platform.metrics.driver
    with pytest.raises(PhoenixError) as err:
        targets.make_platform({"platform": "gce"})
    assert err.value.param == "infra.gce"


def test_a_gce_image_self_link_is_left_to_the_driver():
    link = "projects/phoenix-test/global/images/catalog-v1-4-0-abc1234-b7"
    assert targets.resolve_image("catalog", "1.4.0", link)["ref"] == link


def test_a_missing_driver_dependency_is_a_clear_error():
    with pytest.raises(PhoenixError) as err:
        targets._check_dependencies("local", [("supervisor", ImportError("No module named 'supervisor'"))])
    assert err.value.param == "infra"
    assert "local platform driver needs the Python package(s) supervisor" in err.value.msg


@pytest.mark.parametrize("ref", [OCI, "ghcr.io/acme/catalog@" + DIGEST, "localhost/catalog@" + DIGEST])
def test_the_engine_accepts_oci_references_by_shape(ref, tmp_path):
    assert is_oci_ref(ref)
    image = targets.resolve_image("catalog", "1.0.0", ref, str(tmp_path))
    assert image["ref"] == ref and image["path"] is None and image["digest"] == DIGEST


@pytest.mark.parametrize("ref", ["registry/catalog@sha256:abc", "registry/catalog:latest",
                                 "Registry/Catalog@" + DIGEST, "a/b@md5:" + "ab" * 16])
def test_a_malformed_reference_names_the_image_parameter(ref, tmp_path):
    assert not is_oci_ref(ref)
    with pytest.raises(PhoenixError) as err:
        targets.resolve_image("catalog", "1.0.0", ref, str(tmp_path))
    assert err.value.param == "image" and "registry/repository@sha256:<64 hex digits>" in err.value.msg


def test_the_local_driver_refuses_an_oci_reference_naming_image(tmp_path):
    platform = targets.make_platform(local_infra(tmp_path))
    with pytest.raises(PlatformError) as err:
        platform.groups.resolve_image(OCI, "catalog")
    assert err.value.param == "image" and "runs baked local images" in err.value.msg
    with pytest.raises(PlatformError) as err:
        platform.groups.resolve_image("catalog-v1-0-0--abc-b1@" + DIGEST, "catalog")
    assert err.value.param == "image" and "not found in the image store" in err.value.msg
