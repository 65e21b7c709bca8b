"""Issue 9 hardening of the engine: a controller killed at any platform call
of any action converges on the next run with serving capacity never at 0;
rollback finishes forward once traffic moved; drains a dead controller left
half-done are undone; an empty or different release store never destroys
what runs; releases are keyed by image, size and config."""
import os
import re

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import SettingsError
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, LIVE, LockHolder, SUCCEEDED, check_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import (
    Rollout, RolloutError, check_env)
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import StepFailed

from platform_double import Crash, FakeClock, FakePlatform

CANARY = {"steps": [{"set_weight": 34}, {"pause": {"duration": 10}}, {"set_weight": 67},
                    {"pause": {}}]}


class World:
    """One platform + store + clock; ``rollout()`` is a fresh controller."""

    def __init__(self, tmp_path, sub="releases"):
        self.clock = FakeClock()
        self.platform = FakePlatform(self.clock)
        self.store = FileReleaseStore(str(tmp_path / sub))
        self.env = {"FEATURE": "on"}

    def rollout(self, **kw):
        kw.setdefault("env", self.env)
        return Rollout(self.platform, self.store, "catalog", "ci", clock=self.clock, **kw)


def converged(world):
    """Exactly one live release at 100 % and healthy, no orphan group, no lock."""
    history = world.store.load("catalog", "ci")
    live = [r for r in history.releases if r.status == LIVE]
    assert len(live) == 1 and live[0].release_id == history.live, \
        [(r.release_id, r.status) for r in history.releases]
    assert not history.active()
    snap = world.platform.snapshot()
    group = snap[live[0].group]
    assert group["weight"] == 100 and group["serving"] and group["ready"] == live[0].size
    now = world.clock.now()
    warm = {r.group for r in history.releases if r.warm_until and r.warm_until > now}
    orphans = [n for n, st in snap.items() if n != live[0].group and not st["deleting"]
               and n not in warm]
    assert orphans == [], "orphan groups %s" % orphans
    assert world.store.lock_holder("catalog", "ci") is None
    return history, live[0]


def min_capacity(world, since):
    """Lowest serving capacity (ready instances of attached groups with traffic)
    seen at any platform call after log index ``since``."""
    return min(world.platform.serving_capacity(entry[3]) for entry in world.platform.log[since:])


# --- the actions, each from a state where it does something -----------------
def deploy_rolling(w):
    return w.rollout().deploy("1.1.0", "sha256:b", 3, "rolling", {"max_surge": 1})


def deploy_blue_green(w):
    return w.rollout().deploy("1.1.0", "sha256:b", 3, "blue_green", {"scale_down_delay": 30})


def deploy_canary(w):
    return w.rollout().deploy("1.1.0", "sha256:b", 3, "canary",
                              {"steps": [{"set_weight": 34}, {"pause": {"duration": 10}}]})


def deploy_recreate(w):
    return w.rollout().deploy("1.1.0", "sha256:b", 3, "recreate")


def setup_warm(w):
    w.rollout().deploy("1.1.0", "sha256:b", 3, "blue_green", {"scale_down_delay": 300})


def setup_cold(w):
    w.rollout().deploy("1.1.0", "sha256:b", 3, "rolling", {"max_surge": 1})


def setup_paused(w):
    w.rollout().deploy("1.1.0", "sha256:b", 3, "canary", CANARY)


ACTIONS = {
    # name: (setup after 1.0.0 is live, action, versions it may converge to, capacity gap)
    "deploy-rolling": (None, deploy_rolling, ("1.0.0", "1.1.0"), False),
    "deploy-blue_green": (None, deploy_blue_green, ("1.0.0", "1.1.0"), False),
    "deploy-canary": (None, deploy_canary, ("1.0.0", "1.1.0"), False),
    "deploy-recreate": (None, deploy_recreate, ("1.0.0", "1.1.0"), True),  # a gap by design
    "rollback-warm": (setup_warm, lambda w: w.rollout().rollback(), ("1.0.0", "1.1.0"), False),
    "rollback-cold": (setup_cold, lambda w: w.rollout().rollback(), ("1.0.0", "1.1.0"), False),
    "promote": (setup_paused, lambda w: w.rollout().promote(), ("1.0.0", "1.1.0"), False),
    "abort": (setup_paused, lambda w: w.rollout().abort(), ("1.0.0",), False),
}


def prepared(tmp_path, sub, name):
    world = World(tmp_path, sub)
    world.rollout().deploy("1.0.0", "sha256:a", 3)
    setup = ACTIONS[name][0]
    if setup:
        setup(world)
    return world


def count_calls(tmp_path, name):
    world = prepared(tmp_path, "count-" + name, name)
    before = world.platform.ops
    ACTIONS[name][1](world)
    return world.platform.ops - before


