"""The registry client (plugins/module_utils/registry.py) against real docker-registry
processes (distribution 2.8) and images made with umoci: push, immutable tags, copy by
digest with preserved digests, tags, delete, and every bad input failing before any
change with the parameter named."""
import json
import os

import pytest

from fixtures_registry import client

from ansible_collections.phoenix.deploy.plugins.module_utils import registry as reg_mod
from ansible_collections.phoenix.deploy.plugins.module_utils.registry import (
    ImageMissing, Registry, RegistryDown, RegistryError, TagCollision)


def snapshot(reg):
    """Every file (path, size) of a registry's storage: what 'nothing changed' compares."""
    out = []
    for root, dummy, files in os.walk(reg.data):
        for name in files:
            p = os.path.join(root, name)
            out.append((os.path.relpath(p, reg.data), os.path.getsize(p)))
    return sorted(out)


def test_push_returns_the_layout_digest_and_reads_it_back(dev_registry, oci_image):
    layout, digest = oci_image("1.4.0_34e57f0.b456")
    dev = client(dev_registry)
    pushed = dev.push(layout, "catalog", "1.4.0_34e57f0.b456", src_tag="1.4.0_34e57f0.b456")
    assert pushed == digest and pushed.changed
    assert pushed.ref == "127.0.0.1:%d/catalog@%s" % (dev_registry.port, digest)
    assert dev.digest("catalog", "1.4.0_34e57f0.b456") == digest
    assert dev.tags("catalog") == ["1.4.0_34e57f0.b456"]
    assert dev.repositories() == ["catalog"]
    again = dev.push(layout, "catalog", "1.4.0_34e57f0.b456", src_tag="1.4.0_34e57f0.b456")
    assert again == digest and not again.changed


def test_push_refuses_a_tag_that_points_at_another_digest(dev_registry, oci_image, tmp_path):
    dev = client(dev_registry)
    first, d1 = oci_image("1.0.0", "one")
    second, d2 = oci_image("1.0.0", "two", layout=tmp_path / "other")
    assert d1 != d2
    dev.push(first, "catalog", "1.0.0")
    before = snapshot(dev_registry)
    with pytest.raises(TagCollision) as err:
        dev.push(second, "catalog", "1.0.0")
    assert d1 in err.value.msg and d2 in err.value.msg and err.value.param == "tag"
    assert snapshot(dev_registry) == before
    assert dev.digest("catalog", "1.0.0") == d1


def test_copy_by_digest_preserves_the_digest_between_registries(dev_registry, prod_registry, oci_image):
    layout, digest = oci_image("1.2.0")
    dev, prod = client(dev_registry, param="registries.dev"), client(prod_registry, param="registries.prod")
    dev.push(layout, "catalog", "1.2.0")
    copied = prod.copy("catalog@" + digest, "catalog:1.2.0", src_registry=dev)
    assert copied == digest and copied.changed
    assert prod.digest("catalog", "1.2.0") == digest
    assert copied.ref == "127.0.0.1:%d/catalog@%s" % (prod_registry.port, digest)
    assert not prod.copy("catalog@" + digest, "catalog:1.2.0", src_registry=dev).changed
    # a second copy of a ~blob already present writes no new blob
    before = [entry[0] for entry in snapshot(prod_registry) if "/blobs/" in entry[0]]
    prod.copy("catalog@" + digest, "catalog:1.2.0_b2", src_registry=dev)
    assert [entry[0] for entry in snapshot(prod_registry) if "/blobs/" in entry[0]] == before


def test_copy_refuses_a_collision_in_prod_naming_both_digests(dev_registry, prod_registry, oci_image, tmp_path):
    dev, prod = client(dev_registry), client(prod_registry)
    a, da = oci_image("2.0.0", "a")
    b, db = oci_image("2.0.0", "b", layout=tmp_path / "b")
    dev.push(a, "catalog", "2.0.0")
    dev.push(b, "catalog", "2.0.0_b2")
    prod.copy("catalog@" + da, "catalog:2.0.0", src_registry=dev)
    before = snapshot(prod_registry)
    with pytest.raises(TagCollision) as err:
        prod.copy("catalog@" + db, "catalog:2.0.0", src_registry=dev)
    assert da in err.value.msg and db in err.value.msg and err.value.param == "dst"
    assert snapshot(prod_registry) == before


