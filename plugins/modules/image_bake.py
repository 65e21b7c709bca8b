#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_bake
short_description: Bake an immutable, versioned image of an artifact (Packer, or an OCI image without a daemon)
version_added: 0.1.0
description:
  - Bakes one version of an artifact into an immutable image with Packer, using the collection's template
    C(packer/image.pkr.hcl) and the roles C(base_image) and C(app_service).
  - The I(local) target produces a local image, a read-only directory bundle with C(image.json)
    (artifact, version, git hash, build id, input digest, content digest, created_at).
    The I(gce) target produces a GCE image in the image family of the artifact.
  - The I(oci) target produces an OCI image layout without Packer or a container daemon. Its base layer is a Debian
    root filesystem built by C(mmdebstrap) (the essential set plus the runtime packages of the C(base_image) role,
    without documentation, manual pages and translations), cached by its inputs; the same roles then run with a local
    connection into an overlay of that root filesystem, and what they add becomes the one app layer (C(umoci)).
    The image runs as a non-root user, with the entrypoint and stop signal of the service definition, environment
    defaults and the OCI labels C(org.opencontainers.image.version), C(.revision) (git hash), C(.created) and
    C(.source). Same inputs give the same manifest digest (created times from E(SOURCE_DATE_EPOCH), default 0).
    Needs root (mmdebstrap in root mode, an overlay mount).
  - The input digest (template, roles, artifact source, vars) identifies an image. When an image with that input
    digest exists, nothing is baked (cache hit, C(changed=false), no Packer run).
  - An image name never points at other content. Baking different inputs under an existing version is an error;
    bake a new version (for example a new build id in the build metadata) instead.
  - A local image whose files or file modes no longer match its content digest is refused, and so is one whose
    C(image.json) claims another target, artifact, version or entrypoint than its place in the store.
  - A forced rebake replaces the bundle atomically; what a killed bake or promotion left in the store
    (C(.staging-*), C(.promote-*), C(.old-*)) is cleaned by the next bake.
  - Packer runs through packer-py; what was built is read from the Packer manifest, never from Packer's output.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
requirements:
  - packer >= 1.6.6 on PATH (targets local and gce)
  - umoci, mmdebstrap and root (target oci)
  - packer.py >= 0.3.0 (Python)
  - ansible-core (ansible-playbook, used by the local target)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
