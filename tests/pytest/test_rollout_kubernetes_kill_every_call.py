"""A real controller process SIGKILLed at each mutating platform call of a
rolling deploy, a promote, an abort and a rollback on a real k8s-local cluster
(Deployments, pods, the gateway's HAProxy fed from EndpointSlices, HTTPRoute
weights), with its release store in the cluster (ConfigMap + Lease, what
``store_backend: auto`` picks on Kubernetes), under load through the gateway:
the next run (``converge`` in a new engine) leaves exactly one live release
at 100 % on its full, Ready Deployment, no release in progress, every other
Deployment a detached warm group, no orphan Deployment, Service or pod, no
held Lease; the same action then succeeds, and no user request fails
(serving capacity never reached 0).

The rolling deploy is also killed right AFTER each call returned (the change
happened, the controller never recorded it): the worst case for get-or-create.

One cluster per module; run under ``flock /tmp/phoenix-k8s.lock``."""
import json
import select
import shutil
import subprocess
import sys
import time

import pytest

from fixtures_infra_local import wait_for
from fixtures_k8s_local import HELLO_C, build_hello_image, push
from fixtures_k8s_rollout import admin_client, gateway_url, k8s_platform, served_environment
from fixtures_rollout import COLLECTIONS, LoadGen

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import destroy_done
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import objects
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import IN_PROGRESS, LIVE, PAUSED
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
from ansible_collections.phoenix.deploy.plugins.module_utils.targets import make_store

V1, V2 = "1.0.0+5eed0f1.b1", "1.1.0+5eed0f1.b2"
#: short drains and grace periods: every kill costs a reset of the cluster's state
PLATFORM = {"drain_timeout": 0.5, "prestop_seconds": 1, "verify_timeout": 15}
SIZE = 2
ROLLING = {"max_surge": 1, "max_unavailable": 0}  # 50/50 with the old group shrunk: 7 calls
CANARY = {"steps": [{"set_weight": 50}, {"pause": {}}]}
BLUE_GREEN = {"scale_down_delay": 600}
MAX_REQUESTS, MAX_SECONDS = 200000, 600  # the load of one action, bounded both ways
#: the hello server exiting on SIGTERM (after the preStop sleep) as a real service
#: does, instead of ignoring it as PID 1 until the grace period ends: faster destroys
HELLO_TERM_C = HELLO_C.replace("#include <unistd.h>", "#include <unistd.h>\n#include <signal.h>\n"
                               "static void bye(int sig) { (void)sig; _exit(0); }").replace(
    "int main(void) {", "int main(void) {\n  signal(SIGTERM, bye);")

#: imports once, then forks one controller per request line (a real process
#: of its own, SIGKILLed at the Nth call) and answers its exit status and
#: output; requests arrive on stdin, since the infra outputs hold the
#: deployer's token (never on a command line)
ZYGOTE = r"""
import json, os, signal, sys, traceback
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import KubernetesPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
from ansible_collections.phoenix.deploy.plugins.module_utils.targets import make_store


def controller(cfg, out):
    platform = KubernetesPlatform(cfg["infra"], **cfg["platform"])
    store = make_store({"store": cfg["store"]}, cfg["infra"])  # auto: the ConfigMap + Lease store
    calls = {"n": 0, "ops": []}
    for op in ("create_group", "resize", "set_weights", "drain_and_detach", "destroy", "cancel_drain"):
        role = platform.role(op)  # the group manager or the traffic router
        real = getattr(role, op)

        def wrapped(*args, _real=real, _op=op, **kw):
            calls["n"] += 1
            calls["ops"].append(_op)
            if calls["n"] == cfg["kill_at"] and not cfg["after"]:
                out.write(json.dumps({"killed_at": _op, "when": "before"}) + "\n")
                out.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
            result = _real(*args, **kw)
            if calls["n"] == cfg["kill_at"]:
                out.write(json.dumps({"killed_at": _op, "when": "after"}) + "\n")
                out.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # the change happened, nobody recorded it
            return result
        setattr(role, op, wrapped)
    res = getattr(Rollout(platform, store, "catalog", cfg["environment"]), cfg["action"])(*cfg["args"])
    out.write(json.dumps({"state": res.state, "failed": res.failed, "msg": res.msg, "calls": calls["n"],
                          "ops": calls["ops"]}) + "\n")


for line in sys.stdin:
    cfg = json.loads(line)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        out = os.fdopen(write, "w")
        try:
            controller(cfg, out)
            code = 0
        except BaseException:
            out.write(traceback.format_exc())
            code = 1
        out.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    status = os.waitpid(pid, 0)[1]
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps({"code": code, "pid": pid, "out": text}), flush=True)
"""