def test_a_tampered_layer_fails_the_pull_and_the_copy(dev_registry, prod_registry, oci_image, tmp_path):
    layout, digest = oci_image("3.0.0")
    dev, prod = client(dev_registry), client(prod_registry)
    dev.push(layout, "catalog", "3.0.0")
    manifest = json.loads(dev.manifest("catalog", digest=digest)[0])
    blob = dev_registry.blob_path(manifest["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[-5] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(RegistryError) as err:
        dev.pull("catalog", digest, str(tmp_path / "pulled"))
    assert "Digest did not match" in err.value.msg and err.value.param == "digest"
    before = snapshot(prod_registry)
    with pytest.raises(RegistryError) as err:
        prod.copy("catalog@" + digest, "catalog:3.0.0", src_registry=dev)
    # found by reading the source before the copy: prod gets no upload, no blob, no tag
    assert "does not match its digest" in err.value.msg and err.value.param == "registry"
    assert "push the image again" in err.value.msg
    assert prod.tags("catalog") == []
    assert snapshot(prod_registry) == before


def test_pull_checks_and_writes_the_pinned_image(dev_registry, oci_image, tmp_path):
    layout, digest = oci_image("3.1.0")
    dev = client(dev_registry)
    dev.push(layout, "catalog", "3.1.0")
    assert dev.pull("catalog", digest, str(tmp_path / "pulled"), tag="3.1.0") == digest


def test_delete_removes_a_manifest_and_prod_refuses(dev_registry, prod_registry, oci_image):
    layout, digest = oci_image("4.0.0")
    dev, prod = client(dev_registry), client(prod_registry)
    dev.push(layout, "catalog", "4.0.0")
    prod.copy("catalog@" + digest, "catalog:4.0.0", src_registry=dev)
    assert dev.delete("catalog", digest) is True
    assert not dev.exists("catalog", digest)
    assert dev.delete("catalog", digest) is False
    with pytest.raises(RegistryError) as err:  # storage.delete is off in prod
        prod.delete("catalog", digest)
    assert "storage.delete" in err.value.msg
    assert prod.exists("catalog", digest)


def test_registry_down_fails_before_anything_naming_the_parameter(dev_registry, oci_image):
    layout = oci_image("5.0.0")[0]
    dev = client(dev_registry, param="registries.dev")
    dev_registry.stop()
    for call in (lambda: dev.push(layout, "catalog", "5.0.0"), lambda: dev.tags("catalog"),
                 lambda: dev.digest("catalog", "5.0.0")):
        with pytest.raises(RegistryDown) as err:
            call()
        assert err.value.param == "registries.dev" and "is down" in err.value.msg and err.value.transient


def test_missing_image_names_the_parameter(dev_registry, prod_registry):
    dev, prod = client(dev_registry), client(prod_registry)
    missing = "sha256:" + "0" * 64
    with pytest.raises(ImageMissing) as err:
        prod.copy("catalog@" + missing, "catalog:1.0.0", src_registry=dev)
    assert err.value.param == "src" and missing in err.value.msg
    with pytest.raises(ImageMissing) as err:
        dev.manifest("catalog", tag="9.9.9")
    assert err.value.param == "ref"
    assert dev.digest("catalog", "9.9.9") is None
    assert dev.tags("nothing-here") == []


@pytest.mark.parametrize("repo, why", [
    ("Catalog", "upper case"), ("team/../catalog", "'..'"), ("../catalog", "'..'"), ("catalog/..", "'..'"),
    ("/catalog", "not a repository name"), ("cat alog", "not a repository name"), ("", "non-empty"),
])
def test_bad_repository_names_fail_naming_the_parameter(dev_registry, oci_image, repo, why):
    layout = oci_image("1.0.0")[0]
    dev = client(dev_registry)
    before = snapshot(dev_registry)
    with pytest.raises(RegistryError) as err:
        dev.push(layout, repo, "1.0.0")
    assert err.value.param == "repo" and why in err.value.msg
    assert snapshot(dev_registry) == before


@pytest.mark.parametrize("tag, why", [
    ("latest", "mutable"), ("stable", "mutable"), ("v1.0.0", "not a version tag"), ("1.0", "not a version tag"),
    ("1.0.0+b1", "not a version tag"),
])
def test_tags_are_versions(dev_registry, oci_image, tag, why):
    layout = oci_image("1.0.0")[0]
    dev = client(dev_registry)
    with pytest.raises(RegistryError) as err:
        dev.push(layout, "catalog", tag)
    assert err.value.param == "tag" and why in err.value.msg
    assert dev.tags("catalog") == []


def test_version_tags_and_references():
    assert reg_mod.version_tag("1.4.0+34e57f0.b456") == "1.4.0_34e57f0.b456"
    assert reg_mod.check_tag("1.4.0-rc.1_34e57f0.b456") == "1.4.0-rc.1_34e57f0.b456"
    for bad in ("latest", "stable", "1.4", "v1.4.0"):
        with pytest.raises(RegistryError) as err:
            reg_mod.version_tag(bad, "version")
        assert err.value.param == "version"
    r = Registry("https://europe-docker.pkg.dev/proj/prod")
    assert r.tls_verify and r.reference("catalog", digest="sha256:" + "a" * 64) == \
        "europe-docker.pkg.dev/proj/prod/catalog@sha256:" + "a" * 64
    ref = r.ref("catalog@sha256:" + "b" * 64)
    assert ref.pinned() == "europe-docker.pkg.dev/proj/prod/catalog@sha256:" + "b" * 64
    for url in ("ftp://x", "http://user:pw@host", "", "https://host/Up", "https://host/team/../x", "host/.."):
        with pytest.raises(RegistryError) as err:
            Registry(url, param="registries.prod")
        assert err.value.param == "registries.prod"
        assert "pw" not in err.value.msg
    with pytest.raises(RegistryError) as err:
        r.ref("catalog@sha256:short", param="image")
    assert err.value.param == "image"


def test_no_digest_given_to_copy_is_refused(dev_registry, prod_registry):
    dev, prod = client(dev_registry), client(prod_registry)
    with pytest.raises(RegistryError) as err:
        prod.copy("catalog:1.0.0", "catalog:1.0.0", src_registry=dev)
    assert err.value.param == "src" and "by digest" in err.value.msg


def test_skopeo_gets_its_own_policy_file(dev_registry):
    dev = client(dev_registry)
    with open(dev.policy) as f:
        assert json.load(f)["default"] == [{"type": "reject"}]
    path = dev.policy
    dev.close()
    assert not os.path.exists(path)
