"""The rollout module's controller process on the REAL process tree:
ansible-playbook -> worker (own session) -> /bin/sh -> AnsiballZ_rollout.py.

* the playbook's process group is SIGKILLed, or gets SIGTERM (a CI abort,
  `timeout`): the module notices, rolls the canary back to the live release,
  records why and gives the lock back - no traffic split left, no error seen;
* a rerun of the same request waits for a controller of it and reports its
  outcome; a different request fails naming the holder;
* `wait: false` reports `in_progress` only once the lock is really held;
* a tampered release store fails the modules with a message naming the file.

Runs on the rollout stack of fixtures_rollout.py (its own loopback block)."""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from fixtures_rollout import LoadGen
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    LIVE, ROLLED_BACK, LockHolder, pid_alive)

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAUSE = 40  # canary pause: far longer than noticing + rolling back may take

PLAYBOOK = """
- name: One rollout
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Roll out
      phoenix.deploy.rollout:
        artifact: catalog
        environment: "{{ env_name }}"
        version: "{{ version }}"
        size: "{{ size | default(2) | int }}"
        strategy: "{{ strategy | default('canary') }}"
        strategy_settings: "{{ settings }}"
        infra: "{{ infra }}"
        store: "{{ store }}"
        image_store: "{{ image_store }}"
        drain_timeout: 2
        timeout: "{{ timeout | default(120) | int }}"
        wait: "{{ wait | default(true) | bool }}"
      register: phx_result
      ignore_errors: true  # keeps failed: true in the result

    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ phx_result | to_nice_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
"""


class Runner:
    """ansible-playbook of PLAYBOOK against one rollout environment."""

    def __init__(self, env, tmp_path):
        self.env, self.tmp = env, tmp_path
        self.playbook = tmp_path / "rollout.yml"
        self.playbook.write_text(PLAYBOOK)
        self.count = 0

    def command(self, key, **extra):
        self.count += 1
        result = self.tmp / ("result-%d.json" % self.count)
        variables = {"env_name": self.env.environment, "version": self.env.images[key]["version"],
                     "infra": self.env.infra, "store": self.env.store_dir,
                     "image_store": self.env.images["store"], "result_file": str(result),
                     "settings": {"steps": [{"set_weight": 50}, {"pause": {"duration": PAUSE}}]}}
        variables.update(extra)
        varfile = self.tmp / ("vars-%d.json" % self.count)
        varfile.write_text(json.dumps(variables))
        os.chmod(varfile, 0o600)  # the infra outputs hold the DB password
        return ["ansible-playbook", str(self.playbook), "-e", "@%s" % varfile], result

    def environ(self):
        """The environment of this test's playbooks: tagged, so module_processes()
        finds their modules and not those of other tests running meanwhile."""
        return dict(os.environ, PHX_TEST_RUN=str(self.tmp))

    def start(self, key, **extra):
        cmd, result = self.command(key, **extra)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, env=self.environ())
        proc.result_file = result
        return proc

    def run(self, key, timeout=300, **extra):
        cmd, result = self.command(key, **extra)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                              env=self.environ())
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return json.loads(result.read_text()), proc.stdout + proc.stderr


