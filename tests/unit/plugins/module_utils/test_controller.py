"""The controller process helpers (plugins/module_utils/controller.py) and the
engine's cancellation: real processes for the playbook watch, the platform
double for "cancelled at every platform operation"."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import controller
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, LIVE, ROLLED_BACK, SUCCEEDED, LockHolder)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import (
    Cancel, Executor, Step, StepFailed)

from platform_double import FakeClock, FakePlatform

COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(controller.__file__), *[".."] * 5))


def test_request_digest_is_stable_and_keyed_by_every_input():
    base = dict(version="1.0.0", image="img@sha256:a", size=2, strategy="canary",
                strategy_settings={"steps": [{"set_weight": 50}]}, analysis=None,
                env=controller.request_digest("env", "", "", SECRET="hunter2"))
    one = controller.request_digest("deploy", "catalog", "ci", **base)
    assert one == controller.request_digest("deploy", "catalog", "ci", **dict(base))
    assert "hunter2" not in one and one.startswith("sha256:")
    for key, value in (("version", "1.0.1"), ("size", 3), ("strategy", "rolling"),
                       ("env", controller.request_digest("env", "", "", SECRET="x"))):
        assert controller.request_digest("deploy", "catalog", "ci", **dict(base, **{key: value})) != one
    assert controller.request_digest("promote", "catalog", "ci") != \
        controller.request_digest("abort", "catalog", "ci")


# -- the playbook watch on a real process tree -------------------------------
# "ansible-playbook" (a script of that name) forks a worker that calls
# setsid() and runs "/bin/sh -c python leaf.py", like ansible-core does.
PLAYBOOK = textwrap.dedent("""
    import os, subprocess, sys, time
    if os.fork() == 0:
        os.setsid()
        subprocess.call(["/bin/sh", "-c", "%s %s && sleep 0" % (sys.executable, sys.argv[1])])
        os._exit(0)
    time.sleep(60)
""")
LEAF = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, %r)
    from ansible_collections.phoenix.deploy.plugins.module_utils import controller
    gone = []
    watch = controller.PlaybookWatch(gone.append, interval=0.1)
    print(json.dumps([[pid, name] for pid, _start, name in watch.chain]), flush=True)
    watch.start()
    deadline = time.time() + 30
    while not gone and time.time() < deadline:
        time.sleep(0.05)
    with open(sys.argv[1] + ".tmp", "w") as out:
        out.write(gone[0] if gone else "not noticed")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
""")


