# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image store and the bake engine (plain Python; the image_bake module is a thin shell).

Words: an *image* is the baked, immutable result for one artifact version.

Store layout (``store`` defaults to ``$PHOENIX_STATE_DIR/images``)::

    <store>/<target>/<artifact>/<image name>/
        image.json      artifact, version, git hash, build id, input digest,
                        content digest, created_at, ... (the image's identity)
        manifest.json   what Packer recorded (manifest post-processor)
        rootfs/         the image root (local target only)

A local bundle is made read-only once baked. Identity:

* **input digest** (sha256 over the Packer template dir, the roles, the
  artifact source and the bake parameters): the cache key. Same input digest
  -> cache hit, no Packer run.
* **content digest** (sha256 over ``rootfs``: paths, file contents, the
  permission bits of every file and directory, symlink targets) is the image
  id. :func:`verify_image` recomputes it; anything that deploys a local image
  must call it, and a bundle whose files or modes changed is refused
  (:class:`TamperError`). Bundles baked before modes were part of the digest
  record no ``content_scheme`` and keep their old digest (scheme 1: only the
  executable bit), so the releases that name them stay valid.
* What a bundle is comes from its place in the store, never from its own
  image.json: ``<target>/<artifact>/<name>`` must agree with what image.json
  claims (target, artifact, name, version), and the entrypoint is fixed by the
  layout (``rootfs/opt/phoenix/<artifact>/bin/run``).
* An image name never points at other content: baking different inputs under
  an existing name is an :class:`ImmutabilityError` (bake a new version).

Retention: keep the newest N images per artifact plus every image that is live
in some environment (given as a list of names or digests); :meth:`ImageStore.cleanup`
removes the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time

from ansible_collections.phoenix.deploy.plugins.module_utils import oci, versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.packer_runner import (
    PackerError, PackerRunner, template_variables,
)

__all__ = [
    "ImageError", "TamperError", "ImmutabilityError", "ImageStore", "BakeRequest", "verify_image",
    "content_digest", "input_digest", "bake", "default_store", "TARGETS", "validate_fault",
]

TARGETS = {
    # target -> the Packer build to run (``-only``); oci images are built without Packer (module oci)
    "local": "local.null.local",
    "gce": "gce.googlecompute.gce",
    "oci": None,
}
# vars an oci bake takes (the roles' inputs; no Packer variables)
OCI_VARS = frozenset(("fault", "entrypoint", "source_url"))
OCI_LAYOUT = "layout"
# where the service runs inside an OCI image
OCI_PYTHON = "/usr/bin/python3"
# environment defaults of an OCI image (the platform injects PORT, BIND, DB_* ... at deploy time)
OCI_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PORT": "8080",
    "BIND": "0.0.0.0",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# Debian packages of the base layer besides the essential set, when roles/base_image has no base_packages
OCI_BASE_PACKAGES = ("python3", "python3-psycopg", "ca-certificates")
# Packer variables the engine sets itself; callers may not pass them in ``vars``.
RESERVED_VARS = frozenset(("artifact", "version", "image_name", "source_dir", "input_digest", "manifest_path",
                           "image_root", "git_hash", "build_id"))
# Packer variables that describe the machine, not the image; not part of the input digest.
UNDIGESTED_VARS = frozenset(("ansible_playbook",))
ROLES = ("base_image", "app_service")
TEMPLATE = os.path.join("packer", "image.pkr.hcl")
IMAGE_JSON = "image.json"
SCHEMA = 1
# Content digest definition of new bakes: 2 = paths, contents, permission bits, symlink targets.
# 1 (bundles whose image.json has no content_scheme) = paths, contents, executable bit, link targets.
CONTENT_SCHEME = 2
CONTENT_SCHEMES = (1, 2)
# Debris a killed bake or promotion may leave in an artifact dir (cleaned under the artifact's lock).
STAGING_PREFIX = ".staging-"
OCI_BASE_DIR = ".oci-base"  # <store>/.oci-base/<key>/: cached base layers of oci bakes
PROMOTE_PREFIX = ".promote-"
OLD_PREFIX = ".old-"
_IGNORED_NAMES = re.compile(r"^(__pycache__|\..*|.*\.py[co])$")
_VAR_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Characters that may not appear in paths handed to Packer's shell-local step.
_UNSAFE_PATH_RE = re.compile(r"['\"`$\\\n\r;&|<>*?!{}()\[\]]")


class ImageError(PhoenixError):
    """A bake or store error. ``param`` (also ``option``, its older name) names the module
    option at fault, if any."""

    def __init__(self, msg, option=None, **details):
        PhoenixError.__init__(self, msg, param=option, **details)

    @property
    def option(self):
        return self.param


class TamperError(ImageError):
    """A local image's files no longer match its content digest."""


class ImmutabilityError(ImageError):
    """An image name would point at other content."""


def default_store():
    """``$PHOENIX_STATE_DIR/images``, else ``$XDG_STATE_HOME/phoenix/images`` (``~/.local/state/...``)."""
    state = os.environ.get("PHOENIX_STATE_DIR")
    if not state:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        state = os.path.join(base, "phoenix")
    return os.path.join(state, "images")


def default_python():
    """The Python a local image's service runs with: ``python3`` beside the running interpreter.

    (Not ``sys.executable`` itself: ``.venv/bin/python`` and ``.venv/bin/python3`` are the same runtime
    and must not give different input digests.)"""
    candidate = os.path.join(os.path.dirname(sys.executable), "python3")
    return candidate if os.access(candidate, os.X_OK) else sys.executable


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _walk(root, ignore=True):
    """Sorted (relpath, kind, extra) entries below root: kind d/f/l; extra = exec bit + sha | link target."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        if ignore:
            dirnames[:] = [d for d in dirnames if not _IGNORED_NAMES.match(d)]
            filenames = [f for f in filenames if not _IGNORED_NAMES.match(f)]
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                entries.append((rel, "l", os.readlink(full)))
            else:
                entries.append((rel, "d", ""))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries.append((rel, "l", os.readlink(full)))
            elif stat.S_ISREG(st.st_mode):
                entries.append((rel, "f", ("x" if st.st_mode & 0o111 else "-") + oci.sha256_file(full)))
            else:
                entries.append((rel, "?", "%o" % stat.S_IFMT(st.st_mode)))
    entries.sort()
    return entries


def _tree_hash(h, label, root, ignore=True):
    h.update(("tree %s\n" % label).encode())
    for rel, kind, extra in _walk(root, ignore=ignore):
        h.update(("%s %s %s\n" % (kind, rel, extra)).encode("utf-8", "surrogateescape"))


def _walk_modes(root):
    """Sorted (relpath, kind, extra) entries of root itself and everything below it: extra = permission
    bits (octal) + sha256 for files, permission bits for directories, the target for symlinks."""
    entries = []
    st = os.lstat(root)
    entries.append((".", "d", "%04o" % stat.S_IMODE(st.st_mode)))
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            mode = "%04o" % stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append((rel, "l", os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append((rel, "d", mode))
            elif stat.S_ISREG(st.st_mode):
                entries.append((rel, "f", mode + " " + oci.sha256_file(full)))
            else:
                entries.append((rel, "?", "%o" % st.st_mode))
    entries.sort()
    return entries


def content_digest(rootfs, scheme=CONTENT_SCHEME):
    """sha256 over an image root: every path, file content, the permission bits of every file and
    directory (setuid/setgid/sticky, read, write and execute for owner, group and others) and every
    symlink target.

    Owners and timestamps are not content. The bundle is made read-only before its digest is taken,
    so giving a file or directory back a write bit (or any other mode change) is a change of content.
    ``scheme=1`` is the definition of older bundles (executable bit only)."""
    if scheme == 1:
        h = hashlib.sha256(b"phoenix-content-v1\n")
        _tree_hash(h, "rootfs", rootfs, ignore=False)
        return "sha256:" + h.hexdigest()
    if scheme != 2:
        raise ImageError("unknown content digest scheme %r" % (scheme,))
    h = hashlib.sha256(b"phoenix-content-v2\n")
    for rel, kind, extra in _walk_modes(rootfs):
        h.update(("%s %s %s\n" % (kind, rel, extra)).encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


def entrypoint(artifact):
    """The entrypoint of a local image, relative to the bundle: fixed by the layout, never read from
    image.json."""
    return os.path.join("rootfs", "opt", "phoenix", artifact, "bin", "run")


def input_digest(project_dir, source, params):
    """sha256 over the Packer template directory, the roles, the artifact source and the bake parameters."""
    h = hashlib.sha256(b"phoenix-input-v1\n")
    _tree_hash(h, "packer", os.path.join(project_dir, "packer"))
    for role in ROLES:
        _tree_hash(h, "role " + role, os.path.join(project_dir, "roles", role))
    _tree_hash(h, "source", source)
    h.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    return "sha256:" + h.hexdigest()


def _make_read_only(path):
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) & ~0o222)
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o222)


def _make_writable(path):
    """Owner write (and, for directories, search) permission back, e.g. before removal.

    Only write bits for files: the executable bit is content."""
    if not os.path.lexists(path) or os.path.islink(path):
        return
    os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) | 0o700)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o200)


def _rmtree(path):
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=False)


def _write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def read_image_json(path):
    try:
        with open(os.path.join(path, IMAGE_JSON), "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise TamperError("%s is not an image bundle: %s cannot be read (%s)" % (path, IMAGE_JSON, exc))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TamperError("%s: %s has an unknown format" % (path, IMAGE_JSON))
    return doc


def verify_image(path, expected_digest=None, target=None, artifact=None):
    """Check a baked image before it is used; return its image.json document.

    What the bundle is comes from where it lies: ``<store>/<target>/<artifact>/<name>`` (or the given
    ``target`` / ``artifact``, for a copy outside a store). Raises :class:`TamperError` when image.json
    is unreadable or claims another target, artifact, name, version or entrypoint than that place,
    or (local images) when the files under ``rootfs`` or their modes no longer match the content
    digest, or when the digest differs from ``expected_digest`` (e.g. the one a release recorded).
    Anything that deploys an image must call this first.
    """
    path = os.path.abspath(path)
    name = os.path.basename(path)
    artifact = artifact or os.path.basename(os.path.dirname(path))
    target = target or os.path.basename(os.path.dirname(os.path.dirname(path)))
    doc = read_image_json(path)
    if doc.get("name") != name:
        raise TamperError("image %s: image.json names %r; the bundle was renamed or image.json replaced"
                          % (path, doc.get("name")))
    if target not in TARGETS:
        raise TamperError("image %s does not lie in an image store (<store>/<target>/<artifact>/<name>, "
                          "target one of %s)" % (path, ", ".join(sorted(TARGETS))))
    for key, want in (("target", target), ("artifact", artifact)):
        if doc.get(key) != want:
            raise TamperError("image %s: image.json claims %s %r, but the bundle lies in the store as %s %r; "
                              "refusing it" % (path, key, doc.get(key), key, want))
    try:
        claimed = versioning.image_name(str(doc.get("version")), artifact)
    except versioning.VersionError:
        claimed = None
    if claimed != name:
        raise TamperError("image %s: image.json claims version %r, which is not the version of image %s; "
                          "refusing it" % (path, doc.get("version"), name))
    if target == "local":
        entry = entrypoint(artifact)
        if doc.get("entrypoint") not in (None, entry):
            raise TamperError("image %s: image.json claims entrypoint %r; the entrypoint of a local image is "
                              "always %s; refusing it" % (path, doc.get("entrypoint"), entry))
        rootfs = os.path.join(path, "rootfs")
        if not os.path.isdir(rootfs) or os.path.islink(rootfs):
            raise TamperError("image %s has no rootfs directory" % path)
        scheme = doc.get("content_scheme", 1)
        if scheme not in CONTENT_SCHEMES or isinstance(scheme, bool):
            raise TamperError("image %s: image.json has an unknown content_scheme %r" % (path, scheme))
        actual = content_digest(rootfs, scheme)
        if actual != doc.get("content_digest"):
            raise TamperError("image %s was modified after baking: content digest is %s, image.json records %s; "
                              "refusing to use it. Rebake it with force=true or bake a new version."
                              % (doc.get("name"), actual, doc.get("content_digest")))
        if doc.get("id") != actual:
            raise TamperError("image %s: image.json records id %r, but its content digest is %s; refusing it"
                              % (path, doc.get("id"), actual))
    elif target == "oci":
        try:
            digest = oci.verify_layout(os.path.join(path, OCI_LAYOUT), oci.REF_TAG)[0]
        except oci.OciError as exc:
            raise TamperError("image %s was modified after baking: %s; refusing to use it. Rebake it with "
                              "force=true or bake a new version." % (doc.get("name"), exc.msg))
        if digest != doc.get("id") or digest != doc.get("manifest_digest"):
            raise TamperError("image %s: its layout holds manifest %s, image.json records %s; refusing it"
                              % (path, digest, doc.get("id")))
    if expected_digest and expected_digest != doc.get("id"):
        raise TamperError("image %s has digest %s, expected %s" % (doc.get("name"), doc.get("id"), expected_digest))
    return doc


def _verify_baked(path, expected_digest=None):
    """:func:`verify_image` for the image a bake request names: a refusal names ``version`` (rebake it
    with ``force``, or bake a new version)."""
    try:
        return verify_image(path, expected_digest)
    except TamperError as exc:
        if exc.param is None:
            exc.param = "version"
        raise


def validate_fault(fault):
    """A fault baked into an image: {error_rate: 0..1, latency_ms: 0..60000, crash_at_start: bool}."""
    allowed = {"error_rate", "latency_ms", "crash_at_start"}
    if fault in (None, "", {}):
        return {}
    if isinstance(fault, str):
        try:
            fault = json.loads(fault)
        except ValueError:
            fault = None
    if not isinstance(fault, dict) or not set(fault) <= allowed:
        raise ImageError("vars.fault must be a mapping with keys from %s, e.g. {error_rate: 0.5}, "
                         "{latency_ms: 800} or {crash_at_start: true}; got %r" % (sorted(allowed), fault), "vars")
    out = {}
    if "error_rate" in fault:
        rate = fault["error_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ImageError("vars.fault.error_rate must be a number from 0 to 1, got %r" % (rate,), "vars")
        out["error_rate"] = float(rate)
    if "latency_ms" in fault:
        lat = fault["latency_ms"]
        if isinstance(lat, bool) or not isinstance(lat, int) or not 0 <= lat <= 60000:
            raise ImageError("vars.fault.latency_ms must be an integer from 0 to 60000, got %r" % (lat,), "vars")
        out["latency_ms"] = lat
    if "crash_at_start" in fault:
        if not isinstance(fault["crash_at_start"], bool):
            raise ImageError("vars.fault.crash_at_start must be true or false", "vars")
        out["crash_at_start"] = fault["crash_at_start"]
    return out


def retention_plan(docs, keep, live=(), protect=()):
    """(kept, removed) of ``docs`` (newest first): the newest ``keep`` plus every doc whose name, id or
    ``content_digest`` is in ``live`` or ``protect``. Shared by image stores and registries."""
    if keep is None or isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ImageError("retain must be 0 or more, got %r" % (keep,), "retain")
    live = set(live or ()) | set(protect or ())
    kept, removed = [], []
    for i, doc in enumerate(docs):
        ids = {doc.get("name"), doc.get("id"), doc.get("content_digest")}
        if i < keep or ids & live:
            kept.append(doc)
        else:
            removed.append(doc)
    return kept, removed


class ImageStore(object):
    """Local record of baked images, one directory per image (see the module docstring)."""

    def __init__(self, root):
        self.root = os.path.abspath(os.path.expanduser(root))

    def artifact_dir(self, target, artifact):
        return os.path.join(self.root, target, artifact)

    def path(self, target, artifact, name):
        return os.path.join(self.artifact_dir(target, artifact), name)

    def get(self, target, artifact, name):
        """image.json of an existing image (not verified), or None."""
        p = self.path(target, artifact, name)
        if not os.path.isdir(p):
            return None
        doc = read_image_json(p)
        doc["path"] = p
        return doc

    def images(self, target, artifact):
        """image.json of every image of an artifact, newest first (unreadable ones flagged ``broken``)."""
        adir = self.artifact_dir(target, artifact)
        out = []
        if not os.path.isdir(adir):
            return out
        for name in os.listdir(adir):
            p = os.path.join(adir, name)
            if name.startswith(".") or not os.path.isdir(p):
                continue
            try:
                doc = read_image_json(p)
            except TamperError as exc:
                doc = {"name": name, "broken": str(exc), "created_at": ""}
            doc["path"] = p
            out.append(doc)
        out.sort(key=lambda d: (d.get("created_at") or "", d.get("name")), reverse=True)
        return out

    def find(self, target, artifact, input_digest_):
        for doc in self.images(target, artifact):
            if doc.get("input_digest") == input_digest_:
                return doc
        return None

    @contextlib.contextmanager
    def lock(self, target, artifact, wait=True):
        """Serialise bakes and promotions of one artifact (flock; released when the process dies).

        With ``wait=False`` yields False at once when another process holds the lock, else True."""
        adir = self.artifact_dir(target, artifact)
        os.makedirs(adir, exist_ok=True)
        fd = os.open(os.path.join(adir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def has_debris(self, target, artifact):
        adir = self.artifact_dir(target, artifact)
        return os.path.isdir(adir) and any(
            n.startswith((STAGING_PREFIX, PROMOTE_PREFIX, OLD_PREFIX)) for n in os.listdir(adir))

    def clean_debris(self, target, artifact):
        """What a killed bake or promotion of this artifact left behind; call with :meth:`lock` held.

        A forced rebake killed between its two renames left the old bundle at ``.old-<name>`` and
        nothing at ``<name>``: it is put back. Everything else (``.staging-*`` dirs of unfinished bakes
        or of a finished swap, ``.promote-*`` dirs of unfinished promotions, ``.old-*`` backups whose
        bundle is in place) is removed. Returns the names it acted on."""
        adir = self.artifact_dir(target, artifact)
        done = []
        for name in sorted(os.listdir(adir)) if os.path.isdir(adir) else ():
            full = os.path.join(adir, name)
            if name.startswith(OLD_PREFIX) and len(name) > len(OLD_PREFIX):
                final = os.path.join(adir, name[len(OLD_PREFIX):])
                if not os.path.lexists(final):
                    os.rename(full, final)
                    done.append(name)
                    continue
            if name.startswith((STAGING_PREFIX, PROMOTE_PREFIX, OLD_PREFIX)):
                if os.path.isdir(full) and not os.path.islink(full):
                    oci.unmount_below(full)  # the overlay of a killed oci bake: never delete through it
                    _rmtree(full)
                else:
                    os.unlink(full)
                done.append(name)
        return done

    def retention_plan(self, target, artifact, keep, live=(), protect=()):
        """(kept, removed) image docs: keep the newest ``keep`` plus every live or protected image.

        ``live`` lists images live in some environment, by name or digest."""
        return retention_plan(self.images(target, artifact), keep, live, protect)

    def cleanup(self, target, artifact, keep, live=(), protect=(), check_mode=False):
        """Remove what :meth:`retention_plan` does not keep; return the removed docs."""
        kept, removed = self.retention_plan(target, artifact, keep, live, protect)
        if not check_mode:
            for doc in removed:
                _rmtree(doc["path"])
        return removed


def _repository_url(project_dir):
    """``repository`` of the collection's galaxy.yml (the source of the images it bakes), or ''."""
    try:
        with open(os.path.join(project_dir, "galaxy.yml"), encoding="utf-8") as f:
            m = re.search(r"^repository:\s*['\"]?([^'\"\s]+)", f.read(), re.M)
    except OSError:
        return ""
    return m.group(1) if m else ""


def _base_packages(project_dir):
    """The runtime packages of roles/base_image (its defaults' list of Debian packages), else
    :data:`OCI_BASE_PACKAGES`: one list for VM images and the OCI base layer."""
    path = os.path.join(project_dir, "roles", "base_image", "defaults", "main.yml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return list(OCI_BASE_PACKAGES)
    m = re.search(r"^(base_packages|base_image_packages):\s*\n((?:\s+-\s*\S+\s*\n)+)", text, re.M)
    if not m:
        return list(OCI_BASE_PACKAGES)
    return [line.strip()[1:].strip() for line in m.group(2).splitlines() if line.strip()]


class BakeRequest(object):
    """Validated bake inputs. Raises :class:`ImageError` naming the option at fault; writes nothing."""

    def __init__(self, artifact, version, source, target="local", variables=None, store=None, project_dir=None,
                 force=False, python=None, template=None):
        try:
            self.artifact = versioning.check_artifact(artifact, "artifact")
        except versioning.VersionError as exc:
            raise ImageError(str(exc), "artifact")
        try:
            self.version = versioning.parse(version, "version")
        except versioning.VersionError as exc:
            raise ImageError(str(exc), "version")
        self.name = versioning.image_name(self.version, self.artifact)
        if target not in TARGETS:
            raise ImageError("target %r is not supported; use one of: %s" % (target, ", ".join(sorted(TARGETS))),
                             "target")
        self.target = target
        self.force = bool(force)

        project_dir = project_dir or os.environ.get("PHOENIX_ROOT")
        if not project_dir:
            raise ImageError("project_dir is not set and PHOENIX_ROOT is not in the environment: point it at the "
                             "phoenix.deploy checkout or installed collection (the directory holding packer/ and "
                             "roles/)", "project_dir")
        self.project_dir = self._safe_path(project_dir, "project_dir")
        self.template = self._safe_path(template or os.path.join(self.project_dir, TEMPLATE), "template")
        if not os.path.isfile(self.template):
            raise ImageError("project_dir %s has no %s: point project_dir at the phoenix.deploy checkout or "
                             "installed collection" % (self.project_dir, TEMPLATE), "project_dir")
        for role in ROLES:
            if not os.path.isdir(os.path.join(self.project_dir, "roles", role)):
                raise ImageError("project_dir %s has no roles/%s" % (self.project_dir, role), "project_dir")

        if not source:
            raise ImageError("source is required: the directory holding the artifact to install, "
                             "e.g. examples/catalog", "source")
        self.source = self._safe_path(source, "source")
        if not os.path.isdir(self.source):
            raise ImageError("source %s is not a directory: give the directory holding the artifact to install"
                             % self.source, "source")
        self.store = ImageStore(self._safe_path(store or default_store(), "store"))
        entry = (variables or {}).get("entrypoint") or "%s.py" % self.artifact
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$", str(entry)) or ".." in str(entry).split("/"):
            raise ImageError("vars.entrypoint %r must be a relative path inside source (letters, digits, '_', '.', "
                             "'-', '/'; no '..')" % (entry,), "vars")
        if not os.path.isfile(os.path.join(self.source, str(entry))):
            raise ImageError("source %s has no %s, the script that starts %s: point source at the artifact's "
                             "directory or set vars.entrypoint" % (self.source, entry, self.artifact), "source")

        declared = set(OCI_VARS) if target == "oci" else set(template_variables(self.template))
        self.variables = {}
        for key, value in sorted((variables or {}).items()):
            if not isinstance(key, str) or not _VAR_NAME_RE.match(key):
                raise ImageError("vars key %r is not allowed: use lowercase letters, digits and '_'" % (key,), "vars")
            if key in RESERVED_VARS:
                raise ImageError("vars.%s is set by image_bake itself; use the %s option instead"
                                 % (key, {"source_dir": "source", "image_root": "store"}.get(key, key)), "vars")
            if key not in declared:
                raise ImageError("vars.%s is not a variable of %s; allowed: %s"
                                 % (key, "target oci" if target == "oci" else self.template,
                                    ", ".join(sorted(declared - RESERVED_VARS))), "vars")
            if key == "fault":
                value = json.dumps(validate_fault(value), sort_keys=True)
            elif isinstance(value, (dict, list)):
                raise ImageError("vars.%s must be a string, number or boolean" % key, "vars")
            elif isinstance(value, bool):
                value = "true" if value else "false"
            else:
                value = "" if value is None else str(value)
            if "\n" in value or "\r" in value:
                raise ImageError("vars.%s must be a single line" % key, "vars")
            self.variables[key] = value
        self.variables.setdefault("fault", "{}")
        self.oci = None
        if target == "oci":
            self.oci = self._oci_inputs(python)
        elif target == "local":
            self.variables.setdefault("python", python or default_python())
            self.variables["python"] = self._safe_path(self.variables["python"], "vars", "vars.python")
            playbook = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable),
                                                                        "ansible-playbook")
            self.variables.setdefault("ansible_playbook", playbook)
            self.variables["ansible_playbook"] = self._safe_path(self.variables["ansible_playbook"], "vars",
                                                                 "vars.ansible_playbook")
        elif not self.variables.get("project_id"):
            raise ImageError("target gce needs vars.project_id (the GCP project to bake in)", "vars")

        self.git_hash = self.version.git_hash or ""
        self.build_id = self.version.build_id or ""
        self.params = {
            "artifact": self.artifact, "version": str(self.version), "name": self.name, "target": self.target,
            "vars": dict((k, v) for k, v in self.variables.items() if k not in UNDIGESTED_VARS),
        }
        if self.oci:
            self.params["oci"] = dict((k, v) for k, v in self.oci.items() if k not in ("base_spec", "ansible"))
        self.input_digest = input_digest(self.project_dir, self.source, self.params)

    def _oci_inputs(self, python):
        """What an oci bake needs besides the roles; checked before anything is written."""
        if os.geteuid() != 0:
            raise ImageError("target oci needs root: it runs mmdebstrap in root mode and mounts an overlay for the "
                             "roles; run as root, or use target local", "target")
        missing = oci.missing_tools()
        if missing:
            raise ImageError("target oci needs %s on PATH: apt-get install -y umoci mmdebstrap (make setup installs "
                             "them)" % ", ".join(missing), "target")
        epoch = os.environ.get("SOURCE_DATE_EPOCH", "0").strip() or "0"
        if not epoch.isdigit() or len(epoch) > 12:
            raise ImageError("environment variable SOURCE_DATE_EPOCH must be seconds since 1970 (digits), got %r; "
                             "it sets the created time of oci images" % epoch, "SOURCE_DATE_EPOCH")
        try:
            tag = versioning.oci_tag(self.version)
        except versioning.VersionError as exc:
            raise ImageError(str(exc), "version")
        source_url = self.variables.get("source_url") or _repository_url(self.project_dir)
        if source_url and not re.match(r"^[a-z][a-z0-9+.-]*://[^\s'\"`$\\]+$", source_url):
            raise ImageError("vars.source_url %r must be a URL (scheme://...)" % (source_url,), "vars")
        spec = oci.BaseSpec(_base_packages(self.project_dir))
        playbook = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable),
                                                                    "ansible-playbook")
        return {"base_spec": spec, "base": spec.key(), "epoch": int(epoch), "tag": tag, "env": OCI_ENV,
                "python": OCI_PYTHON, "source_url": source_url, "uid": spec.uid,
                "ansible": {"python": python or default_python(), "playbook": playbook}}

    @staticmethod
    def _safe_path(path, option, label=None):
        label = label or option
        if not isinstance(path, str) or not path:
            raise ImageError("%s must be a path" % label, option)
        if _UNSAFE_PATH_RE.search(path):
            raise ImageError("%s %r contains quotes or shell metacharacters; use a plain path" % (label, path),
                             option)
        return os.path.abspath(os.path.expanduser(path))

    def packer_vars(self, image_root=""):
        v = dict(self.variables)
        v.update({"artifact": self.artifact, "version": str(self.version), "image_name": self.name,
                  "source_dir": self.source, "input_digest": self.input_digest,
                  "git_hash": self.git_hash, "build_id": self.build_id})
        if self.target == "local":
            v["image_root"] = image_root
        return v

    def describe(self):
        return {"artifact": self.artifact, "version": str(self.version), "name": self.name, "target": self.target,
                "input_digest": self.input_digest,
                "path": self.store.path(self.target, self.artifact, self.name) if self.target != "gce" else None}


