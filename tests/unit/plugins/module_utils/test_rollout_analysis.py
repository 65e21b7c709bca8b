"""Analysis that cannot pass a bad release, end to end against the platform double.

* failed windows add up over the whole analysis (Argo ``failureLimit``), also
  across a canary's pauses and a promote;
* NaN and infinities are refused in every number and duration;
* every strategy judges the new group: rolling between batches, recreate after
  the switch, blue/green after the switch with the old group still attached
  (post-promotion analysis, switched back on FAIL), a first deploy at 100 %;
* the release records whether analysis judged it (``analysed``).
"""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import SettingsError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FAILED, FileReleaseStore, LIVE, ROLLED_BACK, SUCCEEDED)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout

from platform_double import FakeClock, FakePlatform

ANALYSIS = {"max_error_rate": 0.05, "min_requests": 20, "interval": 5, "failure_limit": 2}
NAN, INF = float("nan"), float("inf")


@pytest.fixture
def env(tmp_path):
    clock = FakeClock()
    platform = FakePlatform(clock)
    store = FileReleaseStore(str(tmp_path / "releases"))

    def make(**kw):
        return Rollout(platform, store, "catalog", "ci", clock=clock, **kw)
    make.clock, make.platform, make.store = clock, platform, store
    return make


def history(env):
    return env.store.load("catalog", "ci")


def weights_seen(env, group):
    """Every traffic weight the engine asked for ``group``."""
    return [args[0][group] for _at, op, args, _snap in env.platform.log
            if op == "set_weights" and group in args[0]]


def assert_only_live(env, version):
    h = history(env)
    live = h.live_release()
    assert live is not None and live.version == version and live.status == LIVE
    snap = env.platform.snapshot()
    assert snap[live.group]["weight"] == 100 and snap[live.group]["ready"] == live.size
    others = [n for n, s in snap.items() if n != live.group and not s["deleting"]]
    assert all(snap[n]["weight"] == 0 for n in others)
    assert env.store.lock_holder("catalog", "ci") is None
    return h


def unchanged(env, before_ops, before_revision):
    return env.platform.ops == before_ops and history(env).revision == before_revision


# -- item 8: NaN / infinity ------------------------------------------------------------
def test_nan_max_error_rate_cannot_pass_a_100_percent_error_canary(env):
    """On main ``max_error_rate: .nan`` made every ``rate > max`` false: a canary
    answering 100 % HTTP 500 went live."""
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.behaviour["sha256:bad"] = {"error_rate": 1.0}
    ops, revision = env.platform.ops, history(env).revision
    with pytest.raises(SettingsError) as err:
        env().deploy("1.1.0", "sha256:bad", 2, "canary",
                     {"steps": [{"set_weight": 50}, {"pause": {"duration": 20}}]},
                     dict(ANALYSIS, max_error_rate=NAN))
    assert str(err.value) == ("analysis.max_error_rate: nan is not a finite number; "
                              "allowed 0 to 1")
    assert unchanged(env, ops, revision)
    assert_only_live(env, "1.0.0")


def test_nan_progress_deadline_is_refused(env):
    """On main ``progress_deadline: .nan`` was accepted: every wait's deadline was
    NaN, never reached, so a release that never gets healthy held the lock forever."""
    env().deploy("1.0.0", "sha256:a", 2)
    ops, revision = env.platform.ops, history(env).revision
    with pytest.raises(SettingsError) as err:
        env().deploy("1.1.0", "sha256:b", 2, "rolling", {"progress_deadline": NAN})
    assert str(err.value).startswith("strategy.progress_deadline: nan is not a finite "
                                     "number; allowed 0 to ")
    assert unchanged(env, ops, revision)


@pytest.mark.parametrize("strategy, settings, option", [
    ("rolling", {"progress_deadline": "NAN"}, "strategy.progress_deadline"),
    ("blue_green", {"scale_down_delay": NAN}, "strategy.scale_down_delay"),
    ("blue_green", {"scale_down_delay": INF}, "strategy.scale_down_delay"),
    ("blue_green", {"verify_period": -INF}, "strategy.verify_period"),
    ("canary", {"steps": [{"set_weight": 10}, {"pause": {"duration": NAN}}]},
     "strategy.steps[1].pause.duration"),
    ("canary", {"steps": [{"set_weight": 10}, {"pause": INF}]}, "strategy.steps[1].pause"),
])
def test_nan_and_infinite_strategy_durations_are_refused(env, strategy, settings, option):
    env().deploy("1.0.0", "sha256:a", 2)
    ops, revision = env.platform.ops, history(env).revision
    with pytest.raises(SettingsError) as err:
        env().deploy("1.1.0", "sha256:b", 2, strategy, settings)
    assert str(err.value).startswith(option + ": ")
    assert unchanged(env, ops, revision)


