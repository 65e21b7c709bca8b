"""The driver conformance suite: what the engine relies on from every
platform (its three roles), run against each driver.

A driver's test module subclasses ``PlatformContract`` (a class whose name
does not start with ``Test``, so it is collected only through subclasses)
and gives a ``subject`` fixture returning a ``Subject``.  Today: the
in-memory double (tests/unit/.../test_platform_contract.py) and the local
driver on a real supervisord + HAProxy stack
(tests/pytest/test_platform_contract_local.py); GCE and Kubernetes join the
same way.
"""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    GroupManager, MetricsProvider, PlatformError, TrafficRouter, destroy_done, group_name, valid_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
    Executor, Hooks, StepFailed)


class Subject:
    """One driver under test.  ``send(n)`` puts ``n`` requests through the
    platform's router; ``fault(op, transient)`` is a context in which the
    next call of ``op`` fails once, transient or permanent; ``timeout`` is
    in clock seconds."""

    timeout = 60.0
    #: requests the driver may count beyond those ``send`` made (health
    #: checks do not count, retries of a failed attempt may)
    slack = 2
    #: True: the platform finishes a destroy by itself (``ServerGroup.deleting``),
    #: so the group must still be listed, deleting, when the engine's destroy returned
    platform_owned_deletion = False

    def __init__(self, platform, clock, artifact, environment, image):
        self.platform, self.clock = platform, clock
        self.artifact, self.environment, self.image = artifact, environment, image
        self.seq = 0

    def send(self, n):
        raise NotImplementedError

    def fault(self, op, transient):
        raise NotImplementedError

    def wait_for(self, predicate, what, timeout=None):
        end = self.clock.now() + (timeout or self.timeout)
        while True:
            value = predicate()
            if value:
                return value
            assert self.clock.now() < end, "timed out waiting for " + what
            self.clock.sleep(0.1)

    # -- helpers -----------------------------------------------------------
    def observed(self, name):
        return {g.name: g for g in self.platform.groups.list_groups(
            self.artifact, self.environment)}.get(name)

    def new_group(self, size=1):
        self.seq += 1
        release = "v%03d" % self.seq
        name = self.platform.groups.group_name(self.artifact, self.environment, release)
        self.platform.groups.create_group(self.artifact, self.environment, release, self.image,
                                          size, {}, name=name, owner="contract")
        self.wait_for(lambda: self.platform.groups.health(name).ready == size,
                      "%s healthy" % name)
        return name

    def weigh(self, weights):
        self.platform.traffic.set_weights(weights)
        verdict = self.wait_for(lambda: self.platform.traffic.verify_weights(weights) in (True, None)
                                and [self.platform.traffic.verify_weights(weights)],
                                "weights %r" % weights)
        if verdict == [None]:
            self.clock.sleep(self.platform.traffic.settle_time)

    def cleanup(self):
        for group in self.platform.groups.list_groups(self.artifact, self.environment):
            self.platform.groups.destroy(group.name)
        self.wait_for(lambda: not self.platform.groups.list_groups(self.artifact, self.environment),
                      "clean-up")