def _result(doc, cache_hit, changed, **extra):
    image = dict((k, doc.get(k)) for k in ("name", "id", "artifact", "version", "target", "input_digest",
                                           "content_digest", "created_at", "git_hash", "build_id", "fault"))
    image["path"] = doc.get("path")
    image["digest"] = doc.get("content_digest") or doc.get("id")
    if doc.get("target") == "oci":
        image["oci"] = dict(doc.get("oci") or {}, layout=os.path.join(doc["path"], OCI_LAYOUT)
                            if doc.get("path") else None)
    out = {"changed": changed, "cache_hit": cache_hit, "image": image, "packer_ran": False}
    out.update(extra)
    return out


def bake(req, check_mode=False, runner=None, retain=None, live=(), cleanup=False):
    """Bake ``req`` (a :class:`BakeRequest`) unless an image with its input digest exists.

    Returns ``{changed, cache_hit, image: {...}, packer_ran, removed, duration}``.
    """
    t0 = time.monotonic()
    store = req.store
    if not check_mode and store.has_debris(req.target, req.artifact):
        # debris of a killed bake or promotion; skipped while another one holds the lock (it cleans)
        with store.lock(req.target, req.artifact, wait=False) as held:
            if held:
                store.clean_debris(req.target, req.artifact)
    existing = None
    try:
        existing = store.get(req.target, req.artifact, req.name)
    except TamperError:
        if not req.force:
            raise
        # A bundle whose image.json is gone or broken: force rebuilds it in place.
        existing = {"path": store.path(req.target, req.artifact, req.name), "broken": True,
                    "input_digest": req.input_digest}
    if existing is not None and existing.get("input_digest") != req.input_digest:
        raise ImmutabilityError(
            "image %s already exists with input digest %s (baked %s); these inputs give %s. An image name never "
            "points at other content: bake a new version (e.g. bump the build metadata: %s+<git hash>.b<next "
            "build id>)" % (req.name, existing.get("input_digest"), existing.get("created_at"), req.input_digest,
                            req.version.core + ("-" + ".".join(req.version.prerelease)
                                                if req.version.prerelease else "")),
            "version")

    if existing is not None and not req.force:
        _verify_baked(existing["path"])
        result = _result(existing, True, False)
    elif check_mode:
        doc = req.describe()
        doc.update({"id": existing.get("id") if existing else None, "created_at": None})
        result = _result(doc, False, True)
    else:
        with store.lock(req.target, req.artifact):
            store.clean_debris(req.target, req.artifact)
            again = None if req.force else store.get(req.target, req.artifact, req.name)
            if again is not None and again.get("input_digest") == req.input_digest:
                # another bake of the same inputs finished while we waited for the lock
                verify_image(again["path"])
                result = _result(again, True, False)
            elif again is not None:
                raise ImmutabilityError("image %s was baked with other inputs while waiting; bake a new version"
                                        % req.name, "version")
            else:
                doc = _run_bake(req, runner or PackerRunner(), existing)
                result = _result(doc, False, True, packer_ran=req.target != "oci")
                if req.target == "oci":
                    result.update(_prune_bases(store, doc))

    removed = []
    if cleanup:
        removed = store.cleanup(req.target, req.artifact, retain, live, protect=[req.name], check_mode=check_mode)
        if removed:
            result["changed"] = True
    result["removed"] = [{"name": d.get("name"), "id": d.get("id"), "path": d.get("path")} for d in removed]
    result["duration"] = round(time.monotonic() - t0, 3)
    return result


