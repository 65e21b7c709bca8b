#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollout
short_description: Phoenix-style rollout of a baked image to an environment
version_added: 0.1.0
description:
  - Rolls out one baked image of an artifact to one environment as a B(new) server group
    (rolling, recreate, blue/green or canary with analysis), then drains and destroys the old group.
    Running instances are never patched, only replaced.
  - Failed health, failed analysis or the progress deadline roll back automatically to the live release.
  - One rollout at a time per artifact and environment; a rollout whose controller died is
    converged by the next run (finished if it was live, undone otherwise).
  - The module is the rollout's controller. When the playbook that runs it is gone (killed, a CI
    abort, SIGTERM) it rolls back to the live release at the next step or poll and records why;
    a release already recorded live is finished instead.
  - A run of the same request (same action and inputs) while a controller of it holds the lock
    waits for it (up to O(timeout)) and reports its outcome; a different request fails naming
    the holder.
  - Writes a rollout report (JSON) and a PNG timeline of traffic weights and error rate per group.
  - The platform is chosen by the infra stack outputs; today V(local) (supervisord + HAProxy).
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  action:
    description:
      - V(deploy) rolls out O(version) or O(image).
      - V(promote) continues a paused canary; V(abort) stops it and gives the stable release all traffic.
      - V(rollback) returns to the release that was live before (instant while its group is warm).
    type: str
    choices: [deploy, promote, abort, rollback]
    default: deploy
  version:
    description:
      - Semver version to deploy (C(MAJOR.MINOR.PATCH[-pre][+build])); it must have been baked.
        Mutable tags such as V(latest) are refused.
    type: str
  image:
    description:
      - Image name to deploy instead of O(version), optionally pinned as C(<name>@sha256:<content digest>).
      - An OCI reference C(registry/repository@sha256:<64 hex digits>) is checked for shape here and resolved by the platform
        driver; the local platform runs baked local images only and refuses it.
    type: str
  size:
    description: Number of instances of the new server group.
    type: int
    default: 2
  strategy:
    description: How the new group replaces the live one.
    type: str
    choices: [rolling, recreate, blue_green, canary]
    default: rolling
  strategy_settings:
    description:
      - Settings of O(strategy). Error messages name them C(strategy.<setting>).
      - "V(rolling): C(max_surge), C(max_unavailable) (counts or percentages, not both 0)."
      - "V(blue_green): C(scale_down_delay) (seconds the old group stays warm), C(verify_period)."
      - "V(canary): C(steps), a list of C({set_weight: 1..100}) (increasing) and C({pause: {duration: S}});
        C({pause: {}}) waits for O(action=promote)."
      - "All: C(progress_deadline) (seconds or V(5m))."
    type: dict
    default: {}
  analysis:
    description:
      - Metric checks of the new group, in every strategy. No data or fewer than C(min_requests) requests
        is inconclusive, never a pass. Canary timed pauses judge their windows; every other traffic shift
        to the new group is followed by C(windows) analysis windows (rolling between batches, recreate
        after the switch, blue/green after the switch while the old group still takes traffic back at
        once, a first deploy once it has 100 %).
      - The analysis fails once C(failure_limit) windows failed over the whole release (not consecutive).
        A failing first deploy ends V(failed); an inconclusive one goes live recorded as not judged.
      - "Keys: C(max_error_rate) (0..1), C(max_latency_ms), C(latency_percentile) (V(avg), V(p50)..V(p99); the local platform has V(avg) only), C(min_requests),
        C(interval), C(failure_limit), C(on_inconclusive) (V(abort) or V(pause)), C(windows) (default 1)."
      - V(none) deploys without analysis on purpose; the release records C(analysed=none). Omitted, the
        release records no analysis; only releases with C(analysed) V(pass) or V(none) qualify an image
        for promotion.
    type: raw
  env:
    description:
      - Environment configuration injected into every instance at deploy time (never baked).
        Port, bind address and database credentials come from the infra outputs.
      - Keys match C([A-Za-z_][A-Za-z0-9_]*); C(PORT), C(BIND), C(IMAGE_DIR), C(DRAIN_TIMEOUT) and C(DB_*) are
        set by the platform and refused here. Values are strings or numbers (multi-line values such as a PEM
        work; NUL bytes do not).
      - A release is keyed by image, size and config (this env plus what the platform injects, the database
        password as a digest). Redeploying the live version with a changed env or a rotated password rolls
        out a new release.
    type: dict
    default: {}
  secret_env:
    description:
      - Like O(env), for values that must never be logged (API keys, tokens). Injected into every
        instance exactly like O(env); the values are masked in all module output and are never written
        to events, reports or the release history.
      - A key may not be in both O(env) and O(secret_env).
      - On the gce platform each value is a Secret Manager secret version,
        C(projects/<project>/secrets/<name>/versions/<number or latest>), which the instances resolve;
        a secret value never enters instance metadata.
    type: dict
    default: {}
  wait:
    description:
      - Wait until the rollout is finished (or paused). With V(false) the rollout continues in a
        detached controller process and the module returns once it holds the lock;
        follow it with M(phoenix.deploy.release_info). A detached controller does not stop with
        the playbook.
    type: bool
    default: true
  timeout:
    description:
      - Seconds the whole action may take; past it the rollout is rolled back. NaN and infinity are refused.
      - Also how long a run waits for a controller of the same request that holds the lock.
    type: float
    default: 600
  drain_timeout:
    description: Seconds in-flight requests get when an instance is drained and stopped (0 to 600).
    type: float
    default: 10
  report_dir:
    description: Where the rollout report and timeline go. Defaults to C(<store>/<artifact>/<environment>/reports).
    type: path
  ci_build_url:
    description: URL of the CI build that asked for this rollout; recorded with the release.
    type: str
  force:
    description:
      - Take over server groups of this artifact and environment that this release store did not create
        (another or an emptied store). Without it they are left alone, and an action refuses to run while
        such a group serves traffic.
    type: bool
    default: false
  infra_file:
    description:
      - A JSON file of the infra stack outputs, as C(pulumi stack output --json --show-secrets) writes it,
        for a stack this controller does not run (for example a C(gcp-*) stack an operator exported).
        Used instead of O(infra) or O(project_path) and O(stack).
      - It holds the database password, so it must not be readable by group or others (C(chmod 0600)).
    type: path
