#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_info
short_description: Live release, release history and running instances of an artifact in an environment
version_added: 0.1.0
description:
  - Reads the release store (history, lock) and the platform (server groups, instance health) of one
    artifact in one environment. Changes nothing.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  history:
    description: How many of the newest releases to return.
    type: int
    default: 20
attributes:
  check_mode:
    description: Read only; runs the same in check mode.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
extends_documentation_fragment:
  - phoenix.deploy.target
requirements:
  - supervisor (local platform)
"""

EXAMPLES = r"""
- name: What runs in ci
  phoenix.deploy.release_info:
    artifact: catalog
    environment: ci
    project_path: infra
    stack: local
  register: ci

- name: Show the live version
  ansible.builtin.debug:
    msg: "{{ ci.live.version }} ({{ ci.live.release_id }}), {{ ci.instances | length }} instance(s)"
"""

RETURN = r"""
live:
  description: The live release (id, version, image, strategy, outcome, C(analysed), timings, CI build URL), or null.
  returned: always
  type: dict
history:
  description:
    - The newest releases, oldest first, with their events.
    - Each release's C(analysed) says whether analysis judged it (V(pass), V(fail), V(inconclusive),
      V(none) when deployed with C(analysis=none), null without analysis); C(analysis_state) has the
      window counts (C(windows), C(passed), C(failed), C(inconclusive), C(failure_limit)).
  returned: always
  type: list
  elements: dict
groups:
  description: Server groups on the platform (name, release, size, weight, attached, ready/total).
  returned: always
  type: list
  elements: dict
instances:
  description: Every instance with its group and health state (ready, starting, failed, draining).
  returned: always
  type: list
  elements: dict
lock:
  description: Who holds the rollout lock, or null.
  returned: always
  type: dict
"""

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule, argspec
from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout

ARGUMENT_SPEC = dict(
    targets.COMMON_SPEC,
    history=dict(type="int", default=20),
)


def main():
    module = PhoenixModule(argument_spec=argspec(ARGUMENT_SPEC), supports_check_mode=True,
                           mutually_exclusive=[("infra", "project_path")],
                           required_together=[("project_path", "stack")])
    p = module.params
    if p["history"] < 0:
        module.fail_json(msg="history: %d; allowed 0 or more releases" % p["history"], param="history")
    try:
        infra = targets.load_infra(p)
        platform = targets.make_platform(infra, p["image_store"])
        engine = Rollout(platform, targets.make_store(p, infra), p["artifact"], p["environment"])
        info = engine.info()
    except PhoenixError as exc:  # every engine error, the release store's name checks included
        module.fail_phoenix(exc)
    instances = []
    for group in info["groups"]:
        for inst in group.pop("instances"):
            instances.append(dict(inst, group=group["name"], release_id=group["release_id"]))
    history = info["history"][-p["history"]:] if p["history"] else []
    module.exit_json(changed=False, live=info["live"], history=history, groups=info["groups"],
                     instances=instances, lock=info["lock"])


if __name__ == "__main__":
    main()
