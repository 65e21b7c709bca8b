"""Image integrity (issue 9, item 17) and image crash debris (item 4).

* What a bundle is comes from its place in the store, never from its own image.json: a bundle whose
  image.json claims another version, artifact, target or entrypoint is refused, even when its
  recorded digest is made consistent with the files.
* File and directory modes are part of the content digest.
* Deploy (the local platform's image resolution, used by create and by re-creating a group on
  rollback), promote and bake refuse a tampered bundle.
* A killed promotion or forced rebake leaves debris that the next run cleans; none of it blocks.

Bundles are written by hand (real files, no Packer); real bakes are in tests/pytest/test_image_bake.py."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import images, promotion
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalDriver, PlatformError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, Release, SUCCEEDED

from test_images import request

VERSION = "1.0.0+34e57f0.b1"
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
RUN = "#!/bin/sh\necho catalog\n"


def bundle(store, version=VERSION, artifact="catalog", files=None, **extra):
    """A local bundle laid out as image_bake lays it out (entrypoint rootfs/opt/phoenix/<artifact>/bin/run)."""
    name = images.versioning.image_name(version, artifact)
    path = pathlib.Path(store) / "local" / artifact / name
    files = files or {"opt/phoenix/%s/bin/run" % artifact: (RUN, 0o755),
                      "opt/phoenix/%s/app/app.py" % artifact: ("print('ok')\n", 0o644),
                      "etc/phoenix/%s/service.json" % artifact: ("{}\n", 0o644)}
    for rel, (text, mode) in files.items():
        p = path / "rootfs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    images._make_read_only(str(path / "rootfs"))
    digest = images.content_digest(str(path / "rootfs"))
    doc = {"schema": 1, "name": name, "artifact": artifact, "version": version, "target": "local",
           "input_digest": "sha256:in", "content_digest": digest, "content_scheme": 2, "id": digest,
           "created_at": "2026-01-01T00:00:00Z", "entrypoint": images.entrypoint(artifact)}
    doc.update(extra)
    write_doc(path, doc)
    images._make_read_only(str(path))
    return path, doc


def write_doc(path, doc):
    path.chmod(0o755)
    (path / "image.json").write_text(json.dumps(doc))
    (path / "image.json").chmod(0o444)


def reseal(path, **changes):
    """Tamper the way an attacker who can write image.json would: recompute the digest of what is
    there now and record it, so image.json is consistent with the files."""
    doc = json.loads((path / "image.json").read_text())
    doc.update(changes)
    digest = images.content_digest(str(path / "rootfs"))
    doc.update(content_digest=digest, id=digest)
    write_doc(path, doc)
    return doc


@pytest.fixture
def store(tmp_path):
    yield tmp_path / "store"
    images._make_writable(str(tmp_path))


def resolve(store, ref, artifact="catalog"):
    """The local platform's image resolution (create_group, resize, re-create on rollback)."""
    platform = types.SimpleNamespace(image_store=str(store), verify_images=True)
    return LocalDriver._resolve_image(platform, artifact, ref)


# --- modes are content ---------------------------------------------------------------

@pytest.mark.parametrize("chmod", ["write_bit", "setuid", "exec_bit_removed", "dir_world_writable"])
def test_a_chmod_is_a_change_of_content(store, chmod):
    path, doc = bundle(store)
    run = path / "rootfs/opt/phoenix/catalog/bin/run"
    app = path / "rootfs/opt/phoenix/catalog/app/app.py"
    if chmod == "write_bit":
        app.chmod(0o644)
    elif chmod == "setuid":
        run.chmod(0o4555)
    elif chmod == "exec_bit_removed":
        run.chmod(0o444)
    else:
        (path / "rootfs/opt/phoenix/catalog/app").chmod(0o777)
    with pytest.raises(images.TamperError, match="modified after baking"):
        images.verify_image(str(path))
    with pytest.raises(PlatformError, match="refused.*modified after baking"):
        resolve(store, "%s@%s" % (doc["name"], doc["id"]))


# --- the store path decides what a bundle is ----------------------------------------------

