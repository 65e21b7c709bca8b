# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Promotion of a baked image from the test image store to the prod store.

An image is promoted by content digest, and only after it had a successful
release in one of the qualifying environments (``ci``, ``integrated_qa``) that
analysis actually judged (``analysed: pass``) or that was deployed with an
explicit ``analysis: none`` (``analysed: none``).  A release whose analysis was
inconclusive (no traffic), or that had no analysis configured, does not
qualify: nothing judged the image there.
The copy is verified against the digest before it is made visible, so the
prod store never holds an image whose files differ from the tested one.

Container images (target ``oci``) take the same rules between two registries
(:func:`promote_container`): ``dev/<artifact>@sha256:...`` is copied to
``prod/<artifact>:<version tag>`` with digests preserved, and the digest is read
back from prod; the qualifying release must have deployed exactly that digest.
Deploys reference ``<prod registry>/<artifact>@sha256:...``, never a tag.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from ansible_collections.phoenix.deploy.plugins.module_utils import images, registry, versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import ACTIVE, FileReleaseStore, StoreError, SUCCEEDED

TARGET = "local"
QUALIFYING_ANALYSIS = ("pass", "none")  # Release.analysed values that qualify an image


def tested_image(artifact, version, test_store):
    """image.json of the verified image of ``version`` in the test store."""
    versioning.parse(version, "version")  # VersionError names its option
    name = versioning.image_name(version, artifact)
    path = images.ImageStore(test_store).path(TARGET, artifact, name)
    if not os.path.isdir(path):
        raise PhoenixError("version %s of %s is not baked in the test store (%s): bake it first"
                           % (version, artifact, path), param="version")
    try:
        doc = images.verify_image(path)
    except images.ImageError as exc:
        raise PhoenixError(str(exc), param="version")
    doc["path"] = path
    return doc


def candidate_releases(artifact, digest, release_store, sources):
    """Successful deploys of this digest in ``sources``, newest first."""
    store = FileReleaseStore(release_store)
    found = []
    for environment in sources:
        for release in store.load(artifact, environment).releases:
            if release.outcome == SUCCEEDED and release.kind == "deploy" and \
                    release.image.endswith("@" + digest):
                found.append(release)
    return sorted(found, key=lambda r: r.finished or 0, reverse=True)


def qualifying_release(artifact, digest, release_store, sources):
    """The newest successful release of this digest in one of ``sources`` that
    analysis judged (or that was deployed with ``analysis: none``), or None."""
    for release in candidate_releases(artifact, digest, release_store, sources):
        if release.analysed in QUALIFYING_ANALYSIS:
            return release
    return None


def _not_judged(releases) -> str:
    why = {None: "no analysis configured", "inconclusive": "analysis inconclusive",
           "fail": "analysis failed"}
    return ", ".join("%s %s (%s)" % (r.environment, r.release_id, why.get(r.analysed, r.analysed))
                     for r in releases[:5])


def _require_qualified(artifact, version, digest, what, release_store, sources):
    """The release that qualifies ``digest``; PhoenixError (param version) naming why none does."""
    if not sources:
        raise PhoenixError("sources: give at least one environment whose successful release "
                           "qualifies an image, e.g. [ci, integrated_qa]", param="sources")
    release = qualifying_release(artifact, digest, release_store, sources)
    if release is not None:
        return release
    unjudged = candidate_releases(artifact, digest, release_store, sources)
    if unjudged:
        raise PhoenixError(
            "version %s of %s (image %s, %s) has successful releases in %s that analysis did not "
            "judge: %s. Deploy it again with traffic during the analysis (analysed: pass), or with "
            "an explicit analysis: none (recorded as such on the release)"
            % (version, artifact, what, digest, ", ".join(sources), _not_judged(unjudged)),
            param="version")
    raise PhoenixError("version %s of %s (image %s, %s) has no successful release in %s: deploy it "
                       "there first, e.g. ansible-playbook playbooks/deploy.yml -e artifact=%s "
                       "-e environment=%s -e version=%s"
                       % (version, artifact, what, digest, ", ".join(sources), artifact,
                          sources[0], version), param="version")


