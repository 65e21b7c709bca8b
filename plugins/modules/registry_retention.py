#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_retention
short_description: Remove old container images of an artifact from the dev or prod registry
version_added: 0.1.0
description:
  - Keeps the newest O(retain) versions of O(artifact) in registry O(registry) (newest by semver precedence,
    then CI build id), plus every image that is live in some environment of O(release_store), the release a
    live one would roll back to, releases in progress, and, in the dev registry, every image promoted to prod.
    Tags that are not versions are never touched. Deletes the manifests of the rest (by digest).
  - The same rules as the retention of local image bundles (O(phoenix.deploy.image_bake#module:cleanup=true)).
  - Deleting from the prod registry needs O(confirm=prod); without it the module fails before it reads anything.
    The local prod registry also runs with C(storage.delete) off, so a delete there fails naming that setting.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  artifact:
    description: The deployable service (the repository name in both registries), for example V(catalog).
    type: str
    required: true
  registries:
    description: The dev and prod registry URLs (the C(registries) output of the infra stack).
    type: dict
    required: true
  registry:
    description: Which registry to clean up.
    type: str
    choices: [dev, prod]
    default: dev
  retain:
    description: How many of the newest versions to keep besides the live and promoted ones.
    type: int
    default: 5
  release_store:
    description: Release store; the images its environments run (or would roll back to) are kept.
    type: path
    required: true
  confirm:
    description: Must be V(prod) to delete from the prod registry.
    type: str
  registry_authfile:
    description: A containers auth file (C(auth.json)) for both registries.
    type: path
attributes:
  check_mode:
    description: Reports what would be removed; removes nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
"""

EXAMPLES = r"""
- name: Keep the newest 5 catalog images in the dev registry (plus live and promoted ones)
  phoenix.deploy.registry_retention:
    artifact: catalog
    registries: "{{ infra.outputs.registries }}"
    release_store: .state/releases
    retain: 5

- name: Clean up the prod registry (asked by name)
  phoenix.deploy.registry_retention:
    artifact: catalog
    registries: "{{ infra.outputs.registries }}"
    registry: prod
    confirm: prod
    release_store: .state/releases
"""

RETURN = r"""
registry:
  description: URL of the registry that was cleaned up.
  returned: success
  type: str
kept:
  description: Images kept, newest first (C(tag), C(digest)).
  returned: success
  type: list
  elements: dict
removed:
  description: Images whose manifests were (or in check mode would be) deleted (C(tag), C(digest)).
  returned: success
  type: list
  elements: dict
"""

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule, argspec
from ansible_collections.phoenix.deploy.plugins.module_utils import promotion

ARGUMENT_SPEC = dict(
    artifact=dict(type="str", required=True),
    registries=dict(type="dict", required=True),
    registry=dict(type="str", choices=["dev", "prod"], default="dev"),
    retain=dict(type="int", default=5),
    release_store=dict(type="path", required=True),
    confirm=dict(type="str"),
    registry_authfile=dict(type="path"),
)


def main():
    module = PhoenixModule(argument_spec=argspec(ARGUMENT_SPEC), supports_check_mode=True)
    p = module.params
    options = {"authfile": p["registry_authfile"]} if p["registry_authfile"] else {}
    try:
        result = promotion.container_retention(p["artifact"], p["registries"], p["registry"], p["retain"],
                                               p["release_store"], confirm=p["confirm"],
                                               check_mode=module.check_mode, **options)
    except PhoenixError as exc:
        module.fail_phoenix(exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
