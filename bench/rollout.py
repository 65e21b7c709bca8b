"""Benchmark: rollouts on the local platform (real HAProxy + supervisord).

A throwaway local stack (tests/pytest/fixtures_infra_local.py) and a tiny
stdlib HTTP service baked through the real image pipeline (``benchapp``: no
database, so 100 instances fit a small machine; /healthz, SIGTERM drain and
the baked ``error_rate`` fault like the catalog).  Every rollout runs in a
child controller process (as ``ansible-playbook`` would), which reports its
own wall time and peak RSS.

Rows: rollout wall time / physical floor (N=10), detection-to-full-rollback
time (1 s analysis interval), T(100)/T(10) at equal batch count, no-op
redeploy time, controller peak RSS during the 100-instance rollout.
Needs the environment of scripts/env.sh; ``python bench/rollout.py``.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".tools" / "collections"
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(ROOT / "tests" / "pytest"))

ARTIFACT = "benchapp"
APP = r'''"""benchapp: a tiny HTTP service for the rollout benchmark."""
import json, os, pathlib, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).resolve().parent
try:
    FAULT = json.loads((HERE / "fault.json").read_text()) or {}
except (OSError, ValueError):
    FAULT = {}
RATE = float(FAULT.get("error_rate") or 0)
draining = threading.Event()
count = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def reply(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(503 if draining.is_set() else 200, "ok")
        count[0] += 1
        if RATE and (count[0] % max(1, int(round(1 / RATE)))) == 0:
            return self.reply(500, "injected fault")
        return self.reply(200, "hello")


server = ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), int(os.environ["PORT"])), Handler)
server.daemon_threads = True
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
while not stop.wait(0.05):
    pass
draining.set()
server.shutdown()
server.server_close()
time.sleep(0.05)
'''

CONTROLLER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
cfg = json.loads(sys.argv[2])
platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), cfg["artifact"], "bench")
start = time.time()
res = engine.deploy(cfg["version"], cfg["image"], cfg["size"], cfg["strategy"], cfg.get("settings"),
                    cfg.get("analysis"))
print(json.dumps({"seconds": time.time() - start, "state": res.state, "msg": res.msg,
                  "changed": res.changed, "events": res.events, "release": res.release,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


class Bench:
    def __init__(self):
        from fixtures_infra_local import TempLocalStack
        from ansible_collections.phoenix.deploy.plugins.module_utils import images, targets
        self.images, self.targets = images, targets
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="phx-bro-"))
        self.stack = TempLocalStack(name="bro-%d" % (os.getpid() % 100000),
                                    block="127.25.%d.0/24" % (os.getpid() % 250 + 1),
                                    artifacts=(ARTIFACT,),
                                    extra_config={"phoenix-infra:health_check_interval": "200ms"})
        self.store = self.tmp / "images"
        self.releases = self.tmp / "releases"

    def bake(self, version, fault=None):
        source = self.tmp / "src"
        source.mkdir(exist_ok=True)
        (source / (ARTIFACT + ".py")).write_text(APP)
        req = self.images.BakeRequest(ARTIFACT, version, str(source), store=str(self.store),
                                      project_dir=str(ROOT),
                                      variables={"fault": fault} if fault else {})
        self.images.bake(req)
        return self.targets.resolve_image(ARTIFACT, version, None, str(self.store))

    def deploy(self, image, size, strategy="rolling", settings=None, analysis=None):
        cfg = {"infra": self.infra, "image_store": str(self.store), "store": str(self.releases),
               "artifact": ARTIFACT, "version": image["version"], "image": image["ref"],
               "size": size, "strategy": strategy, "settings": settings, "analysis": analysis}
        proc = subprocess.run([sys.executable, "-c", CONTROLLER, str(COLLECTIONS), json.dumps(cfg)],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError("controller failed: %s" % proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def physical_floor(self, image, size):
        """Start N instances straight through the driver and time start->healthy,
        then drain + stop them: what no controller can go below."""
        from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
        platform = LocalPlatform(self.infra, image_store=str(self.store), drain_timeout=5)
        start = time.time()
        platform.create_group(ARTIFACT, "floor", "f001", image["ref"], size, {})
        deadline = start + 120
        while platform.health("%s-floor-f001" % ARTIFACT).ready < size:
            if time.time() > deadline:
                raise RuntimeError("floor group did not get healthy")
            time.sleep(0.02)
        healthy = time.time() - start
        start = time.time()
        platform.drain_and_detach("%s-floor-f001" % ARTIFACT)
        platform.destroy("%s-floor-f001" % ARTIFACT)
        return healthy + (time.time() - start)

    def run(self):
        self.stack.up()
        self.infra = self.stack.outputs()
        v1 = self.bake("1.0.0+b0b0b0b.b1")
        v2 = self.bake("1.0.1+b0b0b0b.b2")
        bad = self.bake("1.0.2-fault+b0b0b0b.b3", fault={"error_rate": 0.5})
        one_batch = {"max_surge": "100%", "max_unavailable": 0}
        rows = []

        # N=10: wall time of a one-batch rolling replacement vs the floor
        self.deploy(v1, 10, settings=one_batch)
        floor = self.physical_floor(v2, 10)
        t10 = self.deploy(v2, 10, settings=one_batch)
        assert t10["state"] == "live", t10["msg"]
        rows.append({"name": "rollout wall / physical floor (N=10)",
                     "value": round(t10["seconds"] / floor, 3), "unit": "ratio", "goal": "<= 1.15",
                     "detail": "%.2fs vs floor %.2fs" % (t10["seconds"], floor)})

        # no-op redeploy of the live version
        noop = self.deploy(v2, 10, settings=one_batch)
        assert not noop["changed"], noop["msg"]
        rows.append({"name": "no-op redeploy (N=10)", "value": round(noop["seconds"], 3),
                     "unit": "s", "goal": "<= 3"})

        # detection -> full rollback, 1 s analysis interval, under load
        stop = threading.Event()
        url = self.infra["load_balancer"]["url"]

        def load():
            end = time.time() + 120
            while not stop.is_set() and time.time() < end:
                try:
                    urllib.request.urlopen(url, timeout=5).read()
                except Exception:  # noqa: BLE001 - the faulty canary answers 500
                    pass
        threads = [threading.Thread(target=load, daemon=True) for _i in range(4)]
        for t in threads:
            t.start()
        try:
            res = self.deploy(bad, 10, strategy="canary",
                              settings={"steps": [{"set_weight": 20}, {"pause": {"duration": 30}}]},
                              analysis={"max_error_rate": 0.05, "min_requests": 5, "interval": 1,
                                        "failure_limit": 1})
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert res["state"] == "rolled_back", res["msg"]
        detected = next(e["at"] for e in res["events"] if e.get("verdict") == "fail")
        restored = next(e["at"] for e in res["events"]
                        if "has 100% of the traffic" in e["message"])
        rows.append({"name": "detection to full rollback (1 s analysis interval)",
                     "value": round(restored - detected, 3), "unit": "s", "goal": "<= 3"})

        # T(100) / T(10) at equal batch count (one batch), and peak RSS at 100
        self.deploy(v1, 100, settings=one_batch)  # resize the live release to 100 first
        floor100 = self.physical_floor(v2, 100)
        t100 = self.deploy(v2, 100, settings=one_batch)
        assert t100["state"] == "live", t100["msg"]
        steps = [(e["at"], e["message"]) for e in t100["events"]]
        slowest = sorted(((b[0] - a[0], a[1]) for a, b in zip(steps, steps[1:])), reverse=True)[:3]
        rows.append({"name": "T(100) / T(10), one batch each", "value": round(
            t100["seconds"] / t10["seconds"], 3), "unit": "ratio", "goal": "<= 1.5",
            "detail": "%.2fs / %.2fs; physical floor at 100 is %.2fs (%.2fs at 10); slowest steps %s"
                      % (t100["seconds"], t10["seconds"], floor100, floor,
                         "; ".join("%.1fs %s" % (d, m[:60]) for d, m in slowest))})
        rows.append({"name": "controller peak RSS (100-instance rollout)",
                     "value": round(t100["peak_rss_mb"], 1), "unit": "MB", "goal": "<= 150"})
        return rows

    def cleanup(self):
        self.stack.cleanup()  # supervisord stops every program it runs
        subprocess.run(["chmod", "-R", "u+w", str(self.tmp)], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run() -> list:
    bench = Bench()
    try:
        return bench.run()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