def container_registries(registries, **options):
    """(dev, prod) :class:`registry.Registry` clients from ``{dev: url, prod: url}`` (the
    ``registries`` stack output); errors name ``registries.dev`` / ``registries.prod``."""
    if not isinstance(registries, dict) or not registries.get("dev") or not registries.get("prod"):
        raise PhoenixError("registries must map dev and prod to registry URLs (the registries output of the "
                           "infra stack), e.g. {dev: 'http://127.0.0.1:5000', prod: 'http://127.0.0.1:5001'}",
                           param="registries")
    return tuple(registry.Registry(registries[env], param="registries.%s" % env, **options)
                 for env in ("dev", "prod"))


def tested_container(artifact, version, dev, digest=None):
    """(tag, digest) of the baked image of ``version`` in the dev registry; ``digest``, when given,
    must be what the version's tag points at."""
    versioning.check_artifact(artifact)
    registry.check_repo(artifact, "artifact")
    tag = registry.version_tag(version, "version")
    if digest is not None:
        registry.check_digest(digest, "digest")
    found = dev.digest(artifact, tag, param="version")
    if found is None:
        raise registry.ImageMissing(
            "version %s of %s is not in the dev registry (%s has no tag %s): bake it with target oci (it "
            "pushes to dev) first" % (version, artifact, dev.reference(artifact), tag), param="version")
    if digest is not None and digest != found:
        raise registry.DigestMismatch(
            "digest %s is not version %s of %s: the dev registry has %s for tag %s; promote the digest that "
            "was tested, or leave digest out" % (digest, version, artifact, found, tag), param="digest")
    return tag, found


def promote_container(artifact, version, registries, release_store, sources, digest=None,
                      check_mode=False, **options):
    """Copy ``dev/<artifact>@<digest>`` to ``prod/<artifact>:<tag>`` after a qualifying release of
    that digest, digests preserved and read back. Returns a result dict (``image`` is the pinned
    prod reference ``<prod>/<artifact>@sha256:...``)."""
    dev, prod = container_registries(registries, **options)
    tag, digest = tested_container(artifact, version, dev, digest)
    release = _require_qualified(artifact, version, digest, dev.reference(artifact, tag=tag),
                                 release_store, sources)
    result = {"image": prod.reference(artifact, digest=digest), "digest": digest, "tag": tag,
              "source": dev.reference(artifact, digest=digest),
              "qualified_by": {"environment": release.environment, "release_id": release.release_id,
                               "analysed": release.analysed}}
    src = dev.ref("%s@%s" % (artifact, digest), param="digest")
    dst = prod.ref("%s:%s" % (artifact, tag), param="version")
    existing = prod.guard_tag(artifact, tag, digest, "version")  # collision: fails naming both digests
    if existing == digest:
        return dict(result, changed=False)
    if check_mode:
        dev.manifest(artifact, digest=digest, param="digest")
        return dict(result, changed=True)
    # promotions into one prod repository on this machine take turns: the collision check and the
    # copy are one step (copy checks the tag again under the lock and reads the digest back)
    locks = images.ImageStore(os.path.join(release_store, ".registry-locks"))
    with locks.lock("prod-" + hashlib.sha256(prod.url.encode("utf-8")).hexdigest()[:16], artifact):
        copied = registry.copy(src, dst)
    return dict(result, changed=copied.changed)


