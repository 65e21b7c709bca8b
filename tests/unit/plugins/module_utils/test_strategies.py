"""Strategies: validation, plans, and the executor against the platform double."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import (
    AnalysisSpec, SettingsError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    WaitTimeout, wait_until)
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
    Executor, StepFailed, build_plan, parse_settings, resolve_count)

from platform_double import FakeClock, FakePlatform

CANARY = {"steps": [{"set_weight": 10}, {"pause": {"duration": 30}},
                    {"set_weight": 50}, {"pause": {}}]}


# -- validation ------------------------------------------------------------------
@pytest.mark.parametrize("strategy, settings, size, fragment", [
    ("rainbow", {}, 3, "strategy: 'rainbow' is unknown; allowed: rolling, recreate, "
                       "blue_green, canary"),
    ("rolling", {"max_surge": 0, "max_unavailable": 0}, 3,
     "strategy.max_surge (0) and strategy.max_unavailable (0) are both 0"),
    ("rolling", {"max_surge": "0%", "max_unavailable": "10%"}, 3, "both 0 for size 3"),
    ("rolling", {"max_surge": -1}, 3, "strategy.max_surge: -1; allowed an instance count "
                                      "from 0 to 1000 or a percentage"),
    ("rolling", {"max_unavailable": "150%"}, 3, "strategy.max_unavailable: '150%'"),
    ("rolling", {"max_surge": 10 ** 6}, 3, "strategy.max_surge: 1000000"),
    ("rolling", {"steps": []}, 3, "option(s) steps not valid for rolling; allowed: "
                                  "max_surge, max_unavailable"),
    ("rolling", {}, 0, "size: 0; allowed an integer from 1 to 1000"),
    ("rolling", {}, -2, "size: -2"),
    ("rolling", {}, 5000, "size: 5000"),
    ("canary", {}, 3, "strategy.steps: required for canary"),
    ("canary", {"steps": [{"set_weight": 50}, {"set_weight": 20}]}, 3,
     "strategy.steps[1].set_weight: 20; weights must increase (previous 50)"),
    ("canary", {"steps": [{"set_weight": 120}]}, 3,
     "strategy.steps[0].set_weight: 120; allowed an integer from 1 to 100"),
    ("canary", {"steps": [{"set_weight": 0}]}, 3, "allowed an integer from 1 to 100"),
    ("canary", {"steps": [{"pause": {}}]}, 3, "a pause before the first set_weight"),
    ("canary", {"steps": [{"set_weight": 10, "pause": {}}]}, 3, "each step is exactly one of"),
    ("canary", {"steps": [{"set_weight": 10}, {"pause": {"duration": -5}}]}, 3,
     "strategy.steps[1].pause.duration: -5 is out of range"),
    ("blue_green", {"scale_down_delay": "forever"}, 3, "strategy.scale_down_delay"),
    ("blue_green", {"progress_deadline": 0}, 3, "strategy.progress_deadline"),
])
def test_bad_settings_are_refused_with_option_and_allowed(strategy, settings, size, fragment):
    with pytest.raises(SettingsError) as err:
        parse_settings(strategy, settings, size)
    assert fragment in str(err.value)


def test_counts_and_percentages():
    s = parse_settings("rolling", {"max_surge": "25%", "max_unavailable": "25%"}, 10)
    assert resolve_count(s["max_surge"], 10, True) == 3       # surge rounds up
    assert resolve_count(s["max_unavailable"], 10, False) == 2  # unavailable rounds down
    assert parse_settings("rolling", {"max_surge": "2"}, 4)["max_surge"] == 2
    assert parse_settings("canary", {"steps": [{"set_weight": 5}, {"pause": "1m"}]},
                          4)["steps"][1] == {"pause": 60.0}


# -- plans -------------------------------------------------------------------------
def kinds(plan):
    return [s.kind for s in plan]


def test_first_deploy_plan_is_the_same_for_all_strategies():
    for strategy, settings in [("rolling", {}), ("recreate", {}), ("blue_green", {}),
                               ("canary", CANARY)]:
        plan = build_plan(strategy, parse_settings(strategy, settings, 3), 3, 0)
        assert kinds(plan) == ["create", "wait_healthy", "set_weights", "mark_live"]


def test_recreate_plan():
    plan = build_plan("recreate", parse_settings("recreate", {}, 3), 3, 3)
    assert kinds(plan) == ["drain", "destroy", "create", "wait_healthy", "set_weights",
                           "mark_live"]


def test_blue_green_plan_switches_at_once_and_keeps_old_warm():
    settings = parse_settings("blue_green", {"scale_down_delay": "2m", "verify_period": 5}, 3)
    plan = build_plan("blue_green", settings, 3, 3)
    assert [s.describe({"old": "a", "new": "b"}) for s in plan] == [
        "create b with 3 instance(s)",
        "wait until b has 3 healthy instance(s)",
        "verify b stays healthy for 5s",
        "set traffic weights b=100%, a=0%",
        "record the new release as live",
        "drain and detach a",
        "keep a warm for 120s (instant rollback), then destroy it",
    ]


def test_canary_plan_with_pauses_and_analysis():
    plan = build_plan("canary", parse_settings("canary", CANARY, 4), 4, 4, analysis=True)
    text = [s.describe({"old": "a", "new": "b"}) for s in plan]
    assert text == [
        "create b with 1 instance(s)", "wait until b has 1 healthy instance(s)",
        "set traffic weights b=10%, a=90%", "pause 30s with analysis of b",
        "resize b to 2 instance(s)", "wait until b has 2 healthy instance(s)",
        "set traffic weights b=50%, a=50%",
        # new: analysis is never skipped; a step that waits for promote is judged first
        "analyse the traffic of b (judged before waiting for promote)",
        "pause until promoted (action: promote)",
        "resize b to 4 instance(s)", "wait until b has 4 healthy instance(s)",
        "set traffic weights b=100%, a=0%", "record the new release as live",
        "drain and detach a", "destroy a"]
    assert [s.as_dict() for s in plan][3] == {"kind": "pause", "duration": 30.0,
                                              "analyze": True}


def test_rolling_plan_batches():
    plan = build_plan("rolling", parse_settings("rolling", {"max_surge": 2}, 4), 4, 4)
    sizes = [(s.kind, s.role, s.size) for s in plan if s.kind in ("create", "resize")]
    assert sizes == [("create", "new", 2), ("resize", "old", 2), ("resize", "new", 4)]
    assert kinds(plan)[-4:] == ["set_weights", "mark_live", "drain", "destroy"]


def simulate(plan, size, old_size):
    """Walk a plan assuming every wait succeeds; yield (step, new_ready, old)."""
    new_size = new_ready = 0
    old = old_size
    for step in plan:
        if step.kind in ("create", "resize") and step.role == "new":
            new_size = step.size
        elif step.kind == "wait_healthy":
            new_ready = step.size
        elif step.kind == "resize" and step.role == "old":
            assert step.size < old
            old = step.size
        elif step.kind in ("drain", "destroy"):
            old = 0
        yield step, new_ready, old, new_size


@pytest.mark.parametrize("size", [1, 2, 3, 5, 10, 37])
@pytest.mark.parametrize("old_size", [1, 3, 10])
@pytest.mark.parametrize("surge, unavailable", [
    (1, 0), ("25%", 0), (0, 1), (2, 1), ("50%", "50%"), ("100%", 0), (0, "30%")])
def test_rolling_never_scales_old_below_what_new_replaces(size, old_size, surge, unavailable):
    try:
        settings = parse_settings("rolling", {"max_surge": surge,
                                              "max_unavailable": unavailable}, size)
    except SettingsError as err:  # e.g. "0%"/"30%" of 1 instance: refused
        assert "both 0 for size %d" % size in str(err)
        return
    plan = build_plan("rolling", settings, size, old_size)
    floor = min(size, old_size) - resolve_count(settings["max_unavailable"], size, False)
    max_total = size + resolve_count(settings["max_surge"], size, True)
    live_seen = False
    for step, new_ready, old, new_size in simulate(plan, size, old_size):
        assert new_ready + old >= floor, (step, new_ready, old)  # checked at every step
        assert new_size + old <= max(max_total, old_size), (step, new_size, old)
        if step.kind == "mark_live":
            assert new_ready == size and old == 0 or new_ready == size
            live_seen = True
        if step.kind == "set_weights" and step.weights.get("new"):
            assert new_ready > 0  # never route traffic to a group with nothing healthy
    assert live_seen and new_ready == size and old == 0


@pytest.mark.parametrize("strategy, settings", [("blue_green", {}), ("canary", CANARY)])
def test_blue_green_and_canary_keep_old_full_until_new_full(strategy, settings):
    plan = build_plan(strategy, parse_settings(strategy, settings, 6), 6, 6)
    for step, new_ready, old, _serving in simulate(plan, 6, 6):
        if step.kind in ("drain", "destroy", "keep_warm") and step.role == "old":
            assert new_ready == 6
        assert old in (0, 6)


# -- wait_until --------------------------------------------------------------------
def test_wait_until_times_out_with_description():
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as err:
        wait_until(lambda: False, clock.now() + 5, 1, lambda: "g1 healthy (0/3 ready)", clock)
    assert str(err.value) == "timed out after 5s waiting for g1 healthy (0/3 ready)"


def test_wait_until_returns_the_value():
    clock = FakeClock()
    start = clock.now()
    assert wait_until(lambda: clock.now() - start >= 3 and "ok", start + 10, 1, "x", clock) == "ok"
    assert clock.now() - start == 3


# -- executor against the double -----------------------------------------------
def executor_for(platform, clock, old=None, analysis=None, deadline=60.0):
    return Executor(platform, clock, {"old": old}, create={
        "artifact": "catalog", "environment": "ci", "release_id": "v002",
        "image": "img-2", "env": {"PORT": "8080"}, "name": "catalog-ci-v002"},
        analysis=analysis, progress_deadline=deadline)


def running_old(size=4):
    clock = FakeClock()
    platform = FakePlatform(clock)
    platform.create_group("catalog", "ci", "v001", "img-1", size, {})
    platform.set_weights({"catalog-ci-v001": 100})
    clock.sleep(5)
    platform.log.clear()
    return clock, platform


def check_capacity_log(platform, floor):
    assert platform.log
    for when, op, args, snap in platform.log:
        capacity = platform.serving_capacity(snap)
        assert capacity >= floor, (op, args, snap)
        for name, state in snap.items():  # traffic only to groups with healthy instances
            if state["serving"] and state["weight"] > 0:
                assert state["ready"] > 0, (op, args, name, snap)


@pytest.mark.parametrize("strategy, settings, floor", [
    ("rolling", {"max_surge": 1}, 4),
    ("rolling", {"max_surge": "50%", "max_unavailable": 1}, 3),
    ("rolling", {"max_surge": 0, "max_unavailable": 1}, 3),
    ("blue_green", {"scale_down_delay": 0}, 4),
    ("canary", {"steps": [{"set_weight": 25}, {"pause": {"duration": 5}},
                          {"set_weight": 75}]}, 4),
])
def test_executor_keeps_capacity_at_every_platform_call(strategy, settings, floor):
    clock, platform = running_old(4)
    plan = build_plan(strategy, parse_settings(strategy, settings, 4), 4, 4)
    outcome = executor_for(platform, clock, "catalog-ci-v001").run(plan)
    assert outcome.status == "done"
    check_capacity_log(platform, floor)
    assert platform.live_names() == ["catalog-ci-v002"]
    assert platform.snapshot()["catalog-ci-v002"]["weight"] == 100
    assert platform.table["catalog-ci-v002"]["env"] == {"PORT": "8080"}


def test_recreate_leaves_a_gap_by_design():
    clock, platform = running_old(2)
    plan = build_plan("recreate", parse_settings("recreate", {}, 2), 2, 2)
    executor_for(platform, clock, "catalog-ci-v001").run(plan)
    capacities = [platform.serving_capacity(entry[3]) for entry in platform.log]
    assert 0 in capacities and capacities[-1] == 2


def test_indefinite_pause_stops_and_resumes():
    clock, platform = running_old(4)
    plan = build_plan("canary", parse_settings("canary", CANARY, 4), 4, 4)
    executor = executor_for(platform, clock, "catalog-ci-v001")
    outcome = executor.run(plan)
    assert outcome.status == "paused" and plan[outcome.position - 1].duration is None
    assert platform.snapshot()["catalog-ci-v002"]["weight"] == 50
    resumed = executor_for(platform, clock, "catalog-ci-v001")
    resumed.groups["new"] = "catalog-ci-v002"
    assert resumed.run(plan, outcome.position).status == "done"
    assert platform.live_names() == ["catalog-ci-v002"]


def test_crash_looping_instances_fail_fast_not_at_the_deadline():
    clock, platform = running_old(2)
    platform.behaviour["img-2"] = {"crash": True}
    start = clock.now()
    plan = build_plan("blue_green", parse_settings("blue_green", {}, 2), 2, 2)
    with pytest.raises(StepFailed) as err:
        executor_for(platform, clock, "catalog-ci-v001", deadline=600).run(plan)
    assert err.value.cause == "health"
    assert "crash loop" in err.value.reason and "0/2 ready" in err.value.reason
    assert clock.now() - start < 10


def test_progress_deadline():
    clock, platform = running_old(2)
    platform.behaviour["img-2"] = {"never_ready": True}
    plan = build_plan("rolling", parse_settings("rolling", {}, 2), 2, 2)
    with pytest.raises(StepFailed) as err:
        executor_for(platform, clock, "catalog-ci-v001", deadline=30).run(plan)
    assert err.value.cause == "deadline"
    assert err.value.reason.startswith("progress deadline 30s exceeded: timed out after 30s "
                                       "waiting for catalog-ci-v002 to have 1 healthy")
    assert platform.snapshot()["catalog-ci-v001"]["size"] == 2  # old untouched


def test_analysis_failure_during_pause():
    clock, platform = running_old(4)
    platform.behaviour["img-2"] = {"error_rate": 0.3}
    spec = AnalysisSpec.from_dict({"interval": 5, "min_requests": 20, "failure_limit": 2})
    plan = build_plan("canary", parse_settings("canary", {"steps": [
        {"set_weight": 20}, {"pause": {"duration": 60}}]}, 4), 4, 4, analysis=True)
    with pytest.raises(StepFailed) as err:
        executor_for(platform, clock, "catalog-ci-v001", analysis=spec).run(plan)
    assert err.value.cause == "analysis"
    assert err.value.reason == ("analysis failed: canary error_rate 0.3 > max 0.05 over "
                                "100 requests (2 failed windows of 2, limit 2)")


# -- analysis in every strategy (never silently dropped) --------------------------
def described(plan):
    return [s.describe({"old": "a", "new": "b"}) for s in plan]


def test_with_analysis_every_first_deploy_is_judged_at_100_percent():
    for strategy, settings in [("rolling", {}), ("recreate", {}), ("blue_green", {}),
                               ("canary", CANARY)]:
        plan = build_plan(strategy, parse_settings(strategy, settings, 3), 3, 0, analysis=True)
        assert kinds(plan) == ["create", "wait_healthy", "set_weights", "analyze", "mark_live"]
        assert plan[3].inconclusive == "go_live"


def test_rolling_judges_after_every_batch_before_the_old_group_shrinks():
    plan = build_plan("rolling", parse_settings("rolling", {"max_surge": 1}, 3), 3, 3,
                      analysis=True)
    for index, step in enumerate(plan):
        if step.kind == "set_weights" and step.weights.get("new"):
            assert plan[index + 1].kind == "analyze", described(plan)
    assert described(plan)[:5] == [
        "create b with 1 instance(s)", "wait until b has 1 healthy instance(s)",
        "set traffic weights b=33%, a=67%", "analyse the traffic of b (between batches)",
        "resize a to 2 instance(s)"]
    assert kinds(plan)[-5:] == ["set_weights", "analyze", "mark_live", "drain", "destroy"]
    assert kinds(plan).count("analyze") == 3


def test_recreate_judges_after_the_switch():
    plan = build_plan("recreate", parse_settings("recreate", {}, 3), 3, 3, analysis=True)
    assert kinds(plan) == ["drain", "destroy", "create", "wait_healthy", "set_weights",
                           "analyze", "mark_live"]
    assert plan[5].inconclusive is None  # there is a release to go back to


def test_blue_green_post_promotion_analysis_before_the_old_group_is_drained():
    settings = parse_settings("blue_green", {"scale_down_delay": "2m"}, 3)
    assert described(build_plan("blue_green", settings, 3, 3, analysis=True)) == [
        "create b with 3 instance(s)",
        "wait until b has 3 healthy instance(s)",
        "set traffic weights b=100%, a=0%",
        "analyse the traffic of b (post-promotion analysis; the old group stays attached "
        "at 0% for an instant switch back)",
        "record the new release as live",
        "drain and detach a",
        "keep a warm for 120s (instant rollback), then destroy it",
    ]


def test_canary_timed_pauses_judge_and_the_final_switch_is_not_judged_twice():
    settings = parse_settings("canary", {"steps": [{"set_weight": 20},
                                                   {"pause": {"duration": 10}},
                                                   {"set_weight": 100}]}, 4)
    plan = build_plan("canary", settings, 4, 4, analysis=True)
    assert "analyze" not in kinds(plan)
    without_pauses = parse_settings("canary", {"steps": [{"set_weight": 20},
                                                         {"set_weight": 60}]}, 4)
    plan = build_plan("canary", without_pauses, 4, 4, analysis=True)
    assert [s.weights["new"] for i, s in enumerate(plan)
            if s.kind == "set_weights" and plan[i + 1].kind == "analyze"] == [20, 60]


def test_without_analysis_plans_are_unchanged():
    for strategy, settings in [("rolling", {}), ("recreate", {}), ("blue_green", {}),
                               ("canary", CANARY)]:
        for old in (0, 3):
            plan = build_plan(strategy, parse_settings(strategy, settings, 3), 3, old)
            assert "analyze" not in kinds(plan)


@pytest.mark.parametrize("strategy, settings, option", [
    ("rolling", {"progress_deadline": float("nan")}, "strategy.progress_deadline"),
    ("rolling", {"progress_deadline": float("inf")}, "strategy.progress_deadline"),
    ("blue_green", {"scale_down_delay": float("nan")}, "strategy.scale_down_delay"),
    ("blue_green", {"verify_period": float("nan")}, "strategy.verify_period"),
    ("canary", {"steps": [{"set_weight": 5}, {"pause": {"duration": float("nan")}}]},
     "strategy.steps[1].pause.duration"),
    ("canary", {"steps": [{"set_weight": 5}, {"pause": float("-inf")}]},
     "strategy.steps[1].pause"),
])
def test_nan_and_infinite_durations_are_refused(strategy, settings, option):
    with pytest.raises(SettingsError) as err:
        parse_settings(strategy, settings, 3)
    assert str(err.value).startswith(option + ": ") and "allowed 0 to" in str(err.value)
