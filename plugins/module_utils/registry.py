# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one container registry client of phoenix.deploy (plain Python, no Ansible needed).

Everything that moves or reads images goes through ``skopeo`` (1.9), run with
a policy file and a ``registries.d`` directory of its own, so the machine's
``/etc/containers`` settings never change what a push or promotion does. A
small Registry v2 HTTP read (``/v2/`` ping, ``/v2/_catalog``, tag list of a
repository that may not exist) covers what skopeo cannot tell in a
structured way.

Rules kept here, for every caller:

* **Immutable tags.** ``push`` and ``copy`` refuse a tag that already points
  at another digest, naming both digests; the same digest again is a no-op.
* **By digest.** ``copy`` takes its source by digest, preserves digests and
  reads the destination digest back; a mismatch is an error.
* **Checked on the wire.** skopeo verifies every blob against its digest on
  read, so a tampered layer fails a pull or a copy before a manifest is
  written.
* **Names.** repositories are lowercase distribution paths without ``..``;
  tags are versions (``1.4.0+34e57f0.b456`` -> ``1.4.0_34e57f0.b456``), never
  ``latest``; each error names the parameter.
* **Fail before change.** A registry that is down, a missing image or a
  collision is found by reads before anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import weakref

from urllib import error as urlerror
from urllib import parse as urlparse

from ansible.module_utils.urls import Request, make_context

from ansible_collections.phoenix.deploy.plugins.module_utils import versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

__all__ = [
    "RegistryError", "RegistryDown", "ImageMissing", "TagCollision", "DigestMismatch",
    "Registry", "Ref", "check_repo", "check_digest", "check_tag", "version_tag", "copy",
    "POLICY", "SKOPEO",
]

SKOPEO = "skopeo"
# skopeo's trust policy: images are identified by digest and checked by the
# collection (tested releases, digest read-back), not by signatures; any other
# transport is refused.
POLICY = {
    "default": [{"type": "reject"}],
    "transports": {
        "docker": {"": [{"type": "insecureAcceptAnything"}]},
        "oci": {"": [{"type": "insecureAcceptAnything"}]},
    },
}
TIMEOUT = 300  # seconds for one skopeo run
HTTP_TIMEOUT = 10

# distribution's reference grammar (reference/regexp.go): path components
# of lowercase alphanumerics separated by '.', '_', '__' or runs of '-'.
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
# how skopeo / containers-image report content that does not match its digest
_DIGEST_FAILURE_RE = re.compile(r"[Dd]igest did not match|digest mismatch|does not match (its|the) digest")
TAMPERED_HINT = ("The source registry's copy of this image is damaged or was tampered with; nothing was written. "
                 "Do not use this digest: push the image again from its bake (a new version if its tag is taken), "
                 "deploy and test that digest, then promote it")
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


class RegistryError(PhoenixError):
    """A registry operation refused or failed; ``param`` names the option to fix."""


class RegistryDown(RegistryError):
    """The registry does not answer (connection refused, timeout, TLS failure)."""

    def __init__(self, msg, param=None, **details):
        super().__init__(msg, param=param, transient=True, **details)


class ImageMissing(RegistryError):
    """The repository, tag or digest does not exist in the registry."""


class TagCollision(RegistryError):
    """The tag already points at another digest."""


class DigestMismatch(RegistryError):
    """What the registry holds is not the digest asked for."""


# --- names ---------------------------------------------------------------------

def check_repo(repo, param="repo"):
    """A repository path: lowercase components of ``[a-z0-9]`` joined by ``.``, ``_``, ``-``,
    separated by ``/``; no ``..``, no leading or trailing ``/``, at most 255 characters."""
    allowed = ("use lowercase letters, digits and '.', '_', '-' between them, path parts separated by '/', "
               "e.g. 'catalog' or 'team/catalog'")
    if not isinstance(repo, str) or not repo:
        raise RegistryError("%s must be a non-empty repository name; %s" % (param, allowed), param=param)
    if ".." in repo.split("/") or "/.." in repo or "../" in repo or repo.startswith(".."):
        raise RegistryError("%s %r contains '..': a repository name is never a relative path; %s"
                            % (param, repo, allowed), param=param)
    if repo != repo.lower():
        raise RegistryError("%s %r contains upper case letters, which registries refuse; write it as %r"
                            % (param, repo, repo.lower()), param=param)
    if len(repo) > 255 or not all(_COMPONENT_RE.match(part) for part in repo.split("/")):
        raise RegistryError("%s %r is not a repository name; %s" % (param, repo, allowed), param=param)
    return repo