def test_image_json_claiming_another_version_is_refused(store):
    path, doc = bundle(store)
    reseal(path, version="9.9.9")
    with pytest.raises(images.TamperError, match="claims version '9.9.9'"):
        images.verify_image(str(path))


def test_image_json_claiming_another_entrypoint_is_refused(store):
    path, doc = bundle(store)
    path.joinpath("rootfs").chmod(0o755)
    evil = path / "rootfs" / "evil.sh"
    evil.write_text("#!/bin/sh\necho pwned\n")
    evil.chmod(0o555)
    path.joinpath("rootfs").chmod(0o555)
    doc = reseal(path, entrypoint="rootfs/evil.sh")
    with pytest.raises(images.TamperError, match="claims entrypoint 'rootfs/evil.sh'"):
        images.verify_image(str(path))
    with pytest.raises(PlatformError, match="claims entrypoint"):
        resolve(store, "%s@%s" % (doc["name"], doc["id"]))


def test_entrypoint_comes_from_the_layout(store):
    path, doc = bundle(store)
    got = resolve(store, "%s@%s" % (doc["name"], doc["id"]))
    assert got["entrypoint"] == str(path / "rootfs/opt/phoenix/catalog/bin/run")
    # a bundle without a content check (verify_images off) still runs only the layout's entrypoint
    write_doc(path, dict(doc, entrypoint="../../../../bin/false"))
    platform = types.SimpleNamespace(image_store=str(store), verify_images=False)
    got = LocalDriver._resolve_image(platform, "catalog", doc["name"])
    assert got["entrypoint"] == str(path / "rootfs/opt/phoenix/catalog/bin/run")


def test_image_json_claiming_another_target_skips_no_check(store):
    """target: gce in image.json used to switch the content check off."""
    path, doc = bundle(store)
    app = path / "rootfs/opt/phoenix/catalog/app/app.py"
    app.chmod(0o644)
    app.write_text("print('pwned')\n")
    app.chmod(0o444)
    write_doc(path, dict(doc, target="gce", content_digest=None))
    with pytest.raises(images.TamperError, match="claims target 'gce'"):
        images.verify_image(str(path))
    with pytest.raises(PlatformError, match="refused"):
        resolve(store, "%s@%s" % (doc["name"], doc["id"]))


def test_image_json_claiming_another_artifact_is_refused(store):
    path, doc = bundle(store)
    reseal(path, artifact="billing")
    with pytest.raises(images.TamperError, match="claims artifact 'billing'"):
        images.verify_image(str(path))


def test_forged_id_cannot_match_the_recorded_digest(store):
    """The release records name@digest: a bundle whose files changed and whose image.json keeps the
    old id (but the new content digest) is refused against the recorded digest."""
    path, doc = bundle(store)
    app = path / "rootfs/opt/phoenix/catalog/app/app.py"
    app.chmod(0o644)
    app.write_text("print('pwned')\n")
    app.chmod(0o444)
    digest = images.content_digest(str(path / "rootfs"))
    write_doc(path, dict(doc, content_digest=digest, id=doc["id"]))
    with pytest.raises(images.TamperError):
        images.verify_image(str(path), doc["id"])
    with pytest.raises(PlatformError, match="refused"):
        resolve(store, "%s@%s" % (doc["name"], doc["id"]))
    reseal(path)  # fully consistent image.json: still not the digest the release recorded
    with pytest.raises(PlatformError, match="expected %s" % doc["id"]):
        resolve(store, "%s@%s" % (doc["name"], doc["id"]))


def test_legacy_bundles_keep_their_digest(store):
    """Bundles baked before modes were content (no content_scheme) verify with the old definition, so
    the digests their releases recorded stay valid."""
    path, doc = bundle(store)
    old = images.content_digest(str(path / "rootfs"), 1)
    assert old != doc["id"]
    legacy = dict(doc, content_digest=old, id=old)
    legacy.pop("content_scheme")
    write_doc(path, legacy)
    assert images.verify_image(str(path), old)["id"] == old
    write_doc(path, dict(legacy, content_scheme=7))
    with pytest.raises(images.TamperError, match="unknown content_scheme"):
        images.verify_image(str(path))


# --- promotion refuses what deploy refuses ----------------------------------------------------