class BoundedLoad(LoadGen):
    """``LoadGen`` that also stops after ``max_requests``."""

    def __init__(self, url, max_requests, **kw):
        LoadGen.__init__(self, url, **kw)
        self.max_requests = max_requests

    def _one(self):
        if self.total >= self.max_requests - 1:
            self._stop.set()
        return LoadGen._one(self)

    def running(self):
        return self._thread.is_alive()


class KillEnv:
    """The environment the stack's gateway serves, its history in the cluster."""

    def __init__(self, stack, images):
        self.stack, self.infra, self.images = stack, stack.infra, images
        self.environment = served_environment(self.infra)
        self.platform = k8s_platform(stack, **PLATFORM)
        self.local = str(stack.tmp / "kill-releases")
        self.store = make_store({"store": self.local}, self.infra)
        assert type(self.store).__name__ == "ConfigMapReleaseStore", type(self.store)
        self.zygote = None

    @property
    def url(self):
        return gateway_url(self.infra)

    def engine(self):
        return Rollout(self.platform, self.store, "catalog", self.environment)

    def history(self):
        return self.store.load("catalog", self.environment)

    def groups(self):
        return {g.name: g for g in self.platform.groups.list_groups("catalog", self.environment)}

    def deploy(self, version, strategy="rolling", settings=None):
        return self.engine().deploy(version, self.images[version], SIZE, strategy, settings)

    def live_version(self):
        live = self.history().live_release()
        return live.version if live else None

    def other(self):
        return V2 if self.live_version() == V1 else V1

    def ensure_live(self):
        if self.live_version() is None:
            res = self.deploy(V1)
            assert res.state == LIVE, res.msg

    def kill(self, action, args, kill_at, after=False):
        """Run ``action`` in a controller process of its own, SIGKILLed before
        (or ``after``) its ``kill_at``-th mutating platform call (0: never)."""
        if self.zygote is None or self.zygote.poll() is not None:
            self.zygote = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, "-c", ZYGOTE, str(COLLECTIONS)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
        cfg = {"infra": self.infra, "platform": PLATFORM, "store": self.local, "environment": self.environment,
               "action": action, "args": args, "kill_at": kill_at, "after": after}
        self.zygote.stdin.write(json.dumps(cfg) + "\n")
        self.zygote.stdin.flush()
        ready = select.select([self.zygote.stdout], [], [], 180)[0]
        assert ready, "controller of %s (kill at %d) still running after 180 s" % (action, kill_at)
        answer = json.loads(self.zygote.stdout.readline())
        lines = [json.loads(line) for line in answer["out"].splitlines() if line.startswith("{")]
        assert lines, answer
        return answer["code"], lines

    def close(self):
        if self.zygote is not None:
            self.zygote.stdin.close()
            try:
                self.zygote.wait(30)
            except subprocess.TimeoutExpired:
                self.zygote.kill()
                self.zygote.wait(10)

    def owned(self):
        """Names of the Deployments and Services, and the groups of the ReplicaSets and pods
        (not being deleted) labelled ours for this environment."""
        from kubernetes import client
        api = admin_client(self.stack)
        ns = self.infra["kubernetes"]["namespace"]
        match = "%s=phoenix.deploy,%s=catalog,%s=%s" % (objects.MANAGED_BY, objects.ARTIFACT,
                                                        objects.ENVIRONMENT, self.environment)
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        deps = apps.list_namespaced_deployment(ns, label_selector=match).items
        svcs = core.list_namespaced_service(ns, label_selector=match).items
        sets = apps.list_namespaced_replica_set(ns, label_selector=match).items
        pods = core.list_namespaced_pod(ns, label_selector=match).items
        return ({d.metadata.name for d in deps}, {s.metadata.name for s in svcs},
                {r.metadata.labels.get(objects.GROUP) for r in sets if not r.metadata.deletion_timestamp},
                {p.metadata.labels.get(objects.GROUP) for p in pods if not p.metadata.deletion_timestamp})


@pytest.fixture(scope="module")
def kill_env(k8s_rollout_stack):
    stack = k8s_rollout_stack
    dev = stack.infra["registries"]["dev"]
    v1 = push(build_hello_image(stack.tmp / "img-term", HELLO_TERM_C), dev, "phoenix-it/hello")
    work = stack.tmp / "img-term2"  # a second digest of that image: one more label
    shutil.copytree(stack.tmp / "img-term" / "oci", work / "oci")
    subprocess.run(["umoci", "config", "--image", "%s/oci:v1" % work, "--config.label", "phoenix.test/variant=2"],
                   check=True, capture_output=True, timeout=60)
    images = {V1: v1, V2: push("oci:%s/oci:v1" % work, dev, "phoenix-it/hello")}
    assert images[V1] != images[V2]
    env = KillEnv(stack, images)
    yield env
    env.close()