attributes:
  check_mode:
    description: Validates everything and returns the plan; touches nothing on the platform.
    support: full
  diff_mode:
    description: Live release and traffic weights per group, before and after.
    support: full
notes:
  - Events are returned in RV(events) with timestamps; run with C(-v) to see them per step.
extends_documentation_fragment:
  - phoenix.deploy.target
requirements:
  - supervisor (local platform)
  - matplotlib (for the PNG timeline; without it only the JSON report is written)
"""

EXAMPLES = r"""
- name: Read the local stack
  phoenix.deploy.pulumi_stack:
    project_path: infra
    stack: local
    show_secrets: true
  register: stack

- name: Rolling deploy of catalog 1.4.0 to ci
  phoenix.deploy.rollout:
    artifact: catalog
    environment: ci
    version: 1.4.0+abc1234.b456
    size: 4
    strategy: rolling
    strategy_settings:
      max_surge: 1
      max_unavailable: 0
    infra: "{{ stack.outputs }}"
    ci_build_url: "{{ lookup('env', 'BUILD_URL') }}"

- name: Canary with analysis, rolled back automatically when 5xx exceed 5 %
  phoenix.deploy.rollout:
    artifact: catalog
    environment: prod
    version: 1.5.0+def5678.b470
    strategy: canary
    strategy_settings:
      steps:
        - set_weight: 10
        - pause: {duration: 60}
        - set_weight: 50
        - pause: {}
    analysis:
      max_error_rate: 0.05
      min_requests: 50
      interval: 10
    project_path: infra
    stack: local

- name: Promote the paused canary
  phoenix.deploy.rollout:
    artifact: catalog
    environment: prod
    action: promote
    project_path: infra
    stack: local

- name: Roll back to the previous release
  phoenix.deploy.rollout:
    artifact: catalog
    environment: prod
    action: rollback
    project_path: infra
    stack: local
"""

RETURN = r"""
state:
  description: V(live), V(paused), V(rolled_back), V(aborted), V(failed), V(planned) (check mode) or V(in_progress) (O(wait=false)).
  returned: always
  type: str
  sample: live
msg:
  description: What happened, with the reason of any rollback (metric, value and threshold).
  returned: always
  type: str
  sample: "deploy of 1.0.1 rolled back to v001 (1.0.0): analysis failed: canary error_rate 0.5 > max 0.05 over 212 requests
    (3 failed windows of 5, limit 3)"