@pytest.mark.parametrize("option", ["max_error_rate", "max_latency_ms", "min_requests",
                                    "interval", "failure_limit", "windows"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_nan_and_infinite_analysis_options_are_refused(env, option, value):
    env().deploy("1.0.0", "sha256:a", 2)
    ops, revision = env.platform.ops, history(env).revision
    with pytest.raises(SettingsError) as err:
        env().deploy("1.1.0", "sha256:b", 2, "rolling", {}, dict(ANALYSIS, **{option: value}))
    assert str(err.value).startswith("analysis.%s: " % option)
    assert unchanged(env, ops, revision)


# -- item 8: failed windows over the whole analysis -----------------------------------
def test_canary_failing_every_other_window_is_rolled_back(env):
    """Windows F, F, P, F, F, P with the default failure limit (3): on main a
    passing window reset the count, so this canary was promoted."""
    env().deploy("1.0.0", "sha256:a", 4)
    env.platform.behaviour["sha256:flaky"] = {"error_rates": [0.5, 0.5, 0.0, 0.5, 0.5, 0.0]}
    result = env().deploy("1.1.0", "sha256:flaky", 4, "canary",
                          {"steps": [{"set_weight": 20}, {"pause": {"duration": 30}}]},
                          {"max_error_rate": 0.05, "min_requests": 20, "interval": 5})
    assert result.failed and result.state == ROLLED_BACK
    assert result.msg == ("deploy of 1.1.0 rolled back to v001 (1.0.0): analysis failed: "
                          "canary error_rate 0.5 > max 0.05 over 100 requests "
                          "(3 failed windows of 4, limit 3)")
    release = history(env).get("v002")
    assert release.outcome == ROLLED_BACK and release.analysed == "fail"
    assert release.analysis_state["failed"] == 3 and release.analysis_state["windows"] == 4
    assert_only_live(env, "1.0.0")


def test_failed_windows_add_up_across_a_promote(env):
    """A canary paused for ``promote`` resumes in a new controller run with the
    failures it already had."""
    env().deploy("1.0.0", "sha256:a", 4)
    # pause 1: F P; judged before waiting for promote: P; after promote: F -> 2 of limit 2
    env.platform.behaviour["sha256:flaky"] = {"error_rates": [0.5, 0.0, 0.0, 0.5, 0.0]}
    steps = [{"set_weight": 20}, {"pause": {"duration": 10}}, {"set_weight": 40},
             {"pause": {}}, {"set_weight": 60}, {"pause": {"duration": 10}}]
    paused = env().deploy("1.1.0", "sha256:flaky", 4, "canary", {"steps": steps}, ANALYSIS)
    assert paused.state == "paused", paused.msg
    assert history(env).get("v002").analysis_state["failed"] == 1
    result = env().promote()
    assert result.state == ROLLED_BACK
    assert result.msg.endswith("(2 failed windows of 4, limit 2)")


# -- item 10: every strategy judges ----------------------------------------------------
def test_rolling_judges_between_batches_and_rolls_back_before_the_next(env):
    env().deploy("1.0.0", "sha256:a", 4)
    env.platform.behaviour["sha256:bad"] = {"error_rate": 1.0}
    env.platform.log.clear()
    result = env().deploy("1.1.0", "sha256:bad", 4, "rolling", {"max_surge": 1}, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert "analysis failed: catalog-ci-v002 error_rate 1 > max 0.05 over" in result.msg
    assert result.msg.endswith("(2 failed windows of 2, limit 2)")
    # judged after the first batch: the new group never got more than that batch's share
    assert weights_seen(env, "catalog-ci-v002") == [25, 0]
    resized = [args for _at, op, args, _snap in env.platform.log if op == "resize"]
    assert ("catalog-ci-v001", 3) not in [tuple(a) for a in resized]  # old never shrank
    h = assert_only_live(env, "1.0.0")
    assert h.get("v002").analysed == "fail" and h.get("v001").group == "catalog-ci-v001"


def test_recreate_judges_after_the_switch_and_rolls_back(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.behaviour["sha256:bad"] = {"error_rate": 1.0}
    result = env().deploy("1.1.0", "sha256:bad", 2, "recreate", {}, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert "analysis failed: catalog-ci-v002 error_rate 1 > max 0.05" in result.msg
    h = assert_only_live(env, "1.0.0")  # re-created from its image
    assert h.get("v002").outcome == ROLLED_BACK and h.get("v002").analysed == "fail"


def test_blue_green_post_promotion_analysis_switches_back_to_the_warm_group(env):
    """After the switch the old group stays attached at 0 %: a FAIL verdict gives it
    the traffic back at once (no re-creation) and records the release rolled back."""
    env().deploy("1.0.0", "sha256:a", 3)
    env.platform.behaviour["sha256:bad"] = {"error_rate": 1.0}
    env.platform.log.clear()
    result = env().deploy("1.1.0", "sha256:bad", 3, "blue_green",
                          {"scale_down_delay": 60}, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert result.msg == (
        "deploy of 1.1.0 rolled back to v001 (1.0.0): analysis failed: catalog-ci-v002 "
        "error_rate 1 > max 0.05 over 500 requests (2 failed windows of 2, limit 2)")
    assert weights_seen(env, "catalog-ci-v002") == [100, 0]  # it was switched, then back
    assert weights_seen(env, "catalog-ci-v001") == [0, 100]
    ops = [(op, args) for _at, op, args, _snap in env.platform.log]
    assert ("create_group", ("catalog-ci-v001", 3)) not in ops  # the warm group, not a new one
    assert not any(op in ("drain_and_detach", "destroy") and args[0] == "catalog-ci-v001"
                   for op, args in ops)
    # from the failing verdict to all traffic back on the old group: the weight delay only
    failed_at = [e["at"] for e in history(env).get("v002").events
                 if e["message"].startswith("rollout failed")][0]
    back_at = [at for at, op, args, _snap in env.platform.log
               if op == "set_weights" and args[0].get("catalog-ci-v001") == 100][0]
    assert back_at - failed_at <= 1.0
    for _at, _op, _args, snap in env.platform.log:  # serving capacity never dropped
        assert env.platform.serving_capacity(snap) >= 3
    h = assert_only_live(env, "1.0.0")
    release = h.get("v002")
    assert release.outcome == ROLLED_BACK and release.analysed == "fail"
    assert "error_rate 1 > max 0.05" in release.reason
    assert env.platform.live_names() == ["catalog-ci-v001"]


def test_blue_green_good_release_goes_live_after_post_promotion_analysis(env):
    env().deploy("1.0.0", "sha256:a", 2)
    result = env().deploy("1.1.0", "sha256:b", 2, "blue_green", {"scale_down_delay": 60},
                          dict(ANALYSIS, windows=2))
    assert result.state == LIVE and result.msg == "1.1.0 (v002) is live (analysis passed)"
    h = assert_only_live(env, "1.1.0")
    release = h.get("v002")
    assert release.analysed == "pass"
    assert release.analysis_state["windows"] == 2 and release.analysis_state["failed"] == 0
    kinds = [s["kind"] for s in release.plan]
    assert kinds.index("set_weights") < kinds.index("analyze") < kinds.index("mark_live")
    assert "catalog-ci-v001" in env.platform.live_names()  # still warm afterwards


def test_first_deploy_is_judged_and_fails_on_fail(env):
    env.platform.behaviour["sha256:bad"] = {"error_rate": 1.0}
    result = env().deploy("1.0.0", "sha256:bad", 2, "rolling", {}, ANALYSIS)
    assert result.failed and result.state == FAILED
    assert "analysis failed: catalog-ci-v001 error_rate 1 > max 0.05" in result.msg
    h = history(env)
    assert h.live is None and h.get("v001").outcome == FAILED
    assert h.get("v001").analysed == "fail"
    assert env.platform.live_names() == []


def test_first_deploy_without_traffic_goes_live_recorded_as_not_judged(env):
    env.platform.rps = 0
    result = env().deploy("1.0.0", "sha256:a", 2, "canary",
                          {"steps": [{"set_weight": 50}, {"pause": {"duration": 10}}]},
                          ANALYSIS)
    assert result.state == LIVE and not result.failed
    assert result.msg == "1.0.0 (v001) is live (analysis inconclusive: not judged)"
    release = assert_only_live(env, "1.0.0").get("v001")
    assert release.analysed == "inconclusive"
    assert any("nothing to roll back to" in e["message"] for e in release.events)


@pytest.mark.parametrize("strategy, settings", [
    ("rolling", {"max_surge": 1}), ("recreate", {}), ("blue_green", {"scale_down_delay": 5}),
    ("canary", {"steps": [{"set_weight": 50}, {"pause": {}}]})])
def test_good_release_is_judged_in_every_strategy(env, strategy, settings):
    first = env().deploy("1.0.0", "sha256:a", 2, strategy, settings, ANALYSIS)
    assert first.state == LIVE and history(env).get("v001").analysed == "pass"
    result = env().deploy("1.1.0", "sha256:b", 2, strategy, settings, ANALYSIS)
    if strategy == "canary":
        assert result.state == "paused"
        result = env().promote()
    assert result.state == LIVE, result.msg
    release = history(env).get("v002")
    assert release.analysed == "pass" and release.outcome == SUCCEEDED
    assert release.analysis_state["windows"] >= 1
    assert any(e["message"].startswith("analysis pass: ") for e in release.events)


def test_analysis_none_and_omitted_are_recorded(env):
    env().deploy("1.0.0", "sha256:a", 2, "rolling", {}, "none")
    result = env().deploy("1.1.0", "sha256:b", 2, "rolling")
    h = history(env)
    assert h.get("v001").analysed == "none" and h.get("v001").analysis is None
    assert h.get("v002").analysed is None
    assert result.msg == "1.1.0 (v002) is live (no analysis configured: not judged)"
    info = env().info()
    assert [r["analysed"] for r in info["history"]] == ["none", None]
    with pytest.raises(SettingsError, match=r"^analysis: 'off'; allowed a dict of checks"):
        env().deploy("1.2.0", "sha256:c", 2, "rolling", {}, "off")


def test_check_mode_plan_shows_the_analysis_steps(env):
    env().deploy("1.0.0", "sha256:a", 2)
    plan = env().plan("deploy", "1.1.0", "sha256:b", 2, "blue_green", {}, ANALYSIS)
    assert [p["description"] for p in plan.plan if p["kind"] == "analyze"] == [
        "analyse the traffic of catalog-ci-v002 (post-promotion analysis; the old group "
        "stays attached at 0% for an instant switch back)"]


def test_rolling_without_traffic_is_inconclusive_and_rolled_back(env):
    """Only a first deploy goes live unjudged: with a release to fall back to,
    no data is never a pass (on_inconclusive: abort)."""
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.rps = 0
    result = env().deploy("1.1.0", "sha256:b", 2, "rolling", {"max_surge": 1}, ANALYSIS)
    assert result.failed and result.state == ROLLED_BACK
    assert "analysis inconclusive (not promoted): catalog-ci-v002 request_count 0 < min 20 " \
           "(no data)" in result.msg
    assert_only_live(env, "1.0.0")


def test_inconclusive_batch_can_pause_then_abort_or_promote(env):
    env().deploy("1.0.0", "sha256:a", 2)
    env.platform.rps = 0
    paused = env().deploy("1.1.0", "sha256:b", 2, "blue_green", {"scale_down_delay": 30},
                          dict(ANALYSIS, on_inconclusive="pause"))
    assert paused.state == "paused" and "analysis inconclusive" in paused.msg
    snap = env.platform.snapshot()
    assert snap["catalog-ci-v002"]["weight"] == 100 and snap["catalog-ci-v001"]["serving"]
    promoted = env().promote()  # a person decided: live, but not judged by analysis
    assert promoted.state == LIVE
    assert history(env).get("v002").analysed == "inconclusive"
    paused = env().deploy("1.2.0", "sha256:c", 2, "blue_green", {"scale_down_delay": 30},
                          dict(ANALYSIS, on_inconclusive="pause"))
    assert paused.state == "paused"
    assert env().abort().state == "aborted"
    assert_only_live(env, "1.1.0")