def qualify(release_store, doc, environment="ci"):
    store = FileReleaseStore(str(release_store))
    history = store.load("catalog", environment)
    history.add(Release("v001", "catalog", environment, doc["version"], "%s@%s" % (doc["name"], doc["id"]),
                        "rolling", status="live", outcome=SUCCEEDED, started=1.0, finished=2.0,
                        analysed="pass"))
    history.live = "v001"
    store.save(history)


@pytest.mark.parametrize("tamper", ["chmod", "version"])
def test_promote_refuses_a_tampered_test_image(store, tmp_path, tamper):
    path, doc = bundle(store)
    qualify(tmp_path / "releases", doc)
    if tamper == "chmod":
        (path / "rootfs/opt/phoenix/catalog/bin/run").chmod(0o4555)
    else:
        reseal(path, version="1.0.1")
    with pytest.raises(PhoenixError) as err:
        promotion.promote("catalog", VERSION, str(store), str(tmp_path / "prod"), str(tmp_path / "releases"),
                          ["ci"])
    assert err.value.param == "version"
    assert not (tmp_path / "prod" / "local" / "catalog" / doc["name"]).exists()


def test_promote_copies_modes_and_verifies_them(store, tmp_path):
    path, doc = bundle(store)
    qualify(tmp_path / "releases", doc)
    res = promotion.promote("catalog", VERSION, str(store), str(tmp_path / "prod"), str(tmp_path / "releases"),
                            ["ci"])
    assert res["changed"] and res["digest"] == doc["id"]
    dest = tmp_path / "prod" / "local" / "catalog" / doc["name"]
    assert images.verify_image(str(dest), doc["id"])["id"] == doc["id"]
    assert promotion.require_promoted("catalog", VERSION, str(store), str(tmp_path / "prod")).endswith(doc["id"])


# --- crash debris -------------------------------------------------------------------------

def test_debris_of_a_killed_promotion_is_cleaned_and_does_not_block(store, tmp_path):
    path, doc = bundle(store)
    qualify(tmp_path / "releases", doc)
    adir = tmp_path / "prod" / "local" / "catalog"
    adir.mkdir(parents=True)
    # what a promotion SIGKILLed during its copy leaves: a read-only half copy in .promote-*
    half = adir / ".promote-k1ll3d" / doc["name"]
    (half / "rootfs").mkdir(parents=True)
    (half / "rootfs" / "partial").write_text("x")
    images._make_read_only(str(adir / ".promote-k1ll3d"))
    res = promotion.promote("catalog", VERSION, str(store), str(tmp_path / "prod"), str(tmp_path / "releases"),
                            ["ci"])
    assert res["changed"]
    assert sorted(p.name for p in adir.iterdir()) == sorted([".lock", doc["name"]])


def test_promotion_killed_for_real_leaves_nothing_that_blocks(store, tmp_path):
    """SIGKILL a promotion process after its verified copy, just before it is renamed into place
    (the copy is complete and read-only), then promote again."""
    path, doc = bundle(store)
    qualify(tmp_path / "releases", doc)
    adir = tmp_path / "prod" / "local" / "catalog"
    script = ("import os, signal\n"
              "from ansible_collections.phoenix.deploy.plugins.module_utils import promotion\n"
              "def rename(a, b):\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "os.rename = rename\n"
              "promotion.promote('catalog', %r, %r, %r, %r, ['ci'])\n"
              % (VERSION, str(store), str(tmp_path / "prod"), str(tmp_path / "releases")))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                          env=CHILD_ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in adir.iterdir() if p.name.startswith(".promote-")], "the kill left no debris"
    assert not (adir / doc["name"]).exists()
    res = promotion.promote("catalog", VERSION, str(store), str(tmp_path / "prod"), str(tmp_path / "releases"),
                            ["ci"])
    assert res["changed"]
    assert sorted(p.name for p in adir.iterdir()) == sorted([".lock", doc["name"]])


class NoPacker(object):
    """A bake that must be a cache hit: running Packer is a test failure."""
    last_duration = 0

    def build(self, *args, **kwargs):
        raise AssertionError("Packer ran, but the old bundle was intact and should have been put back")


def bake_request(store):
    req = request(store)
    return req


