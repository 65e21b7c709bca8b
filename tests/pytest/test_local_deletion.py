"""Platform-owned deletion on the local platform (driver docstring), with real
supervisord, HAProxy and catalog instances (fixtures_rollout.py): ``destroy``
marks the group deleting, sends the stops and returns; a detached finisher
removes it.  The crash windows: a controller killed between marking and
stopping, a finisher killed, supervisord restarted while a group is deleting."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from fixtures_infra_local import pid_alive, wait_for
from fixtures_rollout import COLLECTIONS

#: a controller that deploys and is SIGKILLed when its driver, destroying the
#: old group, has marked it deleting but not yet sent a stop (or, with
#: "after": "finisher", right after the finisher was started)
KILLER = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.driver import LocalDriver
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
cfg = json.loads(sys.argv[2])
def killed(self, *args, **kw):
    print(json.dumps({"killed": True}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
LocalDriver._stop_deleting = killed
platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), "catalog", cfg["environment"])
res = engine.deploy(cfg["version"], cfg["image"], 2, "blue_green", {"scale_down_delay": 0})
print(json.dumps({"state": res.state, "msg": res.msg}), flush=True)
"""

#: a process that holds an flock on ``lock`` and destroys a group: the
#: finisher it starts must hold neither the lock nor this process's stdout
DESTROYER = r"""
import fcntl, json, os, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
cfg = json.loads(sys.argv[2])
fd = os.open(cfg["lock"], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
platform.drain_and_detach(cfg["group"])
platform.destroy(cfg["group"])
print(json.dumps({"finishers": platform.driver.finishers}), flush=True)
"""


def run(env, code, **cfg):
    cfg = dict(cfg, infra=env.infra, image_store=env.images["store"])
    return subprocess.run([sys.executable, "-c", code, str(COLLECTIONS), json.dumps(cfg)],
                          capture_output=True, text=True, timeout=300, check=False)


def kill_between_mark_and_stop(env, key):
    """Deploy ``key`` blue/green in a controller killed after it marked the
    old group deleting, before any stop: (old group name, its member pids)."""
    old = env.history().live_release().group
    pids = member_pids(env, old)
    image = env.images[key]
    proc = run(env, KILLER, store=env.store_dir, environment=env.environment,
               version=image["version"], image=image["ref"])
    assert proc.returncode == -9 and '"killed"' in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
    # the premise: marked, off HAProxy, but its programs still run
    confs = [m for m in env.platform._instances().values() if m["group"] == old]
    assert len(confs) == 2 and all(m.get("deleting") for m in confs), confs
    assert all(pid_alive(p) for p in pids.values()), pids
    assert not [n for n in env.servers() if n.startswith(old + ".")]
    return old, pids


def member_pids(env, group):
    return {n: p["pid"] for n, p in env.platform._processes().items()
            if n.startswith(group + ".") and p["pid"]}


def conf_text(env, name):
    return pathlib.Path(env.infra["instance_manager"]["include_dir"], name + ".conf").read_text()


def stop_members(pids):
    """SIGSTOP the process groups of ``pids``: a stop request now takes
    supervisord's stopwaitsecs (then SIGKILL), so a deletion stays pending."""
    for pid in pids:
        os.killpg(os.getpgid(pid), signal.SIGSTOP)


def gone(env, group, pids):
    groups = env.groups()
    return group not in groups and not [n for n in env.programs() if n.startswith(group + ".")] \
        and not any(pid_alive(p) for p in pids) \
        and not os.path.exists(os.path.join(env.platform.data_dir, group))


