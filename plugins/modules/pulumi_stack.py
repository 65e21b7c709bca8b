#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pulumi_stack
short_description: Deploy or destroy a Pulumi stack with the Automation API
version_added: 0.1.0
description:
  - Brings a stack of a Pulumi project on disk to the wanted state, in the manner of
    C(community.general.terraform), through Pulumi's Automation API.
  - C(changed) is decided from the engine's structured change summary, never from the CLI text.
  - Check mode runs a preview; diff mode shows the config and resource changes of that preview.
  - The stack's secrets passphrase comes from E(PULUMI_CONFIG_PASSPHRASE) or
    O(passphrase); only the stack named V(local) has a default.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  project_path:
    description: Directory holding the project's C(Pulumi.yaml).
    type: path
    required: true
  stack:
    description: Stack name, for example V(local) or V(gcp-prod).
    type: str
    required: true
  state:
    description:
      - V(present) runs C(pulumi up); V(absent) runs C(pulumi destroy) (the stack and its config are kept).
    type: str
    choices: [present, absent]
    default: present
  config:
    description:
      - Stack configuration to set before the update. Keys without a namespace belong to the project.
      - "A value is a string, number, bool, list or dict (lists and dicts are stored as JSON), or
        a dict C({value: ..., secret: true}) for a secret."
      - Never logged whole; secret values are masked in all module output unless O(show_secrets=true)
        (then the whole task result is no_log).
    type: dict
    default: {}
  refresh:
    description: Refresh the stack's state from the real resources before the update.
    type: bool
    default: false
  target:
    description: Only update (or destroy) these resource URNs.
    type: list
    elements: str
    default: []
  show_secrets:
    description:
      - Return secret outputs in clear text. By default they read V([secret]).
      - With V(true) the task's result is no_log (an action plugin marks it), so callbacks print it censored
        at any verbosity; the registered variable holds the values.
    type: bool
    default: false
  passphrase:
    description: Passphrase of the stack's secrets provider. Overrides E(PULUMI_CONFIG_PASSPHRASE).
    type: str
  backend_url:
    description:
      - State backend. Defaults to E(PULUMI_BACKEND_URL), else a file backend in the project's C(.state) dir.
    type: str
  release_lock:
    description:
      - Run C(pulumi up) / C(pulumi destroy) under the release-store locks of every artifact of the
        stack's environment, the same per-(artifact, environment) locks a rollout takes (holder action
        V(infra)). A rollout cannot start while they are held, and the stack is not changed while a
        rollout runs.
      - When a rollout holds one and a preview shows that C(pulumi up) would change nothing, the up
        is skipped (it cannot fight the rollout) and RV(up_skipped) names the holder. Otherwise the
        module waits up to O(release_lock.timeout) seconds, then fails naming the holder, having
        changed nothing.
      - The locks are those of the release store the rollouts of the environment use, chosen as
        M(phoenix.deploy.rollout) chooses it from O(release_lock.store_backend) and the stack's current
        outputs (the outputs the rollouts read) - on a C(kubernetes) platform the
        C(coordination.k8s.io) Leases in the cluster, else the lock files in O(release_lock.store).
      - When that is the Kubernetes store and its API server does not answer (the cluster is down, which
        is what C(pulumi up) restores), no rollout can be running there - a rollout that cannot renew its
        Lease stops writing after 2/3 of the lease (20 s) - so after trying that long the module proceeds
        without the locks and warns with the reason. So it does when the stack has no outputs yet.
        Any other store error (credentials, RBAC) fails, having changed nothing.
      - Not used in check mode (a preview changes nothing).
    type: dict
    suboptions:
      store:
        description:
          - The release store directory the rollouts of this environment use (the file store's history
            and locks; with the Kubernetes store only the controller's local files).
        type: path
        required: true
      store_backend:
        description:
          - Where the rollouts of this environment keep their locks, as M(phoenix.deploy.rollout)'s
            O(phoenix.deploy.rollout#module:store_backend).
          - V(auto) - the Kubernetes store when the stack's current outputs are those of a C(kubernetes)
            platform, else the file store (also for a stack never brought up). A stack whose settings
            file sets the project's C(platform) to another platform gets the file store without its outputs
            being read.
          - V(file) - lock files in O(release_lock.store).
          - V(kubernetes) - Leases in the namespace of the stack outputs' C(kubernetes) (needs the Python
            package C(kubernetes)).
        type: str
        choices: [auto, file, kubernetes]
        default: auto
      environment:
        description: The environment whose infrastructure this stack is.
        type: str
        required: true
      artifacts:
        description: The artifacts deployed to that environment (one lock each).
        type: list
        elements: str
        required: true
      timeout:
        description: Seconds to wait for a rollout holding a lock to end; V(0) fails at once.
        type: float
        default: 0
attributes:
  check_mode:
    description: Runs C(pulumi preview) with the wanted config; the stack's settings file is put back afterwards.
    support: full
  diff_mode:
    description: Shows config keys and resource URNs before and after.
    support: full
notes:
  - Needs the Pulumi CLI (C(make setup) builds it into C(.tools/bin)) and the C(pulumi) Python package.
requirements:
  - pulumi
"""

EXAMPLES = r"""
- name: Provision the local stack
  phoenix.deploy.pulumi_stack:
    project_path: "{{ playbook_dir }}/../infra"
    stack: local
    config:
      platform: local
      artifacts: [catalog]
  register: infra

- name: Show where the load balancer listens
  ansible.builtin.debug:
    msg: "{{ infra.outputs.load_balancer.url }}"

- name: Preview a production change (check mode)
  phoenix.deploy.pulumi_stack:
    project_path: infra
    stack: gcp-prod
    config:
      db_password:
        value: "{{ vault_db_password }}"
        secret: true
  check_mode: true
  diff: true

- name: Destroy the local stack
  phoenix.deploy.pulumi_stack:
    project_path: infra
    stack: local
    state: absent

- name: Update the ci stack, never during a rollout of one of its artifacts
  phoenix.deploy.pulumi_stack:
    project_path: infra
    stack: ci
    release_lock:
      store: "{{ lookup('ansible.builtin.env', 'PHOENIX_STATE_DIR') }}/releases"
      environment: ci
      artifacts: [catalog]
      timeout: 300
"""

RETURN = r"""
outputs:
  description: Stack outputs after the run (the preview's current outputs in check mode). Secrets read V([secret]).
  returned: always
  type: dict
  sample: {"platform": "local", "database": {"host": "127.20.0.1", "password": "[secret]"}}
summary:
  description: The engine's change summary, operation to count.
  returned: always
  type: dict
  sample: {"create": 4, "same": 1}
steps:
  description: The resource steps that change something (operation, URN, type, changed properties).
  returned: always
  type: list
  elements: dict
  sample: [{"op": "create", "urn": "urn:pulumi:local::phoenix-infra::...", "type": "...", "diffs": []}]
config_changes:
  description: Config keys set by this run, before and after (secret values read V([secret])).
  returned: always
  type: dict
refreshed:
  description: What the refresh found changed, when O(refresh) was set.
  returned: when refresh is true
  type: dict
up_skipped:
  description:
    - Why C(pulumi up) did not run - a rollout held a lock of O(release_lock) and the preview showed
      nothing to change.
  returned: when the up was skipped
  type: str
  sample: "catalog/ci is locked by deploy of release v007 by pid 4242 on host ci-1 (user jenkins) since ..."
"""

import math
import os

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import (
    PhoenixModule, argspec, secret_config_leaves)
from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack as engine

ARGUMENT_SPEC = dict(
    project_path=dict(type="path", required=True),
    stack=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    config=dict(type="dict", default={}, no_log=True),
    refresh=dict(type="bool", default=False),
    target=dict(type="list", elements="str", default=[]),
    show_secrets=dict(type="bool", default=False),
    passphrase=dict(type="str", no_log=True),
    backend_url=dict(type="str"),
    release_lock=dict(type="dict", options=dict(
        store=dict(type="path", required=True),
        store_backend=dict(type="str", choices=["auto", "file", "kubernetes"], default="auto"),
        environment=dict(type="str", required=True),
        artifacts=dict(type="list", elements="str", required=True),
        timeout=dict(type="float", default=0),
    )),
)


class StackManager:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.runner = engine.StackRunner(p["project_path"], p["stack"], p["backend_url"], p["passphrase"])
        self.result = dict(changed=False, outputs={}, summary={}, steps=[], config_changes={})
        lock = p["release_lock"]
        self.locks = None
        if lock and not module.check_mode:
            timeout = lock["timeout"]
            if not math.isfinite(timeout) or timeout < 0:
                raise PhoenixError("release_lock.timeout is %r; give a number of seconds >= 0"
                                   % timeout, param="release_lock")
            infra = None
            platform = self.runner.settings_value("platform")
            if lock["store_backend"] == "auto" and platform not in (None, "kubernetes"):
                infra = {"platform": platform}  # not a cluster: the file store, no outputs to read
            elif lock["store_backend"] != "file" and self.runner.exists():
                # the outputs the rollouts read (targets.load_infra): they say which store those use
                infra = self.runner.outputs(show_secrets=True)
                module.add_secrets(infra)
            self.locks = engine.EnvironmentLocks(lock["store"], lock["environment"], lock["artifacts"],
                                                 store_backend=lock["store_backend"], infra=infra)

    def run(self):
        p = self.module.params
        if self.locks is None:
            return self._run()
        what = "pulumi %s of stack '%s'" % ("destroy" if p["state"] == "absent" else "up", p["stack"])
        nothing_to_do = self._nothing_to_do if p["state"] == "present" else None
        held = self.locks.acquire(what, p["release_lock"]["timeout"], nothing_to_do=nothing_to_do)
        if self.locks.warning:
            self.module.warn("%s: %s" % (what, self.locks.warning))
            self.locks.warning = None
        if held is not None:
            self.result["up_skipped"] = str(held)
            self.result["outputs"] = self.runner.outputs(p["show_secrets"])
            self.module.warn("%s skipped: %s; a preview shows nothing to change" % (what, held))
            return None
        try:
            return self._run()
        finally:
            self.locks.release()
            if self.locks.warning:
                self.module.warn("%s: %s" % (what, self.locks.warning))

    def _nothing_to_do(self):
        """True if the up would change nothing (config and resources, by a preview)."""
        p = self.module.params
        if not self.runner.exists() or self.runner.config_changes(p["config"]):
            return False
        return not self.runner.preview(p["target"])["changed"]

    def _run(self):
        p = self.module.params
        if p["state"] == "absent":
            return self.absent()
        if self.module.check_mode:
            return self.preview_present()
        return self.present()

    def _configure(self):
        """Write the wanted stack config when it differs (an unchanged one is
        not written again: one CLI run less); the changes, as config_changes."""
        changes = self.runner.config_changes(self.module.params["config"])
        if changes:
            self.runner.apply_config(self.module.params["config"])
        return changes

    def present(self):
        p = self.module.params
        changes = self._configure()
        if p["refresh"]:
            self.result["refreshed"] = self.runner.refresh()
        res = self.runner.up(p["target"])
        self._finish(res, changes)

    def preview_present(self):
        """Preview with the wanted config, then put the stack's settings file back."""
        p = self.module.params
        settings = self.runner.settings_file()
        saved = None
        if os.path.exists(settings):
            with open(settings, "rb") as handle:
                saved = handle.read()
        existed = self.runner.exists()
        try:
            changes = self._configure()
            res = self.runner.preview(p["target"])
            self._finish(res, changes)
        finally:
            _restore(settings, saved)
            if not existed:
                self.runner.remove_stack()

    def absent(self):
        p = self.module.params
        if not self.runner.exists():
            return
        res = self.runner.preview_destroy(p["target"]) if self.module.check_mode else self.runner.destroy(p["target"])
        self._finish(res, {})

    def _finish(self, res, config_changes):
        self.result.update(summary=res["summary"], steps=res["steps"], config_changes=config_changes,
                           changed=bool(res["changed"] or config_changes))
        self.result["outputs"] = self.runner.outputs(self.module.params["show_secrets"])
        if self.module._diff:
            self.result["diff"] = dict(
                before=dict(config=dict((k, v[0]) for k, v in config_changes.items()),
                            resources=sorted(s["urn"] for s in res["steps"] if s["op"] != "create")),
                after=dict(config=dict((k, v[1]) for k, v in config_changes.items()),
                           resources=sorted(s["urn"] for s in res["steps"] if s["op"] != "delete")),
            )


def _restore(path, content):
    if content is None:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path, "wb") as handle:
        handle.write(content)


def main():
    # config is no_log (never logged whole); in the result only its secret values are masked, unless
    # show_secrets asked for them (then the action plugin makes the whole result no_log)
    module = PhoenixModule(argument_spec=argspec(ARGUMENT_SPEC), supports_check_mode=True,
                           partly_secret={"config": secret_config_leaves})
    if module.params["show_secrets"]:
        module.reveal(secret_config_leaves(module.params["config"]))
    if not engine.HAS_PULUMI:
        module.fail_json(msg=missing_required_lib("pulumi"), exception=str(engine.PULUMI_IMPORT_ERROR))
    try:
        manager = StackManager(module)
        manager.run()
    except PhoenixError as exc:
        module.fail_phoenix(exc)
    module.exit_json(**manager.result)


if __name__ == "__main__":
    main()
