"""Benchmark (named k8s, not kubernetes: bench/ is on sys.path and would shadow the
kubernetes client package): rollouts on the Kubernetes platform against ONE real k8s-local
cluster that this module starts and destroys (tests/pytest/fixtures_k8s_local.py
TempK8sStack: etcd, kube-apiserver, controller-manager, scheduler, containerd,
kubelet and the gateway, on loopback).  Images are the tests' static C hello
server pushed by digest into the stack's dev registry, plus a faulty variant
that answers 500 on everything but /healthz.

Every engine action runs in a child controller process (as ``ansible-playbook``
would), which reports its wall time, its events and its own peak RSS (VmHWM).

Rows: cluster cold start; the floor (a plain 10-pod Deployment made with the
kubernetes client outside the engine, start to all Ready), the engine's 10-pod
one-batch rolling deploy replacing a live 10-pod release, and their ratio;
rolling / blue-green / canary / rollback under load through the gateway (failed
requests, requests sent, achieved rate); detection to full rollback of a failing
canary (1 s analysis interval, from the release's event times); a 50-pod
rollout's wall time and controller peak RSS.
Run under ``flock /tmp/phoenix-k8s.lock`` with the environment of scripts/env.sh.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run import collections_root  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = collections_root()  # this checkout, also for the child controllers
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(ROOT / "tests" / "pytest"))

ARTIFACT = "catalog"
ANALYSIS = {"max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 2}
ONE_BATCH = {"max_surge": "100%", "max_unavailable": 0}
LOAD_THREADS = 3

CONTROLLER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import KubernetesPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
with open(sys.argv[2]) as handle:
    cfg = json.load(handle)


def peak_rss_mb():
    # VmHWM: this process's own peak resident set (ru_maxrss would carry the parent's RSS at fork)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0


platform = KubernetesPlatform(cfg["infra"], drain_timeout=1, prestop_seconds=1, verify_timeout=120)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), cfg["artifact"], cfg["environment"])
start = time.time()
if cfg["action"] == "rollback":
    res = engine.rollback()
else:
    res = engine.deploy(cfg["version"], cfg["image"], cfg["size"], cfg["strategy"], cfg.get("settings"),
                        cfg.get("analysis"))
print(json.dumps({"seconds": time.time() - start, "state": res.state, "msg": res.msg,
                  "events": res.events, "peak_rss_mb": peak_rss_mb()}, default=str))
"""

FAULTY_C = r"""
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
  char reply[256], buf[1024];
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080)};
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) return 1;
  for (;;) {
    int c = accept(s, 0, 0);
    if (c < 0) continue;
    ssize_t got = read(c, buf, sizeof buf - 1);
    buf[got > 0 ? got : 0] = 0;
    int healthz = strncmp(buf, "GET /healthz", 12) == 0;
    int n = snprintf(reply, sizeof reply, "HTTP/1.0 %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: 6\r\n\r\n%s\n", healthz ? "200 OK" : "500 Internal Server Error",
                     healthz ? "ok   " : "fault");
    write(c, reply, n);
    close(c);
  }
}
"""


def slowest(events, count=3):
    """The ``count`` longest gaps between a release's events, with the message that opened each."""
    steps = [(float(e["at"]), e["message"]) for e in events]
    gaps = sorted(((b[0] - a[0], a[1]) for a, b in zip(steps, steps[1:])), reverse=True)[:count]
    return "; ".join("%.2fs after %s" % (d, m[:80]) for d, m in gaps)