options:
  artifact:
    description:
      - The artifact to bake, for example C(catalog).
      - 2 to 32 lowercase letters, digits and C(-), starting with a letter.
    type: str
    required: true
  version:
    description:
      - Exact semver version C(MAJOR.MINOR.PATCH[-pre][+build]), for example C(1.5.6+34e57f0.b456).
      - The build metadata carries the git hash and the CI build id (see the P(phoenix.deploy.semver_build#filter)
        filter).
      - C(latest) and other mutable tags are refused.
      - "For the I(oci) target the image tag is the version with C(+) mapped to C(_) (OCI tags cannot hold C(+)),
        for example C(1.5.6_34e57f0.b456) (see the P(phoenix.deploy.oci_tag#filter) filter)."
    type: str
    required: true
  source:
    description:
      - Directory holding the artifact to install, for example the collection's C(examples/catalog).
    type: path
    required: true
  target:
    description:
      - Where the image is baked.
      - C(local) runs the roles into a directory with a local connection (Packer's C(null) builder).
      - C(gce) builds a Google Compute Engine image from a Debian image family with Packer's C(ansible)
        provisioner; needs O(vars) C(project_id) and Google credentials.
      - C(oci) builds an OCI image layout with C(mmdebstrap) and C(umoci), no Packer and no container daemon.
    type: str
    choices: [local, gce, oci]
    default: local
  vars:
    description:
      - Extra Packer variables of the template, for example C(fault), C(python), C(project_id), C(zone).
      - "C(fault) is baked into the image as a property of that image, for tests, for example
        V({error_rate: 0.5}), V({latency_ms: 800}) or V({crash_at_start: true})."
      - Variables the module sets itself (artifact, version, image_name, source_dir, image_root, manifest_path,
        input_digest, git_hash, build_id) are refused.
      - The I(oci) target takes only C(fault), C(entrypoint) and C(source_url) (the C(org.opencontainers.image.source)
        label; default the collection's repository).
    type: dict
    default: {}
  store:
    description:
      - Directory of the image store.
      - Defaults to C($PHOENIX_STATE_DIR/images), or C(~/.local/state/phoenix/images) without E(PHOENIX_STATE_DIR).
    type: path
  project_dir:
    description:
      - Directory holding C(packer/image.pkr.hcl) and C(roles/) (the phoenix.deploy checkout or installed
        collection).
      - Defaults to E(PHOENIX_ROOT).
    type: path
  force:
    description:
      - Run Packer even when an image with the same input digest exists, for example to repair a local image that
        was modified after baking. The rebuilt image must have the same content digest as the recorded one.
    type: bool
    default: false
  registry:
    description:
      - Registry URL (for example the dev registry of the infra outputs, C(registries.dev), such as
        C(http://127.0.0.1:24010)) to push an I(oci) image to, as O(repository)C(:<version tag>) with its digest
        preserved. The registry must answer before anything is baked.
      - Tags are immutable; pushing a version whose tag points at another digest fails, naming both digests.
      - Only with O(target=oci).
    type: str
  repository:
    description:
      - Repository in O(registry); defaults to O(artifact). Lowercase path parts, no C(..).
    type: str
  retain:
    description:
      - With O(cleanup=true), how many of the newest images of the artifact to keep (besides O(live) images and
        the image of this task).
    type: int
    default: 5
  live:
    description:
      - Images live in some environment (names or digests); never removed by O(cleanup).
    type: list
    elements: str
    default: []
  cleanup:
    description:
      - Remove the images of the artifact that O(retain) and O(live) do not keep.
    type: bool
    default: false
notes:
  - Supports check mode (reports whether a bake would happen, runs nothing) and diff mode.
seealso:
  - name: Packer HCL2 templates
    description: The template language of C(packer/image.pkr.hcl).
    link: https://developer.hashicorp.com/packer/docs/templates/hcl_templates
"""

EXAMPLES = r"""
- name: Bake catalog 1.5.6 locally
  phoenix.deploy.image_bake:
    artifact: catalog
    version: "{{ '1.5.6' | phoenix.deploy.semver_build(git_hash, build_id) }}"
    source: "{{ playbook_dir }}/../examples/catalog"
  register: baked

- name: Bake a version that fails half of its requests (for canary tests)
  phoenix.deploy.image_bake:
    artifact: catalog
    version: 1.5.7-faulty+34e57f0.b457
    source: examples/catalog
    vars:
      fault:
        error_rate: 0.5

- name: Bake for GCE
  phoenix.deploy.image_bake:
    artifact: catalog
    version: 1.5.6+34e57f0.b456
    source: examples/catalog
    target: gce
    vars:
      project_id: my-project
      zone: europe-west1-b

- name: Bake an OCI image (no Docker daemon); the tag is 1.5.6_34e57f0.b456
  phoenix.deploy.image_bake:
    artifact: catalog
    version: 1.5.6+34e57f0.b456
    source: examples/catalog
    target: oci

- name: Keep the newest 3 images plus those live in an environment
  phoenix.deploy.image_bake:
    artifact: catalog
    version: 1.5.6+34e57f0.b456
    source: examples/catalog
    cleanup: true
    retain: 3
    live:
      - catalog-v1-5-5--9a0b1c2-b450
"""

RETURN = r"""
image:
  description: The image (baked now or found in the cache).
  returned: success
  type: dict
  contains:
    name:
      description: Deterministic image name, valid for GCE and as an OCI tag.
      type: str
      sample: catalog-v1-5-6--34e57f0-b456
    id:
      description: Image id; the content digest for local images, the Packer artifact id for GCE, the manifest digest
        for OCI images.
      type: str
      sample: sha256:5f9fd9003d55257d1a921c0bbcb770f5622f05f9e2cecc5e8382881f2cd5ed82
    digest:
      description: The image digest; the content digest for local images, the image id for GCE images.
      type: str
      sample: sha256:5f9fd9003d55257d1a921c0bbcb770f5622f05f9e2cecc5e8382881f2cd5ed82
    content_digest:
      description: sha256 over the image root (local images).
      type: str
      sample: sha256:5f9fd9003d55257d1a921c0bbcb770f5622f05f9e2cecc5e8382881f2cd5ed82
    input_digest:
      description: sha256 over template, roles, artifact source and vars; the cache key.
      type: str
      sample: sha256:078501222a6961b9aed7e59d51c28c50f3959741c237c7e09ae4a772d123ab1f
    path:
      description: The image bundle directory (local images).
      type: str
      sample: /srv/phoenix/.state/images/local/catalog/catalog-v1-5-6--34e57f0-b456
    artifact:
      description: The artifact.
      type: str
      sample: catalog
    version:
      description: The version.
      type: str
      sample: 1.5.6+34e57f0.b456
    target:
      description: The bake target.
      type: str
      sample: local
    created_at:
      description: When the image was baked (UTC, ISO 8601); null in check mode before a bake.
      type: str
      sample: "2025-01-31T12:00:00Z"
    git_hash:
      description: Git hash from the build metadata.
      type: str
      sample: 34e57f0
    build_id:
      description: CI build id from the build metadata.
      type: str
      sample: "456"
    fault:
      description: The fault baked into the image (empty when none).
      type: dict
      sample: {}
    oci:
      description: OCI images only.
      type: dict
      returned: target oci
      contains:
        layout:
          description: The OCI image layout directory (the image is tagged C(image) inside it).
          type: str
        tag:
          description: The OCI tag of the version.
          type: str
          sample: 1.5.6_34e57f0.b456
        manifest_digest:
          description: The manifest digest.
          type: str
        layers:
          description: Layer digests, base layer first.
          type: list
          elements: str
        size:
          description: Bytes of the compressed layers and the config (what a registry stores).
          type: int
        uncompressed_size:
          description: Bytes of the uncompressed layers.
          type: int
        base_key:
          description: The input digest of the cached base layer.
          type: str
        base_built:
          description: Whether this bake built the base layer (false when it came from the cache).
          type: bool
reference:
  description: The pushed image, by digest (C(host/repository@sha256:...)); what deploys reference.
  returned: with O(registry)
  type: str
  sample: 127.0.0.1:24010/catalog@sha256:5f9fd9003d55257d1a921c0bbcb770f5622f05f9e2cecc5e8382881f2cd5ed82
pushed:
  description: Whether the push wrote anything (false when the tag already pointed at this digest).
  returned: with O(registry)
  type: bool
pruned_bases:
  description:
    - With O(target=oci), the cached base layers (C(<store>/.oci-base/<key>/)) this bake removed, by key. A bake keeps
      the two most recently used base layers, never one another bake is building on.
  returned: when an oci image was baked (not a cache hit)
  type: list
  elements: str
cache_hit:
  description: Whether an image with the same input digest existed (no Packer run).
  returned: success
  type: bool
  sample: true
packer_ran:
  description: Whether Packer ran.
  returned: success
  type: bool
  sample: false
removed:
  description: Images removed by O(cleanup) (would be removed, in check mode).
  returned: success
  type: list
  elements: dict
  sample: [{"name": "catalog-v1-5-0--0a1b2c3-b400", "id": "sha256:...", "path": "/srv/images/..."}]
duration:
  description: Seconds the module spent.
  returned: success
  type: float
  sample: 0.012
"""

import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.phoenix.deploy.plugins.module_utils import images, packer_runner
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule


def argument_spec():
    return dict(
        artifact=dict(type="str", required=True),
        version=dict(type="str", required=True),
        source=dict(type="path", required=True),
        target=dict(type="str", choices=["local", "gce", "oci"], default="local"),
        vars=dict(type="dict", default={}),
        store=dict(type="path"),
        project_dir=dict(type="path"),
        force=dict(type="bool", default=False),
        registry=dict(type="str"),
        repository=dict(type="str"),
        retain=dict(type="int", default=5),
        live=dict(type="list", elements="str", default=[]),
        cleanup=dict(type="bool", default=False),
    )


class ImageBaker(object):
    """Validate, look up, bake, report; the engine lives in module_utils.images."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def fail(self, exc):
        """``fail_phoenix`` (the message names the option and what is allowed; ``param`` is the
        option), plus ``option``, the older name of ``param`` in this module's results."""
        self.module.fail_phoenix(exc, option=exc.param)

    def run(self):
        t0 = time.monotonic()
        p = self.params
        if p["retain"] < 0:
            self.fail(images.ImageError("retain must be 0 or more, got %d" % p["retain"], "retain"))
        try:
            req = images.BakeRequest(
                artifact=p["artifact"], version=p["version"], source=p["source"], target=p["target"],
                variables=p["vars"], store=p["store"], project_dir=p["project_dir"], force=p["force"])
            reg = None
            if p["registry"] is not None or p["repository"] is not None:
                reg, repo = images.open_registry(p["registry"], p["repository"] or p["artifact"], p["target"])
            before = sorted(d["name"] for d in req.store.images(req.target, req.artifact))
            result = images.bake(req, check_mode=self.module.check_mode, retain=p["retain"], live=p["live"],
                                 cleanup=p["cleanup"])
            if reg is not None:
                result.update(images.push(result, reg, repo, check_mode=self.module.check_mode))
                result["changed"] = result["changed"] or result["pushed"]
        except PhoenixError as exc:  # ImageError, PackerError, VersionError
            self.fail(exc)

        result["duration"] = round(time.monotonic() - t0, 3)
        for warning in result.pop("warnings", []):
            self.module.warn(warning)
        if result["changed"]:
            removed = set(r["name"] for r in result["removed"])
            after = sorted((set(before) | {result["image"]["name"]}) - removed)
            result["diff"] = {
                "before": {"images": before},
                "after": {"images": after, "baked": result["image"]["name"] if not result["cache_hit"] else None},
            }
        return result


def main():
    module = PhoenixModule(argument_spec=argument_spec(), supports_check_mode=True)
    if not packer_runner.HAS_PACKERPY:
        module.fail_json(msg=missing_required_lib("packer.py"), exception=str(packer_runner.PACKERPY_IMPORT_ERROR))
    module.exit_json(**ImageBaker(module).run())


if __name__ == "__main__":
    main()
