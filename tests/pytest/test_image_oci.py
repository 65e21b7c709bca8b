"""OCI bakes (target oci): real mmdebstrap, umoci and overlay mounts, and the baked image run under a
private containerd + runc answering real HTTP (fixtures in fixtures_oci.py, fixtures_containerd.py)."""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from fixtures_bake import CATALOG_SOURCE, GIT_HASH, ROOT, free_port, http, make_writable
from fixtures_containerd import wait_http
from fixtures_registry import client, make_oci_image

from ansible_collections.phoenix.deploy.plugins.module_utils import images, oci, versioning

MAX_IMAGE_BYTES = 120 * 1000 * 1000


def layout_of(result):
    return pathlib.Path(result["image"]["oci"]["layout"])


def config_of(result):
    manifest, config = oci.read_manifest(str(layout_of(result)), oci.REF_TAG)
    return manifest, config


# --- baking ---------------------------------------------------------------------

def test_oci_bake_is_a_verified_layout_with_config_and_labels(catalog_oci_image):
    result, seconds = catalog_oci_image
    image = result["image"]
    print("oci bake (cold, base layer %s): %.1f s, %d bytes compressed, %d uncompressed"
          % ("built" if image["oci"]["base_built"] else "cached", seconds, image["oci"]["size"],
             image["oci"]["uncompressed_size"]))
    assert result["changed"] and not result["cache_hit"] and result["packer_ran"] is False
    assert image["target"] == "oci" and image["id"] == image["digest"] == image["oci"]["manifest_digest"]
    assert image["oci"]["tag"] == "1.0.0_%s.b1" % GIT_HASH == versioning.oci_tag(image["version"])
    images.verify_image(image["path"], image["id"])
    manifest, config = config_of(result)
    assert [d["digest"] for d in manifest["layers"]] == image["oci"]["layers"] and len(manifest["layers"]) == 2
    assert all(d["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip" for d in manifest["layers"])
    c = config["config"]
    assert c["User"] == "10001:10001"  # not root
    assert c["Entrypoint"] == ["/opt/phoenix/catalog/bin/run"]
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["PORT"] == "8080" and env["BIND"] == "0.0.0.0" and "DB_PASSWORD" not in env
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == "1.0.0+%s.b1" % GIT_HASH
    assert labels["org.opencontainers.image.revision"] == GIT_HASH
    assert labels["org.opencontainers.image.created"] == config["created"] == "1970-01-01T00:00:00Z"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["io.phoenix.deploy.health.http-path"] == "/healthz"
    assert c["StopSignal"] == "SIGTERM"
    assert all(h["created"] == "1970-01-01T00:00:00Z" for h in config["history"])
    # the image of the sample service stays small (what a registry stores)
    assert image["oci"]["size"] < MAX_IMAGE_BYTES, image["oci"]
    # the bundle is read-only like local bundles
    assert not os.access(image["path"], os.W_OK) or os.geteuid() == 0
    assert not (pathlib.Path(image["path"]).stat().st_mode & 0o222)


def test_oci_app_layer_holds_only_what_the_roles_added(catalog_oci_image):
    result = catalog_oci_image[0]
    manifest = config_of(result)[0]
    import tarfile
    blob = layout_of(result) / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]
    with tarfile.open(blob, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert "opt/phoenix/catalog/bin/run" in names and "opt/phoenix/catalog/app/catalog.py" in names
    assert "etc/phoenix/catalog/service.json" in names
    assert not [n for n in names if n.startswith(("usr/", "var/"))], names  # nothing of the base
    assert names == sorted(names) and {m.mtime for m in members} == {0}
    assert {(m.uname, m.gname) for m in members} == {("", "")}


def test_oci_rebake_is_a_cache_hit_under_one_second(catalog_oci_image, catalog_oci_store, oci_bake):
    result = catalog_oci_image[0]
    t0 = time.monotonic()
    again = oci_bake(catalog_oci_store, result["image"]["version"])
    seconds = time.monotonic() - t0
    print("oci cache hit: %.3f s" % seconds)
    assert again["cache_hit"] and not again["changed"] and again["image"]["id"] == result["image"]["id"]
    assert seconds <= 1.0


def fake_base(cache, seed, age):
    """A cached base layer dir (as ensure_base leaves one) last used ``age`` seconds ago; returns its key."""
    hexkey = hashlib.sha256(seed.encode()).hexdigest()
    path = pathlib.Path(cache) / hexkey
    for d in ("rootfs/usr", "layout"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "base.json").write_text(json.dumps({"key": "sha256:" + hexkey}))
    lock = pathlib.Path(cache) / (".use-%s.lock" % hexkey)
    lock.touch()
    then = time.time() - age
    os.utime(lock, (then, then))
    return "sha256:" + hexkey


def test_oci_app_only_change_rebuilds_one_layer(catalog_oci_image, catalog_oci_store, oci_bake):
    result = catalog_oci_image[0]
    cache = pathlib.Path(catalog_oci_store) / ".oci-base"
    # older base layers in the cache: the bake keeps the two most recently used (its own and the newest
    # other), never one another bake holds, and prunes the rest under its lock
    ages = (("recent", 100), ("stale", 200), ("held", 300))
    recent, stale, held = (fake_base(cache, name, age) for name, age in ages)
    try:
        with oci.hold_base(str(cache), held):
            # a long bake that took this base 300 s ago and still builds on it: the least recently used
            then = time.time() - 300
            os.utime(cache / (".use-%s.lock" % held[7:]), (then, then))
            t0 = time.monotonic()
            other = oci_bake(catalog_oci_store, "1.0.1-faulty+%s.b2" % GIT_HASH, fault={"error_rate": 0.5})
            seconds = time.monotonic() - t0
        print("oci bake of an app-only change (warm base layer): %.1f s" % seconds)
        assert other["changed"] and other["image"]["oci"]["base_built"] is False
        base, app = other["image"]["oci"]["layers"]
        assert base == result["image"]["oci"]["layers"][0] and app != result["image"]["oci"]["layers"][1]
        assert other["image"]["oci"]["base_key"] == result["image"]["oci"]["base_key"]
        assert other["image"]["oci"]["tag"] == "1.0.1-faulty_%s.b2" % GIT_HASH
        assert other["pruned_bases"] == [stale]
        assert not (cache / stale.split(":")[1]).exists() and not (cache / (".use-%s.lock" % stale[7:])).exists()
        for key in (recent, held, result["image"]["oci"]["base_key"]):
            assert (cache / key.split(":")[1]).is_dir(), key
    finally:
        for key in (recent, stale, held):
            shutil.rmtree(cache / key.split(":")[1], ignore_errors=True)


def test_oci_bake_is_reproducible_from_scratch(catalog_oci_image, oci_bake, tmp_path):
    """A second store with an empty base cache: mmdebstrap and every layer again, same manifest digest."""
    result = catalog_oci_image[0]
    fresh = tmp_path / "fresh-store"
    try:
        again = oci_bake(fresh, result["image"]["version"])
        assert again["image"]["oci"]["base_built"] is True
        assert again["image"]["oci"]["layers"] == result["image"]["oci"]["layers"]
        assert again["image"]["id"] == result["image"]["id"]
    finally:
        make_writable(fresh)
        shutil.rmtree(fresh, ignore_errors=True)


def test_oci_tampered_layer_is_refused(catalog_oci_image, tmp_path):
    result = catalog_oci_image[0]
    src = pathlib.Path(result["image"]["path"])
    dst = tmp_path / "store" / "oci" / "catalog" / src.name
    shutil.copytree(src, dst)
    make_writable(dst)
    manifest = config_of(result)[0]
    blob = dst / "layout" / "blobs" / "sha256" / manifest["layers"][1]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(images.TamperError, match="modified after baking"):
        images.verify_image(str(dst))
    with pytest.raises(images.TamperError):
        images.bake(images.BakeRequest("catalog", result["image"]["version"], str(CATALOG_SOURCE), target="oci",
                                       store=str(tmp_path / "store"), project_dir=str(ROOT)))


# --- the module, run as Ansible runs it -------------------------------------------

def run_module(args, tmp_path, env=None):
    argsfile = tmp_path / "args.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    full_env = dict(os.environ, PYTHONPATH=str(ROOT / ".tools" / "collections"), **(env or {}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.phoenix.deploy.plugins.modules.image_bake",
                           str(argsfile)], capture_output=True, text=True, env=full_env, cwd=tmp_path, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0


