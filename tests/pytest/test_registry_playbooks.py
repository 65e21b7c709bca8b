"""playbooks/promote.yml (-e target=oci) and playbooks/registry_retention.yml against
real dev and prod docker-registry processes (registries given with -e, as a stack's
``registries`` output would give them); bad requests fail naming the parameter and
change nothing."""
import json
import os
import pathlib
import subprocess

import pytest

from fixtures_registry import client, make_oci_image, storage, tamper_first_layer

from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, Release, ROLLED_BACK, SUCCEEDED)

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = "1.4.0+34e57f0.b456"
TAG = "1.4.0_34e57f0.b456"


@pytest.fixture
def env(dev_registry, prod_registry, oci_image, tmp_path):
    layout, digest = oci_image(TAG, "catalog")
    client(dev_registry).push(layout, "catalog", TAG)
    releases = tmp_path / "releases"
    store = FileReleaseStore(str(releases))
    history = store.load("catalog", "ci")
    release = Release(history.new_release_id(), "catalog", "ci", VERSION,
                      client(dev_registry).reference("catalog", digest=digest), "rolling", status="live",
                      outcome=SUCCEEDED, finished=1.0, analysed="pass")
    history.live = history.add(release).release_id
    store.save(history)
    extra = {"registries": {"dev": dev_registry.url, "prod": prod_registry.url},
             "phoenix_release_store": str(releases)}

    def play(playbook, *args):
        cmd = ["ansible-playbook", "playbooks/" + playbook, "-e", json.dumps(extra), *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                              env=dict(os.environ, PHOENIX_STATE_DIR=str(tmp_path / "state")))
    return {"play": play, "dev": dev_registry, "prod": prod_registry, "digest": digest, "releases": releases,
            "tmp": tmp_path}


def test_promote_playbook_copies_by_digest_and_refuses_latest(env):
    bad = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=latest", "-e", "target=oci")
    assert bad.returncode != 0 and "version=latest" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr
    bad = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION, "-e", "target=docker")
    assert bad.returncode != 0 and "target=docker" in bad.stdout
    assert client(env["prod"]).tags("catalog") == []
    ok = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION, "-e", "target=oci")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    pinned = "127.0.0.1:%d/catalog@%s" % (env["prod"].port, env["digest"])
    assert pinned + " promoted" in " ".join(ok.stdout.split()) and "changed=1" in ok.stdout
    assert client(env["prod"]).digest("catalog", TAG) == env["digest"]
    again = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION, "-e", "target=oci")
    assert again.returncode == 0 and "changed=0" in again.stdout


def test_promote_playbook_refuses_a_tag_collision_naming_both_digests(env, oci_image, tmp_path):
    other_layout, other = oci_image(TAG, "not the tested one", layout=tmp_path / "other")
    client(env["prod"]).push(other_layout, "catalog", TAG)
    bad = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION, "-e", "target=oci")
    assert bad.returncode != 0 and env["digest"] in bad.stdout and other in bad.stdout
    assert client(env["prod"]).digest("catalog", TAG) == other


def test_retention_playbook_needs_confirm_for_prod(env):
    bad = env["play"]("registry_retention.yml", "-e", "artifact=catalog", "-e", "registry=prod")
    assert bad.returncode != 0 and "-e confirm=prod" in bad.stdout
    bad = env["play"]("registry_retention.yml", "-e", "artifact=catalog", "-e", "retain=abc")
    assert bad.returncode != 0 and "retain" in bad.stdout and "Traceback" not in bad.stdout
    check = env["play"]("registry_retention.yml", "-e", "artifact=catalog", "-e", "retain=0", "--check")
    assert check.returncode == 0, check.stdout
    # the only image is live in ci: kept even with retain=0
    assert "0 image(s) would be removed" in check.stdout and TAG in check.stdout
    assert client(env["dev"]).tags("catalog") == [TAG]


def test_promote_without_registries_fails_naming_them(env, tmp_path):
    (tmp_path / "backend").mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: phoenix-infra\nruntime: python\n")
    cmd = ["ansible-playbook", "playbooks/promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION,
           "-e", "target=oci", "-e", "phoenix_infra_dir=%s" % project]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, PHOENIX_STATE_DIR=str(tmp_path / "state"),
                                   PULUMI_BACKEND_URL="file://%s" % (tmp_path / "backend")))
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0 and "registries: no dev registry in the infra outputs of ci (stack ci)" in out, out
    assert "Traceback" not in proc.stdout + proc.stderr
    assert client(env["prod"]).tags("catalog") == []


# --- bad input (issue 11): each fails before anything changes, naming the parameter and the fix ---

def _tamper(e):
    tamper_first_layer(e["dev"], e["digest"])


