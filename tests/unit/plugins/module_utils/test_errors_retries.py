"""One error hierarchy under PhoenixError (with the option as ``param``), and
transient platform errors retried with jittered backoff until the deadline
(issue 10, item 4)."""
import itertools
import os
import random
import socket

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import (
    images, packer_runner, retries, versioning)
from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import SettingsError
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import (
    InvalidName, PhoenixError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms import local
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    HealthFailure, PlatformError, WaitTimeout)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.haproxy import RuntimeAPI
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.supervisor import Supervisor
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, FileReleaseStore, LIVE, LockHeld, ROLLED_BACK, StoreError, SUCCEEDED,
    check_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout, RolloutError
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
    StepFailed, parse_settings)

from platform_double import FakeClock, FakePlatform

CANARY = {"steps": [{"set_weight": 25}, {"pause": {"duration": 10}},
                    {"set_weight": 50}, {"pause": {"duration": 10}}],
          "progress_deadline": 20}


def transient(text="HTTP 429 Too Many Requests"):
    return PlatformError(text, transient=True)


class World:
    """A platform double, a store and a clock; ``deploy`` runs one rollout."""

    def __init__(self, path):
        self.clock = FakeClock()
        self.platform = FakePlatform(self.clock)
        self.store = FileReleaseStore(str(path))

    def deploy(self, version, image, strategy="rolling", settings=None):
        return Rollout(self.platform, self.store, "catalog", "ci", clock=self.clock).deploy(
            version, image, 3, strategy, settings or {})

    def canary(self):
        first = self.deploy("1.0.0", "sha256:a")
        assert first.state == LIVE, first.msg
        return self.deploy("1.1.0", "sha256:b", "canary", CANARY)

    def messages(self, result):
        return [e["message"] for e in result.events]


def outcome(world, result):
    """What a rollout leaves: state, outcomes, groups with weights (no timings)."""
    history = world.store.load("catalog", "ci")
    snap = {name: (s["size"], s["ready"], s["weight"], s["serving"])
            for name, s in world.platform.snapshot().items() if not s["deleting"]}
    return (result.state, result.failed, history.live,
            [(r.release_id, r.status, r.outcome) for r in history.releases], snap, result.plan)


# -- the executor retries transient platform errors ---------------------------------------
@pytest.mark.parametrize("op, skip", [
    ("set_weights", 1),       # the canary's second weight change (50 %)
    ("create_group", 0),      # the canary group itself
    ("drain_and_detach", 0),  # the old group, after the switch
    ("health", 3),            # a poll while the canary starts
    ("list_groups", 4),       # a poll while weights apply
])
def test_transient_error_mid_canary_is_retried_with_the_same_result(tmp_path, op, skip):
    clean = World(tmp_path / "clean")
    expected = outcome(clean, clean.canary())
    world = World(tmp_path / "faulty")
    first = world.deploy("1.0.0", "sha256:a")
    world.platform.fail_next = [(op, transient(), skip), (op, transient("HTTP 503 backend error"))]
    result = world.deploy("1.1.0", "sha256:b", "canary", CANARY)
    assert first.state == LIVE and result.state == LIVE, result.msg
    assert [f[1] for f in world.platform.failed] == [op, op]  # both were injected
    assert outcome(world, result) == expected
    retried = [m for m in world.messages(result) if "transient error" in m]
    assert len(retried) == 2, world.messages(result)
    assert retried[0].startswith("%s: transient error HTTP 429 Too Many Requests; retry 1 in " % op)
    assert retried[1].startswith("%s: transient error HTTP 503 backend error; retry 2 in " % op)
    history = world.store.load("catalog", "ci")
    assert history.get("v002").outcome == SUCCEEDED


def test_a_create_whose_reply_was_lost_adopts_the_group_on_retry(tmp_path):
    clean = World(tmp_path / "clean")
    expected = outcome(clean, clean.canary())
    world = World(tmp_path / "faulty")
    world.deploy("1.0.0", "sha256:a")
    world.platform.fail_next = [("create_group", transient("HTTP 502 after insert"), 0, True)]
    result = world.deploy("1.1.0", "sha256:b", "canary", CANARY)
    assert result.state == LIVE, result.msg
    assert outcome(world, result) == expected
    assert [op for _t, op, _args, _snap in world.platform.log].count("create_group") == 2
    assert any(m.startswith("create_group: transient error HTTP 502 after insert; retry 1 in ")
               for m in world.messages(result))