def require_promoted_container(artifact, version, registries, digest=None, **options):
    """For environments that deploy only promoted images: prod must hold ``<artifact>:<tag>`` with
    the tested digest. Returns the pinned reference ``<prod>/<artifact>@sha256:...``."""
    dev, prod = container_registries(registries, **options)
    versioning.check_artifact(artifact)
    tag = registry.version_tag(version, "version")
    if digest is not None:
        registry.check_digest(digest, "digest")
    found = prod.digest(artifact, tag, param="version")
    if found is None:
        raise registry.ImageMissing(
            "version %s of %s was not promoted (the prod registry has no %s): run ansible-playbook "
            "playbooks/promote.yml -e artifact=%s -e version=%s -e target=oci after a successful release in ci "
            "or integrated_qa" % (version, artifact, prod.reference(artifact, tag=tag), artifact, version),
            param="version")
    tested = digest or dev.digest(artifact, tag, param="version")
    if tested is not None and tested != found:
        raise registry.DigestMismatch(
            "digest mismatch for %s:%s: prod registry has %s, the tested image is %s; refusing to deploy"
            % (artifact, tag, found, tested), param="version")
    return prod.reference(artifact, digest=found)


def _digest_of(image):
    """The ``sha256:...`` of a pinned reference ``.../repo@sha256:...``, or None."""
    if isinstance(image, str) and "@sha256:" in image:
        return image.rsplit("@", 1)[1]
    return None


def in_use_digests(artifact, release_store):
    """Digests a retention must keep: in every environment of the release store, the live release,
    the release it would roll back to, and every release still in progress or paused."""
    store = FileReleaseStore(release_store)
    root = os.path.join(store.root, artifact)
    out = set()
    for environment in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        if environment.startswith(".") or not os.path.isdir(os.path.join(root, environment)):
            continue
        try:
            history = store.load(artifact, environment)
        except StoreError as exc:  # cannot tell what is live there: delete nothing
            raise PhoenixError("release store %s: %s; retention deletes nothing while it cannot tell which images "
                               "are live" % (release_store, exc.msg), param="release_store")
        live = history.live_release()
        keep = [r for r in history.releases if r.status in ACTIVE]
        if live is not None:
            keep.append(live)
            keep.append(history.get(live.previous_release_id))
        out |= set(d for d in (_digest_of(r.image) for r in keep if r is not None) if d)
    return out


def _tag_order(tag):
    """Newest-first sort key of a version tag: semver precedence, then the CI build id."""
    version = versioning.parse(tag.replace("_", "+", 1), "tag")
    return (version.precedence_key(), int(version.build_id or 0), tag)


def container_retention(artifact, registries, which, keep, release_store, confirm=None, check_mode=False,
                        **options):
    """Delete the images of ``artifact`` in registry ``which`` (dev | prod) that retention does not keep:
    the newest ``keep`` versions, plus every image live (or the rollback target, or in progress) in some
    environment, plus (in dev) every image promoted to prod, plus any tag that is not a version.
    Deleting from prod needs ``confirm='prod'``; a digest that a kept tag points at is never deleted."""
    if which not in ("dev", "prod"):
        raise PhoenixError("registry must be dev or prod, got %r" % (which,), param="registry")
    if which == "prod" and confirm != "prod":
        raise PhoenixError("registry=prod: retention never deletes from the prod registry unless asked by name. "
                           "Nothing was changed. To go on, add -e confirm=prod", param="confirm")
    versioning.check_artifact(artifact)
    dev, prod = container_registries(registries, **options)
    reg = dev if which == "dev" else prod
    docs, protect = [], set()
    for tag in reg.tags(artifact):
        digest = reg.digest(artifact, tag) if _is_version_tag(tag) else None
        if digest is None:  # not ours: never deleted
            protect.add(tag)
            continue
        docs.append({"name": tag, "id": tag, "content_digest": digest})
    docs.sort(key=lambda d: _tag_order(d["name"]), reverse=True)
    protect |= in_use_digests(artifact, release_store)
    if which == "dev":
        protect |= set(prod.digest(artifact, tag) for tag in prod.tags(artifact) if _is_version_tag(tag))
    kept, removed = images.retention_plan(docs, keep, protect=protect)
    kept_digests = set(d["content_digest"] for d in kept)
    doomed = sorted(set(d["content_digest"] for d in removed) - kept_digests)
    if not check_mode:
        for digest in doomed:
            reg.delete(artifact, digest, param="registry")
    return {"changed": bool(doomed), "registry": reg.url,
            "kept": [{"tag": d["name"], "digest": d["content_digest"]} for d in kept],
            "removed": [{"tag": d["name"], "digest": d["content_digest"]} for d in removed
                        if d["content_digest"] in doomed]}


