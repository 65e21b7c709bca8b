"""The rollout engine end to end against the deterministic platform double."""
import subprocess
import sys

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import SettingsError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, INTERRUPTED, LIVE, LockHeld, LockHolder, ROLLED_BACK, SUCCEEDED)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import (
    Rollout, RolloutError)

from platform_double import Crash, FakeClock, FakePlatform

CANARY = {"steps": [{"set_weight": 25}, {"pause": {"duration": 30}},
                    {"set_weight": 50}, {"pause": {}}]}
ANALYSIS = {"max_error_rate": 0.05, "min_requests": 20, "interval": 5, "failure_limit": 2}


@pytest.fixture
def env(tmp_path):
    clock = FakeClock()
    platform = FakePlatform(clock)
    store = FileReleaseStore(str(tmp_path / "releases"))

    def make(**kw):
        return Rollout(platform, store, "catalog", "ci", clock=clock,
                       env={"FEATURE_FLAGS": "x"}, **kw)
    make.clock, make.platform, make.store = clock, platform, store
    return make


def assert_converged(env, live_version):
    """Exactly one live release at 100 %, and no other group except warm ones."""
    history = env.store.load("catalog", "ci")
    live = [r for r in history.releases if r.status == LIVE]
    assert len(live) == 1 and live[0].release_id == history.live
    assert live[0].version == live_version
    assert not history.active()
    snap = env.platform.snapshot()
    assert snap[live[0].group]["weight"] == 100 and snap[live[0].group]["serving"]
    assert snap[live[0].group]["ready"] == live[0].size
    now = env.clock.now()
    warm = {r.group for r in history.releases if r.warm_until and r.warm_until > now}
    for name, state in snap.items():
        if name != live[0].group and not state["deleting"]:
            assert name in warm, "orphan group %s" % name
            assert state["weight"] == 0
    assert env.store.lock_holder("catalog", "ci") is None
    return history


def test_first_deploy_then_noop(env):
    result = env().deploy("1.0.0", "sha256:a", 3, ci_build_url="https://ci/1")
    assert result.changed and result.state == LIVE and not result.failed
    history = assert_converged(env, "1.0.0")
    assert history.get("v001").outcome == SUCCEEDED
    assert history.get("v001").ci_build_url == "https://ci/1"
    assert [e["message"] for e in result.events][0].startswith("deploy 1.0.0 (image sha256:a)")
    assert all("time" in e and "at" in e for e in result.events)
    again = env().deploy("1.0.0", "sha256:a", 3)
    assert not again.changed and again.msg == "1.0.0 is already live (v001)"
    assert len(env.store.load("catalog", "ci").releases) == 1


@pytest.mark.parametrize("strategy, settings", [
    ("rolling", {"max_surge": 1}), ("recreate", {}), ("blue_green", {"scale_down_delay": 60}),
    ("canary", {"steps": [{"set_weight": 25}, {"pause": {"duration": 10}}]})])
def test_deploy_replaces_the_live_release(env, strategy, settings):
    env().deploy("1.0.0", "sha256:a", 4)
    result = env().deploy("1.1.0", "sha256:b", 4, strategy, settings)
    assert result.state == LIVE, result.msg
    history = assert_converged(env, "1.1.0")
    assert history.get("v001").status == "retired"
    assert history.get("v002").strategy == strategy
    if strategy == "blue_green":
        assert "catalog-ci-v001" in env.platform.live_names()  # warm
        env.clock.sleep(61)
        env().converge()
        assert env.platform.live_names() == ["catalog-ci-v002"]


def test_check_mode_plan_changes_nothing(env):
    env().deploy("1.0.0", "sha256:a", 2)
    ops = env.platform.ops
    revision = env.store.load("catalog", "ci").revision
    plan = env().plan("deploy", "1.1.0", "sha256:b", 2, "blue_green")
    assert plan.state == "planned" and plan.changed
    assert plan.plan[0]["description"] == "create catalog-ci-v002 with 2 instance(s)"
    assert env.platform.ops == ops and env.store.load("catalog", "ci").revision == revision
    assert not env().plan("deploy", "1.0.0", "sha256:a", 2).changed


def unchanged(env):
    return env.platform.ops, env.store.load("catalog", "ci").revision


