"""Benchmark: baking the catalog image with real Packer (local target) and as an OCI image (target oci).

Rows: a cold bake (Packer + the roles), a cache hit through the engine
(input digest + lookup + verify_image, goal <= 1 s), the same cache hit
through the image_bake module as Ansible runs it (JSON in/out, including
interpreter start-up), and verify_image alone. Target oci: a cold bake (the
mmdebstrap base layer, then the roles), a bake of an app-only change with the
base layer warm (goal <= 15 s), a cache hit (goal <= 1 s), and the image size
of catalog (compressed layers + config, what a registry stores; goal < 120 MB).
Uses throwaway image stores. Needs the environment of scripts/env.sh (and root
for target oci). ``python bench/bake.py`` prints the rows."""
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import collections_root  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = collections_root()
VERSION = "1.0.0+0bench0.b1"


def _timed(fn):
    start = time.monotonic()
    out = fn()
    return time.monotonic() - start, out


def run() -> list:
    if str(COLLECTIONS) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS))
    from ansible_collections.phoenix.deploy.plugins.module_utils import images

    store = tempfile.mkdtemp(prefix="phoenix-bench-bake-")
    source = str(ROOT / "examples" / "catalog")

    def bake():
        req = images.BakeRequest("catalog", VERSION, source, store=store, project_dir=str(ROOT))
        return images.bake(req)

    def module_hit():
        args = pathlib.Path(store) / "args.json"
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
            "artifact": "catalog", "version": VERSION, "source": source, "store": store, "project_dir": str(ROOT)}}))
        proc = subprocess.run([sys.executable, "-m", "ansible_collections.phoenix.deploy.plugins.modules.image_bake",
                               str(args)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(COLLECTIONS)), check=False)
        out = json.loads(proc.stdout)
        if out.get("failed") or not out.get("cache_hit"):
            raise RuntimeError("module run was not a cache hit: %s" % out)
        return out

    try:
        cold, result = _timed(bake)
        if not result["packer_ran"]:
            raise RuntimeError("the cold bake did not run Packer")
        hits = []
        for _i in range(5):
            seconds, out = _timed(bake)
            if not out["cache_hit"]:
                raise RuntimeError("rebake was not a cache hit")
            hits.append(seconds)
        module = statistics.median(_timed(module_hit)[0] for _i in range(3))
        verify = statistics.median(_timed(lambda: images.verify_image(result["image"]["path"]))[0]
                                   for _i in range(5))
    finally:
        images._make_writable(store)
        shutil.rmtree(store, ignore_errors=True)
    return [
        {"name": "bake catalog (cold, local target)", "value": round(cold, 2), "unit": "s", "goal": "-"},
        {"name": "bake catalog (cache hit, engine, median of 5)", "value": round(statistics.median(hits), 4),
         "unit": "s", "goal": "<= 1"},
        {"name": "bake catalog (cache hit, image_bake module incl. start-up)", "value": round(module, 3),
         "unit": "s", "goal": "<= 1"},
        {"name": "verify_image catalog bundle", "value": round(verify, 4), "unit": "s", "goal": "-"},
    ] + oci_rows(images, source)


def oci_rows(images, source):
    """Target oci in a throwaway store: cold (base layer built), app-only change, cache hit, size."""
    store = tempfile.mkdtemp(prefix="phoenix-bench-oci-")

    def bake(version, **variables):
        req = images.BakeRequest("catalog", version, source, target="oci", store=store, project_dir=str(ROOT),
                                 variables=variables)
        return images.bake(req)

    try:
        cold, first = _timed(lambda: bake(VERSION))
        if not first["image"]["oci"]["base_built"]:
            raise RuntimeError("the cold oci bake did not build the base layer")
        cpu0 = os.times()
        app, second = _timed(lambda: bake("1.0.1+0bench0.b2", fault={"latency_ms": 1}))
        cpu1 = os.times()
        # CPU seconds (this process + the processes it waited for): what the bake costs whatever the load
        app_cpu = sum(cpu1[i] - cpu0[i] for i in range(4))
        if second["image"]["oci"]["base_built"] or second["cache_hit"]:
            raise RuntimeError("the app-only oci bake rebuilt the base layer or was a cache hit")
        hits = []
        for dummy in range(5):
            seconds, out = _timed(lambda: bake(VERSION))
            if not out["cache_hit"]:
                raise RuntimeError("oci rebake was not a cache hit")
            hits.append(seconds)
        size = first["image"]["oci"]["size"]
        raw = first["image"]["oci"]["uncompressed_size"]
    finally:
        images._make_writable(store)
        shutil.rmtree(store, ignore_errors=True)
    return [
        {"name": "oci bake catalog (cold: mmdebstrap base layer + roles)", "value": round(cold, 2), "unit": "s",
         "goal": "-"},
        {"name": "oci bake of an app-only change (warm base layer)", "value": round(app, 2), "unit": "s",
         "goal": "<= 15"},
        {"name": "oci bake of an app-only change: CPU time (user+sys, with children)", "value": round(app_cpu, 2),
         "unit": "s", "goal": "-"},
        {"name": "oci bake catalog (cache hit, engine, median of 5)", "value": round(statistics.median(hits), 4),
         "unit": "s", "goal": "<= 1"},
        {"name": "oci image size catalog (compressed, in a registry)", "value": round(size / 1e6, 1), "unit": "MB",
         "goal": "< 120"},
        {"name": "oci image size catalog (uncompressed layers)", "value": round(raw / 1e6, 1), "unit": "MB",
         "goal": "-"},
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
