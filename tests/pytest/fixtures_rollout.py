"""Fixtures for rollout tests on the local platform: a throwaway local stack
(real PostgreSQL, HAProxy, supervisord), baked catalog images, a rollout
engine wired to them, and an HTTP load generator through the HAProxy
frontend (a bounded loop on loopback, in a thread, counting failures).

Every process started here is ended here, by its pid."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".tools" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.phoenix.deploy.plugins.module_utils import targets  # noqa: E402
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform  # noqa: E402
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore  # noqa: E402
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout  # noqa: E402

GIT = "5eed0f1"
V1 = "1.0.0+%s.b1" % GIT       # the version of fixtures_bake.catalog_image
V2 = "1.1.0+%s.b11" % GIT
FAULTY = "1.2.0-fault+%s.b12" % GIT  # every other /items request answers 500


class LoadGen:
    """GET ``path`` through the load balancer in a loop until stopped (or
    ``max_seconds``), on fresh connections; counts successes and failures."""

    def __init__(self, url, path="/items", max_seconds=300, pause=0.002):
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port
        assert self.host.startswith("127."), "load only on loopback"
        self.path, self.max_seconds, self.pause = path, max_seconds, pause
        self.ok = 0
        self.failed = 0
        self.failures = []
        self.statuses = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _one(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", self.path, headers={"Host": "catalog"})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, body
        finally:
            conn.close()

    def _loop(self):
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.max_seconds:
            try:
                status, body = self._one()
            except (OSError, http.client.HTTPException) as exc:
                status, body = None, str(exc).encode()
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.failures) < 20:
                    self.failures.append((round(time.monotonic() - start, 2), status, body[:120]))
            time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        return self

    @property
    def total(self):
        return self.ok + self.failed

    def summary(self):
        return "%d requests, %d failed %s" % (self.total, self.failed, self.failures[:5])


@pytest.fixture(scope="session")
def rollout_images(shared_bake_store, bake):
    """Baked catalog images (the store all workers share): v1, v2 and a
    faulty one (50% 500s on /items)."""
    bake(shared_bake_store, V1)
    bake(shared_bake_store, V2)
    bake(shared_bake_store, FAULTY, fault={"error_rate": 0.5})
    out = {"store": str(shared_bake_store)}
    for key, version in (("v1", V1), ("v2", V2), ("faulty", FAULTY)):
        out[key] = targets.resolve_image("catalog", version, None, str(shared_bake_store))
    return out


@pytest.fixture(scope="module")
def rollout_stack():
    """A local stack of the real infra program, only for the rollout tests."""
    sys.path.insert(0, str(ROOT / "tests" / "pytest"))
    from fixtures_infra_local import TempLocalStack, lease_block
    block, lock = lease_block("127.24")
    try:
        stack = TempLocalStack(name="ro-%d" % (os.getpid() % 100000), block=block, artifacts=("catalog",))
        try:
            stack.up()
            stack.infra = stack.outputs()
            yield stack
        finally:
            stack.cleanup()
    finally:
        os.close(lock)


class Env:
    """One (artifact, environment) on the rollout stack with its own store."""

    def __init__(self, stack, images, environment, tmp):
        self.stack, self.images, self.environment = stack, images, environment
        self.infra = stack.infra
        self.store_dir = str(tmp / "releases")
        self.platform = LocalPlatform(self.infra, image_store=images["store"], drain_timeout=5)
        self.store = FileReleaseStore(self.store_dir)
        self.url = self.infra["load_balancer"]["url"]

    def engine(self, **kw):
        return Rollout(self.platform, self.store, "catalog", self.environment, **kw)

    def deploy(self, key, size=2, strategy="rolling", settings=None, analysis=None, **kw):
        image = self.images[key]
        return self.engine(**kw).deploy(image["version"], image["ref"], size, strategy,
                                        settings, analysis)

    def groups(self):
        return {g.name: g for g in self.platform.list_groups("catalog", self.environment)}

    def settled_groups(self, timeout=60):
        """``groups()`` once no group of this environment is deleting (the
        driver's finisher removes a destroyed group after its members
        stopped); meanwhile every deleting group is no capacity and gets no
        traffic.  Fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            groups = self.groups()
            deleting = [g for g in groups.values() if g.deleting]
            for group in deleting:
                assert not group.attached and group.weight == 0 and group.size == 0, group
                assert not [n for n in self.servers() if n.startswith(group.name + ".")], group
            if not deleting:
                return groups
            assert time.monotonic() < deadline, "still deleting after %ss: %s" % (timeout, deleting)
            time.sleep(0.1)

    def programs(self):
        """supervisord programs of this environment (from the real process table)."""
        mine = [m["instance"] for m in self.platform._instances().values()
                if m["environment"] == self.environment]
        table = self.platform._processes()
        return sorted(n for n in table if n in mine or n.startswith("catalog-%s-" % self.environment))

    def servers(self):
        return {n: s for n, s in self.platform._servers("be_catalog").items()
                if n.startswith("catalog-%s-" % self.environment)}

    def history(self):
        return self.store.load("catalog", self.environment)

    def platform_state(self):
        """Everything a rollout could change on the platform."""
        return {"programs": self.programs(), "servers": sorted(self.servers()),
                "confs": sorted(m["instance"] for m in self.platform._instances().values()
                                if m["environment"] == self.environment),
                "weights": {n: (g.weight, g.attached, g.size) for n, g in self.groups().items()}}

    def clean(self):
        for name, group in self.groups().items():  # a deleting one may be gone meanwhile
            if group.attached:
                self.platform.drain_and_detach(name)
            self.platform.destroy(name)
        self.settled_groups()  # the deletion finishers are done


@pytest.fixture
def rollout_env(rollout_stack, rollout_images, tmp_path, request):
    """A fresh environment name on the shared stack; its groups are destroyed after the test."""
    name = "t%d" % (abs(hash(request.node.name)) % 10 ** 6)
    env = Env(rollout_stack, rollout_images, name, tmp_path)
    yield env
    env.clean()


CONTROLLER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
cfg = json.loads(sys.argv[2])
platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), "catalog", cfg["environment"])
res = engine.deploy(cfg["version"], cfg["image"], cfg["size"], cfg["strategy"], cfg.get("settings"))
print(json.dumps({"state": res.state, "msg": res.msg}))
"""


def start_controller(env, key, size=2, strategy="rolling", settings=None):
    """A real child process running a rollout (the controller we may SIGKILL)."""
    image = env.images[key]
    cfg = {"infra": env.infra, "image_store": env.images["store"], "store": env.store_dir,
           "environment": env.environment, "version": image["version"], "image": image["ref"],
           "size": size, "strategy": strategy, "settings": settings}
    return subprocess.Popen([sys.executable, "-c", CONTROLLER, str(COLLECTIONS), json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_process(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture
def scratch_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="phx-ro-"))
    yield path
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    subprocess.run(["rm", "-rf", str(path)], check=False)
