"""Blue/green post-promotion analysis on the local platform: real HAProxy,
supervisord and HTTP load through the frontend (fixtures_rollout.py).

After the switch the old group stays attached at weight 0; a release that
answers every request with HTTP 500 fails the analysis and the traffic goes
straight back to the old group's still-running instances (no re-creation)."""
import time

import pytest

from fixtures_rollout import GIT, LoadGen
from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import LIVE, ROLLED_BACK

BROKEN = "1.3.0-broken+%s.b13" % GIT  # every /items request answers 500
ANALYSIS = {"max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 2}


@pytest.fixture(scope="module")
def broken_image(rollout_images, shared_bake_store, bake):
    bake(shared_bake_store, BROKEN, fault={"error_rate": 1.0})
    return targets.resolve_image("catalog", BROKEN, None, str(shared_bake_store))


def test_blue_green_post_promotion_analysis_switches_back_under_load(rollout_env, broken_image):
    env = rollout_env
    assert env.deploy("v1", size=2).state == LIVE
    stable = env.history().live_release().group
    programs = env.programs()
    pids = {n: p["pid"] for n, p in env.platform._processes().items() if n in programs}
    with LoadGen(env.url) as load:
        time.sleep(0.5)
        res = env.engine().deploy(broken_image["version"], broken_image["ref"], 2, "blue_green",
                                  {"scale_down_delay": 60}, ANALYSIS)
        time.sleep(1.0)
        after_back = load.total, load.failed
        time.sleep(1.0)
        tail = load.total - after_back[0], load.failed - after_back[1]
    release = res.release
    events = [(e["message"], e["at"]) for e in release["events"]]
    switched = min(at for msg, at in events if msg.startswith("traffic weights")
                   and "%s=100%%" % release["group"] in msg)
    failed = min(at for msg, at in events if msg.startswith("rollout failed"))
    back = min(at for msg, at in events if msg.startswith("rollback: ")
               and "100% of the traffic" in msg)
    print("post-promotion switch back: %s | bad for %.2fs, verdict to old group at 100%%: %.2fs"
          % (load.summary(), failed - switched, back - failed))
    assert res.state == ROLLED_BACK, res.msg
    assert release["outcome"] == ROLLED_BACK and release["analysed"] == "fail"
    assert "analysis failed: %s error_rate 1 > max 0.05" % release["group"] in release["reason"]
    assert release["reason"].endswith("(2 failed windows of 2, limit 2)")
    # the old group took the traffic back with the same processes: nothing re-created
    assert env.history().live_release().group == stable
    assert env.programs() == programs
    assert {n: p["pid"] for n, p in env.platform._processes().items() if n in programs} == pids
    assert back - failed < 2.0
    assert load.failed > 0  # the broken release did get the traffic after the switch
    assert tail[0] > 20 and tail[1] == 0, tail  # and none after the switch back
    env_groups = env.settled_groups()
    assert list(env_groups) == [stable] and env_groups[stable].weight == 100