def _rename_exchange(a, b):
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


def _publish(store, req, staging, doc, existing):
    """Write ``image.json`` into the finished ``staging`` dir, make it read-only
    and move it to its final path (an atomic exchange when a forced rebake
    replaces an image); returns that path."""
    _write_json(os.path.join(staging, IMAGE_JSON), doc)
    _make_read_only(staging)
    final = store.path(req.target, req.artifact, req.name)
    if existing is not None and os.path.lexists(final):
        _swap(staging, final)
    else:
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ImmutabilityError("image %s appeared while baking; run again" % req.name)
            raise
    return final


def _swap(staging, final):
    """Put the bundle at ``staging`` in place of the one at ``final`` so that a crash at any point
    leaves the old or the new bundle at ``final`` (after :meth:`ImageStore.clean_debris`).

    Atomic exchange where the kernel has it (``staging`` then holds the old bundle, removed here or
    by the next run as a ``.staging-*`` leftover); else two renames through ``.old-<name>``, which the
    next run puts back if it finds no bundle at ``final``."""
    if not _rename_exchange(staging, final):
        backup = os.path.join(os.path.dirname(final), OLD_PREFIX + os.path.basename(final))
        if os.path.lexists(backup):
            _rmtree(backup)
        os.rename(final, backup)
        os.rename(staging, final)
        staging = backup
    _rmtree(staging)


