# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout strategies as plans of steps, and the executor that runs them.

A plan is a list of ``Step`` objects over two roles, ``old`` (the live
group) and ``new`` (the group of this release); check mode prints it.  The
``Executor`` runs a plan against any ``Platform``, polling with deadlines.

Invariant: the old group never loses capacity the new group has not yet
replaced with *healthy* instances; the only exceptions are the explicit
``max_unavailable`` budget of ``rolling`` and ``recreate`` (which exists to
allow a gap).

Analysis is never dropped: with an analysis spec every plan judges the new
group after each traffic shift that gives it traffic (an ``analyze`` step),
unless a timed canary pause right after it judges it anyway.  Rolling judges
between batches, recreate after the switch, blue/green after the switch
while the old group is still attached at 0 % (post-promotion analysis: a
FAIL switches straight back), a first deploy once it has 100 %.
"""

from __future__ import annotations

import math
import random
import re
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import (
    FAIL, INCONCLUSIVE, PASS, AnalysisRun, SettingsError, parse_duration)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    HealthFailure, PlatformError, WaitTimeout, destroy_done, wait_until)
from ansible_collections.phoenix.deploy.plugins.module_utils.retries import (
    RetryDeadline, retry_transient)

STRATEGIES = ("rolling", "recreate", "blue_green", "canary")
MAX_SIZE = 1000
COMMON_OPTIONS = ("progress_deadline",)
OPTIONS = {
    "rolling": ("max_surge", "max_unavailable"),
    "recreate": (),
    "blue_green": ("scale_down_delay", "verify_period"),
    "canary": ("steps",),
}
DEFAULTS = {
    "rolling": {"max_surge": "25%", "max_unavailable": 0},
    "recreate": {},
    "blue_green": {"scale_down_delay": 30.0, "verify_period": 0.0},
    "canary": {},
}
_PERCENT = re.compile(r"^\s*(\d{1,3})\s*%\s*$")


# --------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------
def check_size(size, option: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise SettingsError("%s: %r; allowed an integer from 1 to %d"
                            % (option, size, MAX_SIZE), param=option)
    return size


def parse_count(value, option: str):
    """An instance count (int) or a percentage string (``"25%"``)."""
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match and int(match.group(1)) <= 100:
            return "%d%%" % int(match.group(1))
        if value.strip().isdigit():
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        raise SettingsError("%s: %r; allowed an instance count from 0 to %d or "
                            "a percentage from '0%%' to '100%%'"
                            % (option, value, MAX_SIZE))
    return value


def resolve_count(value, size: int, round_up: bool) -> int:
    if isinstance(value, str):
        exact = size * int(value[:-1]) / 100.0
        return int(math.ceil(exact) if round_up else math.floor(exact))
    return value


def _parse_steps(steps) -> list:
    if not isinstance(steps, list) or not steps:
        raise SettingsError("strategy.steps: required for canary, a list like "
                            "[{set_weight: 10}, {pause: {duration: 60}}, "
                            "{set_weight: 50}, {pause: {}}]")
    out, last = [], 0
    for i, item in enumerate(steps):
        where = "strategy.steps[%d]" % i
        if not isinstance(item, dict) or len(item) != 1 or \
                next(iter(item)) not in ("set_weight", "pause"):
            raise SettingsError("%s: %r; each step is exactly one of "
                                "{set_weight: 1..100} or {pause: {duration: S}} "
                                "/ {pause: {}} (wait for promote)" % (where, item))
        key, value = next(iter(item.items()))
        if key == "set_weight":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 100:
                raise SettingsError("%s.set_weight: %r; allowed an integer from 1 "
                                    "to 100" % (where, value))
            if value <= last:
                raise SettingsError("%s.set_weight: %d; weights must increase "
                                    "(previous %d)" % (where, value, last))
            last = value
            out.append({"set_weight": value})
            continue
        if not last:
            raise SettingsError("%s: a pause before the first set_weight would "
                                "judge a canary that has no traffic" % where)
        if value is None or value == {}:
            out.append({"pause": None})
        elif isinstance(value, dict):
            unknown = set(value) - {"duration"}
            if unknown:
                raise SettingsError("%s.pause: unknown option(s) %s; allowed: "
                                    "duration" % (where, ", ".join(sorted(unknown))))
            out.append({"pause": parse_duration(value["duration"],
                                                where + ".pause.duration")})
        else:
            out.append({"pause": parse_duration(value, where + ".pause")})
    return out


def parse_settings(strategy: str, settings: Optional[dict], size: int) -> dict:
    """Validate and normalise strategy settings; raise ``SettingsError``
    naming the option and what is allowed (``param``: ``strategy``, ``size``
    or ``strategy_settings``).  Nothing is touched before this succeeds."""
    if strategy not in STRATEGIES:
        raise SettingsError("strategy: %r is unknown; allowed: %s"
                            % (strategy, ", ".join(STRATEGIES)), param="strategy")
    check_size(size)
    try:
        return _parse_settings(strategy, settings, size)
    except SettingsError as exc:
        exc.param = exc.param or "strategy_settings"
        raise


def _parse_settings(strategy: str, settings: Optional[dict], size: int) -> dict:
    data = dict(settings or {})
    allowed = OPTIONS[strategy] + COMMON_OPTIONS
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SettingsError("strategy: option(s) %s not valid for %s; allowed: %s"
                            % (", ".join(unknown), strategy, ", ".join(allowed)))
    out = dict(DEFAULTS[strategy])
    out.update(data)
    out["progress_deadline"] = parse_duration(
        data.get("progress_deadline", 600), "strategy.progress_deadline", 86400)
    if out["progress_deadline"] <= 0:
        raise SettingsError("strategy.progress_deadline: must be above 0 seconds")
    if strategy == "rolling":
        surge = parse_count(out["max_surge"], "strategy.max_surge")
        unavailable = parse_count(out["max_unavailable"], "strategy.max_unavailable")
        if resolve_count(surge, size, True) == 0 and \
                resolve_count(unavailable, size, False) == 0:
            raise SettingsError(
                "strategy.max_surge (%s) and strategy.max_unavailable (%s) are "
                "both 0 for size %d: no instance could ever be replaced; allow "
                "max_surge >= 1 (extra instances) or max_unavailable >= 1"
                % (surge, unavailable, size))
        out.update(max_surge=surge, max_unavailable=unavailable)
    elif strategy == "blue_green":
        out["scale_down_delay"] = parse_duration(out["scale_down_delay"],
                                                 "strategy.scale_down_delay")
        out["verify_period"] = parse_duration(out["verify_period"],
                                              "strategy.verify_period", 3600)
    elif strategy == "canary":
        out["steps"] = _parse_steps(data.get("steps"))
    return out


# --------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------
@dataclass
class Step:
    kind: str  # create resize wait_healthy set_weights pause verify analyze
    #            mark_live drain destroy keep_warm
    role: Optional[str] = None
    size: Optional[int] = None
    weights: Optional[dict] = None
    duration: Optional[float] = None
    analyze: bool = False
    note: Optional[str] = None  # why an analyze step is there (for people)
    # "go_live": an inconclusive analyze step lets the release go live
    # unjudged (a first deploy has nothing to fall back to)
    inconclusive: Optional[str] = None

    def describe(self, names: Optional[dict] = None) -> str:
        names = names or {}

        def name(role):
            return names.get(role) or "%s group" % role
        if self.kind == "create":
            return "create %s with %d instance(s)" % (name(self.role), self.size)
        if self.kind == "resize":
            return "resize %s to %d instance(s)" % (name(self.role), self.size)
        if self.kind == "wait_healthy":
            return "wait until %s has %d healthy instance(s)" % (name(self.role), self.size)
        if self.kind == "set_weights":
            return "set traffic weights " + ", ".join(
                "%s=%d%%" % (name(r), w) for r, w in sorted(self.weights.items()))
        if self.kind == "pause":
            if self.duration is None:
                return "pause until promoted (action: promote)"
            return "pause %gs%s" % (self.duration, " with analysis of %s"
                                    % name("new") if self.analyze else "")
        if self.kind == "verify":
            return "verify %s stays healthy for %gs" % (name(self.role), self.duration)
        if self.kind == "analyze":
            return "analyse the traffic of %s%s" % (
                name(self.role), " (%s)" % self.note if self.note else "")
        if self.kind == "mark_live":
            return "record %s as live" % (self.note or "the new release")
        if self.kind == "cancel_drain":
            return "attach %s again at weight 0 (members left draining serve again)" % (
                name(self.role))
        if self.kind == "drain":
            return "drain and detach %s" % name(self.role)
        if self.kind == "destroy":
            return "destroy %s" % name(self.role)
        if self.kind == "keep_warm":
            return "keep %s warm for %gs (instant rollback), then destroy it" % (
                name(self.role), self.duration)
        return self.kind

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _first_deploy(size: int) -> list:
    return [Step("create", "new", size=size), Step("wait_healthy", "new", size=size),
            Step("set_weights", weights={"new": 100}), Step("mark_live")]


def _share(new: int, old: int) -> dict:
    if not old:
        return {"new": 100}
    weight = int(round(100.0 * new / (new + old)))
    return {"new": weight, "old": 100 - weight}


def plan_rolling(settings: dict, size: int, old_size: int) -> list:
    """Batches: grow the new group by at most ``max_surge`` above ``size``,
    shrink the old one only by what healthy new instances (plus the
    ``max_unavailable`` budget) already replace."""
    surge = resolve_count(settings["max_surge"], size, True)
    unavailable = resolve_count(settings["max_unavailable"], size, False)
    floor = max(0, min(size, old_size) - unavailable)  # healthy capacity kept
    new, old, live = 0, old_size, False
    steps = [Step("create", "new", size=max(0, min(size, size + surge - old)))]
    while new < size or old > 0:
        target_new = max(new, min(size, size + surge - old))
        if target_new > new:
            if steps[-1].kind != "create":
                steps.append(Step("resize", "new", size=target_new))
            steps.append(Step("wait_healthy", "new", size=target_new))
        target_old = 0 if target_new >= size else min(old, max(0, floor - target_new))
        if target_new == new and target_old == old:  # refused by parse_settings
            raise SettingsError("strategy: max_surge/max_unavailable allow no "
                                "progress for size %d" % size)
        new = target_new
        if target_old == 0 and old:
            if new:  # with nothing healthy yet the drain alone moves traffic away
                steps.append(Step("set_weights", weights={"new": 100, "old": 0}))
            if new >= size:
                steps.append(Step("mark_live"))
                live = True
            steps += [Step("drain", "old"), Step("destroy", "old")]
        elif old:
            steps.append(Step("set_weights", weights=_share(new, target_old)))
            if target_old < old:
                steps.append(Step("resize", "old", size=target_old))
        old = target_old
    if not live:
        steps += [Step("set_weights", weights={"new": 100}), Step("mark_live")]
    return steps


def plan_recreate(settings: dict, size: int, old_size: int) -> list:
    return [Step("drain", "old"), Step("destroy", "old")] + _first_deploy(size)


def plan_blue_green(settings: dict, size: int, old_size: int) -> list:
    steps = [Step("create", "new", size=size), Step("wait_healthy", "new", size=size)]
    if settings.get("verify_period"):
        steps.append(Step("verify", "new", duration=settings["verify_period"]))
    return steps + [Step("set_weights", weights={"new": 100, "old": 0}),
                    Step("mark_live"), Step("drain", "old"),
                    Step("keep_warm", "old", duration=settings["scale_down_delay"])]


def _judged(steps: list, strategy: str, first: bool = False) -> list:
    """``steps`` with an ``analyze`` step after every traffic shift that gives
    the new group traffic, except where a timed (analysed) canary pause
    follows anyway, and except a canary's final switch to 100 % once its
    steps judged it."""
    notes = {"rolling": "between batches", "recreate": "after the switch",
             "blue_green": "post-promotion analysis; the old group stays attached "
                           "at 0% for an instant switch back",
             "canary": "canary step"}
    out, judged = [], False
    for index, step in enumerate(steps):
        out.append(step)
        if step.kind == "pause" and step.analyze:
            judged = True
        if step.kind != "set_weights" or not (step.weights or {}).get("new"):
            continue
        following = steps[index + 1] if index + 1 < len(steps) else None
        if following is not None and following.kind == "pause" and following.analyze:
            continue
        if strategy == "canary" and step.weights["new"] >= 100 and judged and not first:
            continue
        if first:
            out.append(Step("analyze", "new", note="first deploy: judged at 100%; "
                            "inconclusive goes live as not judged",
                            inconclusive="go_live"))
        else:
            note = notes.get(strategy)
            if following is not None and following.kind == "pause":
                note = "judged before waiting for promote"
            elif strategy == "rolling" and step.weights["new"] >= 100:
                note = "after the last batch, before the old group goes"
            out.append(Step("analyze", "new", note=note))
        judged = True
    return out


def canary_size(weight: int, size: int) -> int:
    """Canary instances for a traffic weight (the stable group stays full)."""
    return size if weight >= 100 else max(1, int(math.ceil(size * weight / 100.0)))


def plan_canary(settings: dict, size: int, old_size: int, analysis: bool = False) -> list:
    steps = []
    state = {"current": 0, "weight": 0}

    def grow(want):
        if want > state["current"]:
            steps.append(Step("create" if not state["current"] else "resize", "new",
                              size=want))
            steps.append(Step("wait_healthy", "new", size=want))
            state["current"] = want

    for item in settings["steps"]:
        if "set_weight" in item:
            state["weight"] = item["set_weight"]
            grow(canary_size(state["weight"], size))
            steps.append(Step("set_weights", weights={
                "new": state["weight"], "old": 100 - state["weight"]}))
        else:
            steps.append(Step("pause", duration=item["pause"],
                              analyze=analysis and item["pause"] is not None))
    if state["weight"] < 100:
        grow(size)
        steps.append(Step("set_weights", weights={"new": 100, "old": 0}))
    return steps + [Step("mark_live"), Step("drain", "old"), Step("destroy", "old")]


def build_plan(strategy: str, settings: dict, size: int, old_size: int,
               analysis: bool = False) -> list:
    """Steps for ``strategy``; a first deploy (no old group) is the same for
    all strategies: create, wait healthy, send traffic, (judge,) record live.
    With ``analysis`` every plan judges the new group (see ``_judged``)."""
    if not old_size:
        steps = _first_deploy(size)
    elif strategy == "rolling":
        steps = plan_rolling(settings, size, old_size)
    elif strategy == "recreate":
        steps = plan_recreate(settings, size, old_size)
    elif strategy == "blue_green":
        steps = plan_blue_green(settings, size, old_size)
    else:
        steps = plan_canary(settings, size, old_size, analysis)
    return _judged(steps, strategy, first=not old_size) if analysis else steps


# --------------------------------------------------------------------------
# executor
# --------------------------------------------------------------------------
class StepFailed(PhoenixError):
    """A step failed; ``cause`` is health / analysis / deadline / platform /
    cancelled."""

    def __init__(self, reason: str, cause: str):
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


class Cancel(threading.Event):
    """Set (with a reason) to stop a forward rollout: the executor checks it
    between steps and at every poll of a wait, pause or verification (at least
    once a second; a drain or destroy is finished first) and raises
    ``StepFailed(reason, "cancelled")``, so the rollout rolls back to the live
    release.  Once the new release is recorded
    live the rest of the plan (drain, destroy) is finished instead."""

    reason = "cancelled"

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@dataclass
class Outcome:
    status: str  # done | paused
    position: int
    reason: str = ""


class Hooks:
    """What the executor tells its caller (the rollout records it)."""

    def event(self, message: str, **data) -> None:
        pass

    def progress(self, position: int) -> None:
        pass

    def live(self) -> None:
        pass

    def keep_warm(self, group: str, seconds: float) -> bool:
        """Return False when the group should be destroyed now."""
        return False

    def analysis(self, state: dict) -> None:
        """The analysis counts and verdict so far (``AnalysisRun.state()``)."""


class Executor:
    """Runs plan steps against a platform; also the primitive operations
    (create, resize, wait healthy, weights, drain, destroy) rollback uses.

    ``groups`` maps a role (``old``/``new``) to a group name; ``create``
    holds the create_group arguments of the new group.

    Every platform call goes through ``platform_call``: a transient ``PlatformError``
    (HTTP 429/5xx, a 412 conflict, a dropped connection) is retried with
    jittered exponential backoff (``retries.retry_transient``, delays from
    ``retry_base`` doubling up to ``retry_cap`` seconds, drawn from ``rng``)
    until the progress deadline or the timeout, each retry recorded as an
    event; a permanent error fails the step at once (cause ``platform``), the
    deadline with cause ``deadline``.
    """

    def __init__(self, platform, clock, groups: dict, create: Optional[dict] = None,
                 hooks: Optional[Hooks] = None, analysis=None,
                 progress_deadline: float = 600.0, deadline: Optional[float] = None,
                 interval: Optional[float] = None, analysis_state: Optional[dict] = None,
                 rng=None, retry_base: float = 0.5, retry_cap: float = 10.0):
        self.platform = platform
        self.clock = clock
        self.groups = groups
        self.create_args = create or {}
        self.hooks = hooks or Hooks()
        self.analysis = analysis
        self.progress_deadline = progress_deadline
        self.deadline = deadline
        self.interval = interval or getattr(platform, "poll_interval", 1.0)
        # one run for the whole release: failed windows add up over all steps
        self.judge = AnalysisRun(analysis, "canary", analysis_state) if analysis else None
        self.cancel = None  # a Cancel, set by the rollout for the forward plan
        self._live = False
        self.rng = rng or random.Random()
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self._waiting = None  # (deadline, limit) of the wait in progress

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set() and not self._live:
            raise StepFailed(self.cancel.reason, "cancelled")

    def _sleep(self, seconds: float) -> None:
        """``clock.sleep`` in slices of at most a second, checking ``cancel``."""
        end = self.clock.now() + seconds
        while True:
            self.check_cancel()
            left = end - self.clock.now()
            if left <= 0:
                return
            self.clock.sleep(min(left, 1.0))

    # -- primitives ----------------------------------------------------------
    def name(self, role: str) -> Optional[str]:
        return self.groups.get(role)

    def _limit(self):
        """(deadline, its name): the progress deadline from now, or the
        timeout when that comes first; inside a wait, the wait's own."""
        if self._waiting is not None:
            return self._waiting
        deadline = self.clock.now() + self.progress_deadline
        limit = "progress deadline %gs" % self.progress_deadline
        if self.deadline is not None and self.deadline < deadline:
            deadline, limit = self.deadline, "timeout"
        return deadline, limit

    def platform_call(self, op: str, *args, **kwargs):
        """``<role>.<op>(...)`` of the role that answers ``op`` (group manager,
        traffic router or metrics provider), with transient errors retried
        until the deadline."""
        return self._retried(op, lambda: self.platform.call(op, *args, **kwargs))

    def _retried(self, op: str, call: Callable):
        deadline, limit = self._limit()

        def retrying(exc, attempt, delay):
            self.hooks.event("%s: transient error %s; retry %d in %.1fs"
                             % (op, exc.msg, attempt, delay), op=op, retry=attempt)
        try:
            return retry_transient(call, deadline, self.clock, base=self.retry_base,
                                   cap=self.retry_cap, rng=self.rng, on_retry=retrying)
        except RetryDeadline as exc:
            raise StepFailed("%s exceeded: %s %s" % (limit, op, exc.msg), "deadline")

    def observed(self, name: str):
        for group in self.platform_call("list_groups", self.create_args["artifact"],
                                        self.create_args["environment"]):
            if group.name == name:
                return group
        return None

    def wait(self, predicate: Callable, describe, cancellable: bool = True) -> None:
        deadline, limit = self._limit()

        def checked():  # a drain or destroy is never left half-way
            if cancellable:
                self.check_cancel()
            return predicate()
        outer, self._waiting = self._waiting, (deadline, limit)
        try:
            wait_until(checked, deadline, self.interval, describe, self.clock)
        except WaitTimeout as exc:
            raise StepFailed("%s exceeded: %s" % (limit, exc), "deadline")
        except HealthFailure as exc:
            raise StepFailed(str(exc), "health")
        finally:
            self._waiting = outer

    def create(self, role: str, size: int, name: Optional[str] = None) -> str:
        args = dict(self.create_args)
        args["name"] = name or args.get("name")
        tried = []

        def create():
            # a transient error may come after the platform took the request:
            # a retry adopts the group it made then instead of failing on it
            if tried and args["name"]:
                made = self.observed(args["name"])
                if made is not None and made.owner == args.get("owner") and \
                        made.release_id == args["release_id"]:
                    return made
            tried.append(True)
            return self.platform.groups.create_group(size=size, **args)
        group = self._retried("create_group", create)
        self.groups[role] = group.name
        self.hooks.event("created %s (%d instance(s)) from %s"
                         % (group.name, size, args["image"]), group=group.name)
        return group.name

    def resize(self, role: str, size: int) -> None:
        name = self.name(role)
        self.platform_call("resize", name, size)

        def done():
            group = self.observed(name)
            return group is not None and group.size == size
        self.wait(done, "%s to have size %d" % (name, size))

    def wait_healthy(self, role: str, size: int) -> None:
        name = self.name(role)
        last = {"health": None}

        def ready():
            health = self.platform_call("health", name)
            last["health"] = health
            if health.failed:
                raise HealthFailure("%s is failing: %s" % (name, health.summary()))
            return health.ready >= size

        self.wait(ready, lambda: "%s to have %d healthy instance(s) (%s)" % (
            name, size, last["health"].summary() if last["health"] else "no health yet"))

    def set_weights(self, weights: dict) -> None:
        """Request ``weights`` and wait until the router verifies them; a
        router that cannot tell (``verify_weights`` None) is given its
        ``settle_time``, and the step log says so."""
        named = {self.name(r): w for r, w in weights.items() if self.name(r)}
        if not named:
            return
        text = ", ".join("%s=%d%%" % item for item in sorted(named.items()))
        self.platform_call("set_weights", named)
        answer = {}

        def applied():
            answer["verified"] = self.platform_call("verify_weights", named)
            return answer["verified"] is None or answer["verified"]
        self.wait(applied, "traffic weights " + text)
        if answer["verified"] is None:
            settle = float(getattr(self.platform.traffic, "settle_time", 0.0) or 0.0)
            self.hooks.event("traffic weights %s requested; the %s router cannot verify "
                             "weights, waiting its settle time %gs"
                             % (text, self.platform.name, settle), settle=settle)
            self._sleep(settle)
        self.hooks.event("traffic weights " + text, weights=named)

    def drain(self, role: str) -> None:
        name = self.name(role)
        if not name:
            return
        self.platform_call("drain_and_detach", name)

        def detached():
            group = self.observed(name)
            return group is None or not group.attached
        self.wait(detached, "%s to be drained and detached" % name, cancellable=False)

    def destroy(self, role: Optional[str] = None, name: Optional[str] = None) -> None:
        name = name or self.name(role)
        if not name:
            return
        self.platform_call("destroy", name)
        last = {}

        def done():  # gone, or detached and the platform finishes the removal (base.destroy_done)
            last["group"] = self.observed(name)
            return destroy_done(last["group"])
        self.wait(done, "%s to be destroyed" % name, cancellable=False)
        for key, value in list(self.groups.items()):
            if value == name:
                self.groups[key] = None
        if last["group"] is None:
            self.hooks.event("destroyed %s" % name, group=name)
        else:
            self.hooks.event("destroyed %s: detached, its deletion is accepted and the %s platform "
                             "removes its instances" % (name, self.platform.name), group=name,
                             deleting=True)

    # -- pauses and analysis -------------------------------------------------
    def _check_failing(self, name: str) -> None:
        health = self.platform_call("health", name)
        if health.failed:
            raise StepFailed("%s is failing: %s" % (name, health.summary()), "health")
        return health

    #: consecutive health checks a group must miss during verification
    #: before it fails (as HAProxy's ``fall 3`` and Kubernetes' default
    #: ``failureThreshold``); a crash loop fails at once
    VERIFY_MISSES = 3

    def verify(self, role: str, duration: float) -> None:
        name = self.name(role)
        end = self.clock.now() + duration
        misses = 0
        while True:
            health = self._check_failing(name)
            group = self.observed(name)
            if group is None:
                raise StepFailed("%s disappeared during verification" % name, "health")
            misses = misses + 1 if health.ready < group.size else 0
            if misses >= self.VERIFY_MISSES:
                raise StepFailed("%s did not stay healthy during verification: %s "
                                 "(%d checks in a row)" % (name, health.summary(), misses), "health")
            if self.clock.now() >= end and not misses:
                return
            self._sleep(min(self.interval, max(end - self.clock.now(), 0)) or self.interval)

    def _window(self, name: str, seconds: float, subject: Optional[str] = None):
        """Wait ``seconds``, then judge that window of ``name``."""
        run = self.judge
        started = self.clock.now()
        self._sleep(seconds)
        self._check_failing(name)
        sample = run.add(self.platform_call("metrics", name, started, self.clock.now()), subject)
        self.hooks.event("analysis %s: %s" % (sample.result, sample.reason),
                         verdict=sample.result, requests=sample.requests,
                         windows=run.counts["windows"], failed=run.counts["failed"])
        self.hooks.analysis(run.state())
        if run.failed:
            raise StepFailed("analysis failed: " + run.verdict().reason, "analysis")
        return sample

    def _conclude(self, step: Step) -> Optional[str]:
        """Verdict of the judgment that just ended: None to go on, a pause
        reason, or ``StepFailed``."""
        run = self.judge
        verdict = run.verdict()
        if verdict.result == FAIL:
            self.hooks.analysis(run.state())
            raise StepFailed("analysis failed: " + verdict.reason, "analysis")
        if verdict.result == PASS:
            run.close(PASS)
            self.hooks.analysis(run.state())
            return None
        run.close(INCONCLUSIVE)
        self.hooks.analysis(run.state())
        if step.inconclusive == "go_live":
            self.hooks.event("analysis inconclusive: %s; a first deploy has nothing to "
                             "roll back to, so it goes live recorded as not judged "
                             "(analysed: inconclusive)" % verdict.reason,
                             verdict=INCONCLUSIVE)
            return None
        if self.analysis.on_inconclusive == "pause":
            return "analysis inconclusive: %s; promote or abort" % verdict.reason
        raise StepFailed("analysis inconclusive (not promoted): " + verdict.reason,
                         "analysis")

    def pause(self, step: Step) -> Optional[str]:
        """None when finished; a reason string when the rollout must pause."""
        if step.duration is None:
            return "waiting for action: promote"
        name = self.name("new")
        judged = bool(step.analyze and self.judge)
        if judged:
            self.judge.begin()
        end = self.clock.now() + step.duration
        while self.clock.now() < end:
            if judged and name:
                self._window(name, min(self.analysis.interval, end - self.clock.now()))
                continue
            self._sleep(min(self.interval, end - self.clock.now()))
            if name:
                self._check_failing(name)
        return self._conclude(step) if judged else None

    def analyze(self, step: Step) -> Optional[str]:
        """Judge ``analysis.windows`` windows of the new group; while the
        latest window failed (under the limit) judge one more, so a failing
        release always ends in FAIL, not in "inconclusive"."""
        name = self.name(step.role)
        if self.judge is None or not name:
            return None
        self.judge.begin()
        judged = 0
        while True:
            if self.deadline is not None and self.clock.now() > self.deadline:
                raise StepFailed("timeout exceeded during the analysis of %s" % name,
                                 "deadline")
            sample = self._window(name, self.analysis.interval, subject=name)
            judged += 1
            if judged >= self.analysis.windows and sample.result != FAIL:
                break
        return self._conclude(step)

    # -- the plan ------------------------------------------------------------
    def _do(self, step: Step) -> Optional[str]:
        kind = step.kind
        if kind == "create":
            self.create(step.role, step.size)
        elif kind == "resize":
            self.resize(step.role, step.size)
        elif kind == "wait_healthy":
            self.wait_healthy(step.role, step.size)
        elif kind == "set_weights":
            self.set_weights(step.weights)
        elif kind == "pause":
            return self.pause(step)
        elif kind == "verify":
            self.verify(step.role, step.duration)
        elif kind == "analyze":
            return self.analyze(step)
        elif kind == "mark_live":
            self.hooks.live()
            self._live = True
        elif kind == "drain":
            self.drain(step.role)
        elif kind == "destroy":
            self.destroy(step.role)
        elif kind == "keep_warm":
            name = self.name(step.role)
            if name and not self.hooks.keep_warm(name, step.duration or 0):
                self.destroy(step.role)
        else:
            raise ValueError("unknown step kind %r" % kind)
        return None

    def run(self, plan: list, start: int = 0) -> Outcome:
        self._live = any(s.kind == "mark_live" for s in plan[:start])
        for index in range(start, len(plan)):
            step = plan[index]
            self.check_cancel()
            if self.deadline is not None and self.clock.now() > self.deadline:
                raise StepFailed("timeout exceeded before step %d/%d (%s)"
                                 % (index + 1, len(plan), step.describe(self.groups)),
                                 "deadline")
            self.hooks.event("step %d/%d: %s" % (index + 1, len(plan),
                                                 step.describe(self.groups)),
                             step=index + 1, kind=step.kind)
            try:
                paused = self._do(step)
            except PlatformError as exc:
                raise StepFailed("%s failed: %s" % (step.describe(self.groups), exc),
                                 "platform")
            self.hooks.progress(index + 1)
            if paused:
                return Outcome("paused", index + 1, paused)
        return Outcome("done", len(plan))