@pytest.mark.parametrize("override, env, param, words", [
    ({"version": "latest"}, None, "version", "mutable tag"),
    ({"version": "stable"}, None, "version", "mutable tag"),
    ({"version": "1.4"}, None, "version", "not semver"),
    ({"version": "v1.4.0"}, None, "version", "leading 'v'"),
    ({"artifact": "Catalog"}, None, "artifact", "lowercase letters"),
    ({"artifact": "cat/../alog"}, None, "artifact", "lowercase letters"),
    ({"vars": {"python": "/usr/bin/python3"}}, None, "vars", "allowed: entrypoint, fault, source_url"),
    ({"vars": {"source_url": "not a url"}}, None, "vars", "must be a URL"),
    ({}, {"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH", "seconds since 1970"),
])
def test_module_oci_refuses_bad_input_before_anything_changes(override, env, param, words, tmp_path):
    args = {"artifact": "catalog", "version": "1.0.0+5eed0f1.b1", "source": str(CATALOG_SOURCE), "target": "oci",
            "store": str(tmp_path / "store"), "project_dir": str(ROOT)}
    args.update(override)
    out, seconds = run_module(args, tmp_path, env)
    assert out.get("failed") and words in out["msg"] and out["param"] == param, out
    assert "Traceback" not in out["msg"] and "exception" not in out
    assert not (tmp_path / "store").exists()  # nothing written, nothing built
    assert seconds < 5


def test_module_oci_cache_hit(catalog_oci_image, catalog_oci_store, tmp_path):
    result = catalog_oci_image[0]
    args = {"artifact": "catalog", "version": result["image"]["version"], "source": str(CATALOG_SOURCE),
            "target": "oci", "store": str(catalog_oci_store), "project_dir": str(ROOT)}
    out, seconds = run_module(args, tmp_path)
    assert not out.get("failed"), out
    assert out["cache_hit"] and not out["changed"] and out["image"]["id"] == result["image"]["id"]
    assert out["image"]["oci"]["tag"] == result["image"]["oci"]["tag"]
    assert out["duration"] <= 1.0
    print("module oci cache hit: %.3f s in the module, %.3f s with interpreter start-up" % (out["duration"], seconds))
    check = run_module(dict(args, version="1.0.9+%s.b9" % GIT_HASH, _ansible_check_mode=True, _ansible_diff=True),
                       tmp_path)[0]
    assert check["changed"] is True and check["cache_hit"] is False, check
    assert check["diff"]["after"]["baked"] == "catalog-v1-0-9--%s-b9" % GIT_HASH
    assert not os.path.exists(check["image"]["path"])  # check mode bakes nothing


# --- the image really runs: containerd + runc -------------------------------------

def task_pid(containerd, cid):
    for line in containerd.ctr("tasks", "ls").stdout.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == cid:
            return int(parts[1])
    raise AssertionError("no task %s" % cid)


def test_module_oci_pushes_to_the_dev_registry_by_digest(catalog_oci_image, catalog_oci_store, dev_registry, tmp_path):
    result = catalog_oci_image[0]
    image = result["image"]
    args = {"artifact": "catalog", "version": image["version"], "source": str(CATALOG_SOURCE), "target": "oci",
            "store": str(catalog_oci_store), "project_dir": str(ROOT), "registry": dev_registry.url}
    out = run_module(args, tmp_path)[0]
    assert not out.get("failed"), out
    assert out["reference"] == "127.0.0.1:%d/catalog@%s" % (dev_registry.port, image["id"])
    assert out["pushed"] is True and out["changed"] is True and out["cache_hit"] is True
    assert client(dev_registry).digest("catalog", image["oci"]["tag"]) == image["id"]
    again = run_module(args, tmp_path)[0]
    assert again["pushed"] is False and again["changed"] is False and again["reference"] == out["reference"]


def test_module_oci_push_refuses_a_tag_that_points_at_another_digest(catalog_oci_image, catalog_oci_store,
                                                                     dev_registry, tmp_path):
    result = catalog_oci_image[0]
    image = result["image"]
    other = make_oci_image(tmp_path / "other", image["oci"]["tag"], {"/app/VERSION": "not the baked one\n"})
    client(dev_registry).push(str(tmp_path / "other"), "catalog", image["oci"]["tag"], src_tag=image["oci"]["tag"])
    args = {"artifact": "catalog", "version": image["version"], "source": str(CATALOG_SOURCE), "target": "oci",
            "store": str(catalog_oci_store), "project_dir": str(ROOT), "registry": dev_registry.url}
    out = run_module(args, tmp_path)[0]
    assert out.get("failed") and out["param"] == "version", out
    assert other in out["msg"] and image["id"] in out["msg"], out["msg"]
    assert client(dev_registry).digest("catalog", image["oci"]["tag"]) == other  # unchanged


def test_module_oci_push_of_a_tampered_image_fails_before_the_registry_changes(
        catalog_oci_image, dev_registry, tmp_path):
    result = catalog_oci_image[0]
    image = result["image"]
    src = pathlib.Path(image["path"])
    store = tmp_path / "store"
    dst = store / "oci" / "catalog" / src.name
    shutil.copytree(src, dst)
    make_writable(dst)
    blob = dst / "layout" / "blobs" / "sha256" / config_of(result)[0]["layers"][1]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0xFF
    blob.write_bytes(bytes(data))
    args = {"artifact": "catalog", "version": image["version"], "source": str(CATALOG_SOURCE), "target": "oci",
            "store": str(store), "project_dir": str(ROOT), "registry": dev_registry.url}
    out = run_module(args, tmp_path)[0]
    assert out.get("failed") and out["param"] == "version", out
    assert "modified after baking" in out["msg"] and "force=true" in out["msg"], out["msg"]
    assert client(dev_registry).repositories() == []  # nothing pushed


@pytest.mark.parametrize("override, param, words", [
    ({"registry": "http://127.0.0.1:%d" % free_port()}, "registry", "registry"),
    ({"registry": "ftp://127.0.0.1:1"}, "registry", "not a registry URL"),
    ({"registry": "http://127.0.0.1:1", "target": "local"}, "registry", "only for target oci"),
    ({"registry": "http://127.0.0.1:1", "repository": "Catalog"}, "repository", "upper case"),
    ({"registry": "http://127.0.0.1:1", "repository": "team/../catalog"}, "repository", "'..'"),
])
def test_module_oci_push_bad_input_fails_before_the_bake(override, param, words, tmp_path):
    args = {"artifact": "catalog", "version": "1.0.0+5eed0f1.b1", "source": str(CATALOG_SOURCE), "target": "oci",
            "store": str(tmp_path / "store"), "project_dir": str(ROOT)}
    args.update(override)
    out, seconds = run_module(args, tmp_path)
    assert out.get("failed") and out["param"] == param and words in out["msg"], out
    assert not (tmp_path / "store").exists()
    assert seconds < 15


def test_oci_image_runs_under_containerd_and_answers_http(catalog_oci_image, catalog_oci_store, containerd,
                                                          bake_postgres, dev_registry):
    """Pushed to a real registry by image_bake's engine, pulled by containerd by digest, run by runc."""
    result = catalog_oci_image[0]
    image = result["image"]
    reg, repo = images.open_registry(dev_registry.url, "catalog", "oci")
    ref = images.push(result, reg, repo)["reference"]
    assert ref == "127.0.0.1:%d/catalog@%s" % (dev_registry.port, image["id"])
    containerd.pull(ref, plain_http=True)
    assert containerd.image_digest(ref) == image["id"]
    port = free_port()
    env = dict(bake_postgres.env(), PORT=str(port), BIND="127.0.0.1", DRAIN_TIMEOUT="5")
    c = containerd.run(ref, env)
    wait_http("http://127.0.0.1:%d/healthz" % port, c)
    status, doc = http("GET", "http://127.0.0.1:%d/version" % port)
    assert status == 200 and doc["version"] == image["version"] and doc["git_hash"] == GIT_HASH, doc
    status, item = http("POST", "http://127.0.0.1:%d/items" % port, {"name": "from a container", "price_cents": 5})
    assert status == 201, item
    with open("/proc/%d/status" % task_pid(containerd, c.id)) as f:
        uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
    assert set(uids) == {"10001"}  # the service runs as the image's non-root user
    c.stop(timeout=20)
    assert "stopped" in c.output(), c.output()  # SIGTERM drained and exited


# --- playbooks/bake.yml -e target=oci ------------------------------------------------

def bake_playbook(tmp_path, *args, store=None):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    if store is not None and not (state / "images").exists():
        (state / "images").symlink_to(store)
    cmd = ["ansible-playbook", "playbooks/bake.yml"] + list(args)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, PHOENIX_STATE_DIR=str(state)))


