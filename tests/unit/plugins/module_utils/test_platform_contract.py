"""The driver conformance suite (platform_contract.py) against the in-memory double."""
import contextlib

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError
from platform_contract import PlatformContract, Subject
from platform_double import FakeClock, FakePlatform


class DoubleSubject(Subject):
    def send(self, n):
        self.platform.send(n)

    @contextlib.contextmanager
    def fault(self, op, transient, count=1):
        error = PlatformError("HTTP %s" % (503 if transient else 400), transient=transient)
        entries = [(op, error)] * count
        self.platform.fail_next.extend(entries)
        try:
            yield
        finally:
            self.platform.fail_next[:] = [e for e in self.platform.fail_next if e[1] is not error]


@pytest.fixture(params=[(True, False), (False, False), (True, True)],
                ids=["verifiable", "unverifiable-weights", "platform-owned-deletion"])
def subject(request):
    clock = FakeClock()
    platform = FakePlatform(clock, rps=None, weights_observable=request.param[0],
                            owned_deletion=request.param[1], destroy_delay=5.0)
    subj = DoubleSubject(platform, clock, "catalog", "ci", "sha256:a")
    subj.platform_owned_deletion = request.param[1]
    yield subj


class TestDoubleContract(PlatformContract):
    pass


def test_the_executor_waits_the_settle_time_of_a_router_that_cannot_verify():
    """verify_weights None: the step log says so and the settle time passes."""
    from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import Executor, Hooks
    clock = FakeClock()
    platform = FakePlatform(clock, weights_observable=False, settle_time=7.0)
    platform.create_group("catalog", "ci", "v001", "sha256:a", 1, {})
    events = []

    class Recorded(Hooks):
        def event(self, message, **data):
            events.append(message)
    executor = Executor(platform, clock, {"new": "catalog-ci-v001"},
                        create={"artifact": "catalog", "environment": "ci"}, hooks=Recorded())
    before = clock.now()
    executor.set_weights({"new": 100})
    assert clock.now() - before >= 7.0
    assert any("cannot verify weights, waiting its settle time 7s" in e for e in events), events


def test_the_executor_fails_when_weights_are_never_verified():
    from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
        Executor, StepFailed)
    clock = FakeClock()
    platform = FakePlatform(clock)
    platform.create_group("catalog", "ci", "v001", "sha256:a", 1, {})
    platform.verify_weights = lambda weights: False  # a router that never applies them
    executor = Executor(platform, clock, {"new": "catalog-ci-v001"}, progress_deadline=20,
                        create={"artifact": "catalog", "environment": "ci"})
    with pytest.raises(StepFailed) as err:
        executor.set_weights({"new": 100})
    assert err.value.cause == "deadline" and "traffic weights catalog-ci-v001=100%" in err.value.reason
