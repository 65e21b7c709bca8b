# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout engine: deploy / promote / abort / rollback one artifact in
one environment, recording every event in the release store.

Every action takes the (artifact, environment) lock, then *converges*:
releases left ``in_progress`` by a controller that died are finished (when
the new release had already been recorded live) or undone (the previous live
release gets 100 % again), expired warm groups and orphan groups are
destroyed, and the live group gets its traffic back.  The store and the
platform's ``list_groups`` are the only inputs, so re-running after a crash
ends with exactly one live release at 100 % (or a paused canary) and no
orphan groups.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import (
    AnalysisSpec, SettingsError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    Clock, PlatformError, destroy_done)
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ABORTED, IN_PROGRESS, INTERRUPTED, LIVE, PAUSED, RETIRED, ROLLED_BACK,
    SUCCEEDED, FAILED, LockHolder, Release, check_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
    Cancel, Executor, Hooks, Step, StepFailed, build_plan, parse_settings)


NO_ANALYSIS = "none"  # analysis: none, a deliberate choice recorded on the release


ANALYSED = {"pass": "analysis passed", NO_ANALYSIS: "deployed with analysis: none",
            "inconclusive": "analysis inconclusive: not judged",
            None: "no analysis configured: not judged"}


class RolloutError(PhoenixError):
    """The action cannot run in the current state (nothing was changed)."""


@dataclass
class Result:
    action: str
    changed: bool = False
    failed: bool = False
    state: str = ""  # live | paused | rolled_back | aborted | failed | planned
    msg: str = ""
    release: Optional[dict] = None
    live: Optional[dict] = None
    events: list = field(default_factory=list)
    plan: list = field(default_factory=list)


