"""Issue 9, items 2, 3 and 6 on the real local platform (HAProxy, supervisord):
a drain a killed controller left half-done is undone, a different release
store destroys nothing, a changed env is a new release."""
import time

import pytest

from fixtures_rollout import LoadGen
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import (
    Rollout, RolloutError)
from test_rollout_local import assert_converged


def test_live_group_left_draining_is_restored_quickly(rollout_env):
    """What SIGKILL inside ``drain_and_detach`` leaves: every server of the
    live group in HAProxy's drain (or maint) state.  Drained members are
    never ready, so restoring them used to wait out the deadline."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    live = env.history().live_release()
    names = sorted(env.servers())
    env.platform.api.batch([("set", "server", "be_catalog/%s" % names[0], "state", "drain"),
                            ("set", "server", "be_catalog/%s" % names[1], "state", "maint")])
    assert not env.groups()[live.group].attached
    started = time.monotonic()
    result = env.engine(timeout=60).converge()
    took = time.monotonic() - started
    assert_converged(env, env.images["v1"]["version"])
    assert took < 30, "restoring a drained live group took %.1fs" % took
    assert any("has 100% of the traffic" in e["message"] for e in result.events)
    with LoadGen(env.url, max_seconds=3) as load:
        time.sleep(2)
    assert load.total > 0 and load.failed == 0, load.summary()


def test_a_different_store_destroys_nothing(rollout_env, tmp_path):
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    before = env.platform_state()
    stranger = Rollout(env.platform, FileReleaseStore(str(tmp_path / "other")), "catalog",
                       env.environment)
    result = stranger.converge()
    assert env.platform_state() == before
    assert any("alone" in e["message"] for e in result.events)
    image = env.images["v2"]
    with pytest.raises(RolloutError, match="not created by this release store"):
        stranger.deploy(image["version"], image["ref"], 2)
    assert env.platform_state() == before
    groups = env.platform.list_groups("catalog", env.environment)
    assert [g.owner for g in groups] == [env.store.store_id]


def test_changed_env_rolls_out_a_new_release(rollout_env):
    env = rollout_env
    pem = "-----BEGIN TEST-----\nline two\n-----END TEST-----"
    assert env.deploy("v1", size=1, env={"GREETING": "a", "TLS_PEM": pem}).changed
    assert not env.deploy("v1", size=1, env={"GREETING": "a", "TLS_PEM": pem}).changed
    res = env.deploy("v1", size=1, env={"GREETING": "b", "TLS_PEM": pem})
    assert res.changed and res.state == "live"
    history = env.history()
    assert history.live == "v002"
    assert env.platform._read_env(history.live_release().group) == {"GREETING": "b",
                                                                    "TLS_PEM": pem}