def check_digest(digest, param="digest"):
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise RegistryError("%s %r is not a content digest: use sha256: followed by 64 lowercase hex digits"
                            % (param, digest), param=param)
    return digest


def version_tag(version, param="version"):
    """The OCI tag of a semver version (``+`` -> ``_``); refuses ``latest``, ``stable`` and non-semver."""
    try:
        versioning.parse(version, param)
        return versioning.oci_tag(version)
    except versioning.VersionError as exc:
        raise RegistryError(exc.msg, param=param)


def check_tag(tag, param="tag"):
    """A tag is the OCI spelling of a semver version (``1.4.0_34e57f0.b456``); mutable names are refused."""
    if not isinstance(tag, str) or not tag:
        raise RegistryError("%s must be a version tag such as 1.4.0_34e57f0.b456" % param, param=param)
    if tag.strip().lower() in versioning.MUTABLE_TAGS:
        raise RegistryError("%s %r is a mutable tag and is refused: tags are versions and never move; use the "
                            "version, e.g. 1.4.0_34e57f0.b456 for 1.4.0+34e57f0.b456" % (param, tag), param=param)
    version = tag.replace("_", "+", 1)
    if not versioning.is_semver(version) or versioning.oci_tag(version) != tag:
        raise RegistryError("%s %r is not a version tag: use MAJOR.MINOR.PATCH[-pre][_build], the OCI spelling "
                            "of a semver version (+ becomes _), e.g. 1.4.0_34e57f0.b456" % (param, tag),
                            param=param)
    return tag


def manifest_digest(raw):
    return "sha256:" + hashlib.sha256(raw).hexdigest()


# --- references ----------------------------------------------------------------

class Ref(object):
    """One image in one registry: ``repo`` plus a ``tag`` or a ``digest`` (or both)."""

    __slots__ = ("registry", "repo", "tag", "digest")

    def __init__(self, registry, repo, tag=None, digest=None, param="ref"):
        self.registry = registry
        self.repo = check_repo(repo, param)
        self.tag = check_tag(tag, param) if tag is not None else None
        self.digest = check_digest(digest, param) if digest is not None else None
        if tag is None and digest is None:
            raise RegistryError("%s %r names no tag and no digest: use repo@sha256:... or repo:<version tag>"
                                % (param, repo), param=param)

    def __str__(self):
        return self.registry.reference(self.repo, tag=self.tag, digest=self.digest)

    def __repr__(self):
        return "Ref(%s)" % self

    def skopeo(self):
        return "docker://" + str(self)

    def pinned(self):
        """``registry/repo@sha256:...``: the form deploys use."""
        if not self.digest:
            raise RegistryError("%s has no digest" % self, param="ref")
        return self.registry.reference(self.repo, digest=self.digest)


# --- the client ----------------------------------------------------------------