@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_kill_at_every_platform_call_converges(tmp_path, name, mode):
    """SIGKILL before / right after each platform call of each action: the
    rerun ends with exactly one live release, no orphan, and (except for
    recreate, whose gap is its definition) serving capacity never 0."""
    _setup, action, allowed, gap = ACTIONS[name]
    total = count_calls(tmp_path, name)
    assert total >= 2
    for n in range(1, total + 1):
        world = prepared(tmp_path, "%s-%s-%d" % (name, mode, n), name)
        since = len(world.platform.log)
        setattr(world.platform, "crash_at" if mode == "before" else "crash_after",
                world.platform.ops + n)
        with pytest.raises(Crash):
            action(world)
        world.platform.crash_at = world.platform.crash_after = None
        world.rollout().converge()
        history, live = converged(world)
        assert live.version in allowed, (n, live.version)
        if not gap:
            assert min_capacity(world, since) > 0, "capacity 0 after kill at call %d" % n
        # the same request again succeeds and converges
        action(world)
        converged(world)


def test_rollback_killed_after_the_traffic_switch_finishes_forward(tmp_path):
    """Rollback moved traffic to the warm 1.0.0 group, then the controller
    died: recovery must keep 1.0.0, not restore the release rolled back from."""
    world = prepared(tmp_path, "r", "rollback-warm")
    original = world.platform.set_weights

    def crash_after_switch(weights):
        original(weights)
        if weights.get("catalog-ci-v001") == 100:
            raise Crash("killed right after the traffic switch")
    world.platform.set_weights = crash_after_switch
    with pytest.raises(Crash):
        world.rollout().rollback()
    world.platform.set_weights = original
    world.clock.sleep(1)
    world.rollout().converge()
    history, live = converged(world)
    assert live.version == "1.0.0", "recovery restored the release rolled back from"
    assert live.group == "catalog-ci-v001"


def test_recreate_killed_mid_drain_converges_quickly(tmp_path):
    """The live group's drain was left half-done: its members are drained,
    never ready.  Recovery puts them back instead of waiting out the
    progress deadline, and the rerun never raises a traceback."""
    world = prepared(tmp_path, "d", "deploy-recreate")
    world.platform.crash_after = world.platform.ops + 1  # drain_and_detach of the live group
    with pytest.raises(Crash):
        deploy_recreate(world)
    world.platform.crash_after = None
    start = world.clock.now()
    result = world.rollout().converge()
    assert world.clock.now() - start < 60, "waited %gs" % (world.clock.now() - start)
    history, live = converged(world)
    assert live.version == "1.0.0"
    assert any("restoring v001" in e["message"] for e in result.events)


def test_restore_failure_is_a_clear_error_and_destroys_nothing(tmp_path):
    world = prepared(tmp_path, "f", "rollback-cold")
    history = world.store.load("catalog", "ci")
    live = history.live_release()
    world.platform.behaviour["sha256:b"] = {"never_ready": True}
    world.platform.set_weights({live.group: 0})  # the live group lost its traffic
    world.platform.create_group("catalog", "ci", "v077", "sha256:b", 1, {},
                                owner=world.store.store_id)
    world.platform.set_weights({"catalog-ci-v077": 100})
    world.clock.sleep(3)
    with pytest.raises(RolloutError) as err:
        world.rollout(env=world.env).converge()
    assert isinstance(err.value, PhoenixError)
    assert "could not be given its traffic back" in str(err.value)
    assert "catalog-ci-v077" in world.platform.live_names()  # the only serving group stays
    assert issubclass(StepFailed, PhoenixError)


# --- item 3: an empty or different store -------------------------------------
def test_an_empty_store_destroys_nothing_and_names_what_it_found(tmp_path):
    world = World(tmp_path, "a")
    world.rollout().deploy("1.0.0", "sha256:a", 2)
    other = FileReleaseStore(str(tmp_path / "b"))
    assert other.store_id != world.store.store_id
    stranger = Rollout(world.platform, other, "catalog", "ci", clock=world.clock)
    result = stranger.converge()
    assert world.platform.live_names() == ["catalog-ci-v001"]
    assert world.platform.snapshot()["catalog-ci-v001"]["weight"] == 100
    assert any("leaving catalog-ci-v001 alone" in e["message"] for e in result.events)
    ops = world.platform.ops
    with pytest.raises(RolloutError, match="catalog-ci-v001 serves traffic .* not created by "
                                           "this release store .*force: true"):
        stranger.deploy("1.1.0", "sha256:b", 2)
    assert world.platform.ops == ops and not other.load("catalog", "ci").releases
    forced = Rollout(world.platform, other, "catalog", "ci", clock=world.clock, force=True)
    assert forced.deploy("1.1.0", "sha256:b", 2).state == LIVE
    assert other.load("catalog", "ci").live_release().group == "catalog-ci-v001-r1"
    world.clock.sleep(5)
    forced.converge()
    assert world.platform.live_names() == ["catalog-ci-v001-r1"]


