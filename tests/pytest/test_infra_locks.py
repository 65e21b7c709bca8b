"""`pulumi up` of an environment and rollouts share the per-(artifact,
environment) release-store locks (phoenix.deploy.pulumi_stack's
``release_lock``): the real module through ansible, the real Pulumi CLI on a
small program whose dynamic provider can be made slow, real lock files."""
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, LockHeld, LockHolder)

PASSPHRASE = "locks-test-passphrase"
MODULE = "ansible_collections.phoenix.deploy.plugins.modules.pulumi_stack"
PROGRAM = '''
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class SlowFile(ResourceProvider):
    def create(self, props):
        import time
        time.sleep(float(props["delay"]))
        with open(props["path"], "w") as handle:
            handle.write(props["text"])
        return CreateResult(id_="greeting", outs=props)

    def diff(self, _id, olds, news):
        return DiffResult(changes=olds.get("text") != news.get("text"))

    def update(self, _id, _olds, news):
        import time
        time.sleep(float(news["delay"]))
        with open(news["path"], "w") as handle:
            handle.write(news["text"])
        return UpdateResult(outs=news)

    def delete(self, _id, props):
        import os
        if os.path.exists(props["path"]):
            os.remove(props["path"])


class File(Resource):
    def __init__(self, name, props):
        super().__init__(SlowFile(), name, props)


config = pulumi.Config()
f = File("greeting", {"path": config.require("path"), "text": config.require("text"),
                      "delay": config.get("delay") or "0"})
pulumi.export("path", f.path)
if config.get("api_server"):  # outputs of a cluster's stack, as phoenix_infra.k8s_local exports them
    pulumi.export("platform", "kubernetes")
    pulumi.export("kubernetes", {"api_server": config.get("api_server"), "namespace": "phoenix",
                                 "ca_cert": "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n",
                                 "token": pulumi.Output.secret("t0ken-never-shown")})
'''


