"""Retention for registries (promotion.container_retention and the registry_retention
module) against real dev and prod docker-registry processes: the newest N versions stay,
plus live, rollback-target and promoted images; prod is never touched without
confirm=prod."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fixtures_registry import client

from ansible_collections.phoenix.deploy.plugins.module_utils import promotion
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, Release, SUCCEEDED

ROOT = pathlib.Path(__file__).resolve().parents[2]
# pushed oldest first on purpose out of order: retention orders by version, not push time
VERSIONS = ["1.0.0+aaaaaaa.b1", "1.2.0+aaaaaaa.b3", "1.1.0+aaaaaaa.b2", "1.3.0+aaaaaaa.b4", "1.3.0+bbbbbbb.b5"]


@pytest.fixture
def pushed(dev_registry, prod_registry, oci_image, tmp_path):
    dev = client(dev_registry)
    digests = {}
    for i, version in enumerate(VERSIONS):
        tag = version.replace("+", "_")
        layout, digest = oci_image(tag, "image %d" % i, layout=tmp_path / ("l%d" % i))
        dev.push(layout, "catalog", tag)
        digests[version] = digest
    return {"dev": dev_registry, "prod": prod_registry, "digests": digests, "tmp": tmp_path,
            "registries": {"dev": dev_registry.url, "prod": prod_registry.url},
            "releases": str(tmp_path / "releases")}


def live(p, environment, *versions):
    """Deploys of ``versions`` in ``environment``, the last one live (so the one before is its rollback target)."""
    store = FileReleaseStore(p["releases"])
    history = store.load("catalog", environment)
    previous = None
    for version in versions:
        rid = history.new_release_id()
        history.add(Release(rid, "catalog", environment, version, "x/catalog@" + p["digests"][version], "rolling",
                            status="live", outcome=SUCCEEDED, finished=1.0, previous_release_id=previous))
        previous = rid
    history.live = previous
    store.save(history)


def dev_tags(p):
    return client(p["dev"]).tags("catalog")


def test_keeps_newest_n_by_version_plus_live_rollback_and_promoted(pushed):
    p = pushed
    live(p, "ci", "1.0.0+aaaaaaa.b1", "1.1.0+aaaaaaa.b2")  # 1.1.0 live, 1.0.0 its rollback target
    dev = client(p["dev"])
    prod = client(p["prod"])
    prod.copy("catalog@" + p["digests"]["1.2.0+aaaaaaa.b3"], "catalog:1.2.0_aaaaaaa.b3", src_registry=dev)
    plan = promotion.container_retention("catalog", p["registries"], "dev", 1, p["releases"], check_mode=True)
    assert [k["tag"] for k in plan["kept"]] == ["1.3.0_bbbbbbb.b5", "1.2.0_aaaaaaa.b3", "1.1.0_aaaaaaa.b2",
                                                "1.0.0_aaaaaaa.b1"]
    assert [r["tag"] for r in plan["removed"]] == ["1.3.0_aaaaaaa.b4"] and plan["changed"]
    assert len(dev_tags(p)) == 5
    result = promotion.container_retention("catalog", p["registries"], "dev", 1, p["releases"])
    assert result["removed"] == plan["removed"]
    assert dev_tags(p) == sorted(v.replace("+", "_") for v in VERSIONS if v != "1.3.0+aaaaaaa.b4")
    assert not promotion.container_retention("catalog", p["registries"], "dev", 1, p["releases"])["changed"]


def test_prod_is_never_cleaned_without_confirm(pushed):
    p = pushed
    dev, prod = client(p["dev"]), client(p["prod"])
    for version in VERSIONS[:2]:
        prod.copy("catalog@" + p["digests"][version], "catalog:" + version.replace("+", "_"), src_registry=dev)
    before = prod.tags("catalog")
    for confirm in (None, "yes", "dev"):
        with pytest.raises(PhoenixError) as err:
            promotion.container_retention("catalog", p["registries"], "prod", 0, p["releases"], confirm=confirm)
        assert err.value.param == "confirm" and "-e confirm=prod" in err.value.msg
    assert prod.tags("catalog") == before
    # asked by name: the local prod registry itself refuses deletes (storage.delete off)
    with pytest.raises(PhoenixError) as err:
        promotion.container_retention("catalog", p["registries"], "prod", 0, p["releases"], confirm="prod")
    assert "storage.delete" in err.value.msg
    assert prod.tags("catalog") == before


def test_bad_input_and_a_down_prod_delete_nothing(pushed):
    p = pushed
    with pytest.raises(PhoenixError) as err:
        promotion.container_retention("catalog", p["registries"], "dev", -1, p["releases"])
    assert err.value.param == "retain"
    with pytest.raises(PhoenixError) as err:
        promotion.container_retention("Catalog", p["registries"], "dev", 0, p["releases"])
    assert err.value.param == "artifact"
    with pytest.raises(PhoenixError) as err:
        promotion.container_retention("catalog", p["registries"], "qa", 0, p["releases"])
    assert err.value.param == "registry"
    p["prod"].stop()  # cannot tell what was promoted: keep everything
    with pytest.raises(PhoenixError) as err:
        promotion.container_retention("catalog", p["registries"], "dev", 0, p["releases"])
    assert err.value.param == "registries.prod"
    assert len(dev_tags(p)) == 5


def test_the_module_in_check_mode_and_for_real(pushed):
    p = pushed
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".tools" / "collections"))
    args = {"artifact": "catalog", "registries": p["registries"], "release_store": p["releases"], "retain": 2}

    def run(extra):
        proc = subprocess.run([sys.executable, str(ROOT / "plugins" / "modules" / "registry_retention.py")],
                              input=json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, **extra)}), capture_output=True,
                              text=True, env=env, timeout=120, check=False)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return json.loads(proc.stdout)
    out = run({"_ansible_check_mode": True})
    assert out["changed"] and len(out["removed"]) == 3 and len(dev_tags(p)) == 5
    out = run({})
    assert out["changed"] and dev_tags(p) == ["1.3.0_aaaaaaa.b4", "1.3.0_bbbbbbb.b5"]
    out = run({"registry": "prod"})
    assert out["failed"] and out["param"] == "confirm"


def test_an_image_in_progress_or_paused_somewhere_is_kept(pushed):
    """A rollout still running (or a canary paused) in some environment holds its image, whatever its age."""
    p = pushed
    store = FileReleaseStore(p["releases"])
    for environment, status, version in (("integrated_qa", "in_progress", "1.0.0+aaaaaaa.b1"),
                                         ("prod", "paused", "1.1.0+aaaaaaa.b2")):
        history = store.load("catalog", environment)
        history.add(Release(history.new_release_id(), "catalog", environment, version,
                            "x/catalog@" + p["digests"][version], "canary", status=status))
        store.save(history)
    result = promotion.container_retention("catalog", p["registries"], "dev", 0, p["releases"])
    assert sorted(k["tag"] for k in result["kept"]) == ["1.0.0_aaaaaaa.b1", "1.1.0_aaaaaaa.b2"]
    assert dev_tags(p) == ["1.0.0_aaaaaaa.b1", "1.1.0_aaaaaaa.b2"]


@pytest.mark.parametrize("artifact, registry, down, param", [
    ("catalog/..", "dev", None, "artifact"), ("team/../catalog", "dev", None, "artifact"),
    ("CATALOG", "dev", None, "artifact"), ("catalog", "dev", "dev", "registries.dev"),
    ("catalog", "prod", "prod", "registries.prod"),
])
def test_the_module_refuses_bad_names_and_a_down_registry_deleting_nothing(pushed, artifact, registry, down, param):
    p = pushed
    before = dev_tags(p)
    if down:
        p[down].stop()
    args = {"artifact": artifact, "registries": p["registries"], "release_store": p["releases"], "retain": 0,
            "registry": registry, "confirm": "prod" if registry == "prod" else None}
    proc = subprocess.run([sys.executable, str(ROOT / "plugins" / "modules" / "registry_retention.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / ".tools" / "collections")), timeout=120,
                          check=False)
    out = json.loads(proc.stdout)
    assert out.get("failed") and out["param"] == param and "Traceback" not in proc.stdout + proc.stderr, out
    assert ("is down" in out["msg"] and "start it" in out["msg"]) if down else "lowercase letters" in out["msg"]
    if down != "dev":
        assert dev_tags(p) == before