release:
  description:
    - The release this action created or acted on (id, version, image, strategy, track, outcome, reason, timings).
    - C(analysed) is what analysis said about it (V(pass), V(fail), V(inconclusive), V(none) for O(analysis=none),
      null without analysis); C(analysis_state) holds the window counts.
  returned: when a release was acted on
  type: dict
live:
  description: The live release after the action.
  returned: always
  type: dict
events:
  description: Timestamped events of this action (C(at) epoch seconds, C(time) ISO 8601, C(message)).
  returned: always
  type: list
  elements: dict
plan:
  description: Steps the action would run (check mode), each with a C(description).
  returned: in check mode
  type: list
  elements: dict
weights:
  description: Traffic weight per server group after the action.
  returned: always
  type: dict
  sample: {"catalog-ci-v007": 100}
report:
  description: Path of the rollout report (JSON).
  returned: when the platform was changed
  type: str
timeline:
  description: Path of the PNG timeline of traffic weights and error rate per group.
  returned: when the platform was changed and matplotlib is available
  type: str
"""

import math
import os
import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.module import PhoenixModule, argspec
from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout, RolloutError, check_env
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    LockHeld, LockHolder)
from ansible_collections.phoenix.deploy.plugins.module_utils import controller
from ansible_collections.phoenix.deploy.plugins.module_utils import report as reporting

ARGUMENT_SPEC = dict(
    targets.COMMON_SPEC,
    action=dict(type="str", choices=["deploy", "promote", "abort", "rollback"], default="deploy"),
    version=dict(type="str"),
    image=dict(type="str"),
    size=dict(type="int", default=2),
    strategy=dict(type="str", choices=["rolling", "recreate", "blue_green", "canary"],
                  default="rolling"),
    strategy_settings=dict(type="dict", default={}),
    analysis=dict(type="raw"),
    env=dict(type="dict", default={}, no_log=False),
    secret_env=dict(type="dict", default={}, no_log=True),
    wait=dict(type="bool", default=True),
    timeout=dict(type="float", default=600),
    drain_timeout=dict(type="float", default=10),
    report_dir=dict(type="path"),
    ci_build_url=dict(type="str"),
    force=dict(type="bool", default=False),
    infra_file=dict(type="path"),
)


class RolloutManager:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.params = p
        if not math.isfinite(p["timeout"]) or not 0 < p["timeout"] <= 7 * 86400:
            raise PhoenixError("timeout: %g; allowed a finite number of seconds above 0 (at most 7 days)"
                               % p["timeout"], param="timeout")
        if not math.isfinite(p["drain_timeout"]) or not 0 <= p["drain_timeout"] <= 600:
            raise PhoenixError("drain_timeout: %g; allowed a finite number of seconds from 0 to 600" % p["drain_timeout"],
                               param="drain_timeout")
        if p["analysis"] is not None and p["analysis"] != "none" and \
                not isinstance(p["analysis"], dict):
            raise PhoenixError("analysis: %r; allowed a dict of checks or 'none'" % (p["analysis"],),
                               param="analysis")
        self.infra = targets.load_infra(p)
        module.add_secrets(self.infra)  # also when read from project_path/stack
        both = sorted(set(p["env"]) & set(p["secret_env"]))
        if both:
            raise PhoenixError("secret_env: %s also in env; give each key once (secret values in secret_env)"
                               % ", ".join(both), param="secret_env")
        check_env(p["secret_env"], "secret_env")  # names keys only, never a value
        self.platform = targets.make_platform(self.infra, p["image_store"], p["drain_timeout"],
                                              check_mode=module.check_mode)
        check_secrets = getattr(self.platform, "check_secret_env", None)  # gce: references only
        if check_secrets is not None:
            check_secrets(p["secret_env"])
        self.store = targets.make_store(p, self.infra)
        self.engine = Rollout(self.platform, self.store, p["artifact"], p["environment"],
                              env=dict(list(p["env"].items()) + list(p["secret_env"].items())),
                              timeout=p["timeout"], owner=self._owner,
                              force=p["force"])
        self.image = None
        self.request = None
        self.result = dict(changed=False)

    def _owner(self, action):
        return LockHolder.current(action, request=self.request)

    def _request(self) -> str:
        p = self.params
        inputs = {}
        if p["action"] == "deploy":
            inputs = dict(version=p["version"], image=self.image["ref"], size=p["size"],
                          strategy=p["strategy"], strategy_settings=p["strategy_settings"],
                          analysis=p["analysis"], env=controller.request_digest(
                              "env", "", "", **{k: str(v) for k, v in
                                                list(p["env"].items()) +
                                                list(p["secret_env"].items())}),
                          force=p["force"])
        return controller.request_digest(p["action"], p["artifact"], p["environment"], **inputs)

    def weights(self) -> dict:
        return {g.name: g.weight for g in self.platform.groups.list_groups(
            self.params["artifact"], self.params["environment"]) if g.attached}

    def snapshot(self) -> dict:
        live = self.store.load(self.params["artifact"], self.params["environment"]).live_release()
        return {"live": {"release_id": live.release_id, "version": live.version,
                         "image": live.image} if live else None,
                "weights": self.weights()}

    def run(self):
        p = self.params
        if p["action"] == "deploy":
            Rollout.validate(p["size"], p["strategy"], p["strategy_settings"], p["analysis"])
            self.image = targets.resolve_image(p["artifact"], p["version"], p["image"],
                                               p["image_store"], infra=self.infra)
            if self.image["path"] is None:  # not a baked local image: can the platform run it?
                self.platform.groups.resolve_image(self.image["ref"], p["artifact"])
            if p["version"] is None:
                p["version"] = self.image["version"]
        self.request = self._request()
        before = self.snapshot()
        if self.module.check_mode:
            result = self.check()
        elif not p["wait"] and p["action"] in ("deploy", "promote"):
            result = self.detached()
        else:
            result = self.watched()
        self.result.update(result)
        after = self.snapshot() if not self.module.check_mode else result.pop("predicted", before)
        self.result.setdefault("weights", after["weights"])
        if self.module._diff:
            self.result["diff"] = dict(before=before, after=after)

    # -- check mode -------------------------------------------------------------
    def check(self) -> dict:
        """Check mode of every action: the engine's plan (Rollout.plan)."""
        p = self.params
        if p["action"] == "deploy":
            res = self.engine.plan("deploy", p["version"], self.image["ref"], p["size"],
                                   p["strategy"], p["strategy_settings"], p["analysis"])
        else:
            try:
                res = self.engine.plan(p["action"])
            except RolloutError as exc:  # nothing to roll back to: a real run would fail
                return dict(changed=False, state="planned", msg=exc.msg, events=[], plan=[])
        out = self._engine_result(res)
        api_plan = getattr(self.platform, "api_plan", None)  # a cloud driver lists its API calls
        if api_plan is not None and out.get("plan"):
            out["plan"] = api_plan(out["plan"])
        if getattr(self.platform, "unobserved", None):
            self.module.warn("the %s groups were not observed (%s); the plan follows the release "
                             "store" % (self.platform.name, self.platform.unobserved))
        if p["action"] != "deploy":
            out["state"] = "planned"
        if p["action"] == "deploy" and res.changed:
            new = res.plan and [s for s in res.plan if s["kind"] == "create"]
            if new:
                name = "%s-%s-(next)" % (p["artifact"], p["environment"])
                out["predicted"] = {"live": {"release_id": "(next)", "version": p["version"],
                                             "image": self.image["ref"]},
                                    "weights": {name: 100}}
        return out

    # -- real runs ---------------------------------------------------------------
    def act(self) -> dict:
        p = self.params
        sampler_platform = targets.make_platform(self.infra, p["image_store"], p["drain_timeout"])
        sampler = reporting.TimelineSampler(sampler_platform, p["artifact"], p["environment"],
                                            interval=0.5).start()
        started = time.time()
        try:
            if p["action"] == "deploy":
                res = self.engine.deploy(p["version"], self.image["ref"], p["size"], p["strategy"],
                                         p["strategy_settings"], p["analysis"], p["ci_build_url"])
            elif p["action"] == "promote":
                res = self.engine.promote()
            elif p["action"] == "abort":
                res = self.engine.abort()
            else:
                res = self.engine.rollback()
        finally:
            samples = sampler.stop()
        out = self._engine_result(res)
        if res.changed:
            out.update(self._write_report(out, samples, time.time() - started))
        return out

    def watched(self) -> dict:
        """Run the action here while watching the playbook: when it is gone
        (or this process gets SIGTERM/SIGINT/SIGHUP) the engine is cancelled."""
        watch = controller.PlaybookWatch(self.engine.cancel.request).start()
        try:
            return self.act_or_await()
        finally:
            watch.stop()

    def act_or_await(self) -> dict:
        """``act``; while a controller of the same request holds the lock, wait
        for it (up to ``timeout``) and report its outcome instead."""
        p = self.params
        deadline = time.time() + p["timeout"]
        while True:
            try:
                return self.act()
            except LockHeld as exc:
                holder = exc.holder
                if holder is None or not holder.request or holder.request != self.request:
                    raise
                waited = controller.await_holder(self.store, p["artifact"], p["environment"],
                                                 holder, deadline, cancel=self.engine.cancel)
                release = controller.final_release(self.store, p["artifact"],
                                                   p["environment"], holder)
                if release is not None:
                    return self._awaited(release, holder, waited)
                if time.time() >= deadline:
                    raise PhoenixError("timeout: %ds passed waiting for %s" % (
                        p["timeout"], holder.describe()), param="timeout")
                # it ended without an outcome of its own (cancelled or dead): run it here

    def _awaited(self, release, holder, waited) -> dict:
        history = self.store.load(self.params["artifact"], self.params["environment"])
        return controller.awaited_result(history, release, holder, waited)

    def detached(self) -> dict:
        """Run the action in a detached controller process; return once it
        really holds the lock (or with the error that kept it from it)."""
        p = self.params

        def work(report):
            # connections of its own: the module keeps using the inherited ones
            self.platform = targets.make_platform(self.infra, p["image_store"],
                                                  p["drain_timeout"])
            self.engine.platform = self.platform
            self.engine.store = controller.NotifyingStore(
                self.engine.store, lambda lock: report({"pid": lock.holder.pid}))
            try:
                self.act()
            except LockHeld as exc:
                same = exc.holder is not None and exc.holder.request == self.request
                report({"pid": exc.holder.pid, "same": True} if same else {"error": exc.msg})
            except PhoenixError as exc:
                report({"error": exc.msg, "param": exc.param})
            except Exception as exc:
                report({"error": "%s: %s" % (type(exc).__name__, exc)})
                raise

        message = controller.run_detached(work)
        if message.get("error"):
            raise PhoenixError(message["error"], param=message.get("param"))
        if not message.get("pid"):
            raise PhoenixError("the detached rollout controller did not take the lock; "
                               "see phoenix.deploy.release_info for what it recorded")
        holder = self.store.lock_holder(p["artifact"], p["environment"])
        if message.get("same"):
            msg = ("%s continues in controller pid %d, started earlier for the same request"
                   % (p["action"], message["pid"]))
        else:
            msg = "%s continues in controller pid %d" % (p["action"], message["pid"])
        return dict(changed=not message.get("same"), state="in_progress", msg=msg,
                    lock=vars(holder) if holder else None, events=[])

    def _engine_result(self, res) -> dict:
        return dict(changed=res.changed, failed=res.failed, state=res.state, msg=res.msg,
                    release=res.release, live=res.live, events=res.events, plan=res.plan)

    def _write_report(self, out, samples, duration) -> dict:
        p = self.params
        directory = p["report_dir"] or os.path.join(
            self.store.directory(p["artifact"], p["environment"]), "reports")
        release = out.get("release") or {}
        stem = "%s-%s-%s" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime()),
                             release.get("release_id") or p["action"], p["action"])
        data = reporting.build_report(out, samples, {"duration": duration,
                                                     "artifact": p["artifact"],
                                                     "environment": p["environment"]})
        paths = {"report": reporting.write_json(os.path.join(directory, stem + ".json"), data)}
        png = reporting.write_png(os.path.join(directory, stem + ".png"), data)
        if png:
            paths["timeline"] = png
        else:
            self.module.warn("matplotlib is missing: no PNG timeline (%s)"
                             % missing_required_lib("matplotlib"))
        return paths


def main():
    module = PhoenixModule(argument_spec=argspec(ARGUMENT_SPEC), supports_check_mode=True,
                           mutually_exclusive=[("infra", "project_path", "infra_file")],
                           required_together=[("project_path", "stack")])
    manager = None
    try:
        manager = RolloutManager(module)
        manager.run()
    except PhoenixError as exc:  # every engine error, the release store's name checks included
        module.fail_phoenix(exc, **(manager.result if manager else {}))
    result = manager.result
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