class Infra:
    """One stack of the small program, driven by the pulumi_stack module."""

    def __init__(self, tmp, repo_root):
        self.tmp, self.root = tmp, repo_root
        self.project = tmp / "project"
        self.project.mkdir()
        (self.project / "Pulumi.yaml").write_text("name: locks-test\nruntime:\n  name: python\n")
        (self.project / "__main__.py").write_text(PROGRAM)
        (tmp / "backend").mkdir()
        self.file = tmp / "greeting.txt"
        self.store_dir = str(tmp / "releases")
        self.store = FileReleaseStore(self.store_dir)

    def args(self, text, delay=0, lock=True, timeout=0, artifacts=("catalog", "search")):
        args = {"project_path": str(self.project), "stack": "ci", "passphrase": PASSPHRASE,
                "backend_url": "file://%s" % (self.tmp / "backend"),
                "config": {"path": str(self.file), "text": text, "delay": str(delay)}}
        if lock:
            args["release_lock"] = {"store": self.store_dir, "environment": "ci",
                                    "artifacts": list(artifacts), "timeout": timeout}
        return args

    def start(self, args):
        """The module in a process of its own, as Ansible runs it (args file,
        JSON result on stdout)."""
        path = self.tmp / ("args-%d.json" % time.monotonic_ns())
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        env = dict(os.environ, PYTHONPATH=str(self.root / ".tools" / "collections"))
        return subprocess.Popen([sys.executable, "-m", MODULE, str(path)], cwd=self.tmp, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def result(proc):
        out, err = proc.communicate(timeout=300)
        try:
            res = json.loads(out)
        except ValueError:
            pytest.fail("no module result:\n%s\n%s" % (out[-3000:], err[-3000:]))
        assert "Traceback" not in out + err, out + err
        return res

    def run(self, args):
        return self.result(self.start(args))


@pytest.fixture
def infra(tmp_path, repo_root):
    stack = Infra(tmp_path, repo_root)
    res = stack.run(stack.args("hello"))
    assert res.get("changed") and not res.get("failed"), res
    assert stack.file.read_text() == "hello"
    return stack


@pytest.fixture
def rollout_holder(infra):
    """A running 'rollout' (a live process) holding catalog/ci's lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    holder = LockHolder.current(action="deploy", release_id="v007", pid=proc.pid)
    lock = infra.store.acquire("catalog", "ci", holder)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    infra.store.release(lock)


def test_up_that_would_change_fails_naming_the_rollout_holding_a_lock(infra, rollout_holder):
    res = infra.run(infra.args("changed"))
    assert res.get("failed"), res
    assert "deploy of release v007 by pid %d" % rollout_holder.pid in res["msg"], res["msg"]
    assert res.get("param") == "release_lock", res
    assert infra.file.read_text() == "hello", "the stack was changed under a rollout"
    holder = infra.store.lock_holder("catalog", "ci")
    assert holder.pid == rollout_holder.pid and holder.release_id == "v007"
    assert infra.store.lock_holder("search", "ci") is None, "a lock taken was not given back"


def test_destroy_fails_naming_the_rollout_holding_a_lock(infra, rollout_holder):
    args = infra.args("hello")
    args["state"] = "absent"
    res = infra.run(args)
    assert res.get("failed") and "pulumi destroy of stack 'ci'" in res["msg"], res
    assert "deploy of release v007 by pid %d" % rollout_holder.pid in res["msg"], res["msg"]
    assert infra.file.read_text() == "hello", "the stack was destroyed under a rollout"


def test_up_waits_for_the_rollout_then_runs(infra, rollout_holder):
    started = time.monotonic()
    proc = infra.start(infra.args("after the rollout", timeout=60))
    time.sleep(4)
    assert proc.poll() is None, "the up did not wait for the rollout"
    assert infra.file.read_text() == "hello"
    rollout_holder.kill()  # the rollout ends (its lock is recovered as a dead holder's)
    res = infra.result(proc)
    assert res.get("changed") and not res.get("failed"), res
    assert infra.file.read_text() == "after the rollout"
    assert time.monotonic() - started >= 4
    assert infra.store.lock_holder("catalog", "ci") is None


def test_up_with_nothing_to_change_is_skipped_not_failed_during_a_rollout(infra, rollout_holder):
    res = infra.run(infra.args("hello"))
    assert not res.get("failed") and not res.get("changed"), res
    assert "deploy of release v007" in res["up_skipped"], res
    assert res["outputs"]["path"] == str(infra.file)
    assert infra.store.lock_holder("catalog", "ci").pid == rollout_holder.pid


def test_a_rollout_cannot_start_while_up_holds_the_locks(infra):
    proc = infra.start(infra.args("slow change", delay=8))
    deadline = time.monotonic() + 60
    holder = None
    while time.monotonic() < deadline and proc.poll() is None:
        holder = infra.store.lock_holder("catalog", "ci")
        if holder is not None:
            break
        time.sleep(0.1)
    assert holder is not None and holder.action == "infra", holder
    # what a rollout does first (Rollout._run): take the lock of its (artifact, environment)
    with pytest.raises(LockHeld) as held:
        infra.store.acquire("catalog", "ci", LockHolder.current(action="deploy"))
    assert "infra by pid %d" % holder.pid in str(held.value)
    assert proc.poll() is None
    res = infra.result(proc)
    assert res.get("changed") and not res.get("failed"), res
    assert infra.file.read_text() == "slow change"
    assert infra.store.lock_holder("catalog", "ci") is None
    assert infra.store.lock_holder("search", "ci") is None


@pytest.mark.parametrize("lock,word", [
    ({"store": "x", "environment": "ci", "artifacts": ["bad/name"]}, "release_lock.artifacts"),
    ({"store": "x", "environment": "ci\n", "artifacts": ["catalog"]}, "release_lock.environment"),
    ({"store": "x", "environment": "ci", "artifacts": []}, "release_lock.artifacts"),
    ({"store": "x", "environment": "ci", "artifacts": ["catalog"], "timeout": "nan"}, "release_lock.timeout"),
])
def test_bad_release_lock_names_the_option_and_changes_nothing(infra, lock, word):
    args = infra.args("changed")
    args["release_lock"] = lock
    res = infra.run(args)
    assert res.get("failed") and word in res["msg"], res
    assert infra.file.read_text() == "hello"


def _text(warning):
    """A module warning: a string, or (ansible-core 2.19) a WarningSummary."""
    return warning if isinstance(warning, str) else (warning.get("event") or {}).get("msg", "")


def _closed_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_up_of_a_cluster_whose_api_server_is_down_proceeds_with_a_warning(infra):
    """A kubernetes stack's rollouts lock Leases in the cluster (store_backend auto, from the stack's
    outputs): with its API server down (what pulumi up restores) no rollout can hold one, so the up
    runs, warning why; the lock files (another store) are not what it waits for."""
    args = infra.args("hello")
    args["config"]["api_server"] = "https://127.0.0.1:%d" % _closed_port()
    res = infra.run(args)  # the outputs before this up were not a cluster's: the file store's locks
    assert not res.get("failed") and not res.get("warnings"), res
    assert res["outputs"]["platform"] == "kubernetes"
    assert res["outputs"]["kubernetes"]["token"] == "[secret]"
    started = time.monotonic()
    args["config"]["text"] = "restored"
    proc = infra.start(args)
    out, err = proc.communicate(timeout=300)
    res = json.loads(out)
    assert "Traceback" not in out + err and "t0ken-never-shown" not in out + err
    assert res.get("changed") and not res.get("failed"), res
    assert infra.file.read_text() == "restored"
    (warning,) = [w for w in map(_text, res.get("warnings") or []) if "release locks" in w] or [str(res)]
    assert warning.startswith("pulumi up of stack 'ci': release locks of environment 'ci' not taken: read the "
                              "lock (lease) of catalog/ci (namespace phoenix, API server %s): cannot reach the "
                              "Kubernetes API server" % args["config"]["api_server"]), warning
    assert "no rollout can be running against an API server that does not answer" in warning
    assert time.monotonic() - started >= 20  # 2/3 of the lease: any rollout holding one has given it up
    assert infra.store.lock_holder("catalog", "ci") is None


def test_a_cluster_stack_does_not_wait_for_lock_files_its_rollouts_do_not_use(infra, rollout_holder):
    """With store_backend file the lock files are the rollouts' store again (as before)."""
    args = infra.args("changed")
    args["config"]["api_server"] = "https://127.0.0.1:%d" % _closed_port()
    args["release_lock"]["store_backend"] = "file"
    res = infra.run(args)
    assert res.get("failed") and "deploy of release v007 by pid %d" % rollout_holder.pid in res["msg"], res