class Registry(object):
    """A Registry v2 endpoint: ``http://127.0.0.1:5000``, ``https://host/prefix`` or ``host:port[/prefix]``
    (https). ``param`` is the option the URL came from, named in errors about this registry."""

    def __init__(self, url, policy=None, tls_verify=None, cert_dir=None, authfile=None, param="registry",
                 skopeo=None, timeout=TIMEOUT):
        self.param = param
        if not isinstance(url, str) or not url.strip():
            raise RegistryError("%s must be a registry URL such as http://127.0.0.1:5000 or "
                                "europe-docker.pkg.dev/project/repo" % param, param=param)
        text = url.strip().rstrip("/")
        if "://" not in text:
            text = "https://" + text
        parts = urlparse.urlsplit(text)
        if "@" in parts.netloc:
            raise RegistryError("%s must not carry credentials in the URL (they would show in logs): give "
                                "them in an authfile" % param, param=param)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise RegistryError("%s %r is not a registry URL: use http(s)://host[:port][/prefix]" % (param, url),
                                param=param)
        prefix = parts.path.strip("/")
        if prefix:
            check_repo(prefix, param)
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.netloc
        self.prefix = prefix
        self.tls_verify = (parts.scheme == "https") if tls_verify is None else bool(tls_verify)
        if self.scheme == "http" and tls_verify:
            raise RegistryError("%s %r is plain http, so tls_verify cannot be true: use https:// or "
                                "tls_verify: false" % (param, url), param=param)
        self.cert_dir = cert_dir
        self.authfile = authfile
        self.skopeo_bin = skopeo or os.environ.get("PHOENIX_SKOPEO") or SKOPEO
        self.timeout = timeout
        self._tmp = tempfile.mkdtemp(prefix="phoenix-skopeo-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        if policy is None:
            policy = os.path.join(self._tmp, "policy.json")
            with open(policy, "w") as f:
                json.dump(POLICY, f)
        self.policy = policy
        self._context = None
        self._registries_d = os.path.join(self._tmp, "registries.d")
        os.mkdir(self._registries_d)

    def close(self):
        self._finalizer()

    def __repr__(self):
        return "Registry(%s)" % self.url

    # references ----------------------------------------------------------------
    def path(self, repo):
        return "%s/%s" % (self.prefix, repo) if self.prefix else repo

    def reference(self, repo, tag=None, digest=None):
        """``host[/prefix]/repo[:tag][@digest]``."""
        out = "%s/%s" % (self.host, self.path(repo))
        if tag:
            out += ":" + tag
        if digest:
            out += "@" + digest
        return out

    def ref(self, text, param="ref"):
        """A :class:`Ref` in this registry from ``repo@sha256:...``, ``repo:tag`` or a Ref."""
        if isinstance(text, Ref):
            return text
        if not isinstance(text, str) or not text:
            raise RegistryError("%s must be repo@sha256:... or repo:<version tag>" % param, param=param)
        repo, digest, tag = text, None, None
        if "@" in repo:
            repo, digest = repo.split("@", 1)
        if ":" in repo.rsplit("/", 1)[-1]:
            repo, tag = repo.rsplit(":", 1)
        return Ref(self, repo, tag=tag, digest=digest, param=param)

    # skopeo --------------------------------------------------------------------
    def _tls_args(self, flag):
        args = ["--%s=%s" % (flag, "true" if self.tls_verify else "false")]
        if self.cert_dir:
            args.append("--%s=%s" % (flag.replace("tls-verify", "cert-dir"), self.cert_dir))
        if self.authfile:
            args.append("--%s=%s" % (flag.replace("tls-verify", "authfile"), self.authfile))
        return args

    def _skopeo(self, args, param=None, what="skopeo", digest_param=None):
        cmd = [self.skopeo_bin, "--policy", self.policy, "--registries.d", self._registries_d,
               "--tmpdir", self._tmp, "--command-timeout", "%ds" % self.timeout] + args
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout + 30, check=False,
                                  env=dict(os.environ, LC_ALL="C"))
        except FileNotFoundError:
            raise RegistryError("skopeo is not installed (%s not found): run make setup (Debian package skopeo)"
                                % self.skopeo_bin, param=param or self.param)
        except subprocess.TimeoutExpired:
            raise RegistryDown("%s against %s did not finish in %d s" % (what, self.url, self.timeout),
                               param=param or self.param)
        if proc.returncode != 0:
            message = _skopeo_message(proc.stderr)
            if _DIGEST_FAILURE_RE.search(message):  # a blob that is not what its digest says, read on the wire
                raise DigestMismatch("%s failed: %s. %s" % (what, message, TAMPERED_HINT),
                                     param=digest_param or param or self.param)
            raise RegistryError("%s failed: %s" % (what, message), param=param or self.param)
        return proc.stdout

    # HTTP reads ----------------------------------------------------------------
    def _auth_header(self):
        if not self.authfile or not os.path.exists(self.authfile):
            return None
        try:
            with open(self.authfile) as f:
                auths = json.load(f).get("auths", {})
        except (OSError, ValueError) as exc:
            raise RegistryError("authfile %s cannot be read: %s" % (self.authfile, exc), param="authfile")
        entry = auths.get(self.host) or auths.get("%s/%s" % (self.host, self.prefix)) or {}
        return ("Basic " + entry["auth"]) if entry.get("auth") else None

    def _http(self, method, path, accept=None, param=None, sink=None):
        """(status, headers, body) of one request to ``/v2/...``; RegistryDown when nothing answers.
        With ``sink``, a 200 body is streamed into ``sink(chunk)`` in 1 MiB chunks (body ``b""``)."""
        headers = {}
        if accept:
            headers["Accept"] = ", ".join(accept)
        auth = self._auth_header()
        if auth:
            headers["Authorization"] = auth
        loopback = (urlparse.urlsplit("//" + self.host).hostname or "").startswith("127.") or \
            self.host.startswith("localhost")
        try:
            resp = Request().open(method, "%s://%s%s" % (self.scheme, self.host, path), headers=headers,
                                  validate_certs=self.tls_verify, timeout=HTTP_TIMEOUT, use_proxy=not loopback,
                                  follow_redirects="safe", context=self._ssl_context())
            with resp:
                if sink is None or resp.status != 200:
                    return resp.status, resp.headers, resp.read()
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    sink(chunk)
                return resp.status, resp.headers, b""
        except urlerror.HTTPError as exc:
            return exc.code, exc.headers, exc.read()
        except (urlerror.URLError, OSError, ssl.SSLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryDown("registry %s (%s) is down or unreachable: %s; start it (for the local stack: "
                               "pulumi up -s local, or ansible-playbook playbooks/infra.yml) or fix %s"
                               % (self.url, self.param, reason, self.param), param=param or self.param)

    def _ssl_context(self):
        """One TLS context per client (making one reads the CA bundle: ~0.1 s)."""
        if self._context is None:
            ca_path = None
            if self.cert_dir and self.tls_verify:
                ca_path = next((os.path.join(self.cert_dir, n) for n in sorted(os.listdir(self.cert_dir))
                                if n.endswith(".crt")), None)
            self._context = make_context(cafile=ca_path, validate_certs=self.tls_verify)
        return self._context

    def ping(self):
        """Fail with RegistryDown unless the registry answers ``/v2/`` (200, or 401 = needs auth)."""
        status = self._http("GET", "/v2/")[0]
        if status not in (200, 401):
            raise RegistryDown("registry %s (%s) answered HTTP %d to /v2/: it is not a Registry v2 endpoint; fix %s"
                               % (self.url, self.param, status, self.param), param=self.param)

    def repositories(self):
        """All repository names (``/v2/_catalog``, paged), without this registry's prefix."""
        out, path = [], "/v2/_catalog?n=1000"
        for dummy in range(1000):
            status, headers, body = self._http("GET", path)
            if status != 200:
                raise RegistryError("registry %s cannot list its repositories (HTTP %d to /v2/_catalog)"
                                    % (self.url, status), param=self.param)
            for name in json.loads(body.decode("utf-8")).get("repositories") or []:
                if not self.prefix:
                    out.append(name)
                elif name.startswith(self.prefix + "/"):
                    out.append(name[len(self.prefix) + 1:])
            link = headers.get("Link") or ""
            m = re.match(r"\s*<([^>]+)>", link)
            if not m:
                break
            path = m.group(1)
        return sorted(out)

    # reads ---------------------------------------------------------------------
    def tags(self, repo, param="repo"):
        """Tags of ``repo``, sorted; [] when the repository does not exist."""
        check_repo(repo, param)
        self.ping()
        status, dummy, body = self._http("GET", "/v2/%s/tags/list" % self.path(repo))
        if status == 404:
            return []
        if status == 401:  # needs a token: skopeo does the auth dance
            out = self._skopeo(["list-tags"] + self._tls_args("tls-verify") +
                               ["docker://" + self.reference(repo)], param=param, what="listing tags of %s" % repo)
            return sorted(json.loads(out.decode("utf-8")).get("Tags") or [])
        if status != 200:
            raise RegistryError("registry %s answered HTTP %d listing the tags of %s" % (self.url, status, repo),
                                param=self.param)
        return sorted(json.loads(body.decode("utf-8")).get("tags") or [])

    def manifest(self, repo, tag=None, digest=None, param="ref"):
        """Raw manifest bytes and their digest (sha256 of the bytes, never the registry's claim);
        ImageMissing when there is no such image. Read over HTTP; through skopeo when the registry
        wants a token."""
        ref = Ref(self, repo, tag=tag, digest=digest, param=param)
        self.ping()
        status, dummy, raw = self._http("GET", "/v2/%s/manifests/%s" % (self.path(repo), digest or tag),
                                        accept=_MANIFEST_TYPES, param=param)
        if status == 404:
            how = ("check the digest (bake and push it, or copy the reference the bake returned)" if digest
                   else "push or promote it first")
            raise ImageMissing("%s: no image %s in registry %s; %s" % (param, ref, self.url, how), param=param)
        if status == 401:  # token auth: skopeo does it (a missing tag is told by the tag list)
            if digest is None and tag not in self.tags(repo, param):
                raise ImageMissing("%s: no image %s in registry %s; push or promote it first"
                                   % (param, ref, self.url), param=param)
            raw = self._skopeo(["inspect", "--raw"] + self._tls_args("tls-verify") + [ref.skopeo()],
                               param=param, what="reading %s" % ref)
        elif status != 200:
            raise RegistryError("%s: registry %s answered HTTP %d reading %s" % (param, self.url, status, ref),
                                param=param)
        got = manifest_digest(raw)
        if digest is not None and got != digest:
            raise DigestMismatch("%s: registry %s returned a manifest with digest %s for %s: refusing it"
                                 % (param, self.url, got, ref), param=param)
        return raw, got

    def _has_blob(self, repo, digest):
        """Whether ``repo`` here holds blob ``digest`` (the registry checked it when it was uploaded)."""
        return self._http("HEAD", "/v2/%s/blobs/%s" % (self.path(repo), digest))[0] == 200

    def _blob_sha256(self, repo, digest):
        """sha256 of blob ``digest`` of ``repo`` as this registry serves it (streamed), or None when the
        registry does not serve it over plain HTTP reads (token auth: skopeo checks it on the wire)."""
        h = hashlib.sha256()
        status = self._http("GET", "/v2/%s/blobs/%s" % (self.path(repo), digest), sink=h.update)[0]
        if status == 404:
            raise ImageMissing("%s: registry %s lacks blob %s of %s, which the image's manifest lists; push the "
                               "image again" % (self.param, self.url, digest, self.reference(repo)), param=self.param)
        return "sha256:" + h.hexdigest() if status == 200 else None

    def verify_blobs(self, repo, manifest_raw, present=None):
        """Read every blob (config and layers) of the image whose manifest is ``manifest_raw`` and check it
        against its digest, before anything is written elsewhere; blobs for which ``present(digest)`` is true
        are skipped (the destination already holds them). DigestMismatch names this registry's parameter."""
        try:
            manifest = json.loads(manifest_raw.decode("utf-8"))
        except ValueError:
            return
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            return  # an index: skopeo checks each image on the wire
        for desc in [manifest["config"]] + list(manifest.get("layers") or []):
            digest = desc.get("digest") if isinstance(desc, dict) else None
            if not isinstance(digest, str) or not _DIGEST_RE.match(digest) or (present and present(digest)):
                continue
            got = self._blob_sha256(repo, digest)
            if got is not None and got != digest:
                raise DigestMismatch("%s: blob %s of %s in registry %s does not match its digest (it hashes to %s). "
                                     "%s" % (self.param, digest, self.reference(repo), self.url, got, TAMPERED_HINT),
                                     param=self.param, blob=digest, got=got)

    def _has_manifest(self, repo, digest):
        status = self._http("HEAD", "/v2/%s/manifests/%s" % (self.path(repo), digest), accept=_MANIFEST_TYPES)[0]
        return status != 404

    def digest(self, repo, tag, param="tag"):
        """Digest the tag points at, or None when the tag does not exist."""
        check_repo(repo, "repo")
        check_tag(tag, param)
        try:
            return self.manifest(repo, tag=tag, param=param)[1]
        except ImageMissing:
            return None

    def exists(self, repo, digest):
        check_repo(repo, "repo")
        check_digest(digest)
        self.ping()
        return self._has_manifest(repo, digest)

    # writes --------------------------------------------------------------------
    def guard_tag(self, repo, tag, digest, param):
        """None if the tag is free, the digest if it already points at ``digest``; TagCollision otherwise."""
        existing = self.digest(repo, tag, param=param)
        if existing is not None and existing != digest:
            raise TagCollision("%s: tag %s already points at %s, not at %s: tags are immutable; give this image "
                               "a new version (the build id in +<git hash>.b<build>)"
                               % (param, self.reference(repo, tag=tag), existing, digest),
                               param=param, existing=existing, wanted=digest)
        return existing

    def push(self, oci_layout_dir, repo, tag, src_tag=None, param="tag"):
        """Push the image of an OCI layout to ``repo:tag`` (digests preserved). Returns the digest
        (a :class:`Pushed` str: ``.changed`` is False when the tag already pointed at it)."""
        check_repo(repo, "repo")
        check_tag(tag, param)
        local = layout_digest(oci_layout_dir, src_tag)
        self.ping()
        if self.guard_tag(repo, tag, local, param) == local:
            return Pushed(local, changed=False, ref=self.reference(repo, digest=local))
        src = "oci:%s:%s" % (os.path.abspath(oci_layout_dir), src_tag) if src_tag else \
            "oci:%s" % os.path.abspath(oci_layout_dir)
        self._copy_to(src, [], repo, tag, local, param)
        return Pushed(local, changed=True, ref=self.reference(repo, digest=local))

    def _copy_to(self, src, src_args, repo, tag, digest, param, digest_param=None):
        digestfile = os.path.join(self._tmp, "digest")
        dst = "docker://" + self.reference(repo, tag=tag)
        self._skopeo(["copy", "--quiet", "--preserve-digests", "--digestfile", digestfile] + src_args +
                     self._tls_args("dest-tls-verify") + [src, dst], param=param, digest_param=digest_param,
                     what="copying %s to %s" % (src.split("://", 1)[-1], dst[len("docker://"):]))
        with open(digestfile) as f:
            written = f.read().strip()
        back = self.digest(repo, tag, param=param)
        if written != digest or back != digest:
            raise DigestMismatch("%s: %s now points at %s (skopeo wrote %s), not at the image's digest %s: "
                                 "the registry changed the image; do not deploy this tag"
                                 % (param, self.reference(repo, tag=tag), back, written, digest), param=param)

    def copy(self, src_ref, dst_ref, src_registry=None):
        """Copy ``src_ref`` (``repo@sha256:...``, in ``src_registry`` or this one) to ``dst_ref``
        (``repo:<version tag>`` here), preserving digests, and read the digest back.
        Returns a :class:`Pushed` digest."""
        src = (src_registry or self).ref(src_ref, param="src")
        dst = self.ref(dst_ref, param="dst")
        return copy(src, dst)

    def pull(self, repo, digest, oci_layout_dir, tag=None, param="digest"):
        """Copy ``repo@digest`` into an OCI layout (every blob checked against its digest on the way)."""
        check_digest(digest, param)
        self.manifest(repo, digest=digest, param=param)
        dst = "oci:%s" % os.path.abspath(oci_layout_dir) + (":%s" % tag if tag else "")
        self._skopeo(["copy", "--quiet", "--preserve-digests"] + self._tls_args("src-tls-verify") +
                     ["docker://" + self.reference(repo, digest=digest), dst], param=param, digest_param=param,
                     what="pulling %s" % self.reference(repo, digest=digest))
        got = layout_digest(oci_layout_dir, tag)
        if got != digest:
            raise DigestMismatch("%s: pulled %s but the layout holds %s" % (param, digest, got), param=param)
        return digest

    def delete(self, repo, digest, param="digest"):
        """Delete the manifest ``repo@digest`` (all its tags). False when it was not there."""
        check_repo(repo, "repo")
        check_digest(digest, param)
        self.ping()
        if not self._has_manifest(repo, digest):
            return False
        self._skopeo(["delete"] + self._tls_args("tls-verify") + ["docker://" + self.reference(repo, digest=digest)],
                     param=param, what="deleting %s (is storage.delete enabled on %s?)"
                     % (self.reference(repo, digest=digest), self.url))
        return True


class Pushed(str):
    """A digest plus whether the operation wrote anything and the pinned reference."""

    def __new__(cls, digest, changed, ref):
        obj = str.__new__(cls, digest)
        obj.changed = changed
        obj.ref = ref
        return obj


def copy(src, dst):
    """Copy :class:`Ref` ``src`` (by digest) to :class:`Ref` ``dst`` (by version tag), digests preserved."""
    if not src.digest:
        raise RegistryError("src %s: promotion copies by digest: use repo@sha256:..." % src, param="src")
    if not dst.tag or dst.digest:
        raise RegistryError("dst %s: give the destination as repo:<version tag>" % dst, param="dst")
    raw = src.registry.manifest(src.repo, digest=src.digest, param="src")[0]  # exists, and is what it claims
    dst.registry.ping()
    target = dst.registry
    if target.guard_tag(dst.repo, dst.tag, src.digest, "dst") == src.digest:
        return Pushed(src.digest, changed=False, ref=target.reference(dst.repo, digest=src.digest))
    # a damaged or tampered source blob fails here, before the destination gets an upload, a blob or a tag
    # (skopeo checks again on the wire, for a source changed after this read)
    src.registry.verify_blobs(src.repo, raw, present=lambda blob: target._has_blob(dst.repo, blob))
    target._copy_to(src.skopeo(), src.registry._tls_args("src-tls-verify"), dst.repo, dst.tag, src.digest, "dst",
                    digest_param=src.registry.param)
    return Pushed(src.digest, changed=True, ref=target.reference(dst.repo, digest=src.digest))


def layout_digest(oci_layout_dir, tag=None, param="oci_layout_dir"):
    """Manifest digest of the image tagged ``tag`` (or the only image) in an OCI layout."""
    if not isinstance(oci_layout_dir, str) or ":" in oci_layout_dir:
        raise RegistryError("%s %r: give the path of an OCI image layout (a directory with index.json; no ':' "
                            "in the path)" % (param, oci_layout_dir), param=param)
    index = os.path.join(oci_layout_dir, "index.json")
    try:
        with open(index) as f:
            manifests = json.load(f).get("manifests") or []
    except (OSError, ValueError) as exc:
        raise RegistryError("%s %s is not an OCI image layout (index.json: %s); bake it with target oci"
                            % (param, oci_layout_dir, exc), param=param)
    if tag is not None:
        manifests = [m for m in manifests
                     if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if len(manifests) != 1:
        raise RegistryError("%s %s holds %d images%s: give exactly one (name the tag)"
                            % (param, oci_layout_dir, len(manifests), " tagged %s" % tag if tag else ""), param=param)
    return check_digest(manifests[0].get("digest"), param)


def _skopeo_message(stderr):
    """The last message skopeo logged (``level=fatal msg="..."``), without its log prefix."""
    text = (stderr or b"").decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "no message"
    last = lines[-1]
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', last)
    if m:
        try:
            return json.loads('"%s"' % m.group(1))
        except ValueError:
            return m.group(1)
    return last[:2000]


def basic_auth(user, password):
    """The ``auth`` value of an authfile entry (``base64(user:password)``)."""
    return base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")
