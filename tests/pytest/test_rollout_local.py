"""Rollouts on the local platform with real HAProxy, supervisord, PostgreSQL
and HTTP load through the HAProxy frontend (fixtures_rollout.py)."""
import os
import shutil
import signal
import threading
import time

import pytest

from fixtures_rollout import LoadGen, kill_process, start_controller
from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import IN_PROGRESS, LIVE

ANALYSIS = {"max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 2}


def live_version(env):
    live = env.history().live_release()
    return live.version if live else None


def assert_converged(env, version):
    """Exactly one live release at 100 %, its group the only one, no orphans."""
    history = env.history()
    live = history.live_release()
    assert live is not None and live.version == version, history.as_dict()
    assert [r.release_id for r in history.releases if r.status == LIVE] == [live.release_id]
    assert not [r for r in history.releases if r.status == IN_PROGRESS]
    groups = env.settled_groups()  # the old group: deleting, then gone
    assert list(groups) == [live.group], groups
    assert groups[live.group].weight == 100 and groups[live.group].attached
    assert groups[live.group].size == live.size
    programs = env.programs()
    assert len(programs) == live.size and all(p.startswith(live.group + ".") for p in programs), programs
    assert sorted(env.servers()) == programs


def test_rolling_under_load_zero_failures(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=3).state == "live"
    with LoadGen(env.url) as load:
        time.sleep(0.5)
        res = env.deploy("v2", size=3, strategy="rolling",
                         settings={"max_surge": 1, "max_unavailable": 0})
        time.sleep(0.5)
    print("rolling:", load.summary())
    assert res.state == "live", res.msg
    assert load.total > 100 and load.failed == 0, load.summary()
    assert_converged(env, env.images["v2"]["version"])
    # deploying the live version again is a no-op
    again = env.deploy("v2", size=3)
    assert not again.changed and again.state == "live"


def test_blue_green_then_instant_rollback_zero_failures(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    with LoadGen(env.url) as load:
        res = env.deploy("v2", size=2, strategy="blue_green",
                         settings={"scale_down_delay": 120, "verify_period": 1})
        assert res.state == "live", res.msg
        # the old group stays warm (detached) for an instant rollback
        warm = [g for g in env.groups().values() if not g.attached]
        assert len(warm) == 1 and warm[0].size == 2
        started = time.monotonic()
        back = env.engine().rollback()
        rollback_seconds = time.monotonic() - started
    print("blue/green + rollback:", load.summary(), "rollback %.2fs" % rollback_seconds)
    assert back.state == "live" and "instantly" in back.msg, back.msg
    assert load.total > 50 and load.failed == 0, load.summary()
    assert_converged(env, env.images["v1"]["version"])


def test_canary_with_analysis_promotes_zero_failures(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=3).state == "live"
    with LoadGen(env.url) as load:
        res = env.deploy("v2", size=3, strategy="canary", analysis=ANALYSIS, settings={"steps": [
            {"set_weight": 34}, {"pause": {"duration": 3}},
            {"set_weight": 67}, {"pause": {}}]})
        assert res.state == "paused", res.msg
        weights = {g.name: g.weight for g in env.groups().values()}
        assert sorted(weights.values()) == [33, 67], weights
        promoted = env.engine().promote()
    print("canary:", load.summary())
    assert promoted.state == "live", promoted.msg
    passes = [e for e in res.events if e.get("verdict") == "pass"]
    assert passes, [e["message"] for e in res.events]
    assert load.failed == 0, load.summary()
    assert_converged(env, env.images["v2"]["version"])


def test_faulty_canary_rolled_back_automatically(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    stable = env.history().live_release().group
    before = {n: int(r["hrsp_5xx"]) for n, r in env.platform._stat("be_catalog").items()
              if n.startswith(stable + ".")}
    with LoadGen(env.url) as load:
        res = env.deploy("faulty", size=2, strategy="canary", analysis=ANALYSIS, settings={
            "steps": [{"set_weight": 50}, {"pause": {"duration": 30}}]})
    print("faulty canary:", load.summary(), "| reason:", res.release["reason"])
    assert res.state == "rolled_back", res.msg
    reason = res.release["reason"]
    assert "error_rate" in reason and "> max 0.05" in reason and "requests" in reason, reason
    after = {n: int(r["hrsp_5xx"]) for n, r in env.platform._stat("be_catalog").items()
             if n.startswith(stable + ".")}
    assert before.keys() == after.keys() and after == before, (before, after)  # stable: 0 errors
    # the canary's 500s were retried on the stable group: users saw (almost) none
    assert load.failed <= max(2, 0.01 * load.total), load.summary()
    assert_converged(env, env.images["v1"]["version"])


def test_canary_without_traffic_is_inconclusive_not_promoted(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    res = env.deploy("v2", size=2, strategy="canary", analysis=ANALYSIS, settings={
        "steps": [{"set_weight": 50}, {"pause": {"duration": 3}}]})
    assert res.state == "rolled_back", res.msg
    assert "inconclusive" in res.release["reason"], res.release["reason"]
    assert "request_count 0 < min 5" in res.release["reason"], res.release["reason"]
    assert_converged(env, env.images["v1"]["version"])


@pytest.mark.parametrize("delays", [(0.4, 2.5, 4.5, 6.5)])
def test_controller_killed_mid_rollout_converges(rollout_env, delays):
    env = rollout_env
    assert env.deploy("v1", size=3).state == "live"
    target = "v2"
    outcomes = []
    with LoadGen(env.url) as load:
        for delay in delays:
            proc = start_controller(env, target, size=3, strategy="rolling",
                                    settings={"max_surge": 1})
            time.sleep(delay)
            finished = proc.poll() is not None
            kill_process(proc)  # SIGKILL: no clean-up of any kind
            conv = env.engine().converge()  # a re-run converges first
            live = live_version(env)
            assert_converged(env, live)
            outcomes.append((delay, finished, live, [e["message"] for e in conv.events][:3]))
            res = env.deploy(target, size=3)  # and the re-run finishes the job
            assert res.state == "live", res.msg
            assert_converged(env, env.images[target]["version"])
            target = "v1" if target == "v2" else "v2"
        # killed right after the new release was recorded live (old group
        # still draining / being destroyed): the re-run finishes it
        proc = start_controller(env, target, size=3, strategy="rolling", settings={"max_surge": 1})
        want = env.images[target]["version"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if live_version(env) == want:
                break
            time.sleep(0.02)
        kill_process(proc)
        conv = env.engine().converge()
        assert_converged(env, want)
        outcomes.append(("after live", [e["message"] for e in conv.events][:3]))
    print("controller kills:", outcomes, load.summary())
    assert load.failed == 0, load.summary()


def test_instance_killed_mid_rollout_heals_never_zero_healthy(rollout_env):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    watch = {"min_up": 99, "samples": 0}
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            rows = env.platform._stat("be_catalog")
            up = sum(1 for n, r in rows.items() if n.startswith("catalog-%s-" % env.environment)
                     and r["status"].startswith("UP") and int(r["weight"] or 0) > 0)
            watch["min_up"] = min(watch["min_up"], up)
            watch["samples"] += 1
            time.sleep(0.05)

    result = {}
    with LoadGen(env.url) as load:
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        runner = threading.Thread(target=lambda: result.update(res=env.deploy(
            "v2", size=2, strategy="rolling", settings={"max_surge": 1})))
        runner.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            table = env.platform._processes()
            new = [p for n, p in table.items() if n.startswith("catalog-%s-v002." % env.environment)
                   and p["statename"] == "RUNNING" and p["pid"]]
            if new:
                killed = new[0]
                os.kill(new[0]["pid"], signal.SIGKILL)
            time.sleep(0.05)
        runner.join(120)
        stop.set()
        mon.join(5)
    res = result["res"]
    print("instance kill:", killed and killed["name"], res.state, res.msg, load.summary(), watch)
    assert killed is not None
    assert res.state in ("live", "rolled_back"), res.msg
    assert watch["samples"] > 20 and watch["min_up"] >= 1, watch
    assert_converged(env, live_version(env))


def test_bad_input_names_the_option_and_changes_nothing(rollout_env, scratch_dir):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    before = env.platform_state()
    v2 = env.images["v2"]
    cases = [
        (dict(strategy="blue-green"), "strategy: 'blue-green' is unknown"),
        (dict(strategy="canary", settings={"steps": [{"set_weight": 50}, {"set_weight": 20}]}),
         "strategy.steps[1].set_weight: 20; weights must increase"),
        (dict(strategy="canary", settings={"steps": [{"set_weight": 150}]}),
         "strategy.steps[0].set_weight: 150"),
        (dict(strategy="rolling", settings={"max_surge": 0, "max_unavailable": 0}),
         "strategy.max_surge (0) and strategy.max_unavailable (0) are both 0"),
        (dict(size=-1), "size: -1"),
        (dict(size=100000), "size: 100000"),
    ]
    for kwargs, expected in cases:
        args = dict(strategy="rolling", settings=None, size=2)
        args.update(kwargs)
        with pytest.raises(PhoenixError) as err:
            env.engine().deploy(v2["version"], v2["ref"], args["size"], args["strategy"],
                                args["settings"])
        assert expected in str(err.value), (kwargs, str(err.value))
    with pytest.raises(PhoenixError) as err:
        env.engine().deploy("latest", v2["ref"], 2)
    assert "version: 'latest'" in str(err.value)
    with pytest.raises(PhoenixError) as err:
        targets.resolve_image("catalog", "latest", None, env.images["store"])
    assert err.value.param == "version" and "mutable tag" in str(err.value)
    with pytest.raises(PhoenixError) as err:
        targets.resolve_image("catalog", "9.9.9+0000000.b9", None, env.images["store"])
    assert err.value.param == "version" and "not baked" in str(err.value)
    # a tampered copy of a baked image is refused by the module's check and
    # by the driver itself (which verifies before it writes anything)
    store = scratch_dir / "images"
    copy = store / "local" / "catalog" / v2["name"]
    shutil.copytree(v2["path"], copy)
    os.system("chmod -R u+w %s" % store)
    app = copy / "rootfs" / "opt" / "phoenix" / "catalog" / "app" / "catalog.py"
    app.write_text(app.read_text() + "\n# tampered\n")
    with pytest.raises(PhoenixError) as err:
        targets.resolve_image("catalog", v2["version"], None, str(store))
    assert "modified after baking" in str(err.value)
    env.platform.image_store = str(store)
    try:
        res = env.engine().deploy(v2["version"], v2["ref"], 2)
    finally:
        env.platform.image_store = env.images["store"]
    assert res.state == "rolled_back" and "modified after baking" in res.msg, res.msg
    assert env.platform_state() == before
    assert live_version(env) == env.images["v1"]["version"]