def test_a_stack_whose_settings_name_another_platform_keeps_the_lock_files(infra):
    """store_backend auto: the stack's settings file says platform local, so the file store is the
    rollouts' - without reading its outputs (which here, oddly, name a cluster that is down)."""
    args = infra.args("hello")
    args["config"].update(api_server="https://127.0.0.1:%d" % _closed_port(), platform="local")
    res = infra.run(args)
    assert not res.get("failed") and res["outputs"]["platform"] == "kubernetes", res
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = infra.store.acquire("catalog", "ci", LockHolder.current(action="deploy", release_id="v009", pid=proc.pid))
    try:
        args["config"]["text"] = "changed"
        started = time.monotonic()
        res = infra.run(args)
        assert res.get("failed") and "deploy of release v009 by pid %d" % proc.pid in res["msg"], res
        assert time.monotonic() - started < 20  # no 20 s wait for the cluster's API server
        assert infra.file.read_text() == "hello"
    finally:
        proc.kill()
        proc.wait(10)
        infra.store.release(lock)


def test_destroy_playbook_fails_naming_the_rollout_holding_a_lock(infra, rollout_holder, repo_root):
    """playbooks/destroy.yml runs ``pulumi destroy`` under the environment's
    rollout locks too: a rollout in progress keeps the stack (and the release
    data the playbook would remove next)."""
    extra = {"environment": "ci", "phoenix_infra_dir": str(infra.project), "phoenix_stack": "ci",
             "phoenix_release_store": infra.store_dir, "phoenix_artifacts": ["catalog", "search"]}
    env = dict(os.environ, PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
               PULUMI_BACKEND_URL="file://%s" % (infra.tmp / "backend"),
               ANSIBLE_COLLECTIONS_PATH=str(repo_root / ".tools" / "collections"))
    proc = subprocess.run(["ansible-playbook", "playbooks/destroy.yml", "-e", json.dumps(extra)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "deploy of release v007 by pid %d" % rollout_holder.pid in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert infra.file.read_text() == "hello", "the stack was destroyed under a rollout"
    assert infra.store.lock_holder("catalog", "ci").pid == rollout_holder.pid