def test_permanent_error_rolls_back_at_once_with_the_error(tmp_path):
    world = World(tmp_path)
    world.deploy("1.0.0", "sha256:a")
    world.platform.fail_next = [("set_weights", PlatformError("HTTP 400: weight 50 rejected"), 1)]
    result = world.deploy("1.1.0", "sha256:b", "canary", CANARY)
    assert result.failed and result.state == ROLLED_BACK
    assert "HTTP 400: weight 50 rejected" in result.msg
    assert not [m for m in world.messages(result) if "transient" in m]
    failed_at = world.platform.failed[0][0]
    rollback = [e for e in result.events if e["message"].startswith("rollout failed (platform)")]
    assert len(rollback) == 1 and rollback[0]["at"] == failed_at  # no retry, no wait
    history = world.store.load("catalog", "ci")
    assert [r.outcome for r in history.releases] == [SUCCEEDED, ROLLED_BACK]
    assert world.platform.snapshot()["catalog-ci-v001"]["weight"] == 100


def test_transient_errors_past_the_progress_deadline_roll_back(tmp_path):
    world = World(tmp_path)
    world.deploy("1.0.0", "sha256:a")
    # every set_weights fails for 25 s from the canary's second weight change on; the
    # progress deadline is 20 s, so the step fails; the rollback gets through after 25 s
    world.platform.outage("set_weights", transient("HTTP 503 backend error"), 25, skip=1)
    result = world.deploy("1.1.0", "sha256:b", "canary", CANARY)
    assert result.failed and result.state == ROLLED_BACK, result.msg
    assert "progress deadline 20s exceeded" in result.msg
    assert "set_weights still failing after" in result.msg and "HTTP 503" in result.msg
    messages = world.messages(result)
    assert any(m.startswith("rollout failed (deadline)") for m in messages), messages
    start = world.platform.failed[0][0]
    failed_at = [e["at"] for e in result.events if e["message"].startswith("rollout failed")][0]
    assert start + 10 < failed_at <= start + 20  # retried for a while, never past the deadline
    assert len([m for m in messages if "set_weights: transient error" in m]) >= 3
    history = world.store.load("catalog", "ci")
    assert [r.outcome for r in history.releases] == [SUCCEEDED, ROLLED_BACK]
    assert world.platform.snapshot()["catalog-ci-v001"]["weight"] == 100


# -- the backoff -----------------------------------------------------------------------
def test_backoff_is_jittered_capped_and_deterministic_with_a_seed():
    def first(seed, n=40):
        gen = retries.backoff_delays(base=0.5, cap=10, rng=random.Random(seed))
        return list(itertools.islice(gen, n))
    delays = first(7)
    assert delays == first(7) and delays != first(8)
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(10, 0.5 * 2 ** n)
    assert max(delays) <= 10 and len(set(delays)) == len(delays)  # jittered: no fixed steps
    assert max(delays[6:]) > 5  # grows to the cap's range


def test_retry_transient_sleeps_on_the_clock_and_stops_at_the_deadline():
    clock = FakeClock()
    calls, told = [], []

    def flaky():
        calls.append(clock.now())
        if len(calls) < 4:
            raise transient()
        return 42
    start = clock.now()
    value = retries.retry_transient(flaky, start + 60, clock, rng=random.Random(1),
                                    on_retry=lambda exc, n, delay: told.append((n, delay)))
    assert value == 42 and [n for n, _d in told] == [1, 2, 3]
    assert clock.now() - start == pytest.approx(sum(d for _n, d in told))

    def permanent():
        calls.append(clock.now())
        raise PlatformError("HTTP 404 no such group")
    calls.clear()
    with pytest.raises(PlatformError, match="404"):
        retries.retry_transient(permanent, clock.now() + 60, clock)
    assert len(calls) == 1

    def down():
        raise transient("connection refused")
    deadline = clock.now() + 30
    with pytest.raises(retries.RetryDeadline) as err:
        retries.retry_transient(down, deadline, clock, rng=random.Random(2))
    assert clock.now() < deadline and err.value.attempts > 1
    assert err.value.last.msg == "connection refused" and "connection refused" in err.value.msg

    sleeps = FakeClock()

    box = []

    @retries.transient_retry(20, clock=sleeps, rng=random.Random(3))
    def once_flaky():
        box.append(1)
        if len(box) == 1:
            raise transient()
        return len(box)
    assert once_flaky() == 2 and sleeps.now() > FakeClock().now()