def _is_version_tag(tag):
    try:
        registry.check_tag(tag)
    except registry.RegistryError:
        return False
    return True


def promote(artifact, version, test_store, prod_store, release_store, sources, check_mode=False):
    """Copy the tested image into the prod store. Returns a result dict."""
    if not sources:
        raise PhoenixError("sources: give at least one environment whose successful release "
                           "qualifies an image, e.g. [ci, integrated_qa]", param="sources")
    doc = tested_image(artifact, version, test_store)
    digest = doc["content_digest"]
    release = _require_qualified(artifact, version, digest, doc["name"], release_store, sources)
    prod = images.ImageStore(prod_store)
    dest = prod.path(TARGET, artifact, doc["name"])
    result = {"image": doc["name"], "digest": digest, "path": dest,
              "qualified_by": {"environment": release.environment, "release_id": release.release_id,
                               "analysed": release.analysed}}
    if os.path.isdir(dest):
        return _promoted(dest, doc, digest, result)
    if check_mode:
        return dict(result, changed=True)
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    with prod.lock(TARGET, artifact):
        prod.clean_debris(TARGET, artifact)  # .promote-* dirs of a killed promotion
        if os.path.isdir(dest):  # promoted by another run while we waited for the lock
            return _promoted(dest, doc, digest, result)
        staging = tempfile.mkdtemp(prefix=images.PROMOTE_PREFIX, dir=parent)
        try:
            copy = os.path.join(staging, doc["name"])
            shutil.copytree(doc["path"], copy, symlinks=True)
            # the copy must be the tested bytes and modes, whatever its image.json claims
            images.verify_image(copy, digest, target=TARGET, artifact=artifact)
            os.rename(copy, dest)
        finally:
            if os.path.lexists(staging):
                images._rmtree(staging)
    return dict(result, changed=True)


def _promoted(dest, doc, digest, result):
    """Result for an image the prod store already holds: it must be the tested one."""
    try:
        existing = images.verify_image(dest)
    except images.ImageError as exc:
        raise PhoenixError(str(exc), param="version")
    if existing["content_digest"] != digest:
        raise PhoenixError("the prod store already holds %s with digest %s, but the tested image has %s; "
                           "an image name never points at other content: bake a new version"
                           % (doc["name"], existing["content_digest"], digest), param="version")
    return dict(result, changed=False)


def require_promoted(artifact, version, test_store, prod_store):
    """For environments that deploy only promoted images: the prod copy must
    exist and carry the digest of the tested image. Returns ``name@digest``."""
    name = versioning.image_name(version, artifact)
    dest = images.ImageStore(prod_store).path(TARGET, artifact, name)
    if not os.path.isdir(dest):
        raise PhoenixError("version %s of %s was not promoted (no %s in the prod image store): run "
                           "ansible-playbook playbooks/promote.yml -e artifact=%s -e version=%s after a "
                           "successful release in ci or integrated_qa" % (version, artifact, name, artifact, version),
                           param="version")
    try:
        doc = images.verify_image(dest)
    except images.ImageError as exc:
        raise PhoenixError(str(exc), param="version")
    tested = images.ImageStore(test_store).path(TARGET, artifact, name)
    if os.path.isdir(tested):
        tested_digest = images.read_image_json(tested).get("content_digest")
        if tested_digest != doc["content_digest"]:
            raise PhoenixError("digest mismatch for %s: prod store has %s, test store has %s; refusing to "
                               "deploy" % (name, doc["content_digest"], tested_digest), param="version")
    return "%s@%s" % (name, doc["content_digest"])
