# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OCI images without a daemon: a Debian base layer from ``mmdebstrap``, image layouts by ``umoci``.

Words: the *base* is the runtime root filesystem (a minimal Debian set plus the app's runtime),
built once per set of inputs and cached as its own layer; an *image* is that base layer plus one
app layer (what the ``base_image`` and ``app_service`` roles added), in an OCI image layout.

Base cache (``<cache>/<key>/``)::

    base.json   the inputs, the layer digest and sizes
    layout/     an OCI image layout with one image (tag ``base``) holding the base layer
    rootfs/     the same files unpacked: the read-only lower directory of the overlay the roles
                run in (never written to)

The key is a sha256 over the base inputs (suite, variant, packages, dpkg path filters, the service
user, the source-date epoch) and the machine's APT sources (which mirror or snapshot the packages
come from). An app-only change reuses the base and builds one layer.

Reproducible: ``mmdebstrap`` runs with ``SOURCE_DATE_EPOCH`` and without ``/dev`` nodes; the app
layer is a tar written here from the overlay's upper directory (entries sorted, numeric owners, no
user/group names, every mtime set to the image's epoch, hard links stored as files, overlay
whiteouts turned into OCI ``.wh.`` entries); ``umoci`` gets fixed ``created`` times for the config
and every history entry. The same inputs give the same manifest digest.

Everything that runs as a process goes through :func:`run`: no shell, a timeout, and an
:class:`OciError` carrying the tool's last lines on failure.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

__all__ = [
    "OciError", "BaseSpec", "ensure_base", "use_base", "hold_base", "prune_bases", "write_layer", "overlay",
    "build_image", "read_manifest", "verify_layout", "missing_tools", "rfc3339", "unmount_below", "mounts_below",
    "TOOLS", "REF_TAG", "BASES_KEPT",
]

TOOLS = ("mmdebstrap", "umoci", "tar", "mount", "umount")
BASE_SCHEME = 2
# umoci tag of the base image inside a base layout
BASE_TAG = "base"
# tag of the one image inside an image bundle's layout (the version's OCI tag is in image.json;
# a fixed in-layout name keeps the layout independent of how the version is spelled)
REF_TAG = "image"
SERVICE_USER = "phoenix"
SERVICE_UID = 10001
# dpkg path filters: no documentation, manual pages, info pages or translations (copyright files stay)
DPKG_FILTERS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
)
# mmdebstrap's own hook: a merged /usr without the usrmerge package (which pulls in perl, ~50 MB)
HOOKS = ("/usr/share/mmdebstrap/hooks/merged-usr",)
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
# how many base layers a cache keeps: the most recently used ones (a bake prunes the others, never one in use)
BASES_KEPT = 2
BUILD_PREFIX = ".build-"
_KEY_DIR_LEN = 64
# every command gets at most this long (mmdebstrap downloads and installs ~60 packages)
BASE_TIMEOUT = 900
STEP_TIMEOUT = 300


class OciError(PhoenixError):
    """A failed OCI step; ``param`` names the option at fault, if any."""


def missing_tools(tools=TOOLS):
    return [t for t in tools if not shutil.which(t)]


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(cmd, what, timeout=STEP_TIMEOUT, env=None, cwd=None):
    """Run ``cmd`` (a list, no shell); raise :class:`OciError` naming ``what`` with the output's tail."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    except FileNotFoundError:
        raise OciError("%s: %s is not installed (apt-get install %s; make setup installs it)"
                       % (what, cmd[0], os.path.basename(cmd[0])))
    except subprocess.TimeoutExpired:
        raise OciError("%s: %s did not finish within %d s" % (what, os.path.basename(cmd[0]), timeout))
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise OciError("%s failed (%s exited %d): %s" % (what, os.path.basename(cmd[0]), proc.returncode, tail))
    return proc.stdout


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks (blobs, bundle files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _apt_sources():
    """(path, sha256) of the machine's APT source files: which archive the base packages come from."""
    out = []
    for top in APT_SOURCES:
        paths = sorted(glob.glob(os.path.join(top, "*"))) if os.path.isdir(top) else [top]
        for p in paths:
            if os.path.isfile(p):
                out.append((p, sha256_file(p)))
    return out