#: variables every platform sets itself; a caller's ``env`` may not override them
RESERVED_ENV = ("PORT", "BIND", "IMAGE_DIR", "DRAIN_TIMEOUT")
RESERVED_ENV_PREFIXES = ("DB_",)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env, option: str = "env") -> dict:
    """``{NAME: value}`` as strings; refuses invalid names, NUL bytes and the
    variables the platform owns.  Multi-line values (a PEM) are fine."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise SettingsError("%s: %r; allowed a mapping of VARIABLE: value"
                            % (option, type(env).__name__), param=option)
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise SettingsError("%s: key %r is not a variable name; allowed "
                                "[A-Za-z_][A-Za-z0-9_]*" % (option, key), param=option)
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            raise SettingsError(
                "%s.%s: set by the platform, not by env (reserved: %s, %s*); the "
                "database settings come from the infra outputs"
                % (option, key, ", ".join(RESERVED_ENV), "*, ".join(RESERVED_ENV_PREFIXES)),
                param=option)
        if value is None or isinstance(value, (dict, list, tuple, set)):
            raise SettingsError("%s.%s: %s; allowed a string or a number"
                                % (option, key, "null" if value is None
                                   else type(value).__name__), param=option)
        text = value if isinstance(value, str) else str(value)
        if "\x00" in text:
            raise SettingsError("%s.%s: the value holds a NUL byte, which no process "
                                "environment can carry" % (option, key), param=option)
        out[key] = text
    return out


def config_digest(env: dict, platform_inputs: dict) -> str:
    """Identity of what instances run with besides the image: the caller's
    env plus what the platform injects (secrets only as digests)."""
    data = json.dumps({"env": env, "platform": platform_inputs}, sort_keys=True)
    return "sha256:" + hashlib.sha256(data.encode("utf-8")).hexdigest()


class _ReleaseHooks(Hooks):
    def __init__(self, rollout, history, release, old):
        self.rollout, self.history, self.release, self.old = rollout, history, release, old

    def event(self, message, **data):
        weights = data.get("weights") or {}
        if self.release.group in weights:
            self.release.weight = weights[self.release.group]
        self.rollout._record(self.history, self.release, message, **data)

    def progress(self, position):
        self.release.position = position
        self.rollout._save(self.history)

    def live(self):
        self.rollout._make_live(self.history, self.release)

    def analysis(self, state):
        self.release.analysis_state = state
        self.release.analysed = state.get("verdict")
        self.rollout._save(self.history)

    def keep_warm(self, group, seconds):
        if seconds <= 0 or self.old is None:
            return False
        self.old.warm_until = self.rollout.clock.now() + seconds
        self.rollout._record(self.history, self.release,
                             "keeping %s warm for %gs for an instant rollback"
                             % (group, seconds), group=group)
        return True


class Rollout:
    """Engine entry point for one (artifact, environment)."""

    def __init__(self, platform, store, artifact: str, environment: str,
                 clock: Optional[Clock] = None, env: Optional[dict] = None,
                 timeout: Optional[float] = None,
                 owner: Optional[Callable] = None, force: bool = False):
        self.platform = platform
        self.store = store
        self.artifact = check_name(artifact, "artifact")
        self.environment = check_name(environment, "environment")
        self.clock = clock or Clock()
        self.env = check_env(env)
        self.force = bool(force)
        self.timeout = timeout
        self.owner = owner or LockHolder.current
        self.cancel = Cancel()  # request() it to roll back at the next step or poll
        self.events = []
        self._lock = None

    # -- bookkeeping -----------------------------------------------------------
    def _save(self, history):
        self.store.save(history)

    def _record(self, history, release, message, **data):
        if release is None:
            release = history.live_release() or (history.releases[-1]
                                                 if history.releases else None)
        if release is None:
            entry = {"at": self.clock.now(), "message": message}
            entry.update(data)
        else:
            entry = release.event(self.clock.now(), message, **data)
            entry = dict(entry, release_id=release.release_id)
            self._save(history)
        self.events.append(entry)

    def _observed(self) -> dict:
        return {g.name: g for g in self.platform.groups.list_groups(self.artifact,
                                                                    self.environment)}

    @staticmethod
    def _usable(observed, name):
        """``observed[name]`` unless it is missing or under platform-owned deletion
        (``ServerGroup.deleting``: never reused, resized or given traffic)."""
        group = observed.get(name)
        return None if group is None or group.deleting else group

    @property
    def store_id(self) -> Optional[str]:
        return getattr(self.store, "store_id", None)

    def config_digest(self) -> str:
        return config_digest(self.env, self.platform.groups.config_inputs())

    def _ours(self, history, group) -> bool:
        """A group this store's engine made: named in its history, or stamped
        with its store id (created just before a crash, not yet recorded)."""
        if any(group.name in (r.group, r.old_group) for r in history.releases):
            return True
        return group.owner is not None and group.owner == self.store_id

    def _foreign(self, history, observed) -> list:
        return sorted(n for n, g in observed.items() if not self._ours(history, g))

    def _adopted(self, history):
        """With ``force`` and no live release: the foreign group serving the
        most traffic is replaced by the new release like an old live group."""
        if not self.force:
            return None
        observed = self._observed()
        serving = [observed[n] for n in self._foreign(history, observed)
                   if observed[n].attached and observed[n].weight > 0]
        return max(serving, key=lambda g: (g.weight, g.name)) if serving else None

    def _free_name(self, history, observed, release_id) -> str:
        base = self.platform.groups.group_name(self.artifact, self.environment, release_id)
        name, n = base, 1
        while name in observed or any(r.group == name for r in history.releases
                                      if r.release_id != release_id):
            name, n = "%s-r%d" % (base, n), n + 1
        return name

    def _executor(self, release, hooks=None, groups=None, name=None) -> Executor:
        settings = release.settings or {}
        deadline = self.clock.now() + self.timeout if self.timeout else None
        spec = AnalysisSpec.from_dict(release.analysis) if release.analysis else None
        return Executor(self.platform, self.clock, groups or {}, create={
            "artifact": self.artifact, "environment": self.environment,
            "release_id": release.release_id, "image": release.image,
            "env": self.env, "name": name, "owner": self.store_id},
            hooks=hooks or Hooks(), analysis=spec,
            progress_deadline=settings.get("progress_deadline", 600.0),
            deadline=deadline, analysis_state=release.analysis_state)

    def _result(self, history, action, release=None, **kwargs) -> Result:
        live = history.live_release()
        return Result(action=action, release=release.as_dict() if release else None,
                      live=live.as_dict() if live else None, events=list(self.events),
                      **kwargs)

    def _make_live(self, history, release):
        old = history.live_release()
        if old is not None and old is not release:
            old.status = RETIRED
        history.live = release.release_id
        release.status = LIVE
        release.track = "stable"
        release.warm_until = None
        self._record(history, release, "release %s (%s) is live"
                     % (release.release_id, release.version))

    # -- locking + convergence ------------------------------------------------
    def _run(self, action: str, body: Callable) -> Result:
        self.events = []
        lock = self.store.acquire(self.artifact, self.environment, self.owner(action))
        self._lock = lock
        try:
            history = self.store.load(self.artifact, self.environment)
            if lock.recovered_from is not None:
                self._record(history, None, "recovered the lock of a dead rollout: %s"
                             % lock.recovered_from.describe())
            try:
                self._converge(history)
            except StepFailed as exc:
                live = history.live_release()
                raise RolloutError(
                    "%s/%s: the live release %s could not be given its traffic back: %s; "
                    "no other group was removed. Fix the cause and run again"
                    % (self.artifact, self.environment,
                       "%s (%s)" % (live.release_id, live.version) if live else "-",
                       exc.reason))
            if action != "converge" and not self.force:
                self._refuse_foreign(history)
            return body(history)
        finally:
            self._lock = None
            self.store.release(lock)

    def _refuse_foreign(self, history):
        observed = self._observed()
        serving = [n for n in self._foreign(history, observed)
                   if observed[n].attached and observed[n].weight > 0]
        if serving:
            raise RolloutError(
                "%s serves traffic of %s/%s but was not created by this release store "
                "(%s, id %s): nothing was changed. Use the release store that created "
                "it (store), or force: true to take it over and replace it"
                % (", ".join(serving), self.artifact, self.environment,
                   getattr(self.store, "root", "?"), self.store_id))

    def converge(self) -> Result:
        """Only converge (also done at the start of every action)."""
        return self._run("converge", lambda h: self._result(
            h, "converge", changed=bool(self.events), state=self._state(h),
            msg="converged"))

    def _state(self, history) -> str:
        return PAUSED if any(r.status == PAUSED for r in history.releases) else (
            LIVE if history.live else "empty")

    def _converge(self, history):
        """Finish or undo what a dead controller left, give the live group its
        traffic back, and only then remove groups no release needs.  Groups
        this store did not create are left alone (``force`` takes them over)."""
        for release in [r for r in history.releases if r.status == IN_PROGRESS or
                        (r.status == LIVE and r.outcome is None)]:
            self._recover(history, release)
        now = self.clock.now()
        observed = self._observed()
        live = history.live_release()
        paused = [r for r in history.releases if r.status == PAUSED]
        keep = set()
        for rel in history.releases:
            if rel.warm_until is not None:
                if rel.warm_until > now and rel.group in observed:
                    keep.add(rel.group)
                    continue
                rel.warm_until = None
                self._save(history)
        if live is not None:
            keep.add(live.group)
        keep.update(r.group for r in paused)
        if live is not None and not paused:
            group = self._usable(observed, live.group)
            if group is None or group.weight != 100 or not group.attached:
                self._restore(history, live, live, cause="converge")
                keep.add(live.group)  # re-created under a new name when its group was unusable
                observed = self._observed()
        dummy = Release("-", self.artifact, self.environment, "-", "-", "-")
        executor = self._executor(live or dummy, _ReleaseHooks(
            self, history, live or (history.releases[-1] if history.releases else dummy),
            None))
        for name in sorted(set(observed) - keep):
            group = observed[name]
            if destroy_done(group):  # detached, the platform finishes removing it
                continue
            ours = self._ours(history, group)
            serving = group.attached and group.weight > 0
            if not ours and not self.force:
                self._record(history, live, "leaving %s alone: this release store (id %s) "
                             "did not create it (owner %s); force: true takes it over"
                             % (name, self.store_id, group.owner or "unknown"), group=name)
                continue
            if serving and paused:
                self._record(history, live, "leaving %s alone: it serves traffic beside "
                             "paused release %s; promote or abort first"
                             % (name, paused[-1].release_id), group=name)
                continue
            if serving and not ours and live is None:  # force: the next deploy replaces it
                self._record(history, live, "keeping %s (not created by this store) "
                             "serving until a release of this store replaces it" % name,
                             group=name)
                continue
            self._record(history, live, "destroying %s: not the live, paused or "
                         "warm group of any release" % name, group=name)
            executor.groups["x"] = name
            if group.attached:
                executor.drain("x")
            executor.destroy(name=name)

    def _recover(self, history, release):
        """A release left in progress by a controller that died."""
        step = release.position
        where = "step %d/%d" % (step + 1, len(release.plan)) if release.plan else "start"
        if history.live == release.release_id:
            self._record(history, release, "controller died at %s after the release "
                         "was live; finishing it" % where)
            warm = (release.settings or {}).get("scale_down_delay") or 0
            old = history.get(release.previous_release_id)
            if old is not None and warm > 0 and release.strategy == "blue_green":
                old.warm_until = self.clock.now() + warm
            release.outcome, release.finished = SUCCEEDED, self.clock.now()
            self._save(history)
            return
        live = history.live_release()
        reason = "interrupted at %s: the controller died" % where
        release.status, release.outcome, release.reason = RETIRED, INTERRUPTED, reason
        release.finished = self.clock.now()
        self._record(history, release, reason + "; restoring %s" % (
            live.release_id if live else "nothing (no live release)"))
        if live is not None:
            self._restore(history, live, release, cause="recovery")

    def _restore(self, history, target, record_on, cause):
        """Give ``target`` (a live or previous release) all traffic at its
        size, re-creating its group from its image when it is gone; record it
        live as soon as it is healthy (before traffic moves), then drain and
        destroy the other groups of this store except warm ones.

        Members a dead controller left draining are put back first (they
        would never turn ready otherwise); other groups keep their traffic
        until ``target`` is healthy at full size."""
        observed = self._observed()
        executor = self._executor(target, _ReleaseHooks(self, history, record_on, None),
                                  groups={"target": target.group})
        gone = None if self._usable(observed, target.group) else (
            "is being deleted" if target.group in observed else "is gone")
        if gone is None:
            try:  # also replaces members a dead controller left half-removed
                if not observed[target.group].attached:
                    executor.platform_call("cancel_drain", target.group)  # transient errors retried
                executor.resize("target", target.size)
            except PlatformError as exc:  # e.g. half-destroyed by a dead controller
                gone = "cannot be reused (%s)" % exc
        if gone is not None:
            name = self._free_name(history, observed, target.release_id)
            self._record(history, record_on, "%s: group %s %s; creating %s "
                         "from image %s" % (cause, target.group, gone, name, target.image))
            executor.create("target", target.size, name=name)
            target.group = name
            self._save(history)
        executor.wait_healthy("target", target.size)
        # recorded live once healthy at full size, before traffic moves: a kill
        # from here on finishes forward to target, never back to what it replaces
        target.warm_until = None
        if history.live != target.release_id:
            self._make_live(history, target)
        self._save(history)
        now = self.clock.now()
        warm = {r.group for r in history.releases
                if r.warm_until and r.warm_until > now and r is not target}
        others = [n for n in observed if n != target.group and
                  (self.force or self._ours(history, observed[n]))]
        weights = {target.group: 100}
        weights.update({n: 0 for n in others if observed[n].attached})
        executor.groups.update({"w%d" % i: n for i, n in enumerate(weights)})
        executor.set_weights({"w%d" % i: w for i, w in enumerate(weights.values())})
        self._record(history, record_on, "%s: %s (%s) has 100%% of the traffic"
                     % (cause, target.release_id, target.version))
        for name in others:
            executor.groups["x"] = name
            if observed[name].attached:
                executor.drain("x")
            if name not in warm:
                executor.destroy(name=name)

    # -- actions ---------------------------------------------------------------
    @staticmethod
    def validate(size, strategy, settings, analysis):
        """Check a deploy request's settings before anything is looked up:
        ``SettingsError`` names the option.  Returns (settings, spec)."""
        parsed = parse_settings(strategy, settings, size)
        if analysis is None or analysis == NO_ANALYSIS:  # none: recorded on the release
            return parsed, None
        try:
            return parsed, AnalysisSpec.from_dict(analysis)
        except SettingsError as exc:
            exc.param = exc.param or "analysis"
            raise

    def _validate(self, version, image, size, strategy, settings, analysis):
        if not isinstance(version, str) or not version or version.lower() == "latest":
            raise RolloutError("version: %r; a fixed version is required "
                               "(MAJOR.MINOR.PATCH[-pre][+build]); mutable tags "
                               "like 'latest' are refused" % (version,), param="version")
        if not isinstance(image, str) or not image:
            raise RolloutError("image: a baked image reference (content digest) "
                               "is required", param="image")
        return self.validate(size, strategy, settings, analysis)

    def _paused(self, history) -> Optional[Release]:
        paused = [r for r in history.releases if r.status == PAUSED]
        return paused[-1] if paused else None

    def _live_matches(self, live, image, size) -> bool:
        """Same image, size and config (env + platform-injected settings):
        redeploying it is a no-op; any difference is a new release."""
        if live is None or live.image != image or live.size != size or \
                live.config_digest != self.config_digest():
            return False
        group = self._usable(self._observed(), live.group)
        return group is not None and group.weight == 100 and group.attached

    ACTIONS = ("deploy", "promote", "abort", "rollback")

    def plan(self, action: str = "deploy", version=None, image=None, size=None,
             strategy="rolling", settings=None, analysis=None) -> Result:
        """Check mode of every action: validate, then describe the steps the
        action would run (``plan``, each with a ``description``) and whether
        it would change anything; touches nothing, takes no lock."""
        if action == "deploy":
            return self._plan_deploy(version, image, size, strategy, settings, analysis)
        if action not in self.ACTIONS:
            raise RolloutError("action: %r; allowed: %s" % (action, ", ".join(self.ACTIONS)),
                               param="action")
        history = self.store.load(self.artifact, self.environment)
        self.events = []
        paused = self._paused(history)
        if action == "promote":
            if paused is None:
                return self._result(history, action, state=self._state(history),
                                    msg="nothing to promote: no paused release")
            steps = [Step(**s) for s in paused.plan][paused.position:]
            names = {"old": paused.old_group, "new": paused.group}
            return self._planned(history, action, paused, steps, names,
                                 "would promote %s (%s) from step %d/%d" % (
                                     paused.release_id, paused.version, paused.position + 1,
                                     len(paused.plan)))
        if action == "abort" or paused is not None:  # rollback of a paused canary aborts it
            if paused is None:
                return self._result(history, action, state=self._state(history),
                                    msg="nothing to abort: no paused release")
            live = history.live_release()
            steps, names = self._restore_plan(history, live)
            return self._planned(history, action, paused, steps, names,
                                 "would abort %s (%s); %s (%s) gets all traffic" % (
                                     paused.release_id, paused.version, live.release_id,
                                     live.version))
        live, target = self._rollback_target(history)
        # rollback restores a new release of the target's image (id: the next one)
        steps, names = self._restore_plan(history, target, "v%03d" % history.next_seq)
        return self._planned(history, action, target, steps, names,
                             "would roll back from %s (%s) to %s (%s)%s" % (
                                 live.release_id, live.version, target.release_id,
                                 target.version, " instantly (warm group)"
                                 if self._usable(self._observed(), target.group) else ""))

    @staticmethod
    def _rollback_target(history):
        """(live release, the release live before it) or ``RolloutError``."""
        live = history.live_release()
        target = history.get(live.previous_release_id) if live else None
        if target is None:
            raise RolloutError("nothing to roll back to: %s" % (
                "no live release" if live is None else
                "%s has no previous live release in the history" % live.release_id))
        return live, target

    def _planned(self, history, action, release, steps, names, msg) -> Result:
        return self._result(history, action, release=release, changed=True, state="planned",
                            msg=msg, plan=[dict(s.as_dict(), description=s.describe(names))
                                           for s in steps])

    def _restore_plan(self, history, target, release_id=None):
        """The steps ``_restore`` would run to give ``target`` (restored as
        ``release_id``, default its own) all traffic (read only): (steps,
        names of their roles)."""
        observed = self._observed()
        group = self._usable(observed, target.group)
        names = {"target": target.group}
        steps = []
        if group is not None:
            if not group.attached:
                steps.append(Step("cancel_drain", "target"))
            steps.append(Step("resize", "target", size=target.size))
        else:
            names["target"] = self._free_name(history, observed, release_id or target.release_id)
            steps.append(Step("create", "target", size=target.size))
        steps.append(Step("wait_healthy", "target", size=target.size))
        if history.live != target.release_id:
            steps.append(Step("mark_live", note="%s (%s)" % (target.release_id, target.version)))
        now = self.clock.now()
        warm = {r.group for r in history.releases
                if r.warm_until and r.warm_until > now and r is not target}
        others = [n for n in observed if n != target.group and
                  (self.force or self._ours(history, observed[n]))]
        weights = {"target": 100}
        for index, name in enumerate(others):
            names["g%d" % index] = name
            if observed[name].attached:
                weights["g%d" % index] = 0
        steps.append(Step("set_weights", weights=weights))
        for index, name in enumerate(others):
            if observed[name].attached:
                steps.append(Step("drain", "g%d" % index))
            if name not in warm:
                steps.append(Step("destroy", "g%d" % index))
        return steps, names

    def _plan_deploy(self, version, image, size, strategy="rolling", settings=None,
                     analysis=None) -> Result:
        """Check mode of deploy: validate and describe the steps; touches nothing."""
        settings, spec = self._validate(version, image, size, strategy, settings, analysis)
        history = self.store.load(self.artifact, self.environment)
        live = history.live_release()
        self.events = []
        if self._live_matches(live, image, size):
            return self._result(history, "deploy", state=LIVE,
                                msg="%s is already live" % version)
        old = self._observed().get(live.group) if live else None
        steps = build_plan(strategy, settings, size, old.size if old else 0, bool(spec))
        names = {"old": old.name if old else None,
                 "new": self._free_name(history, self._observed(),
                                        "v%03d" % history.next_seq)}
        return self._result(history, "deploy", changed=True, state="planned",
                            msg="would deploy %s with %s" % (version, strategy),
                            plan=[dict(s.as_dict(), description=s.describe(names))
                                  for s in steps])

    def deploy(self, version, image, size, strategy="rolling", settings=None,
               analysis=None, ci_build_url=None) -> Result:
        settings, spec = self._validate(version, image, size, strategy, settings, analysis)

        def body(history):
            paused = self._paused(history)
            if paused is not None:
                raise RolloutError(
                    "release %s (%s) is paused (%s); run action: promote or action: "
                    "abort first" % (paused.release_id, paused.version, paused.reason))
            live = history.live_release()
            if self._live_matches(live, image, size):
                return self._result(history, "deploy", state=LIVE, release=live,
                                    msg="%s is already live (%s)"
                                    % (version, live.release_id))
            old = self._observed().get(live.group) if live else self._adopted(history)
            release_id = history.new_release_id()
            release = history.add(Release(
                release_id=release_id, artifact=self.artifact,
                environment=self.environment, version=version, image=image,
                strategy=strategy, size=size, settings=settings,
                analysis=spec.as_dict() if spec else None,
                analysed=NO_ANALYSIS if analysis == NO_ANALYSIS else None,
                track="canary" if strategy == "canary" and old else "stable",
                started=self.clock.now(), ci_build_url=ci_build_url,
                config_digest=self.config_digest(),
                group=self._free_name(history, self._observed(), release_id),
                old_group=old.name if old else None,
                previous_release_id=live.release_id if live else None))
            release.plan = [s.as_dict() for s in build_plan(
                strategy, settings, size, old.size if old else 0, bool(spec))]
            self.store.update_lock(self._lock, release_id=release_id)
            self._record(history, release, "deploy %s (image %s) with %s, %d instance(s)%s"
                         % (version, image, strategy, size,
                            ", replacing %s" % live.release_id if live else ""))
            return self._execute(history, release, "deploy")
        return self._run("deploy", body)

    def _execute(self, history, release, action) -> Result:
        old = history.get(release.previous_release_id)
        hooks = _ReleaseHooks(self, history, release, old)
        executor = self._executor(release, hooks, name=release.group, groups={
            "old": release.old_group,
            "new": release.group if release.position else None})
        executor.cancel = self.cancel
        plan = [Step(**s) for s in release.plan]
        release.status, release.reason = IN_PROGRESS, None
        try:
            outcome = executor.run(plan, release.position)
        except StepFailed as exc:
            return self._failed(history, release, action, exc)
        if outcome.status == PAUSED:
            release.status, release.reason = PAUSED, outcome.reason
            self._record(history, release, "paused after step %d/%d: %s"
                         % (outcome.position, len(plan), outcome.reason))
            return self._result(history, action, release=release, changed=True,
                                state=PAUSED, msg="%s paused at %d%%: %s" % (
                                    release.release_id, release.weight, outcome.reason))
        release.outcome, release.finished, release.weight = SUCCEEDED, self.clock.now(), 100
        self._record(history, release, "rollout of %s finished in %.1fs"
                     % (release.version, release.finished - release.started))
        return self._result(history, action, release=release, changed=True, state=LIVE,
                            msg="%s (%s) is live (%s)" % (
                                release.version, release.release_id,
                                ANALYSED.get(release.analysed, release.analysed)))

    def _failed(self, history, release, action, exc) -> Result:
        release.reason = exc.reason
        if history.live == release.release_id:  # only clean-up failed
            self._record(history, release, "clean-up after going live failed: %s; "
                         "the next run destroys what is left" % exc.reason, cause=exc.cause)
            release.outcome, release.finished = SUCCEEDED, self.clock.now()
            self._save(history)
            return self._result(history, action, release=release, changed=True,
                                failed=True, state=LIVE, msg=exc.reason)
        target = history.live_release()
        self._record(history, release, "rollout failed (%s): %s; rolling back to %s"
                     % (exc.cause, exc.reason, target.release_id if target else
                        "nothing (first release)"), cause=exc.cause)
        release.status, release.outcome = RETIRED, ROLLED_BACK if target else FAILED
        if target is not None:
            self._restore(history, target, release, cause="rollback")
        else:
            self._converge(history)
        release.finished = self.clock.now()
        self._save(history)
        return self._result(history, action, release=release, changed=True, failed=True,
                            state=ROLLED_BACK if target else FAILED,
                            msg="%s of %s %s: %s" % (
                                action, release.version,
                                "rolled back to %s (%s)" % (target.release_id,
                                                            target.version)
                                if target else "failed", exc.reason))

    def promote(self) -> Result:
        def body(history):
            release = self._paused(history)
            if release is None:
                return self._result(history, "promote", state=self._state(history),
                                    msg="nothing to promote: no paused release")
            self._record(history, release, "promoted after step %d/%d"
                         % (release.position, len(release.plan)))
            return self._execute(history, release, "promote")
        return self._run("promote", body)

    def abort(self, reason: str = "aborted by action: abort") -> Result:
        def body(history):
            release = self._paused(history)
            if release is None:
                return self._result(history, "abort", state=self._state(history),
                                    msg="nothing to abort: no paused release")
            release.status, release.outcome, release.reason = RETIRED, ABORTED, reason
            release.finished = self.clock.now()
            self._record(history, release, "abort: " + reason)
            self._restore(history, history.live_release(), release, cause="abort")
            return self._result(history, "abort", release=release, changed=True,
                                state=ABORTED, msg="%s aborted: %s; %s has 100%% again"
                                % (release.release_id, reason, history.live))
        return self._run("abort", body)

    def rollback(self) -> Result:
        """Back to the release that was live before the live one: instant when
        its group is still warm, else a fresh group from its image.  A paused
        canary is aborted instead."""
        def body(history):
            if self._paused(history) is not None:
                return None
            live, target = self._rollback_target(history)
            release_id = history.new_release_id()
            release = history.add(Release(
                release_id=release_id, artifact=self.artifact,
                environment=self.environment, version=target.version,
                image=target.image, strategy="rollback", kind="rollback",
                size=target.size, settings=dict(target.settings or {}),
                started=self.clock.now(), group=target.group,
                config_digest=self.config_digest(),
                old_group=live.group, previous_release_id=live.release_id))
            self.store.update_lock(self._lock, release_id=release_id)
            warm = self._usable(self._observed(), target.group) is not None
            self._record(history, release, "rollback from %s (%s) to %s (%s): %s" % (
                live.release_id, live.version, target.release_id, target.version,
                "its group %s is still warm" % target.group if warm
                else "re-creating it from image %s" % target.image))
            try:
                self._restore(history, release, release, cause="rollback")
            except StepFailed as exc:
                return self._failed(history, release, "rollback", exc)
            live.status = RETIRED
            release.outcome, release.finished = SUCCEEDED, self.clock.now()
            self._save(history)
            return self._result(history, "rollback", release=release, changed=True,
                                state=LIVE, msg="rolled back to %s (%s)%s" % (
                                    target.version, release_id,
                                    " instantly (warm group)" if warm else ""))
        result = self._run("rollback", body)
        return result if result is not None else self.abort("aborted by action: rollback")

    def info(self) -> dict:
        """Live release, history and groups with instance health (read only)."""
        history = self.store.load(self.artifact, self.environment)
        holder = self.store.lock_holder(self.artifact, self.environment)
        live = history.live_release()
        groups = []
        for group in self._observed().values():
            entry = group.as_dict()
            health = self.platform.groups.health(group.name)
            entry.update(ready=health.ready, total=health.total,
                         instances=[vars(i) for i in health.instances])
            groups.append(entry)
        return {"live": live.as_dict() if live else None,
                "history": [r.as_dict() for r in history.releases],
                "groups": groups,
                "lock": vars(holder) if holder else None}