def _history(e, outcome=None, analysed=None):
    """Replace ci's history: no release at all, or one deploy of the digest with this outcome."""
    import shutil
    shutil.rmtree(e["releases"])
    if outcome is None:
        return
    store = FileReleaseStore(str(e["releases"]))
    history = store.load("catalog", "ci")
    history.add(Release(history.new_release_id(), "catalog", "ci", VERSION,
                        client(e["dev"]).reference("catalog", digest=e["digest"]), "rolling", status="retired",
                        outcome=outcome, finished=1.0, analysed=analysed))
    store.save(history)


PROMOTE_BAD = {
    "dev registry down": (lambda e: e["dev"].stop(), [], ["registries.dev", "is down", "pulumi up -s local"]),
    "prod registry down": (lambda e: e["prod"].stop(), [], ["registries.prod", "is down", "pulumi up -s local"]),
    "missing image": (None, ["-e", "version=9.9.9+34e57f0.b1"], ["not in the dev registry", "bake it"]),
    "digest mismatch": (None, ["-e", "digest=sha256:" + "2" * 64], ["digest sha256:2222", "leave digest out"]),
    "tampered layer": (_tamper, [], ["registries.dev", "does not match its digest", "push the image again"]),
    "upper case name": (None, ["-e", "artifact=Catalog"], ["artifact=Catalog: give -e artifact=<"]),
    "name with /..": (None, ["-e", "artifact=catalog/.."], ["artifact=catalog/..: give -e artifact=<"]),
    "never released": (_history, [], ["no successful release in ci, integrated_qa"]),
    "rolled back": (lambda e: _history(e, ROLLED_BACK, "fail"), [], ["no successful release in ci, integrated_qa"]),
    "not judged": (lambda e: _history(e, SUCCEEDED, "inconclusive"), [], ["analysis did not judge"]),
    "stable": (None, ["-e", "version=stable"], ["version=stable: give -e version=MAJOR.MINOR.PATCH"]),
    "not semver": (None, ["-e", "version=1.4"], ["version=1.4: give -e version=MAJOR.MINOR.PATCH"]),
}


@pytest.mark.parametrize("case", sorted(PROMOTE_BAD))
def test_promote_playbook_refuses_bad_input_before_anything_changes(env, case):
    prepare, args, words = PROMOTE_BAD[case]
    if prepare:
        prepare(env)
    dev_before, prod_before = storage(env["dev"]), storage(env["prod"])
    proc = env["play"]("promote.yml", "-e", "artifact=catalog", "-e", "version=" + VERSION, "-e", "target=oci",
                       *args)
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr, out
    for word in words:
        assert word in out, out
    assert storage(env["dev"]) == dev_before and storage(env["prod"]) == prod_before


RETENTION_BAD = {
    "dev registry down": (lambda e: e["dev"].stop(), [], ["registries.dev", "is down"]),
    "prod registry down": (lambda e: e["prod"].stop(), [], ["registries.prod", "is down"]),
    "upper case name": (None, ["-e", "artifact=Catalog"], ["artifact=Catalog: give -e artifact=<"]),
    "name with /..": (None, ["-e", "artifact=catalog/.."], ["artifact=catalog/..: give -e artifact=<"]),
    "unknown registry": (None, ["-e", "registry=qa"], ["registry=qa: give -e registry=<dev|prod>"]),
}


@pytest.mark.parametrize("case", sorted(RETENTION_BAD))
def test_retention_playbook_refuses_bad_input_before_anything_changes(env, case):
    prepare, args, words = RETENTION_BAD[case]
    if prepare:
        prepare(env)
    before = storage(env["dev"])
    proc = env["play"]("registry_retention.yml", "-e", "artifact=catalog", "-e", "retain=0", *args)
    out = " ".join(proc.stdout.split())
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr, out
    for word in words:
        assert word in out, out
    assert storage(env["dev"]) == before


def test_retention_playbook_removes_old_dev_images_but_keeps_live_and_promoted(env):
    dev = client(env["dev"])
    for i, tag in enumerate(("1.0.0_34e57f0.b1", "1.1.0_34e57f0.b2", "1.2.0_34e57f0.b3")):
        layout = env["tmp"] / ("old%d" % i)
        make_oci_image(layout, tag, {"/app/VERSION": tag})
        dev.push(str(layout), "catalog", tag, src_tag=tag)
    client(env["prod"]).copy("catalog@" + dev.digest("catalog", "1.0.0_34e57f0.b1"), "catalog:1.0.0_34e57f0.b1",
                             src_registry=dev)
    proc = env["play"]("registry_retention.yml", "-e", "artifact=catalog", "-e", "retain=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # TAG is live in ci, 1.0.0 is promoted to prod: both stay; the other two go
    assert dev.tags("catalog") == ["1.0.0_34e57f0.b1", TAG]
    assert "2 image(s) removed" in " ".join(proc.stdout.split())