# -- the hierarchy ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [
    images.ImageError, images.TamperError, images.ImmutabilityError, versioning.VersionError,
    packer_runner.PackerError, InvalidName, SettingsError, StoreError, ConflictError, LockHeld,
    PlatformError, WaitTimeout, HealthFailure, StepFailed, RolloutError, retries.RetryDeadline])
def test_every_engine_error_is_a_phoenix_error(cls):
    assert issubclass(cls, PhoenixError)


def test_errors_from_an_option_carry_it_as_param(tmp_path):
    cases = []
    for fn, param in [
            (lambda: versioning.parse("latest", "version"), "version"),
            (lambda: versioning.check_artifact("Bad_Name", "artifact"), "artifact"),
            (lambda: versioning.semver_build("1.0.0", "xyz"), "git_hash"),
            (lambda: check_name("../etc", "environment"), "environment"),
            (lambda: FileReleaseStore(str(tmp_path)).load("catalog", "ci\n"), "environment"),
            (lambda: images.BakeRequest("catalog", "v1.0.0", str(tmp_path)), "version"),
            (lambda: parse_settings("rainbow", {}, 3), "strategy"),
            (lambda: parse_settings("rolling", {}, 0), "size"),
            (lambda: parse_settings("canary", {"steps": []}, 3), "strategy_settings"),
            (lambda: parse_settings("rolling", {"max_surge": -1}, 3), "strategy_settings"),
            (lambda: Rollout.validate(3, "rolling", {}, {"max_error_rate": 2}), "analysis")]:
        with pytest.raises(PhoenixError) as err:
            fn()
        cases.append((err.value.param, param))
    assert [got for got, _want in cases] == [want for _got, want in cases]
    with pytest.raises(ValueError):  # existing ``except ValueError`` clauses still work
        check_name("a b", "artifact")
    with pytest.raises(ValueError):
        versioning.parse("1.0", "version")


def test_transient_defaults_to_false():
    assert PlatformError("x").transient is False and transient().transient is True
    assert not retries.is_transient(PlatformError("x")) and retries.is_transient(transient())
    assert not retries.is_transient(OSError("x"))


# -- the local driver marks dropped connections transient --------------------------------
def refused_socket(tmp_path):
    """A unix socket path nobody listens on (a supervisord or HAProxy that is restarting)."""
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.close()
    return path


def test_local_driver_marks_refused_connections_transient(tmp_path):
    path = refused_socket(tmp_path)
    platform = local.LocalDriver.__new__(local.LocalDriver)
    platform.api = RuntimeAPI(path, timeout=2)
    with pytest.raises(PlatformError) as err:
        platform._haproxy("show info", platform.api.process_id)
    assert err.value.transient, err.value.msg
    platform.api = RuntimeAPI(str(tmp_path / "missing.sock"), timeout=2)
    with pytest.raises(PlatformError) as err:  # no socket at all: a configuration error
        platform._haproxy("show info", platform.api.process_id)
    assert not err.value.transient


def test_local_driver_marks_a_refused_supervisord_transient(tmp_path):
    assert local.HAS_SUPERVISOR, "make setup installs supervisor: %s" % local.SUPERVISOR_IMPORT_ERROR
    path = refused_socket(tmp_path)
    supervisor = Supervisor("unix://" + path)
    with pytest.raises(PlatformError) as err:
        supervisor.processes()
    assert err.value.transient and "unreachable" in err.value.msg
    assert os.path.exists(path)