def test_groups_are_stamped_with_the_store_id(tmp_path):
    world = World(tmp_path)
    world.rollout().deploy("1.0.0", "sha256:a", 2)
    group = world.platform.list_groups("catalog", "ci")[0]
    assert group.owner == world.store.store_id
    assert re.fullmatch(r"store-[0-9a-f]{16}", group.owner)
    assert FileReleaseStore(world.store.root).store_id == group.owner  # stable


# --- item 4: debris of killed writers ----------------------------------------
def test_temp_file_debris_is_cleaned_and_never_blocks(tmp_path):
    world = World(tmp_path)
    world.rollout().deploy("1.0.0", "sha256:a", 2)
    directory = world.store.directory("catalog", "ci")
    debris = [os.path.join(directory, n) for n in
              (".history.json.abc123.tmp", ".lock.x9.tmp")]
    for path in debris:
        with open(path, "w") as handle:
            handle.write("{partial")
    assert world.rollout().deploy("1.1.0", "sha256:b", 2).state == LIVE
    assert not any(os.path.exists(p) for p in debris)


# --- items 6/7: releases keyed by config; env checked ------------------------
def test_changed_env_or_rotated_password_is_a_new_release(tmp_path):
    world = World(tmp_path)
    assert world.rollout().deploy("1.0.0", "sha256:a", 2).changed
    assert not world.rollout().deploy("1.0.0", "sha256:a", 2).changed
    changed = world.rollout(env={"FEATURE": "off"}).deploy("1.0.0", "sha256:a", 2)
    assert changed.changed and changed.state == LIVE
    assert world.store.load("catalog", "ci").live == "v002"
    world.platform.config_inputs = lambda: {"DB_PASSWORD_SHA256": "rotated"}
    rotated = world.rollout(env={"FEATURE": "off"}).deploy("1.0.0", "sha256:a", 2)
    assert rotated.changed and world.store.load("catalog", "ci").live == "v003"
    assert not world.rollout(env={"FEATURE": "off"}).deploy("1.0.0", "sha256:a", 2).changed
    digests = {r.config_digest for r in world.store.load("catalog", "ci").releases}
    assert len(digests) == 3 and all(d.startswith("sha256:") for d in digests)


@pytest.mark.parametrize("env, fragment", [
    ({"PORT": "1"}, "env.PORT: set by the platform"),
    ({"DB_HOST": "x"}, "env.DB_HOST: set by the platform"),
    ({"IMAGE_DIR": "/"}, "env.IMAGE_DIR: set by the platform"),
    ({"BIND": "0.0.0.0"}, "env.BIND: set by the platform"),
    ({"1ABC": "x"}, "env: key '1ABC' is not a variable name"),
    ({"A-B": "x"}, "env: key 'A-B' is not a variable name"),
    ({"OK\n": "x"}, "is not a variable name"),
    ({"A": "x\x00y"}, "env.A: the value holds a NUL byte"),
    ({"A": None}, "env.A: null"),
    ({"A": {"b": 1}}, "env.A: dict"),
])
def test_bad_env_is_refused_naming_the_key(tmp_path, env, fragment):
    world = World(tmp_path)
    with pytest.raises(SettingsError) as err:
        world.rollout(env=env)
    assert fragment in str(err.value) and err.value.param == "env"
    assert world.platform.ops == 0


def test_multi_line_values_are_allowed():
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    assert check_env({"TLS_KEY": pem, "N": 3}) == {"TLS_KEY": pem, "N": "3"}


@pytest.mark.parametrize("bad", ["ci\n", "ci\nx", "", "-ci", "c" * 64])
def test_names_use_fullmatch(bad):
    with pytest.raises(ValueError):
        check_name(bad, "environment")


def test_lock_holder_survives_store_ids(tmp_path):
    world = World(tmp_path)
    lock = world.store.acquire("catalog", "ci", LockHolder.current("deploy"))
    world.store.release(lock)
    assert world.rollout().deploy("1.0.0", "sha256:a", 1).release["outcome"] == SUCCEEDED


@pytest.mark.parametrize("artifact, environment, release, expected", [
    ("catalog", "ci", "v007", "catalog-ci-v007"),
    ("catalog", "integrated_qa", "v001", "catalog-integrated-qa-v001"),
    ("catalog", "Prod.EU", "v002", "catalog-prod-eu-v002"),
])
def test_group_names_are_valid_everywhere(artifact, environment, release, expected):
    from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import group_name
    assert group_name(artifact, environment, release) == expected


def test_long_group_names_are_cut_deterministically():
    from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import group_name
    a = group_name("catalog", "e" * 60, "v001")
    b = group_name("catalog", "e" * 61, "v001")
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", a)
    assert a == group_name("catalog", "e" * 60, "v001")