def _old_bundle_for(store, req):
    path, doc = bundle(store, version=str(req.version), input_digest=req.input_digest)
    return path, doc


def test_forced_rebake_killed_between_its_renames_is_put_back(store, monkeypatch):
    """The two-rename fallback of the swap (kernels or filesystems without RENAME_EXCHANGE): a
    SIGKILL after the old bundle moved away and before the new one is in place leaves .old-<name>;
    the next run puts it back (no Packer run, the image is there again) and nothing is left over."""
    req = bake_request(store)
    path, doc = _old_bundle_for(store, req)
    adir = path.parent
    script = ("import os, signal\n"
              "from ansible_collections.phoenix.deploy.plugins.module_utils import images\n"
              "images._rename_exchange = lambda a, b: False\n"
              "real = os.rename\n"
              "def rename(a, b):\n"
              "    real(a, b)\n"
              "    if os.path.basename(b).startswith(images.OLD_PREFIX):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "os.rename = rename\n"
              "staging = images.tempfile.mkdtemp(prefix=images.STAGING_PREFIX + 'x-', dir=%r)\n"
              "images._swap(staging, %r)\n" % (str(adir), str(path)))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
                          env=CHILD_ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not path.exists() and (adir / (".old-" + doc["name"])).is_dir()  # the gap
    result = images.bake(request(store), runner=NoPacker())
    assert result["cache_hit"] and result["image"]["id"] == doc["id"]
    assert images.verify_image(str(path), doc["id"])
    assert sorted(p.name for p in adir.iterdir()) == sorted([".lock", doc["name"]])


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_replaces_the_bundle(store, monkeypatch, exchange):
    req = bake_request(store)
    path, doc = _old_bundle_for(store, req)
    if not exchange:
        monkeypatch.setattr(images, "_rename_exchange", lambda a, b: False)
    staging = pathlib.Path(images.tempfile.mkdtemp(prefix=images.STAGING_PREFIX + "x-", dir=str(path.parent)))
    (staging / "marker").write_text("new")
    images._swap(str(staging), str(path))
    assert (path / "marker").read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == [doc["name"]]


def test_rename_exchange_is_atomic_here(tmp_path):
    """RENAME_EXCHANGE works on this machine's filesystems: the swap has no gap at all."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert images._rename_exchange(str(a), str(b)) is True
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


@pytest.mark.parametrize("leftover", ["staging_new", "staging_old_after_exchange", "old_backup_in_place"])
def test_other_bake_debris_is_cleaned_by_the_next_bake(store, leftover):
    """A crash before the swap leaves the new tree in .staging-*; after an exchange the old tree is
    in .staging-*; after the fallback's second rename the old tree is in .old-<name>. The next bake
    (a cache hit) removes each, without a Packer run and without waiting an hour."""
    req = bake_request(store)
    path, doc = _old_bundle_for(store, req)
    adir = path.parent
    name = {"staging_new": ".staging-%s-abc" % doc["name"], "staging_old_after_exchange": ".staging-%s-def"
            % doc["name"], "old_backup_in_place": ".old-" + doc["name"]}[leftover]
    (adir / name / "rootfs").mkdir(parents=True)
    images._make_read_only(str(adir / name))
    result = images.bake(request(store), runner=NoPacker())
    assert result["cache_hit"] and result["image"]["id"] == doc["id"]
    assert sorted(p.name for p in adir.iterdir()) == sorted([".lock", doc["name"]])


def test_debris_cleaning_waits_for_no_running_bake(store):
    """While another process holds the artifact's lock (a bake in progress), a cache hit does not
    touch its staging dir and does not wait."""
    req = bake_request(store)
    path, doc = _old_bundle_for(store, req)
    staging = path.parent / (".staging-%s-busy" % doc["name"])
    staging.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               "fd = os.open(%r, os.O_RDWR | os.O_CREAT, 0o600)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True)\n"
                               "time.sleep(60)\n" % str(path.parent / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        result = images.bake(request(store), runner=NoPacker())
        assert time.monotonic() - t0 < 2
        assert result["cache_hit"] and staging.is_dir()
    finally:
        holder.kill()
        holder.wait()