def test_controller_killed_between_marking_and_stopping(rollout_env):
    """(a) The rerun converges (the marked group is deleting: no capacity, no
    traffic, its programs never restarted); the next create sweeps it."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    old, pids = kill_between_mark_and_stop(env, "v2")
    text = conf_text(env, old + ".001")
    assert "autostart=false" in text and "autorestart=false" in text and '"deleting": true' in text
    conv = env.engine().converge()
    assert not conv.failed, conv.msg
    live = env.history().live_release()
    assert live.version == env.images["v2"]["version"]
    groups = env.groups()
    assert groups[old].deleting and not groups[old].attached and groups[old].size == 0
    assert groups[live.group].weight == 100 and groups[live.group].attached
    with pytest.raises(Exception, match="being deleted"):
        env.platform.resize(old, 2)
    # the next mutating call of the driver (here: the next deploy's create) sweeps it
    assert env.deploy("v1", size=2).state == "live"
    assert wait_for(lambda: gone(env, old, pids.values()), 60, 0.1), (env.groups(), env.programs())
    env.settled_groups()


def test_killed_finisher_is_swept_by_the_next_call(rollout_env, tmp_path):
    """(b) A finisher killed while the members stop leaves marked confs; the
    next create or destroy removes the stopped members at once.  Also: the
    finisher holds no descriptor of the process that started it (its lock,
    its stdout pipe)."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    assert env.deploy("v2", size=2, strategy="blue_green", settings={"scale_down_delay": 600}).state == "live"
    old = [g for g in env.groups().values() if not g.attached][0].name  # warm v1
    pids = member_pids(env, old)
    stop_members(pids.values())
    lock = str(tmp_path / "caller.lock")
    started = time.monotonic()
    proc = run(env, DESTROYER, lock=lock, group=old)
    returned = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    finisher = json.loads(proc.stdout.splitlines()[-1])["finishers"][0]
    # the caller got EOF on stdout and exited while its finisher still runs
    assert pid_alive(finisher), "the finisher ended already"
    fds = {fd: os.readlink("/proc/%d/fd/%s" % (finisher, fd)) for fd in os.listdir("/proc/%d/fd" % finisher)}
    assert not [t for t in fds.values() if t.startswith("pipe:") or t == lock], fds
    assert all(t == os.devnull or t.startswith("socket:") for t in fds.values()), fds
    taken = subprocess.run(["flock", "-n", lock, "true"], check=False, timeout=10)
    assert taken.returncode == 0, "the caller's lock is held after it exited"
    print("destroy in a subprocess returned after %.2fs; finisher fds %s" % (returned, fds))
    assert env.groups()[old].deleting
    os.kill(finisher, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(finisher), 10)
    # supervisord kills the stopped members after stopwaitsecs (drain_timeout + 5)
    assert wait_for(lambda: not any(pid_alive(p) for p in pids.values()), 30, 0.2)
    time.sleep(1.0)
    assert env.groups()[old].deleting, "removed without a finisher or a sweep"
    env.platform.destroy("catalog-%s-v999" % env.environment)  # any destroy sweeps
    assert gone(env, old, pids.values()), (env.groups(), env.programs())


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_supervisord_restarted_while_a_group_is_deleting(rollout_env, how):
    """(c) supervisord dies (SIGKILL: its programs live on as orphans; SIGTERM:
    it stops them) while a group is marked deleting and not yet stopped; the
    infra restore never starts that group's programs again (nor adds its
    servers to HAProxy), and the next sweep removes it."""
    env, stack = rollout_env, rollout_env.stack
    assert env.deploy("v1", size=2).state == "live"
    old, pids = kill_between_mark_and_stop(env, "v2")
    live = env.history().live_release()
    sup = stack.pid("supervisor/supervisord.pid")
    os.kill(sup, getattr(signal, how))
    assert wait_for(lambda: not pid_alive(sup), 60)
    started = time.monotonic()
    stack.up()
    took = time.monotonic() - started
    print("%s: restore took %.1fs" % (how, took))
    if how == "SIGKILL":  # the deleting group's orphans were stopped, not replaced
        text = (stack.state_dir / "supervisor" / "supervisord.log").read_text(errors="replace")
        line = [x for x in text.splitlines() if x.startswith("phoenix: restore")][-1]
        done = json.loads(line.split(": ", 2)[2])
        assert done["stopped_strays"] == 2 and done["replaced"] == 2, done
    assert not any(pid_alive(p) for p in pids.values()), "a deleting program outlived the restore"
    table = env.platform._processes()
    assert not [n for n, p in table.items() if n.startswith(old + ".") and p["statename"] != "STOPPED"], table
    assert not [n for n in env.servers() if n.startswith(old + ".")], env.servers()
    groups = env.groups()
    assert groups[old].deleting and groups[live.group].weight == 100 and groups[live.group].attached
    assert wait_for(lambda: env.platform.health(live.group).ready == 2, 30, 0.1)
    conv = env.engine().converge()
    assert not conv.failed, conv.msg
    assert env.deploy("v1", size=2).state == "live"  # its create sweeps the deleting group
    assert wait_for(lambda: gone(env, old, pids.values()), 60, 0.1), (env.groups(), env.programs())
    env.settled_groups()