@pytest.mark.parametrize("args, words", [
    (["-e", "version=latest"], "version=latest: give -e version="),
    (["-e", "version=stable"], "version=stable: give -e version="),
    (["-e", "version=1.4"], "version=1.4: give -e version="),
    (["-e", "version=1.0.0+5eed0f1.b1", "-e", "target=docker"], "target=docker: give -e target=<local|oci>"),
    (["-e", "version=1.0.0+5eed0f1.b1", "-e", "environment=nowhere"], "environment=nowhere: give -e environment="),
    (["-e", "version=1.0.0+5eed0f1.b1", "-e", "artifact=Catalog"], "artifact=Catalog: give -e artifact=<catalog"),
    (["-e", "version=1.0.0+5eed0f1.b1", "-e", "artifact=catalog/.."], "artifact=catalog/..: give -e artifact=<catalog"),
    (["-e", "version=1.0.0+5eed0f1.b1", "-e", json.dumps({"registries": {"dev": "http://127.0.0.1:%d" % free_port()}})],
     "is down or unreachable"),
])
def test_bake_playbook_oci_refuses_bad_requests_naming_the_parameter(args, words, tmp_path):
    args = ["-e", "artifact=catalog", "-e", "target=oci"] + args  # a later -e artifact= wins
    proc = bake_playbook(tmp_path, *args)
    assert proc.returncode != 0 and words in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "state" / "images").exists()


