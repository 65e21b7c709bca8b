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
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ansible_collections.phoenix.deploy.plugins.module_utils import images, versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, SUCCEEDED

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


def promote(artifact, version, test_store, prod_store, release_store, sources, check_mode=False):
    """Copy the tested image into the prod store. Returns a result dict."""
    if not sources:
        raise PhoenixError("sources: give at least one environment whose successful release "
                           "qualifies an image, e.g. [ci, integrated_qa]", param="sources")
    doc = tested_image(artifact, version, test_store)
    digest = doc["content_digest"]
    release = qualifying_release(artifact, digest, release_store, sources)
    if release is None:
        unjudged = candidate_releases(artifact, digest, release_store, sources)
        if unjudged:
            raise PhoenixError(
                "version %s of %s (image %s, %s) has successful releases in %s that analysis did not "
                "judge: %s. Deploy it again with traffic during the analysis (analysed: pass), or with "
                "an explicit analysis: none (recorded as such on the release)"
                % (version, artifact, doc["name"], digest, ", ".join(sources), _not_judged(unjudged)),
                param="version")
        raise PhoenixError("version %s of %s (image %s, %s) has no successful release in %s: deploy it "
                           "there first, e.g. ansible-playbook playbooks/deploy.yml -e artifact=%s "
                           "-e environment=%s -e version=%s"
                           % (version, artifact, doc["name"], digest, ", ".join(sources), artifact,
                              sources[0], version), param="version")
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