def test_plan_of_promote_and_abort_describes_the_rest_and_changes_nothing(env):
    env().deploy("1.0.0", "sha256:a", 4)
    assert not env().plan("promote").changed and not env().plan("abort").changed
    assert env().plan("promote").msg == "nothing to promote: no paused release"
    assert env().deploy("1.1.0", "sha256:b", 4, "canary", CANARY, ANALYSIS).state == "paused"
    before = unchanged(env)
    promote = env().plan("promote")
    assert promote.changed and promote.state == "planned" and promote.release["release_id"] == "v002"
    kinds = [s["kind"] for s in promote.plan]
    assert kinds[-3:] == ["mark_live", "drain", "destroy"] and "set_weights" in kinds
    assert promote.plan[-1]["description"] == "destroy catalog-ci-v001"
    abort = env().plan("abort")
    assert abort.changed and "would abort v002 (1.1.0); v001 (1.0.0) gets all traffic" == abort.msg
    described = [s["description"] for s in abort.plan]
    assert "set traffic weights catalog-ci-v002=0%, catalog-ci-v001=100%" in described
    assert "destroy catalog-ci-v002" in described
    assert [s["kind"] for s in env().plan("rollback").plan] == [s["kind"] for s in abort.plan]
    assert unchanged(env) == before
    assert env().abort().state == "aborted"  # what the plan said
    assert env.platform.live_names() == ["catalog-ci-v001"]


def test_plan_of_rollback_warm_and_cold(env):
    with pytest.raises(RolloutError, match="nothing to roll back to: no live release"):
        env().plan("rollback")
    env().deploy("1.0.0", "sha256:a", 2)
    env().deploy("1.1.0", "sha256:b", 2, "blue_green", {"scale_down_delay": 60})
    before = unchanged(env)
    warm = env().plan("rollback")
    assert warm.msg == "would roll back from v002 (1.1.0) to v001 (1.0.0) instantly (warm group)"
    assert [s["kind"] for s in warm.plan] == [
        "cancel_drain", "resize", "wait_healthy", "mark_live", "set_weights", "drain", "destroy"]
    assert warm.plan[0]["description"] == \
        "attach catalog-ci-v001 again at weight 0 (members left draining serve again)"
    assert warm.plan[3]["description"] == "record v001 (1.0.0) as live"
    assert unchanged(env) == before
    env.clock.sleep(61)
    env().converge()  # the warm group is gone
    cold = env().plan("rollback")
    assert cold.plan[0]["kind"] == "create" and not cold.msg.endswith("(warm group)")
    assert env().rollback().state == LIVE
    group = env.store.load("catalog", "ci").live_release().group
    assert cold.plan[0]["description"] == "create %s with 2 instance(s)" % group


def test_plan_of_an_unknown_action_names_the_parameter(env):
    with pytest.raises(RolloutError) as err:
        env().plan("restart")
    assert err.value.param == "action" and "allowed: deploy, promote, abort, rollback" in err.value.msg


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"strategy": "rainbow"}, SettingsError, "strategy: 'rainbow' is unknown"),
    ({"strategy": "rolling", "settings": {"max_surge": 0, "max_unavailable": 0}},
     SettingsError, "both 0"),
    ({"version": "latest"}, RolloutError, "mutable tags like 'latest' are refused"),
    ({"size": -1}, SettingsError, "size: -1"),
    ({"analysis": {"max_error_rate": 2}}, SettingsError, "analysis.max_error_rate"),
])
def test_bad_input_changes_nothing(env, kwargs, error, fragment):
    env().deploy("1.0.0", "sha256:a", 2)
    ops, revision = env.platform.ops, env.store.load("catalog", "ci").revision
    args = dict(version="1.1.0", image="sha256:b", size=2)
    args.update(kwargs)
    with pytest.raises(error) as err:
        env().deploy(**args)
    assert fragment in str(err.value)
    assert env.platform.ops == ops and env.store.load("catalog", "ci").revision == revision


def test_canary_pause_promote(env):
    env().deploy("1.0.0", "sha256:a", 4)
    paused = env().deploy("1.1.0", "sha256:b", 4, "canary", CANARY, ANALYSIS)
    assert paused.state == "paused" and paused.release["track"] == "canary"
    assert "waiting for action: promote" in paused.msg
    snap = env.platform.snapshot()
    assert snap["catalog-ci-v002"]["weight"] == 50 and snap["catalog-ci-v001"]["weight"] == 50
    assert env.store.lock_holder("catalog", "ci") is None  # a pause holds no lock
    with pytest.raises(RolloutError, match="v002 .1.1.0. is paused"):
        env().deploy("1.2.0", "sha256:c", 4)
    env().converge()  # a paused canary is a clean state: untouched
    assert env.platform.snapshot()["catalog-ci-v002"]["weight"] == 50
    done = env().promote()
    assert done.state == LIVE and done.release["track"] == "stable"
    assert_converged(env, "1.1.0")
    assert not env().promote().changed


