"""A real controller process SIGKILLed at each platform call of rollback and
abort on the real local platform (HAProxy + supervisord), under load: the
next run converges to exactly one live release with no orphan, and no user
request fails (serving capacity never reached 0)."""
import json
import os
import subprocess
import sys

import pytest

from fixtures_rollout import COLLECTIONS, LoadGen
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import IN_PROGRESS, LIVE


def assert_converged(env):
    """One live release at 100 % on its full group; every other group is the
    detached warm group of a release (blue/green keeps one for rollback) or a
    group the platform is deleting (no capacity, no traffic, no HAProxy server)."""
    history = env.history()
    live = history.live_release()
    assert [r.release_id for r in history.releases if r.status == LIVE] == [live.release_id]
    assert not [r for r in history.releases if r.status == IN_PROGRESS]
    groups = env.groups()
    assert groups[live.group].weight == 100 and groups[live.group].attached
    assert groups[live.group].size == live.size
    warm = {r.group for r in history.releases if r.warm_until}
    for name, group in groups.items():
        if group.deleting:
            assert name != live.group and not group.attached and group.size == 0 and group.weight == 0, group
        elif name != live.group:
            assert name in warm and not group.attached, (name, groups, warm)
    members = sorted(n for n in env.programs())
    assert sorted(env.servers()) == [n for n in members if n.startswith(live.group + ".")]
    return live


CANARY = {"steps": [{"set_weight": 50}, {"pause": {}}]}

KILLER = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
cfg = json.loads(sys.argv[2])
platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
calls = {"n": 0}
for op in ("create_group", "resize", "set_weights", "drain_and_detach", "destroy", "cancel_drain"):
    role = platform.role(op)  # the group manager or the traffic router
    real = getattr(role, op)
    def wrapped(*args, _real=real, _op=op, **kw):
        calls["n"] += 1
        if calls["n"] == cfg["kill_at"]:
            print(json.dumps({"killed_at": _op}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
        return _real(*args, **kw)
    setattr(role, op, wrapped)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), "catalog", cfg["environment"])
res = getattr(engine, cfg["action"])()
print(json.dumps({"state": res.state, "msg": res.msg, "calls": calls["n"]}), flush=True)
"""


def run_killer(env, action, kill_at):
    cfg = {"infra": env.infra, "image_store": env.images["store"], "store": env.store_dir,
           "environment": env.environment, "action": action, "kill_at": kill_at}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(COLLECTIONS), json.dumps(cfg)],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines


def prepare(env, action):
    """1.0.0 live; then 1.1.0 live with 1.0.0 warm (rollback) or paused at 50 % (abort)."""
    if env.history().live_release() is None or env.history().live_release().version != \
            env.images["v1"]["version"]:
        assert env.deploy("v1", size=2).state == "live"
    if action == "rollback":
        res = env.deploy("v2", size=2, strategy="blue_green", settings={"scale_down_delay": 600})
        assert res.state == "live", res.msg
    else:
        res = env.deploy("v2", size=2, strategy="canary", settings=CANARY)
        assert res.state == "paused", res.msg


@pytest.mark.slow
@pytest.mark.parametrize("action", ["rollback", "abort"])
def test_kill_at_every_platform_call(rollout_env, action):
    env = rollout_env
    prepare(env, action)
    code, lines = run_killer(env, action, kill_at=0)  # a full run: count the calls
    assert code == 0 and lines[-1]["state"] in ("live", "aborted"), lines
    total = lines[-1]["calls"]
    assert total >= 2
    seen = []
    with LoadGen(env.url, max_seconds=600) as load:
        for kill_at in range(1, total + 1):
            env.engine().converge()
            prepare(env, action)
            code, lines = run_killer(env, action, kill_at)
            assert code == -9, (kill_at, lines)
            conv = env.engine().converge()
            live = assert_converged(env)
            assert live.version == env.images["v1"]["version"] or action == "rollback", live
            seen.append((kill_at, lines[0]["killed_at"], live.version,
                         [e["message"] for e in conv.events][:2]))
    print("kills:", seen, load.summary())
    assert load.failed == 0, load.summary()
    assert len(seen) == total
    # every group handed to the deletion finisher really goes (nothing leaks)
    env.settled_groups(timeout=120)
    assert not [n for n in env.programs() if not any(n.startswith(g + ".") for g in env.groups())]
    assert os.path.isdir(env.store_dir)
