"""Benchmark: rollouts on the local platform (real HAProxy + supervisord).

A throwaway local stack (tests/pytest/fixtures_infra_local.py) and a tiny
stdlib HTTP service baked through the real image pipeline (``benchapp``: no
database, so 100 instances fit a small machine; /healthz, SIGTERM drain and
the baked ``error_rate`` fault like the catalog).  Every rollout runs in a
child controller process (as ``ansible-playbook`` would), which reports its
own wall time and peak RSS.

Rows: rollout wall time / floor at N=10 and N=100 (one batch each; the
floor is the same N instances started in parallel outside the engine with
Popen and waited healthy), detection-to-full-rollback time (1 s analysis
interval), no-op redeploy time, controller peak RSS during the 100-instance
rollout, and how long after the 100-instance rollout returned its old group
was gone (the driver's deletion finisher removes it; the floor after the
rollout is measured only then, never beside stopping instances).
Needs the environment of scripts/env.sh; ``python bench/rollout.py``.
"""
import http.client
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run import collections_root  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = collections_root()  # this checkout, also for the child controllers
sys.path.insert(0, str(COLLECTIONS))
sys.path.insert(0, str(ROOT / "tests" / "pytest"))

ARTIFACT = "benchapp"
APP = r'''"""benchapp: a tiny HTTP service for the rollout benchmark."""
import json, os, pathlib, signal, socketserver, sys, threading, time
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


class Server(ThreadingHTTPServer):
    def server_bind(self):  # no reverse DNS lookup (socket.getfqdn): see catalog.Server.server_bind
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


server = Server((os.environ.get("BIND", "127.0.0.1"), int(os.environ["PORT"])), Handler)
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


def peak_rss_mb():
    # VmHWM: the peak resident set of this process's own memory.  Not ru_maxrss: Linux carries the
    # RSS of the parent at fork into it across exec, so it showed the size of the bench process
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0


platform = LocalPlatform(cfg["infra"], image_store=cfg["image_store"], drain_timeout=5)
engine = Rollout(platform, FileReleaseStore(cfg["store"]), cfg["artifact"], "bench")
start = time.time()
res = engine.deploy(cfg["version"], cfg["image"], cfg["size"], cfg["strategy"], cfg.get("settings"),
                    cfg.get("analysis"))
print(json.dumps({"seconds": time.time() - start, "ended": time.time(), "state": res.state, "msg": res.msg,
                  "changed": res.changed, "events": res.events, "release": res.release,
                  "peak_rss_mb": peak_rss_mb(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots) -> dict:
    """CPU seconds (user + system) used so far by each process tree in
    ``roots`` ({name: pid}), counting the children it has reaped (which is
    how a stopped instance's time stays counted: in supervisord's or the
    bench's ``cutime``).  A root's own time is split from its children's."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry)] = (int(fields[1]), [int(f) / TICK for f in fields[11:15]])
    kids = {}
    for pid, (ppid, _times) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out = {}
    for name, root in roots.items():
        if root not in table:
            continue
        utime, stime, cutime, cstime = table[root][1]
        out[name] = utime + stime
        todo, children = list(kids.get(root, [])), cutime + cstime
        while todo:
            pid = todo.pop()
            children += sum(table[pid][1])
            todo += kids.get(pid, [])
        out[name + " children"] = children
    return out


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

    @staticmethod
    def old_group(result):
        """The group the rollout destroyed (its ``destroyed <group>`` event), or None."""
        return next((e["group"] for e in result["events"] if e["message"].startswith("destroyed ")), None)

    def gone_after(self, result, limit=120):
        """Seconds from the controller's return until the last conf of the
        group it destroyed is gone from supervisord's include dir (polled)."""
        if self.old_group(result) is None:
            return 0.0
        prefix = self.old_group(result) + "."
        include = self.infra["instance_manager"]["include_dir"]
        while [f for f in os.listdir(include) if f.startswith(prefix) and f.endswith(".conf")]:
            if time.time() - result["ended"] > limit:
                raise RuntimeError("%s still has confs %d s after the rollout" % (prefix, limit))
            time.sleep(0.02)
        return time.time() - result["ended"]

    def parallel_floor(self, image, size):
        """The physical floor at ``size``: the same instances (the image's
        entrypoint, its env, the stack's loopback address) started in parallel
        straight with Popen, outside the engine, supervisord and HAProxy, and
        waited until every /healthz answers 200.  Returns (seconds to all
        healthy, seconds to stop them all with SIGTERM)."""
        address = self.infra["network"]["address"]
        first, last = (int(p) for p in self.infra["network"]["port_range"])
        ports = []
        for port in range(last, first - 1, -1):  # from the top: the engine allocates from the bottom
            if len(ports) == size:
                break
            with socket.socket() as sock:
                try:
                    sock.bind((address, port))
                except OSError:
                    continue
            ports.append(port)
        if len(ports) < size:
            raise RuntimeError("only %d free ports for the floor" % len(ports))
        entry = os.path.join(image["path"], "rootfs", "opt", "phoenix", ARTIFACT, "bin", "run")
        base = {"PATH": "/usr/bin:/bin", "BIND": address, "IMAGE_DIR": image["path"]}
        procs = []
        start = time.time()
        try:
            for port in ports:
                procs.append(subprocess.Popen([entry], env=dict(base, PORT=str(port)),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            pending, deadline = set(ports), start + 120
            while pending:
                for port in sorted(pending):
                    try:
                        conn = http.client.HTTPConnection(address, port, timeout=1)
                        conn.request("GET", "/healthz")
                        if conn.getresponse().status == 200:
                            pending.discard(port)
                        conn.close()
                    except (OSError, http.client.HTTPException):
                        pass
                if time.time() > deadline:
                    raise RuntimeError("%d floor instances not healthy after 120s" % len(pending))
                if pending:
                    time.sleep(0.02)
            healthy = time.time() - start
        finally:
            stop = time.time()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        return healthy, time.time() - stop

    @staticmethod
    def floor_row(size, result, floors, smaller=None):
        """Rollout wall / floor at ``size``.  The floor is the smaller of two
        measurements (before and after the rollout, each with ``size`` other
        instances running), so a slow floor never flatters the ratio; the
        rollout's stop of the old group counts against it (the detail also
        gives the ratio to start + stop)."""
        healthy, stopped = min(f[:2] for f in floors)
        steps = [(e["at"], e["message"]) for e in result["events"]]
        slowest = sorted(((b[0] - a[0], a[1]) for a, b in zip(steps, steps[1:])), reverse=True)[:3]
        detail = ("%.2fs vs floor %.2fs (start to all healthy; floors measured %s); stopping them "
                  "%.2fs (wall / (start + stop) %.2f); slowest steps %s"
                  % (result["seconds"], healthy, " and ".join("%.2fs" % f[0] for f in floors),
                     stopped, result["seconds"] / (healthy + stopped),
                     "; ".join("%.2fs %s" % (d, m[:60]) for d, m in slowest)))
        if smaller is not None:
            detail += "; T(%d)/T(10) %.2f" % (size, result["seconds"] / smaller["seconds"])
        if "cpu" in result and len(floors[0]) > 2:  # CPU seconds: robust where the machine is shared
            floor_cpu = min(floors, key=lambda f: f[0])[2]
            detail += ("; CPU seconds: floor %.2f (its %d instances started, polled and stopped %.2f, "
                       "the other group %.2f, HAProxy %.2f), rollout %.2f (instances, new ones started "
                       "and old ones stopped, %.2f, supervisord %.2f, HAProxy %.2f, controller process %.2f)"
                       % (sum(floor_cpu.values()), size, floor_cpu["bench"], floor_cpu["instances"],
                          floor_cpu["haproxy"], sum(result["cpu"].values()), result["cpu"]["instances"],
                          result["cpu"]["supervisord"], result["cpu"]["haproxy"], result["cpu"]["bench"]))
        return {"name": "rollout wall / floor (N=%d, one batch)" % size,
                "value": round(result["seconds"] / healthy, 3), "unit": "ratio",
                "goal": "<= 1.15", "detail": detail}

    def cpu(self) -> dict:
        """CPU seconds so far: the stack's HAProxy, supervisord itself, the
        instances (supervisord's children, reaped ones too) and this bench
        process's children (floor instances, controllers)."""
        got = cpu_seconds({"haproxy": self.stack.pid("haproxy/haproxy.pid"),
                           "supervisord": self.stack.pid("supervisor/supervisord.pid"),
                           "bench": os.getpid()})
        return {"haproxy": got["haproxy"] + got["haproxy children"], "supervisord": got["supervisord"],
                "instances": got["supervisord children"], "bench": got["bench"] + got["bench children"]}

    def measured(self, call, *args, **kwargs):
        """``call``'s result with the CPU seconds used meanwhile, per part."""
        before = self.cpu()
        result = call(*args, **kwargs)
        after = self.cpu()
        return result, {k: after[k] - before[k] for k in after}

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
        floor10 = self.parallel_floor(v2, 10)
        t10 = self.deploy(v2, 10, settings=one_batch)
        assert t10["state"] == "live", t10["msg"]
        self.gone_after(t10)
        rows.append(self.floor_row(10, t10, [floor10, self.parallel_floor(v1, 10)]))

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

        # N=100: the 100-instance figure is wall / floor at 100 (the machine's
        # process-start limit is in both); peak RSS of that controller
        self.gone_after(self.deploy(v1, 100, settings=one_batch))  # 100 live instances first
        floor100, cpu = self.measured(self.parallel_floor, v2, 100)
        floor100 += (cpu,)
        t100, cpu = self.measured(self.deploy, v2, 100, settings=one_batch)
        t100["cpu"] = cpu
        assert t100["state"] == "live", t100["msg"]
        gone = self.gone_after(t100)
        after, cpu = self.measured(self.parallel_floor, v1, 100)
        rows.append(self.floor_row(100, t100, [floor100, after + (cpu,)], t10))
        rows.append({"name": "old instances gone after return (N=100)", "value": round(gone, 2),
                     "unit": "s", "goal": "-",
                     "detail": "from the controller's return until the last conf of %s left the include "
                               "dir (the deletion finisher: members stopped, programs removed)"
                               % self.old_group(t100)})
        rows.append({"name": "controller peak RSS (100-instance rollout)",
                     "value": round(t100["peak_rss_mb"], 1), "unit": "MB", "goal": "<= 150",
                     "detail": "VmHWM of the controller process; its ru_maxrss %.1f MB also holds the "
                               "bench process's RSS at fork" % t100["ru_maxrss_mb"]})
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