def _new_staging(req):
    """A fresh 0755 staging dir beside the artifact's images (``.staging-*``:
    debris the next bake under the artifact lock removes if this one dies)."""
    adir = req.store.artifact_dir(req.target, req.artifact)
    os.makedirs(adir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="%s%s-" % (STAGING_PREFIX, req.name), dir=adir)
    os.chmod(staging, 0o755)
    return staging


def _run_bake(req, runner, existing):
    if req.target == "oci":
        return _run_oci_bake(req, existing)
    store = req.store
    staging = _new_staging(req)
    try:
        rootfs = os.path.join(staging, "rootfs")
        manifest_path = os.path.join(staging, "manifest.json")
        build = runner.build(req.template, TARGETS[req.target], req.packer_vars(image_root=rootfs), manifest_path)
        data = build.get("custom_data") or {}
        if data.get("input_digest") != req.input_digest or data.get("image_name") != req.name:
            raise ImageError("packer manifest %s does not describe this bake (image %r, input %r)"
                             % (manifest_path, data.get("image_name"), data.get("input_digest")))
        doc = {
            "schema": SCHEMA, "name": req.name, "artifact": req.artifact, "version": str(req.version),
            "git_hash": req.git_hash or None, "build_id": req.build_id or None, "target": req.target,
            "input_digest": req.input_digest, "created_at": _now(),
            "fault": json.loads(req.variables.get("fault") or "{}"),
            "packer": {"run_uuid": build.get("packer_run_uuid"), "builder_type": build.get("builder_type"),
                       "artifact_id": build.get("artifact_id"), "build_time": build.get("build_time"),
                       "duration": round(runner.last_duration or 0, 3)},
        }
        if req.target == "local":
            if not os.path.isdir(rootfs):
                raise ImageError("packer finished but produced no image root at %s" % rootfs)
            # modes are content: take the digest of the read-only tree the bundle keeps
            _make_read_only(rootfs)
            scheme = existing.get("content_scheme", 1) if existing and existing.get("content_digest") \
                else CONTENT_SCHEME  # a forced rebake keeps the digest definition of the image it replaces
            doc["content_scheme"] = scheme
            doc["content_digest"] = content_digest(rootfs, scheme)
            doc["id"] = doc["content_digest"]
            doc["entrypoint"] = entrypoint(req.artifact)
            doc["service"] = "rootfs/etc/phoenix/%s/service.json" % req.artifact
        else:
            doc["content_digest"] = None
            doc["id"] = build.get("artifact_id")
        if existing is not None and existing.get("content_digest") and doc["content_digest"] != existing.get(
                "content_digest"):
            raise ImmutabilityError("rebuilding image %s (force) gave content digest %s, but the image was baked "
                                    "as %s: the build is not reproducible and the name may not change content; "
                                    "bake a new version instead" % (req.name, doc["content_digest"],
                                                                    existing["content_digest"]), "force")
        doc["path"] = _publish(store, req, staging, doc, existing)
        staging = None
        verify_image(doc["path"], doc["id"] if req.target == "local" else None)
        return doc
    except PackerError as exc:
        raise ImageError(exc.msg)
    finally:
        if staging and os.path.lexists(staging):
            _rmtree(staging)