class BaseSpec(object):
    """The inputs of a base layer. ``packages`` come on top of Debian's essential set."""

    def __init__(self, packages, suite="bookworm", variant="essential", epoch=0, user=SERVICE_USER,
                 uid=SERVICE_UID):
        self.packages = sorted(set(packages))
        self.suite, self.variant, self.epoch = suite, variant, int(epoch)
        self.user, self.uid = user, int(uid)

    def doc(self):
        return {"scheme": BASE_SCHEME, "suite": self.suite, "variant": self.variant, "packages": self.packages,
                "dpkg_filters": list(DPKG_FILTERS), "hooks": [os.path.basename(h) for h in HOOKS],
                "epoch": self.epoch, "user": self.user, "uid": self.uid,
                "apt_sources": _apt_sources()}

    def key(self):
        doc = json.dumps(self.doc(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()

    def command(self, out):
        hook = ("echo '{u}:x:{i}:{i}:{u} service:/nonexistent:/usr/sbin/nologin' >> \"$1/etc/passwd\" && "
                "echo '{u}:x:{i}:' >> \"$1/etc/group\"").format(u=self.user, i=self.uid)
        cmd = ["mmdebstrap", "--quiet", "--mode=root", "--format=tar", "--variant=" + self.variant,
               "--skip=output/dev", "--include=" + ",".join(self.packages)]
        cmd += ["--dpkgopt=" + f for f in DPKG_FILTERS]
        cmd += ["--hook-dir=" + h for h in HOOKS]
        cmd += ["--customize-hook=" + hook, self.suite, out]
        return cmd


@contextlib.contextmanager
def _flock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _rm(path):
    if os.path.lexists(path):
        for dirpath, dirnames, dummy in os.walk(path):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
        shutil.rmtree(path)


def read_base(path):
    try:
        with open(os.path.join(path, "base.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not os.path.isdir(os.path.join(path, "rootfs")) or not os.path.isdir(os.path.join(path, "layout")):
        return None
    doc["path"] = path
    return doc


def ensure_base(cache, spec, log=None):
    """The base layer for ``spec`` from ``cache``, built first if missing. Returns base.json plus
    ``path`` and ``built`` (whether it was built now)."""
    key = spec.key()
    os.makedirs(cache, mode=0o700, exist_ok=True)
    final = os.path.join(cache, key.split(":", 1)[1])
    doc = read_base(final)
    if doc:
        doc["built"] = False
        return doc
    with _flock(os.path.join(cache, ".lock")):
        doc = read_base(final)
        if doc:
            doc["built"] = False
            return doc
        _clean_builds(cache)  # what a killed build left, its mounts detached first
        if os.path.lexists(final):
            unmount_below(final)
            _rm(final)
        tmp = tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=cache)
        try:
            tar = os.path.join(tmp, "base.tar")
            # mmdebstrap's chroot (with /dev, /proc and /sys mounted into it in root mode) lives in
            # TMPDIR: inside the build dir, so what a killed mmdebstrap left mounted is found and
            # detached by the next build or prune before anything is deleted
            env = dict(os.environ, SOURCE_DATE_EPOCH=str(spec.epoch), TMPDIR=tmp)
            run(spec.command(tar), "building the base root filesystem (mmdebstrap %s %s + %s)"
                % (spec.suite, spec.variant, ", ".join(spec.packages)), timeout=BASE_TIMEOUT, env=env)
            rootfs = os.path.join(tmp, "rootfs")
            os.mkdir(rootfs, 0o755)
            run(["tar", "-x", "-p", "--numeric-owner", "-f", tar, "-C", rootfs], "unpacking the base layer")
            layout = os.path.join(tmp, "layout")
            created = rfc3339(spec.epoch)
            run(["umoci", "init", "--layout", layout], "umoci init")
            run(["umoci", "new", "--image", layout + ":" + BASE_TAG], "umoci new")
            created_by = "mmdebstrap --variant=%s %s +%s" % (spec.variant, spec.suite, ",".join(spec.packages))
            run(["umoci", "raw", "add-layer", "--image", layout + ":" + BASE_TAG, "--history.created", created,
                 "--history.created_by", created_by, tar], "adding the base layer")
            manifest, config = read_manifest(layout, BASE_TAG)
            layer = manifest["layers"][-1]
            doc = dict(spec.doc(), key=key, layer_digest=layer["digest"], layer_size=layer["size"],
                       diff_id=config["rootfs"]["diff_ids"][-1], uncompressed_size=os.path.getsize(tar))
            os.unlink(tar)
            with open(os.path.join(tmp, "base.json"), "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
            os.chmod(tmp, 0o755)
            os.rename(tmp, final)
            tmp = None
        finally:
            if tmp:
                unmount_below(tmp)
                _rm(tmp)
    doc = read_base(final)
    doc["built"] = True
    return doc


def _clean_builds(cache):
    """Remove the ``.build-*`` dirs killed base builds left (call with the cache lock held): mounts
    below them (mmdebstrap's /dev, /proc, /sys) are detached first, so nothing is deleted through one."""
    done = []
    for name in sorted(os.listdir(cache)):
        if name.startswith(BUILD_PREFIX):
            full = os.path.join(cache, name)
            unmount_below(full)
            _rm(full)
            done.append(name)
    return done


def _use_lock(cache, hexkey):
    return os.path.join(cache, ".use-%s.lock" % hexkey)


@contextlib.contextmanager
def hold_base(cache, key):
    """Hold base ``key`` of ``cache`` in use (a shared flock that :func:`prune_bases` respects) and mark
    it used now. Yields whether the base is (still) there."""
    hexkey = key.split(":", 1)[-1]
    path = _use_lock(cache, hexkey)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:  # a prune that removed the base also unlinked this lock file (or replaced it)
            current = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            current = False
        present = current and read_base(os.path.join(cache, hexkey)) is not None
        if present:
            os.utime(path)
        yield present
    finally:
        os.close(fd)


@contextlib.contextmanager
def use_base(cache, spec, log=None):
    """:func:`ensure_base`, held in use (:func:`hold_base`) while the caller builds on it."""
    for dummy in range(5):
        doc = ensure_base(cache, spec, log=log)
        with hold_base(cache, doc["key"]) as present:
            if present:
                yield doc
                return
    raise OciError("the base layer %s was removed by a prune each time this bake tried to use it; run the bake again"
                   % spec.key())


@contextlib.contextmanager
def _try_flock(path):
    """Yield whether an exclusive flock on ``path`` (created 0600) was taken without waiting."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prune_bases(cache, keep=BASES_KEPT, protect=()):
    """Remove cached base layers beyond the ``keep`` most recently used ones and those in ``protect``
    (keys), never one a bake holds (:func:`hold_base`), plus what killed builds left. Skips everything
    when another process holds the cache lock (a build runs; the next bake prunes). Returns the keys removed."""
    if not os.path.isdir(cache):
        return []
    protect = set(k.split(":", 1)[-1] for k in protect)
    removed = []
    with _try_flock(os.path.join(cache, ".lock")) as locked:
        if not locked:
            return []
        _clean_builds(cache)

        def last_use(name):
            for p in (_use_lock(cache, name), os.path.join(cache, name, "base.json")):
                try:
                    return os.stat(p).st_mtime
                except OSError:
                    continue
            return 0.0
        keys = [n for n in os.listdir(cache) if len(n) == _KEY_DIR_LEN and os.path.isdir(os.path.join(cache, n))
                and all(c in "0123456789abcdef" for c in n)]
        keys.sort(key=lambda n: (last_use(n), n), reverse=True)
        for name in keys[max(keep, 0):]:
            if name in protect:
                continue
            with _try_flock(_use_lock(cache, name)) as free:
                if not free:
                    continue  # a bake builds on it right now
                unmount_below(os.path.join(cache, name))
                _rm(os.path.join(cache, name))
                os.unlink(_use_lock(cache, name))
                removed.append("sha256:" + name)
        for name in os.listdir(cache):  # use locks of bases that are gone (a bake that lost its base to a prune)
            if name.startswith(".use-") and name.endswith(".lock") and not os.path.isdir(os.path.join(cache, name[5:-5])):
                with _try_flock(os.path.join(cache, name)) as free:
                    if free:
                        os.unlink(os.path.join(cache, name))
    return removed


@contextlib.contextmanager
def overlay(lower, scratch):
    """Mount an overlay of read-only ``lower`` with a fresh upper dir under ``scratch``; yields
    (merged, upper). What is written to ``merged`` lands in ``upper``; ``lower`` never changes."""
    upper, work, merged = (os.path.join(scratch, n) for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        os.mkdir(d, 0o755)
    run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work),
         merged], "mounting the image root (overlayfs; needs root)")
    try:
        yield merged, upper
    finally:
        run(["umount", merged], "unmounting the image root")


def _unescape_mount(field):
    """A mount point as /proc/self/mountinfo spells it (octal escapes for space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_below(path):
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            points = [_unescape_mount(line.split(" ")[4]) for line in f if len(line.split(" ")) > 4]
    except OSError:
        return []
    return sorted(set(m for m in points if m == path or m.startswith(path + os.sep)), key=len, reverse=True)


def unmount_below(path):
    """Detach (lazily) every mount point at or below ``path``, deepest first: the overlay of a killed bake,
    the /dev, /proc and /sys a killed mmdebstrap left in its chroot. Returns the mount points detached."""
    done = []
    for dummy in range(64):  # one detach per round, deepest first, until none is left (stacked mounts too)
        below = mounts_below(path)
        if not below:
            return done
        run(["umount", "-l", below[0]], "detaching %s (left mounted by a killed bake)" % below[0])
        done.append(below[0])
    raise OciError("%s still has mounts below it after %d detaches (%s); unmount them by hand, then run again"
                   % (path, len(done), ", ".join(mounts_below(path)[:5])))


def _is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def write_layer(upper, out, mtime):
    """Write the overlay upper dir ``upper`` as a reproducible OCI layer tar at ``out``."""
    def entries():
        for dirpath, dirnames, filenames in os.walk(upper):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, upper)
            for name in sorted(dirnames + filenames):
                rel = os.path.normpath(os.path.join(rel_dir, name))
                yield rel, os.path.join(dirpath, name)

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in sorted(entries()):
            st = os.lstat(full)
            if _is_whiteout(st):
                info = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + os.path.basename(rel)))
                info.mode = 0o644
                fileobj = None
            else:
                tar.inodes = {}  # hard links are stored as files: no dependence on the walk order
                info = tar.gettarinfo(full, arcname=rel)
                fileobj = full if info.isreg() else None
            info.mtime = int(mtime)
            info.uname = info.gname = ""
            info.pax_headers = {}
            if fileobj:
                with open(fileobj, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if stat.S_ISDIR(st.st_mode):
                try:
                    opaque = os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False)
                except OSError:
                    opaque = None
                if opaque == b"y":
                    wh = tarfile.TarInfo(os.path.join(rel, ".wh..wh..opq"))
                    wh.mtime, wh.mode = int(mtime), 0o644
                    tar.addfile(wh)


def read_manifest(layout, tag):
    """(manifest, config) of the image tagged ``tag`` in ``layout``."""
    index = _read_json(os.path.join(layout, "index.json"))
    for desc in index.get("manifests", []):
        if (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = _read_json(_blob(layout, desc["digest"]))
            config = _read_json(_blob(layout, manifest["config"]["digest"]))
            manifest["_digest"] = desc["digest"]
            return manifest, config
    raise OciError("OCI layout %s has no image tagged %r" % (layout, tag))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise OciError("cannot read %s: %s" % (path, exc))


def _blob(layout, digest):
    algo, dummy, hexd = str(digest).partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise OciError("OCI layout %s refers to a malformed digest %r" % (layout, digest))
    return os.path.join(layout, "blobs", "sha256", hexd)


def verify_layout(layout, tag):
    """Check every blob the image tagged ``tag`` needs against its digest and size; return
    (manifest digest, manifest, config). Raises :class:`OciError` naming the first mismatch."""
    index = _read_json(os.path.join(layout, "index.json"))
    descs = [d for d in index.get("manifests", [])
             if (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if len(descs) != 1:
        raise OciError("OCI layout %s has %d images tagged %r, expected 1" % (layout, len(descs), tag))
    todo = [descs[0]]
    manifest = config = None
    while todo:
        desc = todo.pop(0)
        path = _blob(layout, desc["digest"])
        if not os.path.isfile(path):
            raise OciError("OCI layout %s is missing blob %s" % (layout, desc["digest"]))
        if os.path.getsize(path) != desc.get("size") or "sha256:" + sha256_file(path) != desc["digest"]:
            raise OciError("OCI layout %s: blob %s does not match its digest or size (modified after baking)"
                           % (layout, desc["digest"]))
        if manifest is None:
            manifest = _read_json(path)
            todo.append(manifest["config"])
            todo.extend(manifest.get("layers", []))
        elif config is None:
            config = _read_json(path)
    return descs[0]["digest"], manifest, config


def _link_tree(src, dst):
    """Copy an OCI layout with hard links for the blobs (blobs are immutable, named by digest)."""
    os.makedirs(os.path.join(dst, "blobs", "sha256"))
    for name in ("oci-layout", "index.json"):
        shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    for name in os.listdir(os.path.join(src, "blobs", "sha256")):
        s, d = os.path.join(src, "blobs", "sha256", name), os.path.join(dst, "blobs", "sha256", name)
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)


def build_image(base, layer_tar, layout, created, created_by, config):
    """Base layout + ``layer_tar`` -> a new layout at ``layout`` with one image tagged :data:`REF_TAG`.

    ``config``: ``user``, ``entrypoint`` (list), ``env`` (dict), ``workdir``, ``stop_signal``, ``ports``
    (list of "8080/tcp"), ``labels`` (dict). Returns (manifest digest, manifest, config)."""
    _link_tree(os.path.join(base["path"], "layout"), layout)
    image = layout + ":" + BASE_TAG
    run(["umoci", "raw", "add-layer", "--image", image, "--tag", REF_TAG, "--history.created", created,
         "--history.created_by", created_by, layer_tar], "adding the app layer")
    cmd = ["umoci", "config", "--image", layout + ":" + REF_TAG, "--no-history", "--created", created,
           "--clear=config.entrypoint", "--clear=config.cmd", "--clear=config.env", "--clear=config.labels",
           "--config.user", config["user"], "--config.workingdir", config["workdir"],
           "--config.stopsignal", config["stop_signal"]]
    for arg in config["entrypoint"]:
        cmd += ["--config.entrypoint", arg]
    for key in sorted(config["env"]):
        cmd += ["--config.env", "%s=%s" % (key, config["env"][key])]
    for port in config.get("ports", ()):
        cmd += ["--config.exposedports", port]
    for key in sorted(config["labels"]):
        cmd += ["--config.label", "%s=%s" % (key, config["labels"][key])]
    run(cmd, "writing the image configuration")
    run(["umoci", "remove", "--image", image], "dropping the base tag")
    run(["umoci", "gc", "--layout", layout], "umoci gc")
    return verify_layout(layout, REF_TAG)
