#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_promote
short_description: Promote a tested image to prod (image stores, or dev to prod registry by digest)
version_added: 0.1.0
description:
  - Copies the image of O(artifact) O(version) from the test store to the prod store, by content
    digest, only after it had a successful release in one of O(sources) that analysis judged
    (release C(analysed=pass)) or that was deployed with an explicit C(analysis=none) (C(analysed=none)).
    A release whose analysis was inconclusive or that had no analysis does not qualify.
  - The copy is verified against the tested digest (contents and file modes) before it becomes visible;
    what a killed promotion left (C(.promote-*)) is removed by the next one.
  - With O(verify_only=true) nothing is copied; the module fails unless the prod store holds the
    image with the tested digest (the guard a prod deploy runs first).
  - With O(target=oci) the image is a container image in the dev registry, tagged with the version
    (C(+) becomes C(_), for example C(1.4.0_34e57f0.b456)). It is copied by digest from
    C(<dev>/<artifact>@sha256:...) to C(<prod>/<artifact>:<tag>) with digests preserved, and the digest is
    read back from prod; a prod tag that already points at another digest is refused, naming both digests.
    V(latest), V(stable) and other non-semver versions are refused.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  artifact:
    description: The deployable service, for example V(catalog).
    type: str
    required: true
  version:
    description: Semver version of the baked image.
    type: str
    required: true
  target:
    description: What the image is; V(local) bundles in image stores, V(oci) container images in registries.
    type: str
    choices: [local, oci]
    default: local
  test_store:
    description: Image store the bakes land in. Required with O(target=local).
    type: path
  prod_store:
    description: Image store of promoted images. Required with O(target=local).
    type: path
  registries:
    description:
      - With O(target=oci), the dev and prod registry URLs (the C(registries) output of the infra stack),
        a dict with keys C(dev) and C(prod), for example C(http://127.20.0.1:24003) and C(http://127.20.0.1:24004).
    type: dict
  registry_authfile:
    description: With O(target=oci), a containers auth file (C(auth.json)) for both registries.
    type: path
  digest:
    description:
      - With O(target=oci), the digest (C(sha256:...)) to promote; it must be what the version's tag in the dev
        registry points at. Default is that digest.
    type: str
  release_store:
    description: Release store (history per artifact and environment). Needed unless O(verify_only=true).
    type: path
  sources:
    description: Environments whose successful, analysed (or C(analysis=none)) release qualifies an image.
    type: list
    elements: str
    default: [ci, integrated_qa]
  verify_only:
    description: Only check that the image is promoted and matches the tested digest.
    type: bool
    default: false
attributes:
  check_mode:
    description: Reports whether the image would be copied; copies nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: Promote catalog 1.4.0+b456 after its ci release
  phoenix.deploy.image_promote:
    artifact: catalog
    version: 1.4.0+b456
    test_store: .state/images
    prod_store: .state/images-prod
    release_store: .state/releases

- name: Promote a container image from the dev to the prod registry, by digest
  phoenix.deploy.image_promote:
    target: oci
    artifact: catalog
    version: 1.4.0+34e57f0.b456
    registries: "{{ infra.outputs.registries }}"
    release_store: .state/releases

- name: Refuse a prod deploy of an unpromoted image
  phoenix.deploy.image_promote:
    artifact: catalog
    version: 1.4.0+b456
    test_store: .state/images
    prod_store: .state/images-prod
    verify_only: true
"""

RETURN = r"""
image:
  description:
    - Image reference C(<name>@<content digest>) in the prod store, or with O(target=oci) the pinned prod
      registry reference C(<prod registry>/<artifact>@sha256:...) that deploys use.
  returned: success
  type: str
  sample: catalog-v1-4-0--b456@sha256:0f3c...
digest:
  description: Content digest (local) or manifest digest (oci) of the promoted image.
  returned: success and not verify_only
  type: str
tag:
  description: With O(target=oci), the prod tag (the version, C(+) mapped to C(_)).
  returned: success, target oci and not verify_only
  type: str
  sample: 1.4.0_34e57f0.b456
qualified_by:
  description: The release that qualified the image (environment, release id, C(analysed) V(pass) or V(none)).
  returned: success and not verify_only
  type: dict
"""

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule, argspec
from ansible_collections.phoenix.deploy.plugins.module_utils import promotion

ARGUMENT_SPEC = dict(
    artifact=dict(type="str", required=True),
    version=dict(type="str", required=True),
    target=dict(type="str", choices=["local", "oci"], default="local"),
    test_store=dict(type="path"),
    prod_store=dict(type="path"),
    registries=dict(type="dict"),
    registry_authfile=dict(type="path"),
    digest=dict(type="str"),
    release_store=dict(type="path"),
    sources=dict(type="list", elements="str", default=["ci", "integrated_qa"]),
    verify_only=dict(type="bool", default=False),
)


def main():
    module = PhoenixModule(argument_spec=argspec(ARGUMENT_SPEC), supports_check_mode=True,
                           required_if=[("verify_only", False, ("release_store",)),
                                        ("target", "local", ("test_store", "prod_store")),
                                        ("target", "oci", ("registries",))])
    p = module.params
    if p["target"] == "oci":
        promote_container(module)
    try:
        if p["verify_only"]:
            ref = promotion.require_promoted(p["artifact"], p["version"], p["test_store"], p["prod_store"])
            module.exit_json(changed=False, image=ref)
        result = promotion.promote(p["artifact"], p["version"], p["test_store"], p["prod_store"],
                                   p["release_store"], p["sources"], check_mode=module.check_mode)
    except PhoenixError as exc:
        module.fail_phoenix(exc)
    result["image"] = "%s@%s" % (result["image"], result["digest"])
    module.exit_json(**result)


def promote_container(module):
    p = module.params
    options = {"authfile": p["registry_authfile"]} if p["registry_authfile"] else {}
    try:
        if p["verify_only"]:
            ref = promotion.require_promoted_container(p["artifact"], p["version"], p["registries"],
                                                       digest=p["digest"], **options)
            module.exit_json(changed=False, image=ref)
        result = promotion.promote_container(p["artifact"], p["version"], p["registries"], p["release_store"],
                                             p["sources"], digest=p["digest"], check_mode=module.check_mode,
                                             **options)
    except PhoenixError as exc:
        module.fail_phoenix(exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