def _prune_bases(store, doc):
    """After an oci bake (under its artifact lock): drop cached base layers beyond the
    :data:`oci.BASES_KEPT` most recently used, never the one just used nor one another bake holds.
    A failure here does not fail the bake it follows: it is returned as a warning."""
    try:
        return {"pruned_bases": oci.prune_bases(os.path.join(store.root, OCI_BASE_DIR), oci.BASES_KEPT,
                                                protect=[doc["oci"]["base_key"]])}
    except (oci.OciError, OSError) as exc:
        return {"pruned_bases": [], "warnings": ["cached base layers were not pruned: %s"
                                                 % (getattr(exc, "msg", None) or exc)]}


def _registry():
    """The registry client, imported when an image is pushed: it brings ansible's URL and TLS
    stack (about 12 MB), which resolving and verifying an image (every rollout) does not need."""
    from ansible_collections.phoenix.deploy.plugins.module_utils import registry
    return registry


def open_registry(url, repository, target, param="registry"):
    """The registry an oci bake is pushed to, checked before anything is baked: a URL, a repository
    name (``repository``) and a registry that answers. Returns (Registry, repository)."""
    if target != "oci":
        raise ImageError("%s is only for target oci (an OCI image is pushed there); target %s images are not "
                         "pushed" % (param, target), param)
    registry = _registry()
    try:
        registry.check_repo(repository, "repository")
        reg = registry.Registry(url, param=param)
        reg.ping()
    except registry.RegistryError as exc:
        raise ImageError(exc.msg, exc.param or param)
    return reg, repository


