# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Version and tag policy for phoenix.deploy (plain Python, no Ansible needed).

* A version is strict semver ``MAJOR.MINOR.PATCH[-pre][+build]``
  (https://semver.org, section 9 and 10 grammar).
* Build metadata carries the git hash and the CI build id:
  ``1.5.6+34e57f0.b456`` (:func:`semver_build`).
* ``latest`` and every other mutable tag are refused (:func:`parse`), with a
  message that says what to use instead.
* Image names are deterministic and valid both as GCE resource names
  (``[a-z]([-a-z0-9]{0,61}[a-z0-9])?``) and as OCI tags (:func:`image_name`,
  :func:`oci_tag`). Two different versions never map to the same name.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

__all__ = [
    "VersionError", "Version", "parse", "is_semver", "semver_build", "image_name",
    "oci_tag", "check_artifact", "GCE_NAME_RE", "OCI_TAG_RE", "MUTABLE_TAGS",
]

# semver.org's recommended regular expression (numbered groups).
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
GCE_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
OCI_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ARTIFACT_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_GIT_HASH_RE = re.compile(r"^[0-9a-f]{7,40}$")
_BUILD_ID_RE = re.compile(r"^b?([0-9]{1,12})$")

# Tags that name a moving target rather than one build. Refused everywhere.
MUTABLE_TAGS = frozenset((
    "latest", "stable", "current", "edge", "nightly", "snapshot", "head", "main",
    "master", "trunk", "dev", "develop", "release", "prod", "production", "staging",
    "canary", "next", "newest", "default",
))

_SUGGESTION = ("use an exact semver version MAJOR.MINOR.PATCH[-pre][+build], e.g. 1.4.0+34e57f0.b456 "
               "(build metadata = git hash + CI build id; the phoenix.deploy.semver_build filter makes it)")


class VersionError(PhoenixError, ValueError):
    """A version, tag or name that the policy refuses; the message says what to use instead.
    ``param`` is the option the value came from."""


class Version(object):
    """A parsed semver version. Compare with :meth:`precedence_key` (build metadata is ignored)."""

    __slots__ = ("major", "minor", "patch", "prerelease", "build", "text")

    def __init__(self, major, minor, patch, prerelease=(), build=(), text=None):
        self.major, self.minor, self.patch = int(major), int(minor), int(patch)
        self.prerelease = tuple(prerelease)
        self.build = tuple(build)
        self.text = text or self._render()

    def _render(self):
        out = "%d.%d.%d" % (self.major, self.minor, self.patch)
        if self.prerelease:
            out += "-" + ".".join(self.prerelease)
        if self.build:
            out += "+" + ".".join(self.build)
        return out

    def __str__(self):
        return self.text

    def __repr__(self):
        return "Version(%r)" % self.text

    def __eq__(self, other):
        return isinstance(other, Version) and self.text == other.text

    def __hash__(self):
        return hash(self.text)

    @property
    def core(self):
        return "%d.%d.%d" % (self.major, self.minor, self.patch)

    @property
    def git_hash(self):
        """The git hash in the build metadata (``+<hash>.b<id>``), or None."""
        for ident in self.build:
            if _GIT_HASH_RE.match(ident):
                return ident
        return None

    @property
    def build_id(self):
        """The CI build id in the build metadata (``b456`` -> ``"456"``), or None.
        The git hash comes first (``+<hash>.b<id>``) and may itself look like
        a build id (``b179026``): it is never taken as one."""
        git_hash = self.git_hash
        for ident in reversed(self.build):
            if ident != git_hash and ident.startswith("b") and ident[1:].isdigit():
                return ident[1:]
        return None

    def precedence_key(self):
        """Sort key following semver precedence (section 11); build metadata is ignored."""
        if not self.prerelease:
            pre = (1,)
        else:
            pre = (0,) + tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, pre)