@pytest.fixture
def tree(tmp_path):
    script = tmp_path / "ansible-playbook"
    script.write_text(PLAYBOOK)
    leaf = tmp_path / "leaf.py"
    leaf.write_text(LEAF % COLLECTIONS)
    report = tmp_path / "report"
    leaf_cmd = "%s %s" % (leaf, report)
    proc = subprocess.Popen([sys.executable, str(script), leaf_cmd], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        yield proc, report
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_playbook_chain_reaches_ansible_playbook_and_killing_it_is_noticed(tree):
    proc, report = tree
    chain = __import__("json").loads(proc.stdout.readline())
    pids = [pid for pid, _name in chain]
    assert pids[-1] == proc.pid, chain  # the "ansible-playbook" process ends the chain
    assert chain[0][1] == "sh" and len(chain) == 3, chain  # sh -> worker -> playbook
    os.killpg(proc.pid, signal.SIGKILL)  # the worker is in a session of its own: unreached
    proc.wait(10)
    deadline = time.time() + 10
    while not report.exists() and time.time() < deadline:
        time.sleep(0.05)
    text = report.read_text()
    assert controller.PLAYBOOK_GONE in text and "pid %d" % proc.pid in text, text


def test_stdout_pipe_without_reader_is_noticed():
    read_fd, write_fd = os.pipe()
    try:
        assert not controller.stdout_orphaned(write_fd)
        os.close(read_fd)
        read_fd = None
        assert controller.stdout_orphaned(write_fd)
    finally:
        os.close(write_fd)
        if read_fd is not None:
            os.close(read_fd)


def test_signal_cancels_with_the_signal_named():
    gone = []
    watch = controller.PlaybookWatch(gone.append, interval=60, chain=[]).start()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    finally:
        watch.stop()
    assert gone and "SIGTERM" in gone[0]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


# -- the engine: cancelled at every platform operation -------------------------
CANARY = {"steps": [{"set_weight": 25}, {"pause": {"duration": 30}}, {"set_weight": 50},
                    {"pause": {"duration": 30}}]}
STRATEGIES = [("rolling", {"max_surge": 1}), ("blue_green", {"scale_down_delay": 0}),
              ("canary", CANARY), ("recreate", {})]


def fresh(tmp_path, name):
    clock = FakeClock()
    platform = FakePlatform(clock)
    store = FileReleaseStore(str(tmp_path / name))

    def make():
        return Rollout(platform, store, "catalog", "ci", clock=clock, timeout=3600)
    make.clock, make.platform, make.store = clock, platform, store
    return make


@pytest.mark.parametrize("strategy,settings", STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_cancel_at_every_operation_ends_safe_and_recorded(tmp_path, strategy, settings):
    probe = fresh(tmp_path, "probe")
    probe().deploy("1.0.0", "sha256:a", 3)
    before = probe.platform.ops
    probe().deploy("2.0.0", "sha256:b", 3, strategy, settings)
    total = probe.platform.ops - before
    outcomes = set()
    for at in range(0, total + 1):
        env = fresh(tmp_path, "c%d" % at)
        env().deploy("1.0.0", "sha256:a", 3)
        engine = env()
        target = env.platform.ops + at
        original = env.platform._mutating

        def mutating(op, *args, _orig=original, _target=target, _engine=engine, _env=env):
            _orig(op, *args)
            if _env.platform.ops >= _target:
                _engine.cancel.request("the playbook that ran this rollout is gone (test)")
        env.platform._mutating = mutating
        if at == 0:
            engine.cancel.request("the playbook that ran this rollout is gone (test)")
        result = engine.deploy("2.0.0", "sha256:b", 3, strategy, settings)
        env.platform._mutating = original
        history = env.store.load("catalog", "ci")
        release = history.get("v002")
        live = history.live_release()
        assert env.store.lock_holder("catalog", "ci") is None
        if release.outcome == ROLLED_BACK:  # cancelled before it was live: back on 1.0.0
            assert result.failed and "playbook" in release.reason, (at, result.msg)
            assert live.version == "1.0.0" and result.state == ROLLED_BACK
        else:  # cancelled after it was recorded live: finished forward
            assert release.outcome == SUCCEEDED and live.version == "2.0.0", (at, result.msg)
        outcomes.add(release.outcome)
        snap = env.platform.snapshot()
        serving = {n: s for n, s in snap.items() if not s["deleting"] and s["weight"]}
        assert list(serving) == [live.group] and serving[live.group]["weight"] == 100, (at, snap)
        assert [r.release_id for r in history.releases if r.status == LIVE] == [live.release_id]
    assert ROLLED_BACK in outcomes


def test_cancel_interrupts_a_long_pause_within_a_second():
    clock = FakeClock()
    platform = FakePlatform(clock)
    executor = Executor(platform, clock, {"new": None}, create={
        "artifact": "catalog", "environment": "ci", "release_id": "v001", "image": "i",
        "env": {}, "name": "g"})
    executor.cancel = Cancel()
    started = clock.now()
    original = clock.sleep

    def sleep(seconds):
        original(seconds)
        if clock.now() - started >= 5:
            executor.cancel.request("stop")
    clock.sleep = sleep
    with pytest.raises(StepFailed) as err:
        executor.run([Step("pause", duration=3600)])
    assert err.value.cause == "cancelled" and err.value.reason == "stop"
    assert clock.now() - started <= 6


def test_same_request_waits_for_the_holder_and_gets_its_outcome(tmp_path):
    store = FileReleaseStore(str(tmp_path))
    holder = LockHolder.current("deploy", release_id="v001", request="sha256:r")
    lock = store.acquire("catalog", "ci", holder)
    with pytest.raises(Exception) as err:  # bounded: past the deadline it names the holder
        controller.await_holder(store, "catalog", "ci", holder, time.time() + 0.3, poll=0.05)
    assert "still locked by deploy of release v001" in str(err.value)
    store.release(lock)
    assert controller.await_holder(store, "catalog", "ci", holder, time.time() + 5) >= 0
    assert controller.final_release(store, "catalog", "ci", holder) is None  # no such release