def push(result, reg, repository, check_mode=False):
    """Push a baked (or cached) OCI image to ``reg`` as ``repository:<version tag>``, digests preserved.

    Tags are immutable: a tag that points at another digest fails, naming both (nothing is written).
    Returns {reference (``host/repository@sha256:...``), pushed (whether blobs or a tag were written)}."""
    image = result["image"]
    digest = image["id"]
    reference = reg.reference(repository, digest=digest) if digest else None
    if check_mode:
        return {"reference": reference, "pushed": False}
    _verify_baked(image["path"], digest)
    registry = _registry()
    try:
        pushed = reg.push(image["oci"]["layout"], repository, image["oci"]["tag"], src_tag=oci.REF_TAG,
                          param="version")
    except registry.RegistryError as exc:
        raise ImageError(exc.msg, exc.param or "registry")
    return {"reference": pushed.ref, "pushed": bool(pushed.changed)}


def _run_roles(req, image_root):
    """The bake playbook (roles base_image + app_service) with a local connection into ``image_root``,
    as Packer's shell-local step runs it for local images; the service will run ``OCI_PYTHON``."""
    extra = {"app_service_artifact": req.artifact, "app_service_version": str(req.version),
             "app_service_image_name": req.name, "app_service_source": req.source,
             "app_service_entrypoint": req.variables.get("entrypoint", ""),
             "app_service_fault": json.loads(req.variables.get("fault") or "{}"),
             "app_service_git_hash": req.git_hash, "app_service_build_id": req.build_id,
             "app_service_input_digest": req.input_digest,
             "base_image_root": image_root, "app_service_image_root": image_root,
             "base_image_runtime_python": OCI_PYTHON, "app_service_runtime_python": OCI_PYTHON,
             "base_image_service_user": oci.SERVICE_USER, "app_service_user": oci.SERVICE_USER,
             "ansible_python_interpreter": req.oci["ansible"]["python"]}
    packer_dir = os.path.dirname(req.template)
    # the bake's own settings and roles, whatever the caller's (as packer/image.pkr.hcl does)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(packer_dir, "ansible.cfg"),
               ANSIBLE_ROLES_PATH=os.path.join(req.project_dir, "roles"))
    oci.run([req.oci["ansible"]["playbook"], "-i", "localhost,", "-c", "local", os.path.join(packer_dir, "bake.yml"),
             "-e", json.dumps(extra)], "running the roles base_image and app_service into the image root", env=env)