def test_bake_playbook_oci_pushes_to_the_dev_registry(catalog_oci_image, catalog_oci_store, dev_registry, tmp_path):
    result = catalog_oci_image[0]
    image = result["image"]
    registries = json.dumps({"registries": {"dev": dev_registry.url, "prod": "http://127.0.0.1:1"}})
    proc = bake_playbook(tmp_path, "-e", "artifact=catalog", "-e", "version=" + image["version"], "-e", "target=oci",
                         "-e", registries, store=catalog_oci_store)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = "127.0.0.1:%d/catalog@%s" % (dev_registry.port, image["id"])
    assert ref in proc.stdout and "(cache hit, pushed)" in proc.stdout, proc.stdout
    assert client(dev_registry).digest("catalog", image["oci"]["tag"]) == image["id"]


def test_debris_of_a_killed_oci_bake_is_unmounted_before_removal(tmp_path):
    """A bake killed while the roles ran leaves its overlay mounted in .staging-*: the next bake detaches
    it first, so nothing is deleted through it (the lower dir, i.e. the cached base, stays intact)."""
    lower = tmp_path / "lower"
    (lower / "usr").mkdir(parents=True)
    (lower / "usr" / "keep").write_text("base file\n")
    store = images.ImageStore(str(tmp_path / "store"))
    staging = pathlib.Path(store.artifact_dir("oci", "catalog")) / ".staging-catalog-v1-0-0-x" / "build"
    staging.mkdir(parents=True)
    for name in ("upper", "work", "merged"):
        (staging / name).mkdir()
    merged = str(staging / "merged")  # mounted as oci.overlay does, never unmounted: the process was killed
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
                    % (lower, staging / "upper", staging / "work"), merged], check=True)
    assert os.path.ismount(merged) and os.path.isfile(os.path.join(merged, "usr", "keep"))
    try:
        with store.lock("oci", "catalog"):
            done = store.clean_debris("oci", "catalog")
    finally:
        if os.path.ismount(merged):  # the fix regressed: do not leave the mount behind
            subprocess.run(["umount", "-l", merged], check=False)
    assert done == [".staging-catalog-v1-0-0-x"] and not os.path.ismount(merged)
    assert not staging.parent.exists()
    assert (lower / "usr" / "keep").read_text() == "base file\n"


