"""Benchmark: baking the catalog image with real Packer (local target).

Rows: a cold bake (Packer + the roles), a cache hit through the engine
(input digest + lookup + verify_image, goal <= 1 s), the same cache hit
through the image_bake module as Ansible runs it (JSON in/out, including
interpreter start-up), and verify_image alone. Uses a throwaway image store.
Needs the environment of scripts/env.sh. ``python bench/bake.py`` prints the rows."""
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
COLLECTIONS = ROOT / ".tools" / "collections"
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
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