def _oci_config(req, service, base):
    """The OCI image configuration from the service definition the roles wrote."""
    cmd = service.get("command") or []
    if not cmd or not all(isinstance(c, str) for c in cmd):
        raise ImageError("the roles wrote no command into etc/phoenix/%s/service.json" % req.artifact)
    entry = ["/" + c.lstrip("/") for c in cmd[:1]] + list(cmd[1:])
    epoch = req.oci["epoch"]
    labels = {
        "org.opencontainers.image.version": str(req.version),
        "org.opencontainers.image.revision": req.git_hash,
        "org.opencontainers.image.created": oci.rfc3339(epoch),
        "org.opencontainers.image.source": req.oci["source_url"],
        "org.opencontainers.image.title": req.artifact,
        "org.opencontainers.image.ref.name": req.oci["tag"],
        "io.phoenix.deploy.image": req.name,
        "io.phoenix.deploy.input-digest": req.input_digest,
        "io.phoenix.deploy.base": base["key"],
        # what Docker's HEALTHCHECK would say; orchestrators read it (HTTP GET on $PORT)
        "io.phoenix.deploy.health.http-path": str(service.get("health_path") or "/healthz"),
        "io.phoenix.deploy.stop-timeout": str(service.get("stop_timeout") or ""),
        "io.phoenix.deploy.env": ",".join(service.get("env") or []),
    }
    return {"user": "%d:%d" % (req.oci["uid"], req.oci["uid"]), "entrypoint": entry,
            "env": dict(req.oci["env"]), "workdir": "/opt/phoenix/%s" % req.artifact,
            "stop_signal": "SIG" + str(service.get("stop_signal") or "TERM").upper().replace("SIG", ""),
            "ports": ["%s/tcp" % req.oci["env"]["PORT"]],
            "labels": dict((k, v) for k, v in labels.items() if v)}