class Bench:
    def __init__(self):
        from fixtures_k8s_local import TempK8sStack
        self.stack = TempK8sStack()
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="phx-bk8s-"))  # 0700: the controller config holds the token
        self.store = self.work / "releases"
        self.builds = 0
        self.peak = {}

    # ------------------------------------------------------------------ cluster
    def cold_start(self):
        """Seconds from `pulumi up` start until every component runs, the gateway's
        processes run, the API server answers /readyz and the node is Ready."""
        from fixtures_infra_local import pid_alive, read_pid
        from fixtures_k8s_local import COMPONENTS
        from fixtures_k8s_rollout import admin_client
        from kubernetes import client
        t0 = time.monotonic()
        self.stack.up()
        up_seconds = time.monotonic() - t0
        self.infra = self.stack.outputs()
        self.api = admin_client(self.stack)
        core = client.CoreV1Api(self.api)
        node = "phoenix-%s" % self.stack.name
        gateway = {"gateway-controller/daemon.pid": "gateway_controller", "gateway-haproxy/haproxy.pid": "haproxy"}
        deadline, state = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            try:
                comps = sorted(self.stack.live_pids()) == sorted(COMPONENTS)
                gw = all(pid_alive(read_pid(self.stack.state_dir / rel), hint) for rel, hint in gateway.items())
                ready = self.api.call_api("GET", self.api.configuration.host + "/readyz", _request_timeout=5).status == 200
                conds = {c.type: c.status for c in core.read_node(node).status.conditions or []}
                state = (comps, gw, ready, conds.get("Ready"))
                if comps and gw and ready and conds.get("Ready") == "True":
                    return time.monotonic() - t0, up_seconds
            except Exception as exc:  # noqa: BLE001 - not up yet; the deadline bounds it
                state = repr(exc)[:200]
            time.sleep(0.1)
        raise RuntimeError("cluster not Ready 300 s after pulumi up started: %s" % (state,))

    def image(self, repo="hello", source=None):
        from fixtures_k8s_local import HELLO_C, build_hello_image, push
        self.builds += 1
        oci = build_hello_image(self.work / ("img-%d" % self.builds), source or HELLO_C)
        return push(oci, self.infra["registries"]["dev"], "phoenix-it/" + repo)

    @property
    def environment(self):
        route = self.infra["kubernetes"]["gateway"]["routes"][ARTIFACT]
        return route[len(ARTIFACT) + 1:]

    @property
    def url(self):
        return self.infra["kubernetes"]["gateway"]["url"][ARTIFACT]

    # ------------------------------------------------------------------ engine (child process)
    def engine(self, action="deploy", **cfg):
        cfg = dict(cfg, infra=self.infra, store=str(self.store), artifact=ARTIFACT,
                   environment=self.environment, action=action)
        path = self.work / "controller.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(cfg, handle)
        try:
            proc = subprocess.run([sys.executable, "-c", CONTROLLER, str(COLLECTIONS), str(path)],
                                  capture_output=True, text=True, timeout=900, check=False)
        finally:
            path.unlink()
        if proc.returncode != 0:
            raise RuntimeError("controller failed: %s" % proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def deploy(self, version, image, size, strategy="rolling", settings=None, analysis=None, expect="live"):
        res = self.engine(version=version, image=image, size=size, strategy=strategy, settings=settings,
                          analysis=analysis)
        if expect and res["state"] != expect:
            raise RuntimeError("%s deploy of %s (%d pods): %s, not %s: %s"
                               % (strategy, version, size, res["state"], expect, res["msg"]))
        return res

    # ------------------------------------------------------------------ floor
    def floor(self, image, size):
        """A plain Deployment of ``size`` hello pods (readiness like the engine's:
        HTTP /healthz every 1 s), created with the kubernetes client outside the
        engine; seconds from create until all ``size`` are Ready.  Deleted after."""
        from kubernetes import client
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        ns = self.infra["kubernetes"]["namespace"]
        labels = {"app": "bench-floor"}
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench-floor", "labels": labels},
                "spec": {"replicas": size, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {
                             "terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "hello", "image": image, "ports": [{"containerPort": 8080}],
                                             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                                "periodSeconds": 1}}]}}}}
        t0 = time.monotonic()
        apps.create_namespaced_deployment(ns, body)
        try:
            deadline = t0 + 300
            while (apps.read_namespaced_deployment("bench-floor", ns).status.ready_replicas or 0) < size:
                if time.monotonic() > deadline:
                    raise RuntimeError("floor: %d pods not Ready after 300 s" % size)
                time.sleep(0.1)
            return time.monotonic() - t0
        finally:
            apps.delete_namespaced_deployment("bench-floor", ns)
            deadline = time.monotonic() + 120
            while core.list_namespaced_pod(ns, label_selector="app=bench-floor").items:
                if time.monotonic() > deadline:
                    raise RuntimeError("floor pods not gone 120 s after delete")
                time.sleep(0.2)

    @staticmethod
    def old_group(res):
        """The group the rollout destroyed (from its ``destroyed <group>`` event)."""
        return next(e["group"] for e in res["events"] if e["message"].startswith("destroyed "))

    def gone_after(self, group, limit=120):
        """Seconds until ``group``'s Deployment and pods are gone (from now)."""
        from kubernetes import client
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        ns = self.infra["kubernetes"]["namespace"]
        t0 = time.monotonic()
        while apps.list_namespaced_deployment(ns, field_selector="metadata.name=" + group).items or \
                core.list_namespaced_pod(ns, label_selector="phoenix.deploy/group=" + group).items:
            if time.monotonic() - t0 > limit:
                raise RuntimeError("%s still present %d s after the rollout" % (group, limit))
            time.sleep(0.1)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ load
    def under_load(self, label, action):
        """Run ``action`` with LOAD_THREADS bounded load loops (fresh connections,
        no pause) through the gateway; returns (result, failed, sent, rate, detail)."""
        from fixtures_rollout import LoadGen
        loads = [LoadGen(self.url, path="/", max_seconds=600, pause=0) for _i in range(LOAD_THREADS)]
        t0 = time.monotonic()
        for load in loads:
            load.__enter__()
        try:
            time.sleep(0.5)
            res = action()
            time.sleep(0.5)
        finally:
            for load in loads:
                load.stop()
        elapsed = time.monotonic() - t0
        sent = sum(load.total for load in loads)
        failed = sum(load.failed for load in loads)
        failures = [f for load in loads for f in load.failures][:5]
        return res, failed, sent, sent / elapsed, "%s: %d requests in %.1f s, %d failed %s" % (
            label, sent, elapsed, failed, failures)

    # ------------------------------------------------------------------ the run
    def run(self):
        rows = []
        cold, up_seconds = self.cold_start()
        rows.append({"name": "cluster cold start (pulumi up to all Ready)", "value": round(cold, 2),
                     "unit": "s", "goal": "<= 60", "detail": "pulumi up returned after %.2f s" % up_seconds})
        a, b = self.image(), self.image()
        faulty = self.image("faulty", FAULTY_C)

        # floor vs the engine's 10-pod rolling deploy replacing a live 10-pod release
        self.deploy("1.0.0+5eed0f1.b1", a, 10, settings=ONE_BATCH)
        floor_before = self.floor(b, 10)
        t10 = self.deploy("1.0.1+5eed0f1.b2", b, 10, settings=ONE_BATCH)
        # the rollout ends once the old group's deletion is accepted; the cluster removes
        # its pods afterwards: measure that, and let it finish before the second floor
        # run so the floor is never taken beside terminating pods
        cleanup = self.gone_after(self.old_group(t10))
        floor_after = self.floor(a, 10)
        floor = min(floor_before, floor_after)
        rows.append({"name": "floor: plain Deployment, 10 pods to Ready", "value": round(floor, 2),
                     "unit": "s", "goal": "-",
                     "detail": "min of %.2f s (before) and %.2f s (after the rollout)" % (floor_before, floor_after)})
        rows.append({"name": "rolling deploy 10 pods (one batch, replaces 10 live)",
                     "value": round(t10["seconds"], 2), "unit": "s", "goal": "-",
                     "detail": "slowest steps: %s; the cluster removed the old group's pods %.2f s after the "
                               "rollout returned (preStop + grace period, garbage collector)"
                               % (slowest(t10["events"]), cleanup)})
        rows.append({"name": "rollout wall / floor (10 pods)", "value": round(t10["seconds"] / floor, 3),
                     "unit": "ratio", "goal": "<= 1.2"})

        # strategies under load through the gateway (5 pods)
        details, sent_total, rates = [], 0, []
        steps = {"steps": [{"set_weight": 20}, {"pause": {"duration": 2}}, {"set_weight": 50},
                           {"pause": {"duration": 2}}]}
        plan = [
            ("rolling", lambda: self.deploy("1.1.0+5eed0f1.b3", a, 5, "rolling",
                                            {"max_surge": 1, "max_unavailable": 0})),
            ("blue/green", lambda: self.deploy("1.2.0+5eed0f1.b4", b, 5, "blue_green")),
            ("canary", lambda: self.deploy("1.3.0+5eed0f1.b5", a, 5, "canary", steps, ANALYSIS)),
            ("rollback", self._rollback),
        ]
        for label, action in plan:
            _res, failed, sent, rate, detail = self.under_load(label, action)
            details.append(detail)
            sent_total += sent
            rates.append(rate)
            rows.append({"name": "%s under load: failed requests" % label, "value": failed, "unit": "req",
                         "goal": "0", "detail": detail})
        rows.append({"name": "requests sent through the gateway (4 rollouts)", "value": sent_total,
                     "unit": "req", "goal": "-"})
        rows.append({"name": "achieved load rate (lowest of the 4)", "value": round(min(rates), 1),
                     "unit": "req/s", "goal": ">= 150",
                     "detail": "per rollout %s (%d loops, fresh connections)"
                               % (", ".join("%.0f" % r for r in rates), LOAD_THREADS)})

        # detection -> full rollback of a failing canary, 1 s analysis interval, under load
        res, _failed, _sent, _rate, detail = self.under_load("failing canary", lambda: self.deploy(
            "1.4.0-fault+5eed0f1.b6", faulty, 5, "canary",
            {"steps": [{"set_weight": 20}, {"pause": {"duration": 60}}]},
            {"max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 1},
            expect="rolled_back"))
        fail = next(e for e in res["events"] if e.get("verdict") == "fail")
        detected = fail["at"]
        restored = next(e["at"] for e in res["events"]
                        if e["at"] >= detected and "has 100% of the traffic" in e["message"])
        rows.append({"name": "detection to full rollback (1 s analysis interval)",
                     "value": round(float(restored) - float(detected), 3), "unit": "s", "goal": "<= 3",
                     "detail": "first failing verdict (%s) to the stable release at 100%%; %s; steps: %s"
                               % (fail["message"][:160], detail, slowest(res["events"], 6))})

        # the largest rollout that fits, from 50 down
        errors = []
        for size in (50, 40, 30, 20):
            try:
                big = self.deploy("2.0.%d+5eed0f1.b7" % size, b, size, "rolling", ONE_BATCH)
            except RuntimeError as exc:
                errors.append("%d pods: %s" % (size, str(exc)[:300]))
                continue
            note = ("; larger sizes failed: %s" % " | ".join(errors)) if errors else ""
            rows.append({"name": "rollout of %d pods (one batch): wall time" % size,
                         "value": round(big["seconds"], 2), "unit": "s", "goal": "-", "detail": note})
            rows.append({"name": "controller peak RSS (%d-pod rollout)" % size,
                         "value": round(big["peak_rss_mb"], 1), "unit": "MB", "goal": "<= 150",
                         "detail": "VmHWM of the child controller process" + note})
            break
        else:
            raise RuntimeError("no large rollout fitted: %s" % " | ".join(errors))
        return rows

    def _rollback(self):
        res = self.engine(action="rollback")
        if res["state"] != "live":
            raise RuntimeError("rollback: %s: %s" % (res["state"], res["msg"]))
        return res

    def cleanup(self):
        self.stack.cleanup()
        subprocess.run(["rm", "-rf", str(self.work)], check=False)


def run() -> list:
    bench = Bench()
    try:
        return bench.run()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