def parse(version, option="version"):
    """Parse a semver string; raise :class:`VersionError` naming ``option`` otherwise."""
    if isinstance(version, Version):
        return version
    if not isinstance(version, str) or not version:
        raise VersionError("%s must be a non-empty string; %s" % (option, _SUGGESTION), param=option)
    if version.strip().lower() in MUTABLE_TAGS:
        raise VersionError("%s %r is a mutable tag and is refused: an image name must never point at other "
                           "content; %s" % (option, version, _SUGGESTION), param=option)
    if version[:1] in ("v", "V") and _SEMVER_RE.match(version[1:]):
        raise VersionError("%s %r has a leading 'v'; write it as %r" % (option, version, version[1:]),
                           param=option)
    m = _SEMVER_RE.match(version)
    if not m:
        raise VersionError("%s %r is not semver; %s" % (option, version, _SUGGESTION), param=option)
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    build = tuple(m.group(5).split(".")) if m.group(5) else ()
    return Version(m.group(1), m.group(2), m.group(3), pre, build, text=version)


def is_semver(version):
    try:
        parse(version)
    except VersionError:
        return False
    return True


def semver_build(version, git_hash, build_id=None):
    """Return ``version`` with build metadata ``+<git hash, 7 chars>[.b<build id>]``.

    ``semver_build('1.5.6', '34e57f0d1c...', 456)`` -> ``'1.5.6+34e57f0.b456'``.
    An existing build metadata part of ``version`` is replaced; a pre-release is kept.
    """
    v = parse(version)
    gh = str(git_hash or "").strip().lower()
    if not _GIT_HASH_RE.match(gh):
        raise VersionError("git_hash %r is not a git commit hash (7 to 40 hex digits)" % (git_hash,),
                           param="git_hash")
    build = [gh[:7]]
    if build_id is not None and str(build_id).strip() != "":
        m = _BUILD_ID_RE.match(str(build_id).strip())
        if not m:
            raise VersionError("build_id %r is not a CI build number (digits, optionally prefixed with 'b')"
                               % (build_id,), param="build_id")
        build.append("b" + str(int(m.group(1))))
    return str(Version(v.major, v.minor, v.patch, v.prerelease, build))


def check_artifact(artifact, option="artifact"):
    """Artifact names: lowercase letters, digits and '-', 2-32 chars, starting with a letter."""
    if not isinstance(artifact, str) or not ARTIFACT_RE.match(artifact):
        raise VersionError(
            "%s %r is not allowed: use 2-32 characters of lowercase letters, digits and '-', starting with a "
            "letter and not ending with '-' (no '/', '..', spaces or shell metacharacters), e.g. 'catalog'"
            % (option, artifact), param=option)
    return artifact


def image_name(version, artifact):
    """Deterministic image name for ``artifact`` at ``version``; valid for GCE and as an OCI tag.

    ``catalog`` + ``1.5.6-rc.1+34e57f0.b456`` -> ``catalog-v1-5-6-rc-1--34e57f0-b456``: dots become
    '-', the build metadata follows a double '-'. When that spelling could be ambiguous (an identifier
    containing '-' or upper case letters) or is longer than 63 characters, it is shortened and a
    7-character hash of the exact version is appended, so distinct versions never share a name.
    """
    check_artifact(artifact)
    v = parse(version)
    name = "%s-v%d-%d-%d" % (artifact, v.major, v.minor, v.patch)
    if v.prerelease:
        name += "-" + "-".join(v.prerelease)
    if v.build:
        name += "--" + "-".join(v.build)
    lossy = any(("-" in i or i != i.lower()) for i in v.prerelease + v.build)
    if lossy or len(name) > 63:
        suffix = "-h" + hashlib.sha256(v.text.encode("utf-8")).hexdigest()[:7]
        name = name.lower()[:63 - len(suffix)].rstrip("-") + suffix
    if not GCE_NAME_RE.match(name):  # pragma: no cover - guaranteed by construction
        raise VersionError("cannot derive a valid image name from %r/%r" % (artifact, version),
                           param="version")
    return name


def oci_tag(version, option="version"):
    """OCI tag for a version: '+' (not allowed in tags) becomes '_' (the Docker/Helm convention).

    ``1.4.0+34e57f0.b456`` -> ``1.4.0_34e57f0.b456``. Deterministic and one-to-one: semver never
    contains '_', so the tag maps back to exactly one version. ``latest``, ``stable`` and anything
    that is not semver are refused, naming ``option``."""
    v = parse(version, option)
    tag = v.text.replace("+", "_")
    if not OCI_TAG_RE.match(tag):
        raise VersionError("%s %r is too long for an OCI tag (128 characters max)" % (option, version),
                           param=option)
    return tag