def _run_oci_bake(req, existing):
    """Base layer (cached by its inputs) + one app layer built by the roles -> an OCI image layout."""
    t0 = time.monotonic()
    store = req.store
    staging = _new_staging(req)
    try:
        try:
            # the base stays held (a shared lock) while the image is built on it: a prune never removes it
            with oci.use_base(os.path.join(store.root, OCI_BASE_DIR), req.oci["base_spec"]) as base:
                scratch = os.path.join(staging, "build")
                os.mkdir(scratch, 0o700)
                with oci.overlay(os.path.join(base["path"], "rootfs"), scratch) as (merged, upper):
                    _run_roles(req, merged)
                    with open(os.path.join(merged, "etc", "phoenix", req.artifact, "service.json")) as f:
                        service = json.load(f)
                layer = os.path.join(scratch, "app.tar")
                oci.write_layer(upper, layer, req.oci["epoch"])
                layer_size = os.path.getsize(layer)
                config = _oci_config(req, service, base)
                created = oci.rfc3339(req.oci["epoch"])
                digest, manifest = oci.build_image(
                    base, layer, os.path.join(staging, OCI_LAYOUT), created,
                    "phoenix.deploy roles base_image, app_service: %s %s" % (req.artifact, req.version), config)[:2]
            _rmtree(scratch)
        except (oci.OciError, OSError, ValueError) as exc:
            raise ImageError("oci bake of %s failed: %s" % (req.name, getattr(exc, "msg", None) or exc))
        layers = manifest.get("layers", [])
        doc = {
            "schema": SCHEMA, "name": req.name, "artifact": req.artifact, "version": str(req.version),
            "git_hash": req.git_hash or None, "build_id": req.build_id or None, "target": req.target,
            "input_digest": req.input_digest, "created_at": _now(),
            "fault": json.loads(req.variables.get("fault") or "{}"),
            "id": digest, "manifest_digest": digest, "content_digest": None,
            "entrypoint": config["entrypoint"][0],
            "oci": {"tag": req.oci["tag"], "manifest_digest": digest, "base_key": base["key"],
                    "base_built": base["built"], "layers": [d["digest"] for d in layers],
                    "size": sum(d["size"] for d in layers) + manifest["config"]["size"],
                    "uncompressed_size": base["uncompressed_size"] + layer_size,
                    "created": created, "user": config["user"], "duration": round(time.monotonic() - t0, 3)},
        }
        if existing is not None and existing.get("manifest_digest") and digest != existing["manifest_digest"]:
            raise ImmutabilityError("rebuilding image %s (force) gave manifest digest %s, but the image was baked "
                                    "as %s: the name may not change content; bake a new version instead"
                                    % (req.name, digest, existing["manifest_digest"]), "force")
        doc["path"] = _publish(store, req, staging, doc, existing)
        staging = None
        verify_image(doc["path"], digest)
        return doc
    finally:
        if staging and os.path.lexists(staging):
            merged = os.path.join(staging, "build", "merged")
            if os.path.ismount(merged):  # the overlay's own umount failed: detach it before removal
                try:
                    oci.run(["umount", "-l", merged], "detaching the image root")
                except oci.OciError:
                    pass
            _rmtree(staging)