def test_failing_canary_rolls_back_with_reason(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env.platform.behaviour["sha256:bad"] = {"error_rate": 0.3}
    result = env().deploy("1.1.0", "sha256:bad", 4, "canary", CANARY, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert result.msg == ("deploy of 1.1.0 rolled back to v001 (1.0.0): analysis failed: "
                          "canary error_rate 0.304 > max 0.05 over 125 requests "
                          "(2 failed windows of 2, limit 2)")
    history = assert_converged(env, "1.0.0")
    assert history.get("v002").outcome == ROLLED_BACK
    assert "error_rate 0.304 > max 0.05" in history.get("v002").reason
    assert env.platform.live_names() == ["catalog-ci-v001"]


def test_canary_without_traffic_is_inconclusive_and_not_promoted(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env.platform.rps = 0
    result = env().deploy("1.1.0", "sha256:b", 4, "canary", CANARY, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert "analysis inconclusive (not promoted): canary request_count 0 < min 20 " \
           "(no data)" in result.msg
    assert_converged(env, "1.0.0")


def test_inconclusive_can_pause_instead(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env.platform.rps = 0
    result = env().deploy("1.1.0", "sha256:b", 4, "canary", CANARY,
                          dict(ANALYSIS, on_inconclusive="pause"))
    assert result.state == "paused" and "inconclusive" in result.msg
    aborted = env().abort()
    assert aborted.state == "aborted"
    assert_converged(env, "1.0.0")
    assert env.platform.live_names() == ["catalog-ci-v001"]


def test_abort_and_rollback_of_a_paused_canary(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env().deploy("1.1.0", "sha256:b", 4, "canary", CANARY)
    result = env().rollback()
    assert result.state == "aborted" and "aborted by action: rollback" in result.msg
    assert_converged(env, "1.0.0")
    assert not env().abort().changed


def test_blue_green_rollback_is_instant_while_warm(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env().deploy("1.1.0", "sha256:b", 4, "blue_green", {"scale_down_delay": 300})
    creates = [e for e in env.platform.log if e[1] == "create_group"]
    start = env.clock.now()
    result = env().rollback()
    assert result.state == LIVE and "instantly (warm group)" in result.msg
    assert env.clock.now() - start <= 3  # weights + drain, no instance start
    assert [e for e in env.platform.log if e[1] == "create_group"] == creates
    history = assert_converged(env, "1.0.0")
    assert history.live == "v003" and history.get("v003").kind == "rollback"
    assert history.get("v003").group == "catalog-ci-v001"


def test_rollback_recreates_from_image_when_not_warm(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env().deploy("1.1.0", "sha256:b", 2, "rolling")
    result = env().rollback()
    assert result.state == LIVE and "instantly" not in result.msg
    history = assert_converged(env, "1.0.0")
    live = history.live_release()
    assert live.group == "catalog-ci-v003" and live.image == "sha256:a"
    assert env.platform.table["catalog-ci-v003"]["env"] == {"FEATURE_FLAGS": "x"}
    again = env().rollback()  # rolls forward to the release live before
    assert again.state == LIVE
    assert_converged(env, "1.1.0")
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        Rollout(env.platform, FileReleaseStore(str(env.store.root) + "x"), "catalog", "ci",
                clock=env.clock, force=True).rollback()


def test_failed_health_and_progress_deadline_roll_back(env):
    env().deploy("1.0.0", "sha256:a", 3)
    env.platform.behaviour["sha256:crash"] = {"crash": True}
    crashed = env().deploy("1.1.0", "sha256:crash", 3, "rolling")
    assert crashed.failed and "crash loop" in crashed.msg
    env.platform.behaviour["sha256:slow"] = {"never_ready": True}
    slow = env().deploy("1.2.0", "sha256:slow", 3, "blue_green",
                        {"progress_deadline": 20})
    assert slow.failed and "progress deadline 20s exceeded" in slow.msg
    history = assert_converged(env, "1.0.0")
    assert [r.outcome for r in history.releases] == [SUCCEEDED, ROLLED_BACK, ROLLED_BACK]


def test_one_missed_health_check_during_verification_is_not_a_failure(env):
    """A loaded machine misses a health check now and then (HAProxy marks a
    server down only after 3 failed checks in a row); verification fails on
    an instance that stays unready, not on a single miss."""
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.behaviour["sha256:b"] = {"flap_every": 3}
    result = env().deploy("1.1.0", "sha256:b", 2, "blue_green", {"verify_period": 30})
    assert not result.failed and result.state == LIVE, result.msg
    assert_converged(env, "1.1.0")


def test_an_instance_that_stays_unready_fails_verification(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.behaviour["sha256:b"] = {"unready_after": 15}
    result = env().deploy("1.1.0", "sha256:b", 2, "blue_green", {"verify_period": 60})
    assert result.failed and "did not stay healthy during verification" in result.msg, result.msg
    assert "0/2 ready" in result.msg and "3 checks in a row" in result.msg, result.msg
    assert_converged(env, "1.0.0")


def test_first_release_failing_leaves_nothing(env):
    env.platform.behaviour["sha256:crash"] = {"crash": True}
    result = env().deploy("1.0.0", "sha256:crash", 2)
    assert result.failed and result.state == "failed"
    assert env.platform.live_names() == []


def test_lock_held_by_another_rollout(env):
    lock = env.store.acquire("catalog", "ci", LockHolder.current("deploy", "v042"))
    with pytest.raises(LockHeld, match="locked by deploy of release v042 by pid"):
        env().deploy("1.0.0", "sha256:a", 2)
    env.store.release(lock)
    assert env().deploy("1.0.0", "sha256:a", 2).state == LIVE


def test_orphan_group_is_destroyed(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.create_group("catalog", "ci", "v099", "sha256:zzz", 1, {},
                              owner=env.store.store_id)  # ours, created before a crash
    result = env().converge()
    assert any("destroying catalog-ci-v099" in e["message"] for e in result.events)
    assert_converged(env, "1.0.0")


def count_ops(env, strategy, settings, analysis=None):
    env().deploy("1.0.0", "sha256:a", 3)
    before = env.platform.ops
    env().deploy("1.1.0", "sha256:b", 3, strategy, settings, analysis)
    return env.platform.ops - before


STRATEGIES = [("rolling", {"max_surge": 1}), ("recreate", {}),
              ("blue_green", {"scale_down_delay": 30}),
              ("canary", {"steps": [{"set_weight": 34}, {"pause": {"duration": 10}},
                                    {"set_weight": 67}]})]


@pytest.mark.parametrize("owned_deletion", [False, True], ids=["engine-waits", "platform-owned-deletion"])
@pytest.mark.parametrize("strategy, settings", STRATEGIES)
def test_crash_at_every_point_converges(tmp_path, strategy, settings, owned_deletion):
    def fresh(sub):
        clock = FakeClock()
        platform = FakePlatform(clock, owned_deletion=owned_deletion, destroy_delay=30.0)
        store = FileReleaseStore(str(tmp_path / sub))

        def make():
            return Rollout(platform, store, "catalog", "ci", clock=clock, env={})
        make.clock, make.platform, make.store = clock, platform, store
        return make
    total = count_ops(fresh("count"), strategy, settings)
    assert total >= 3
    for crash_at in range(1, total + 1):
        env = fresh("crash%d" % crash_at)
        env().deploy("1.0.0", "sha256:a", 3)
        env.platform.crash_at = env.platform.ops + crash_at
        with pytest.raises(Crash):
            env().deploy("1.1.0", "sha256:b", 3, strategy, settings)
        env.platform.crash_at = None
        interrupted = env.store.load("catalog", "ci").get("v002")
        assert interrupted.outcome is None and interrupted.status in ("in_progress", LIVE)
        result = env().converge()
        history = env.store.load("catalog", "ci")
        v2 = history.get("v002")
        if history.live == "v002":  # died after the switch: finished
            assert v2.outcome == SUCCEEDED
            assert_converged(env, "1.1.0")
        else:
            assert v2.outcome == INTERRUPTED and "controller died" in v2.reason
            assert_converged(env, "1.0.0")
        assert result.events
        # history intact, and a re-run of the deploy succeeds
        assert [r.release_id for r in history.releases] == ["v001", "v002"]
        assert env().deploy("1.1.0", "sha256:b", 3, strategy, settings).state == LIVE
        assert_converged(env, "1.1.0")


def test_crash_during_rollback_converges(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env().deploy("1.1.0", "sha256:b", 2)
    env.platform.crash_at = env.platform.ops + 2
    with pytest.raises(Crash):
        env().rollback()
    env.platform.crash_at = None
    env().converge()
    # killed once the re-created 1.0.0 group was healthy and recorded live:
    # recovery finishes the rollback forward instead of restoring 1.1.0
    assert_converged(env, "1.0.0")


def test_dead_holder_lock_is_recovered_by_the_next_run(env):
    env().deploy("1.0.0", "sha256:a", 2)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    env.store.acquire("catalog", "ci", LockHolder.current("deploy", "v002", pid=child.pid))
    result = env().deploy("1.1.0", "sha256:b", 2)
    assert result.state == LIVE
    assert "recovered the lock of a dead rollout: deploy of release v002 by pid %d" \
        % child.pid in result.events[0]["message"]


def test_info_reports_live_history_and_instances(env):
    env().deploy("1.0.0", "sha256:a", 2)
    info = env().info()
    assert info["live"]["version"] == "1.0.0" and info["lock"] is None
    assert info["groups"][0]["ready"] == 2 and len(info["groups"][0]["instances"]) == 2
    assert len(info["history"]) == 1


@pytest.fixture
def owned(tmp_path):
    """The double whose deletions the platform finishes (as Kubernetes' garbage
    collector does) 60 s after the engine's destroy returned."""
    clock = FakeClock()
    platform = FakePlatform(clock, owned_deletion=True, destroy_delay=60.0)
    store = FileReleaseStore(str(tmp_path / "releases"))

    def make(**kw):
        return Rollout(platform, store, "catalog", "ci", clock=clock, env={}, **kw)
    make.clock, make.platform, make.store = clock, platform, store
    return make


def test_destroy_ends_when_the_platform_owns_the_deletion(owned):
    owned().deploy("1.0.0", "sha256:a", 3)
    start = owned.clock.now()
    result = owned().deploy("1.1.0", "sha256:b", 3, "rolling", {"max_surge": "100%"})
    assert result.state == LIVE
    assert owned.clock.now() - start < 30  # not the 60 s the platform takes to remove v001
    old = {g.name: g for g in owned.platform.list_groups("catalog", "ci")}["catalog-ci-v001"]
    assert old.deleting and not old.attached and old.size == 0
    assert any("destroyed catalog-ci-v001: detached, its deletion is accepted" in e["message"]
               for e in result.events), result.events
    assert_converged(owned, "1.1.0")


def test_a_group_being_deleted_is_never_reused_or_given_traffic(owned):
    """Rollback right after a deploy: the previous release's group is still
    being deleted, so it is re-created from its image (never resized or
    weighted); a converge that finds it leaves it to the platform."""
    owned().deploy("1.0.0", "sha256:a", 2)
    owned().deploy("1.1.0", "sha256:b", 2)
    assert owned.platform.snapshot()["catalog-ci-v001"]["deleting"]
    mark = len(owned.platform.log)
    result = owned().rollback()
    assert result.state == LIVE and "instantly" not in result.msg
    assert "re-creating it from image sha256:a" in result.events[0]["message"]
    for _time, op, args, _snap in owned.platform.log[mark:]:
        if op in ("set_weights", "resize", "cancel_drain", "create_group"):
            assert "catalog-ci-v001" not in (args[0] if op == "set_weights" else args[:1]), (op, args)
    history = assert_converged(owned, "1.0.0")
    assert history.live_release().group == "catalog-ci-v003"
    events = owned().converge().events
    assert not any("catalog-ci-v001" in e["message"] for e in events), events


def test_a_live_group_deleted_behind_the_engine_is_replaced(owned):
    owned().deploy("1.0.0", "sha256:a", 2)
    owned.platform.table["catalog-ci-v001"]["deleting_at"] = owned.clock.now() + 600
    result = owned().converge()
    assert any("is being deleted; creating" in e["message"] for e in result.events), result.events
    history = assert_converged(owned, "1.0.0")
    assert history.live_release().group != "catalog-ci-v001"


def test_converge_keeps_the_live_group_it_recreated_under_a_new_name(env):
    """The live group cannot be reused (being removed behind the engine): converge
    re-creates it under a free name and must not then destroy that new group as
    'not the live group of any release' (it did: keep held the old name)."""
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.table["catalog-ci-v001"]["deleting_at"] = env.clock.now() + 600
    result = env().converge()
    assert not any("destroying catalog-ci-v001-r1" in e["message"] for e in result.events), result.events
    history = assert_converged(env, "1.0.0")
    assert history.live_release().group == "catalog-ci-v001-r1"
