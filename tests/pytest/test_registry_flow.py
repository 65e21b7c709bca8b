"""The container flow end to end with the registries of a real local stack: bake
(target oci) -> push to the dev registry -> promote by digest to the prod registry
(playbooks/promote.yml -e target=oci, registries read from the stack outputs) ->
run the promoted image, pulled by digest from prod, under containerd/runc with the
environment the platform injects (real HTTP answers) -> refuse a tag collision and
``latest``. The ci deploy that qualifies the digest is recorded in the release store
as the rollout would record it (no container rollout driver exists yet)."""
import json
import os
import subprocess

import pytest

from fixtures_bake import GIT_HASH, ROOT, free_port, http
from fixtures_containerd import wait_http
from fixtures_infra_local import TempLocalStack
from fixtures_registry import make_oci_image

from ansible_collections.phoenix.deploy.plugins.module_utils import registry
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, Release, SUCCEEDED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ci_stack():
    """A local stack named ci (its own backend and loopback block): both registries come from its outputs."""
    stack = TempLocalStack(name="ci", artifacts=("catalog",))
    try:
        stack.up()
        yield stack
    finally:
        stack.cleanup()


def play(stack, state, playbook, *args):
    extra = {"phoenix_infra_dir": str(stack.proj), "phoenix_stack": "ci",
             "phoenix_release_store": str(state / "releases")}
    cmd = ["ansible-playbook", "playbooks/" + playbook, "-e", json.dumps(extra)] + list(args)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                          env=dict(os.environ, PHOENIX_STATE_DIR=str(state), **stack.env))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def qualify(state, version, image):
    """The successful, analysed ci release of ``image`` (what a deploy to ci records)."""
    store = FileReleaseStore(str(state / "releases"))
    history = store.load("catalog", "ci")
    history.live = history.add(Release(history.new_release_id(), "catalog", "ci", version, image, "rolling",
                                       status="live", outcome=SUCCEEDED, finished=1.0, analysed="pass")).release_id
    store.save(history)


def flat(text):
    return " ".join(text.split())


def test_bake_push_promote_by_digest_refuse_collision_and_latest(ci_stack, catalog_oci_image, catalog_oci_store,
                                                                 containerd, bake_postgres, tmp_path):
    result = catalog_oci_image[0]
    image = result["image"]
    version, tag, digest = image["version"], image["oci"]["tag"], image["id"]
    urls = ci_stack.outputs()["registries"]
    dev = registry.Registry(urls["dev"], param="registries.dev")
    prod = registry.Registry(urls["prod"], param="registries.prod")
    state = tmp_path / "state"
    state.mkdir()
    (state / "images").symlink_to(catalog_oci_store)  # the session's bake (base layer cached)

    baked = play(ci_stack, state, "bake.yml", "-e", "artifact=catalog", "-e", "version=" + version,
                 "-e", "target=oci", "-e", "environment=ci")
    assert baked.returncode == 0, baked.stdout + baked.stderr
    dev_ref = "%s/catalog@%s" % (urls["dev"].split("//", 1)[1], digest)
    assert dev_ref in flat(baked.stdout)
    assert dev.digest("catalog", tag) == digest

    refused = play(ci_stack, state, "promote.yml", "-e", "artifact=catalog", "-e", "version=" + version,
                   "-e", "target=oci")
    assert refused.returncode != 0 and "no successful release in ci, integrated_qa" in flat(refused.stdout)
    assert prod.tags("catalog") == []

    qualify(state, version, dev_ref)
    promoted = play(ci_stack, state, "promote.yml", "-e", "artifact=catalog", "-e", "version=" + version,
                    "-e", "target=oci")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    prod_ref = "%s/catalog@%s" % (urls["prod"].split("//", 1)[1], digest)
    assert prod_ref + " promoted (qualified by ci release" in flat(promoted.stdout)
    assert prod.digest("catalog", tag) == digest  # the tested bytes, under the version tag
    layers = json.loads(dev.manifest("catalog", digest=digest)[0])["layers"]
    assert [layer["digest"] for layer in json.loads(prod.manifest("catalog", digest=digest)[0])["layers"]] == \
        [layer["digest"] for layer in layers]

    # the promoted bytes really run: pulled from prod by digest, under containerd + runc
    containerd.pull(prod_ref, plain_http=True)
    assert containerd.image_digest(prod_ref) == digest
    port = free_port()
    container = containerd.run(prod_ref, dict(bake_postgres.env(), PORT=str(port), BIND="127.0.0.1",
                                              DRAIN_TIMEOUT="5"))
    try:
        wait_http("http://127.0.0.1:%d/healthz" % port, container)
        status, doc = http("GET", "http://127.0.0.1:%d/version" % port)
        assert status == 200 and doc["version"] == version and doc["git_hash"] == GIT_HASH, doc
    finally:
        container.stop(timeout=20)

    latest = play(ci_stack, state, "promote.yml", "-e", "artifact=catalog", "-e", "version=latest",
                  "-e", "target=oci")
    assert latest.returncode != 0 and "version=latest" in latest.stdout
    assert prod.tags("catalog") == [tag]

    # another version whose tag already holds other content in prod: refused, naming both digests
    other_version = version.split("+")[0] + "+5eed0f1.b99"
    other_tag = other_version.replace("+", "_")
    candidate = make_oci_image(tmp_path / "candidate", other_tag, {"/app/VERSION": "candidate\n"})
    squatter = make_oci_image(tmp_path / "squatter", other_tag, {"/app/VERSION": "squatter\n"})
    dev.push(str(tmp_path / "candidate"), "catalog", other_tag)
    prod.push(str(tmp_path / "squatter"), "catalog", other_tag)
    qualify(state, other_version, "%s/catalog@%s" % (urls["dev"].split("//", 1)[1], candidate))
    collision = play(ci_stack, state, "promote.yml", "-e", "artifact=catalog", "-e", "version=" + other_version,
                     "-e", "target=oci")
    assert collision.returncode != 0
    assert candidate in collision.stdout and squatter in collision.stdout, collision.stdout
    assert prod.digest("catalog", other_tag) == squatter
