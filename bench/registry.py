"""Benchmark: moving a ~50 MB container image between two real registries
(Debian docker-registry 2.8, dev and prod, on loopback; skopeo 1.9 through
the collection's registry client).

Rows:

* push of a ~50 MB OCI image (one incompressible 50 MB layer, made with
  umoci) to the dev registry;
* promotion dev -> prod by digest (promotion.promote_container: release
  check, collision check, ``skopeo copy --preserve-digests``, digest read
  back), goal <= 5 s;
* a second promotion of the same digest under another version tag: its
  blobs are already in prod, so nothing is uploaded again (bytes the prod
  storage grew by are reported, goal ~0);
* a no-op promotion (the tag already points at the digest).

``python bench/registry.py`` prints the rows (environment of scripts/env.sh).
"""
import os
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 50 * 1000 * 1000


def _storage_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, dummy, files in os.walk(path) for f in files)


def _timed(fn):
    start = time.monotonic()
    out = fn()
    return round(time.monotonic() - start, 3), out


def run() -> list:
    sys.path.insert(0, str(ROOT / "tests" / "pytest"))
    from fixtures_registry import RegistryProcess, make_oci_image, require_tools
    from ansible_collections.phoenix.deploy.plugins.module_utils import promotion, registry
    from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, Release, SUCCEEDED

    require_tools()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="phx-bench-reg-"))
    regs = []
    try:
        dev_p = RegistryProcess(tmp / "dev", delete=True)
        regs.append(dev_p)
        prod_p = RegistryProcess(tmp / "prod", delete=False)
        regs.append(prod_p)
        digest = make_oci_image(tmp / "layout", "1.0.0", {"/app/blob": os.urandom(SIZE)})  # incompressible
        image_mb = _storage_bytes(tmp / "layout" / "blobs") / 1e6
        dev = registry.Registry(dev_p.url, param="registries.dev")
        push_s = _timed(lambda: dev.push(str(tmp / "layout"), "bench", "1.0.0"))[0]
        dev.push(str(tmp / "layout"), "bench", "1.0.1")  # same digest, a second version tag

        store = FileReleaseStore(str(tmp / "releases"))
        history = store.load("bench", "ci")
        history.add(Release(history.new_release_id(), "bench", "ci", "1.0.0", dev.reference("bench", digest=digest),
                            "rolling", status="live", outcome=SUCCEEDED, finished=1.0, analysed="pass"))
        store.save(history)
        urls = {"dev": dev_p.url, "prod": prod_p.url}

        def promote(version):
            return promotion.promote_container("bench", version, urls, str(tmp / "releases"), ["ci"])
        first_s, first = _timed(lambda: promote("1.0.0"))
        assert first["changed"] and first["digest"] == digest
        before = _storage_bytes(prod_p.data)
        again_s, again = _timed(lambda: promote("1.0.1"))
        grew = _storage_bytes(prod_p.data) - before
        assert again["changed"]
        noop_s, noop = _timed(lambda: promote("1.0.0"))
        assert not noop["changed"]
    finally:
        for reg in regs:
            reg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        {"name": "image size (compressed layers)", "value": round(image_mb, 1), "unit": "MB", "goal": "~50"},
        {"name": "push ~50 MB image to dev", "value": push_s, "unit": "s", "goal": "-"},
        {"name": "promote dev -> prod by digest (~50 MB)", "value": first_s, "unit": "s", "goal": "<= 5"},
        {"name": "promote again, blobs present in prod", "value": again_s, "unit": "s", "goal": "<= 5"},
        {"name": "prod storage growth of that promotion", "value": round(grew / 1e3, 1), "unit": "kB",
         "goal": "~0 (no blob re-uploaded)"},
        {"name": "no-op promotion (tag already there)", "value": noop_s, "unit": "s", "goal": "-"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