def mount_debris(root, host):
    """What a killed mmdebstrap or bake leaves under ``root``: a tmpfs (as its /proc), a bind mount of a
    directory that must survive (as its /dev), and a mount point whose name needs escaping in mountinfo."""
    for name in ("proc", "dev", "with space"):
        (root / name).mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / "proc")], check=True)
    (root / "proc" / "inside-tmpfs").write_text("x")
    subprocess.run(["mount", "--bind", str(host), str(root / "dev")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / "with space")], check=True)
    points = oci.mounts_below(str(root))
    assert len(points) == 3 and str(root / "with space") in points, points
    return points


def unmount_left(path):
    for m in oci.mounts_below(str(path)):  # the fix regressed: do not leave mounts behind
        subprocess.run(["umount", "-l", m], check=False)


@pytest.fixture
def host_dir(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "null").write_text("a file outside the debris: never deleted\n")
    return host


def test_killed_mmdebstrap_mounts_are_detached_before_the_base_cache_is_pruned(tmp_path, host_dir):
    """A killed base build leaves mmdebstrap's chroot (TMPDIR is the build dir) with /proc, /dev and /sys
    mounted; the next prune (or build) detaches them first; pruning keeps the two most recently used
    bases, never one a bake holds, and does nothing while another process holds the cache lock."""
    cache = tmp_path / "store" / ".oci-base"
    cache.mkdir(parents=True)
    chroot = cache / ".build-killed" / "mmdebstrap.XYZ"
    newest, second, third, oldest = (fake_base(cache, n, age) for n, age in
                                     (("a", 10), ("b", 20), ("c", 30), ("d", 40)))
    try:
        mount_debris(chroot, host_dir)
        with oci._flock(str(cache / ".lock")):  # a build is running: the prune leaves everything alone
            assert oci.prune_bases(str(cache), keep=2) == []
        assert len(oci.mounts_below(str(cache))) == 3 and (cache / oldest[7:]).is_dir()
        assert oci.prune_bases(str(cache), keep=2) == [third, oldest]
        assert oci.mounts_below(str(cache)) == [] and not (cache / ".build-killed").exists()
        assert (host_dir / "null").read_text().startswith("a file outside")
        assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted([newest[7:], second[7:]])
        with oci.hold_base(str(cache), second) as present:  # a bake builds on it: never removed, even keep=0
            assert present
            assert oci.prune_bases(str(cache), keep=0) == [newest]
        assert (cache / second[7:]).is_dir()
        assert oci.prune_bases(str(cache), keep=0, protect=[second]) == []
        assert oci.prune_bases(str(cache), keep=0) == [second]
        with oci.hold_base(str(cache), second) as present:  # pruned: a bake that wanted it builds it again
            assert not present
        assert oci.prune_bases(str(cache)) == [] and os.listdir(str(cache)) == [".lock"]
    finally:
        unmount_left(cache)


def test_mounts_under_bake_debris_are_detached_before_it_is_removed(tmp_path, host_dir):
    """The staging dir of a bake killed while the roles ran (nested mounts, a name with a space): the next
    bake's clean-up under the artifact lock detaches every mount below it, then removes it."""
    store = images.ImageStore(str(tmp_path / "store"))
    debris = pathlib.Path(store.artifact_dir("oci", "catalog")) / ".staging-catalog v1 killed"
    try:
        mount_debris(debris / "build" / "merged", host_dir)
        with store.lock("oci", "catalog"):
            done = store.clean_debris("oci", "catalog")
        assert done == [debris.name] and not debris.exists()
        assert oci.mounts_below(str(tmp_path / "store")) == []
        assert (host_dir / "null").read_text().startswith("a file outside")
    finally:
        unmount_left(tmp_path / "store")
