"""Container promotion (promotion.promote_container and the image_promote module with
target oci) between two real docker-registry processes: dev -> prod by digest only after
an analysed release of that digest in ci or integrated_qa, digest read back, immutable
tags, versions as tags; every refusal names the parameter and leaves prod unchanged."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fixtures_registry import client, storage, tamper_first_layer

from ansible_collections.phoenix.deploy.plugins.module_utils import promotion
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ABORTED, INTERRUPTED, FileReleaseStore, Release, ROLLED_BACK, SUCCEEDED)

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = "1.4.0+34e57f0.b456"
TAG = "1.4.0_34e57f0.b456"


@pytest.fixture
def setup(dev_registry, prod_registry, oci_image, tmp_path):
    layout, digest = oci_image(TAG, "catalog 1.4.0")
    dev = client(dev_registry)
    dev.push(layout, "catalog", TAG)
    return {"dev": dev_registry, "prod": prod_registry, "digest": digest, "layout": layout,
            "registries": {"dev": dev_registry.url, "prod": prod_registry.url},
            "releases": str(tmp_path / "releases"), "tmp": tmp_path}


def record(s, environment, analysed, digest=None, outcome=SUCCEEDED, version=VERSION):
    store = FileReleaseStore(s["releases"])
    history = store.load("catalog", environment)
    image = "127.0.0.1:%d/catalog@%s" % (s["dev"].port, digest or s["digest"])
    history.add(Release(history.new_release_id(), "catalog", environment, version, image, "rolling",
                        status="live", outcome=outcome, finished=100.0, analysed=analysed))
    store.save(history)


def promote(s, version=VERSION, **kw):
    return promotion.promote_container("catalog", version, s["registries"], s["releases"],
                                       kw.pop("sources", ["ci", "integrated_qa"]), **kw)


def prod_tags(s):
    return client(s["prod"]).tags("catalog")


def test_promotes_by_digest_after_an_analysed_release_and_reads_it_back(setup):
    s = setup
    record(s, "integrated_qa", "pass")
    result = promote(s)
    assert result["changed"] and result["digest"] == s["digest"] and result["tag"] == TAG
    assert result["image"] == "127.0.0.1:%d/catalog@%s" % (s["prod"].port, s["digest"])
    assert result["qualified_by"]["environment"] == "integrated_qa"
    assert client(s["prod"]).digest("catalog", TAG) == s["digest"]
    assert not promote(s)["changed"]
    ref = promotion.require_promoted_container("catalog", VERSION, s["registries"])
    assert ref == result["image"]


@pytest.mark.parametrize("analysed, outcome, why", [
    (None, SUCCEEDED, "analysis did not judge"), ("inconclusive", SUCCEEDED, "analysis did not judge"),
    ("fail", ROLLED_BACK, "no successful release"), ("pass", SUCCEEDED, "no successful release"),
    ("pass", ABORTED, "no successful release"), (None, INTERRUPTED, "no successful release"),
])
def test_no_qualifying_release_no_promotion(setup, analysed, outcome, why):
    s = setup
    other = "sha256:" + "1" * 64
    # the "pass"/succeeded case: an analysed release of ANOTHER digest qualifies nothing
    record(s, "ci", analysed, outcome=outcome, digest=other if (analysed, outcome) == ("pass", SUCCEEDED) else None)
    with pytest.raises(PhoenixError) as err:
        promote(s)
    assert err.value.param == "version" and why in err.value.msg and s["digest"] in err.value.msg
    assert prod_tags(s) == []


def test_a_release_outside_the_sources_does_not_qualify(setup):
    record(setup, "local", "pass")
    with pytest.raises(PhoenixError, match="no successful release in ci, integrated_qa"):
        promote(setup)
    assert prod_tags(setup) == []


def test_tag_collision_in_prod_names_both_digests(setup, oci_image):
    s = setup
    record(s, "ci", "pass")
    other_layout, other = oci_image(TAG, "something else", layout=s["tmp"] / "other")
    client(s["prod"]).push(other_layout, "catalog", TAG)
    with pytest.raises(PhoenixError) as err:
        promote(s)
    assert err.value.param == "version" and s["digest"] in err.value.msg and other in err.value.msg
    assert client(s["prod"]).digest("catalog", TAG) == other
    with pytest.raises(PhoenixError) as err:  # and a prod deploy refuses it too
        promotion.require_promoted_container("catalog", VERSION, s["registries"])
    assert "mismatch" in err.value.msg and err.value.param == "version"


@pytest.mark.parametrize("version, param, why", [
    ("latest", "version", "mutable"), ("stable", "version", "mutable"), ("1.4", "version", "not semver"),
    ("v1.4.0", "version", "leading 'v'"), ("9.9.9", "version", "not in the dev registry"),
])
def test_bad_versions_are_refused_naming_the_parameter(setup, version, param, why):
    record(setup, "ci", "pass")
    with pytest.raises(PhoenixError) as err:
        promote(setup, version=version)
    assert err.value.param == param and why in err.value.msg
    assert prod_tags(setup) == []


def test_a_digest_that_is_not_the_version_is_refused(setup):
    record(setup, "ci", "pass")
    with pytest.raises(PhoenixError) as err:
        promote(setup, digest="sha256:" + "2" * 64)
    assert err.value.param == "digest" and setup["digest"] in err.value.msg
    with pytest.raises(PhoenixError) as err:
        promote(setup, digest="sha256:nothex")
    assert err.value.param == "digest"
    assert prod_tags(setup) == []


def test_registry_down_is_refused_before_anything(setup):
    record(setup, "ci", "pass")
    setup["prod"].stop()
    with pytest.raises(PhoenixError) as err:
        promote(setup)
    assert err.value.param == "registries.prod" and "is down" in err.value.msg
    with pytest.raises(PhoenixError) as err:
        promotion.promote_container("catalog", VERSION, {"dev": setup["registries"]["dev"]}, setup["releases"], ["ci"])
    assert err.value.param == "registries"


def test_check_mode_copies_nothing(setup):
    record(setup, "ci", "pass")
    assert promote(setup, check_mode=True)["changed"]
    assert prod_tags(setup) == []


def run_module(args, tmp):
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".tools" / "collections"), PHOENIX_STATE_DIR=str(tmp / "state"))
    proc = subprocess.run([sys.executable, str(ROOT / "plugins" / "modules" / "image_promote.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_the_module_promotes_and_refuses_latest(setup):
    s = setup
    record(s, "ci", "pass")
    args = {"target": "oci", "artifact": "catalog", "version": VERSION, "registries": s["registries"],
            "release_store": s["releases"]}
    out = run_module(dict(args, version="latest"), s["tmp"])
    assert out["failed"] and out["param"] == "version" and "latest" in out["msg"]
    out = run_module(dict(args, artifact="Catalog"), s["tmp"])
    assert out["failed"] and "artifact" in out["msg"]
    assert prod_tags(s) == []
    out = run_module(args, s["tmp"])
    assert out["changed"] and out["image"] == "127.0.0.1:%d/catalog@%s" % (s["prod"].port, s["digest"]), out
    out = run_module(dict(args, verify_only=True), s["tmp"])
    assert not out["changed"] and out["image"].endswith("@" + s["digest"])


# --- bad input through the module (as Ansible runs it): each case fails before anything changes,
# names the parameter and says how to fix it; the dev and prod registries are left as they were ---

def tamper_dev_layer(s):
    tamper_first_layer(s["dev"], s["digest"])


def collide_in_prod(s):
    other_layout, other = make_other(s)
    client(s["prod"]).push(other_layout, "catalog", TAG)
    return other


def make_other(s):
    from fixtures_registry import make_oci_image
    layout = s["tmp"] / "other"
    return str(layout), make_oci_image(layout, TAG, {"/app/VERSION": "not the tested one\n"})


BAD_MODULE_CASES = {
    # name: (prepare(setup) -> extra words, args override, param, words in msg)
    "dev registry down": (lambda s: s["dev"].stop(), {}, "registries.dev", ["is down", "pulumi up -s local"]),
    "prod registry down": (lambda s: s["prod"].stop(), {}, "registries.prod", ["is down", "pulumi up -s local"]),
    "missing image": (None, {"version": "9.9.9+34e57f0.b1"}, "version", ["not in the dev registry", "bake it"]),
    "digest mismatch": (None, {"digest": "sha256:" + "2" * 64}, "digest", ["is not version", "leave digest out"]),
    "malformed digest": (None, {"digest": "sha256:abc"}, "digest", ["64 lowercase hex"]),
    "tag collision": (collide_in_prod, {}, "version", ["already points at", "new version"]),
    "tampered layer": (tamper_dev_layer, {}, "registries.dev", ["does not match its digest", "bake"]),
    "upper case name": (None, {"artifact": "Catalog"}, "artifact", ["lowercase letters"]),
    "name with /..": (None, {"artifact": "catalog/.."}, "artifact", ["no '/', '..'"]),
    "relative name": (None, {"artifact": "team/../catalog"}, "artifact", ["no '/', '..'"]),
    "never released": ("norelease", {}, "version", ["no successful release in ci, integrated_qa", "deploy.yml"]),
    "rolled back": ("rolledback", {}, "version", ["no successful release in ci, integrated_qa"]),
    "latest": (None, {"version": "latest"}, "version", ["mutable tag"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULE_CASES))
def test_the_module_refuses_bad_input_before_anything_changes(setup, case):
    s = setup
    prepare, override, param, words = BAD_MODULE_CASES[case]
    if prepare == "rolledback":
        record(s, "ci", "fail", outcome=ROLLED_BACK)
    elif prepare != "norelease":
        record(s, "ci", "pass")
    extra = prepare(s) if callable(prepare) else None
    dev_before, prod_before = storage(s["dev"]), storage(s["prod"])
    args = {"target": "oci", "artifact": "catalog", "version": VERSION, "registries": s["registries"],
            "release_store": s["releases"]}
    out = run_module(dict(args, **override), s["tmp"])
    assert out.get("failed") and out.get("param") == param, out
    for word in words:
        assert word in out["msg"], out["msg"]
    if case == "tag collision":
        assert extra in out["msg"] and s["digest"] in out["msg"]
    assert storage(s["dev"]) == dev_before
    assert storage(s["prod"]) == prod_before  # not even an upload or a blob