def assert_converged(env, versions):
    """One live release (of ``versions``) at 100 % on its full, Ready
    Deployment; nothing in progress or paused; every other group a detached
    warm group of a release; no orphan object; the Lease free."""
    history = env.history()
    live = history.live_release()
    assert live is not None and live.version in versions, history.as_dict()
    assert [r.release_id for r in history.releases if r.status == LIVE] == [live.release_id]
    assert not [r.release_id for r in history.releases if r.status in (IN_PROGRESS, PAUSED)], history.as_dict()
    groups = env.groups()
    assert groups[live.group].weight == 100 and groups[live.group].attached, groups
    assert groups[live.group].size == live.size
    ready = wait_for(lambda: env.platform.groups.health(live.group).ready == live.size, 5, 0.5)  # a slow probe
    assert ready, env.platform.groups.health(live.group)
    warm = {r.group for r in history.releases if r.warm_until}
    for name, group in groups.items():
        if name == live.group:
            continue
        if group.deleting:  # the cluster removes it (base.destroy_done): no traffic, no capacity
            assert destroy_done(group) and group.size == 0 and group.weight == 0, (name, groups)
        else:
            assert name in warm and not group.attached, (name, groups, warm)
    route = env.platform.driver.read_route("catalog", env.environment)
    assert objects.weights_of(route) == {live.group: 100}, route
    owned = env.owned()
    assert all(names <= set(groups) for names in owned), ("orphans", owned, sorted(groups))
    assert env.store.lock_holder("catalog", env.environment) is None
    return live


def prepare(env, action):
    """The state each kill starts from; returns the action's arguments and the
    versions the rerun may converge to."""
    env.ensure_live()
    before, target = env.live_version(), env.other()
    if action == "rollback":  # target live by blue/green, `before` kept warm
        res = env.deploy(target, "blue_green", BLUE_GREEN)
        assert res.state == LIVE, res.msg
        return [], (target, before)
    if action in ("abort", "promote"):
        res = env.deploy(target, "canary", CANARY)
        assert res.state == PAUSED, res.msg
        return [], (before, target) if action == "promote" else (before,)
    return [target, env.images[target], SIZE, "rolling", ROLLING], (before, target)


RERUN = {"rollback": ("live",), "promote": ("live",), "abort": ("aborted", "live"), "deploy": ("live",)}


@pytest.mark.slow
@pytest.mark.parametrize("action", ["rollback", "abort", "promote", "deploy"],
                         ids=["rollback", "abort", "promote", "rolling-deploy"])
def test_kill_at_every_platform_call(kill_env, action):
    env = kill_env
    t0 = time.monotonic()
    args, _versions = prepare(env, action)
    code, lines = env.kill(action, args, kill_at=0)  # a full run: count the calls
    assert code == 0 and not lines[-1]["failed"] and lines[-1]["state"] in RERUN[action], lines
    total, ops = lines[-1]["calls"], lines[-1]["ops"]
    assert total >= 3, lines
    kills = [(n, False) for n in range(1, total + 1)]
    if action == "deploy":  # killed right after a call returned, where that differs from a kill before the next:
        # the group made but not recorded; traffic at 100 % on the new group, not yet recorded live; the last call
        kills += [(n, True) for n in sorted({1, len(ops) - ops[::-1].index("set_weights"), total})]
    seen = []
    with BoundedLoad(env.url, MAX_REQUESTS, path="/", max_seconds=MAX_SECONDS, pause=0.005) as load:
        for kill_at, after in kills:
            clock = [time.monotonic()]
            args, versions = prepare(env, action)
            clock.append(time.monotonic())
            code, lines = env.kill(action, args, kill_at, after)
            assert code == -9, (kill_at, after, lines)
            clock.append(time.monotonic())
            conv = env.engine().converge()
            assert not conv.failed, (kill_at, after, conv.msg)
            live = assert_converged(env, versions)
            clock.append(time.monotonic())
            again = getattr(env.engine(), action)(*args)
            assert not again.failed and again.state in RERUN[action], (kill_at, after, again.msg)
            assert_converged(env, versions)
            clock.append(time.monotonic())
            assert load.running(), "the load stopped before kill %d: %s" % (kill_at, load.summary())
            seen.append(("%s %s #%d" % (lines[0]["when"], lines[0]["killed_at"], kill_at), live.version,
                         again.state, "prepare/kill/converge/rerun %s s" % "/".join(
                             "%.1f" % (b - a) for a, b in zip(clock, clock[1:])),
                         [e["message"] for e in conv.events][1:2]))
    print("\n%s: %d calls (%s), %d kills in %.1f s; load: %s" % (
        action, total, ", ".join(ops), len(seen), time.monotonic() - t0, load.summary()))
    for item in seen:
        print("  ", item)
    assert len(seen) == len(kills)
    assert load.total > 100 and load.failed == 0, load.summary()
    # a group handed to the cluster for deletion really goes (nothing leaks)
    gone = wait_for(lambda: not [g for g in env.groups().values() if g.deleting], 120, 1)
    assert gone, env.groups()