class PlatformContract:
    """Every driver: subclass and provide a ``subject`` fixture."""

    def test_the_three_roles(self, subject):
        platform = subject.platform
        assert isinstance(platform.groups, GroupManager)
        assert isinstance(platform.traffic, TrafficRouter)
        assert isinstance(platform.metrics, MetricsProvider)

    def test_names_are_dns_labels(self, subject):
        groups = subject.platform.groups
        for environment in ("integrated_qa", "ci", "x" * 80, "Prod.EU"):
            name = groups.group_name(subject.artifact, environment, "v001")
            assert valid_name(name) and len(name) <= 63, name
            assert name == groups.group_name(subject.artifact, environment, "v001")  # deterministic
        assert groups.group_name(subject.artifact, "integrated_qa", "v001") == \
            group_name(subject.artifact, "integrated_qa", "v001")
        assert "integrated-qa" in group_name("catalog", "integrated_qa", "v001")
        made = subject.new_group()
        assert valid_name(made)
        group = subject.observed(made)
        assert group is not None and group.owner == "contract"

    def test_a_new_group_takes_no_traffic_until_weighted(self, subject):
        stable = subject.new_group()
        subject.weigh({stable: 100})
        fresh = subject.new_group()
        group = subject.observed(fresh)
        assert group.weight == 0
        start = subject.clock.now()
        subject.platform.metrics.metrics(fresh, start, start)
        subject.send(20)
        end = subject.clock.now()
        assert subject.platform.metrics.metrics(fresh, start, end).requests == 0
        subject.weigh({stable: 0, fresh: 100})
        start = subject.clock.now()
        subject.platform.metrics.metrics(fresh, start, start)
        subject.send(20)
        got = subject.platform.metrics.metrics(fresh, start, subject.clock.now())
        assert 20 <= got.requests <= 20 + subject.slack, got

    def test_weights_are_verified_or_reported_unknown(self, subject):
        a, b = subject.new_group(), subject.new_group()
        subject.weigh({a: 100, b: 0})
        traffic = subject.platform.traffic
        assert traffic.verify_weights({a: 100, b: 0}) in (True, None)
        wrong = traffic.verify_weights({a: 0, b: 100})
        assert wrong in (False, None)
        if wrong is None:  # a router that cannot tell says how long it needs
            assert traffic.settle_time > 0
        subject.weigh({a: 50, b: 50})
        assert traffic.verify_weights({a: 50, b: 50}) in (True, None)
        assert traffic.verify_weights({a: 100, b: 0}) in (False, None)

    def test_drain_keeps_the_group_warm(self, subject):
        name = subject.new_group()
        subject.weigh({name: 100})
        subject.platform.traffic.drain_and_detach(name)
        subject.wait_for(lambda: not subject.observed(name).attached, "%s detached" % name)
        group = subject.observed(name)
        assert group.weight == 0 and group.size == 1
        assert subject.platform.groups.health(name).ready == 1  # warm: instant switch back
        subject.weigh({name: 100})  # attached again
        assert subject.observed(name).attached

    def test_destroy_is_visible_until_done(self, subject):
        """``list_groups`` shows a destroyed group until it is done for the
        engine (``base.destroy_done``): gone, or detached under platform-owned
        deletion (``deleting``: size 0, weight 0, refused any size or traffic,
        never back to normal) - and then the platform really finishes it."""
        name = subject.new_group()
        subject.weigh({name: 100})
        executor = Executor(subject.platform, subject.clock, {"old": name}, create={
            "artifact": subject.artifact, "environment": subject.environment},
            progress_deadline=subject.timeout)
        executor.drain("old")
        executor.destroy("old")  # returns once destroy_done holds
        group = subject.observed(name)
        assert destroy_done(group), group
        assert group is not None or not subject.platform_owned_deletion, "the deleting group is not listed"
        if group is not None:  # the platform owns the rest of the removal
            assert group.deleting and not group.attached and group.size == 0 and group.weight == 0, group
            with pytest.raises(PlatformError):
                subject.platform.groups.resize(name, 1)
            with pytest.raises(PlatformError):
                subject.platform.traffic.set_weights({name: 100})
        seen = []

        def gone():
            group = subject.observed(name)
            seen.append(group)
            return group is None
        subject.wait_for(gone, "%s destroyed" % name)
        assert all(g is not None and g.name == name and destroy_done(g) for g in seen[:-1]), seen
        subject.platform.groups.destroy(name)  # destroying a gone group is a no-op

    def test_metrics_over_an_explicit_window(self, subject):
        name = subject.new_group()
        subject.weigh({name: 100})
        metrics = subject.platform.metrics
        t0 = subject.clock.now()
        metrics.metrics(name, t0, t0)
        subject.send(20)
        t1 = subject.clock.now()
        metrics.metrics(name, t1, t1)
        subject.clock.sleep(metrics.resolution + 0.5)
        subject.send(30)
        t2 = subject.clock.now()
        first = metrics.metrics(name, t0, t1)
        assert 20 <= first.requests <= 20 + subject.slack, first
        assert first.window == pytest.approx(t1 - t0, abs=2 * metrics.resolution + 0.01)
        later = metrics.metrics(name, t1, t2)
        assert 30 <= later.requests <= 30 + subject.slack, later

    def test_a_transient_error_is_retried_and_a_permanent_one_is_not(self, subject):
        name = subject.new_group()
        events = []

        class Recorded(Hooks):
            def event(self, message, **data):
                events.append(message)
        executor = Executor(subject.platform, subject.clock, {}, create={
            "artifact": subject.artifact, "environment": subject.environment},
            hooks=Recorded(), progress_deadline=30, retry_base=0.05, retry_cap=0.2)
        with subject.fault("health", transient=True):
            assert executor.platform_call("health", name).total == 1
        assert any("transient error" in e for e in events), events
        events.clear()
        with subject.fault("health", transient=False):
            with pytest.raises(PlatformError) as err:
                executor.platform_call("health", name)
        assert not err.value.transient and not events

    def test_a_transient_error_until_the_deadline_fails_the_step(self, subject):
        name = subject.new_group()
        executor = Executor(subject.platform, subject.clock, {}, create={
            "artifact": subject.artifact, "environment": subject.environment},
            progress_deadline=0.5, retry_base=0.05, retry_cap=0.1)
        with subject.fault("health", transient=True, count=1000):
            with pytest.raises(StepFailed) as err:
                executor.platform_call("health", name)
        assert err.value.cause == "deadline"