def wait_for(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def canary_at_50(env):
    """The new release of a canary, once its group has 50 % of the traffic."""
    history = env.history()
    new = [r for r in history.releases if r.status == "in_progress"]
    if not new:
        return None
    group = env.groups().get(new[-1].group)
    return new[-1] if group is not None and group.weight == 50 and group.attached else None


def module_processes(runner):
    """pids of running AnsiballZ rollout modules of runner's playbooks (to prove
    none is left behind)."""
    tag = b"\0PHX_TEST_RUN=%s\0" % str(runner.tmp).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = pathlib.Path("/proc/%s/cmdline" % entry).read_bytes()
            environ = b"\0" + pathlib.Path("/proc/%s/environ" % entry).read_bytes()
        except OSError:
            continue
        if b"AnsiballZ_rollout" in cmdline and tag in environ and pid_alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.fixture
def proc_env(rollout_env):
    """rollout_env, and at the end no controller of it left running (a failed
    test must not leave a detached controller acting on the shared stack)."""
    yield rollout_env
    holder = rollout_env.store.lock_holder("catalog", rollout_env.environment)
    if holder is not None and pid_alive(holder.pid, holder.proc_start):
        os.kill(holder.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(holder.pid), 10)


def assert_back_on_v1(env, rolled):
    history = env.history()
    release = history.get(rolled.release_id)
    assert release.outcome == ROLLED_BACK and release.status == "retired", release.as_dict()
    assert "playbook" in release.reason, release.reason
    assert any(e.get("cause") == "cancelled" for e in release.events), release.events
    live = history.live_release()
    assert live.version == env.images["v1"]["version"] and live.status == LIVE
    groups = env.settled_groups()
    assert list(groups) == [live.group], groups  # no traffic split, no canary group left
    assert groups[live.group].weight == 100 and groups[live.group].attached
    assert env.store.lock_holder("catalog", env.environment) is None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_playbook_rolls_the_canary_back_and_frees_the_lock(proc_env, tmp_path, sig):
    """Kill the playbook's whole process group (as a CI abort or `timeout` does)
    while the canary pauses at 50 %: the module rolls back at once, records why,
    gives the lock back; the same one-liner then deploys."""
    env = proc_env
    assert env.deploy("v1").state == LIVE
    runner = Runner(env, tmp_path)
    with LoadGen(env.url) as load:
        proc = runner.start("v2")
        try:
            rolled = wait_for(lambda: canary_at_50(env), 120)
            assert rolled, "the canary never reached 50 %%: %s" % env.history().as_dict()
            holder = env.store.lock_holder("catalog", env.environment)
            killed = time.monotonic()
        finally:
            os.killpg(proc.pid, sig)
            proc.wait(30)
        freed = wait_for(lambda: env.store.lock_holder("catalog", env.environment) is None,
                         PAUSE + 30)
        seconds = time.monotonic() - killed
        assert freed, "the module still holds the lock %.0fs after its playbook was killed" % seconds
        assert wait_for(lambda: not pid_alive(holder.pid), 10), "the controller kept running"
        assert not module_processes(runner)
    print("%s of the playbook's process group: lock released after %.1fs, %s"
          % (sig.name, seconds, load.summary()))
    assert seconds < PAUSE / 2, "rolled back only after the pause would have ended"
    assert_back_on_v1(env, rolled)
    assert load.failed == 0, load.summary()
    # the same one-liner again converges to the new version
    result, _out = runner.run("v2", settings={"steps": [{"set_weight": 50},
                                                        {"pause": {"duration": 1}}]})
    assert result["state"] == LIVE, result
    assert env.history().live_release().version == env.images["v2"]["version"]


def test_rerun_of_the_same_request_waits_for_its_controller(proc_env, tmp_path):
    """wait: false leaves a detached controller on a 45 s canary pause (three more
    playbook runs must start within it, also on a loaded machine); a
    different request fails naming it; the same request with wait: true
    waits and reports the outcome; wait: false again reports that controller."""
    env = proc_env
    assert env.deploy("v1").state == LIVE
    runner = Runner(env, tmp_path)
    settings = {"steps": [{"set_weight": 50}, {"pause": {"duration": 45}}]}
    first, _out = runner.run("v2", wait=False, settings=settings)
    assert first["state"] == "in_progress", first
    holder = env.store.lock_holder("catalog", env.environment)
    assert holder is not None and holder.request and str(holder.pid) in first["msg"], first
    again, _out = runner.run("v2", wait=False, settings=settings)
    assert again["state"] == "in_progress" and not again["changed"], again
    assert "pid %d" % holder.pid in again["msg"] and "same request" in again["msg"], again
    other, _out = runner.run("v2", size=3, settings=settings)  # a different request
    assert other.get("failed") and "locked by deploy of release" in other["msg"], other
    assert "pid %d" % holder.pid in other["msg"], other
    started = time.monotonic()
    same, out = runner.run("v2", settings=settings)
    waited = time.monotonic() - started
    assert "Traceback" not in out
    assert same["state"] == LIVE and not same.get("failed"), same
    assert "same request" in same["msg"] and same["release"]["release_id"] == holder.release_id
    assert env.history().live_release().release_id == holder.release_id
    assert env.store.lock_holder("catalog", env.environment) is None
    print("rerun of the same request waited; whole run %.1fs: %s" % (waited, same["msg"]))


def test_wait_false_reports_in_progress_only_with_the_lock(proc_env, tmp_path):
    """Another rollout holds the lock: wait: false fails naming it instead of
    claiming a controller is in progress."""
    env = proc_env
    assert env.deploy("v1").state == LIVE
    lock = env.store.acquire("catalog", env.environment,
                             LockHolder.current("deploy", release_id="v777"))
    try:
        result, out = Runner(env, tmp_path).run("v2", wait=False)
    finally:
        env.store.release(lock)
    assert result.get("failed") and result.get("state") != "in_progress", result
    assert "locked by deploy of release v777 by pid %d" % os.getpid() in result["msg"], result
    assert "Traceback" not in out
    assert len(env.history().releases) == 1


@pytest.mark.parametrize("module", ["rollout", "release_info"])
def test_tampered_release_store_names_the_file(proc_env, module):
    env = proc_env
    assert env.deploy("v1").state == LIVE
    path = pathlib.Path(env.store_dir) / "catalog" / env.environment / "history.json"
    data = json.loads(path.read_text())
    data["releases"][0]["size"] = "x"
    path.write_text(json.dumps(data))
    before = env.platform_state()
    args = {"artifact": "catalog", "environment": env.environment, "infra": env.infra,
            "store": env.store_dir, "image_store": env.images["store"]}
    if module == "rollout":
        args["version"] = env.images["v2"]["version"]
    proc = subprocess.run(["ansible", "localhost", "-m", "phoenix.deploy.%s" % module,
                           "-a", json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out and "MODULE FAILURE" not in out, out[-3000:]
    assert str(path) in out and "size is 'x'" in out, out[-3000:]
    assert env.platform_state() == before and json.loads(path.read_text()) == data
