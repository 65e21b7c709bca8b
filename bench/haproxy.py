"""Benchmark: the local platform's load balancer under a faulty canary and
after a HAProxy crash (real HAProxy + supervisord, a throwaway stack and the
``benchapp`` service of bench/rollout.py).

Rows, all under a paced load of at most 150 requests/s through HAProxy:

* a canary answering 500 to every request (2 + 2 instances and the
  ``local`` inventory's analysis: max error rate 0.05, 20 requests, 5 s
  windows, 2 failures; once with the inventory's steps, 20 % first, once
  at 50 %): the share of requests that failed *for users* while it was
  deployed, analysed and rolled back (HAProxy retries failed safe requests
  on another server; analysis counts the canary's own errors);
* the same with a canary failing 10 % of its requests: still detected
  (rolled back by analysis), and what users saw;
* HAProxy SIGKILLed: time from the start of the restore (``pulumi up`` of the
  stack, as playbooks/infra.yml runs it) until requests are served again,
  and the failed requests after the restore returned (goal 0).

``python bench/haproxy.py`` prints the rows (environment of scripts/env.sh).
"""
import http.client
import json
import os
import threading
import time

from rollout import ARTIFACT, Bench

RATE = 150  # requests/s, the load bound
SIZE = 2  # instances per group, as the local inventory
ANALYSIS = {"max_error_rate": 0.05, "min_requests": 20, "interval": 5, "failure_limit": 2}
LOCAL_STEPS = {"steps": [{"set_weight": 20}, {"pause": {"duration": 20}}, {"set_weight": 50},
                         {"pause": {"duration": 20}}, {"set_weight": 100}]}
HALF_STEPS = {"steps": [{"set_weight": 50}, {"pause": {"duration": 60}}]}


class PacedLoad:
    """GETs through HAProxy at ``rate``/s in total (threads, fresh
    connections), each result recorded as (monotonic time, ok)."""

    def __init__(self, url, rate=RATE, threads=6, max_seconds=300):
        host, port = url.split("//")[1].rstrip("/").split(":")
        assert host.startswith("127."), "load only on loopback"
        self.host, self.port = host, int(port)
        self.period = threads / float(rate)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _i in range(threads)]
        self.max_seconds = max_seconds
        self.results = []
        self.stop_event = threading.Event()

    def _one(self):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": ARTIFACT})
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _loop(self):
        start = time.monotonic()
        next_at = start
        while not self.stop_event.is_set() and time.monotonic() - start < self.max_seconds:
            ok = self._one()
            self.results.append((time.monotonic(), ok))
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.monotonic()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def between(self, start, end=None):
        picked = [ok for at, ok in list(self.results) if at >= start and (end is None or at <= end)]
        return len(picked), picked.count(False)


def faulty_canary(bench, image, label, steps):
    with PacedLoad(bench.infra["load_balancer"]["url"]) as load:
        time.sleep(1)
        start = time.monotonic()
        res = bench.deploy(image, SIZE, strategy="canary", settings=steps, analysis=ANALYSIS)
        end = time.monotonic()
    total, failed = load.between(start, end)
    rate = 100.0 * failed / total if total else float("nan")
    return res, {"name": "%s: failed requests seen by users" % label, "value": round(rate, 3),
                 "unit": "%", "goal": "<= 0.5",
                 "detail": "%d of %d requests in %.1fs (%.0f req/s); %s: %s" % (
                     failed, total, end - start, total / (end - start), res["state"],
                     (res.get("release") or {}).get("reason") or res["msg"])}


def restart_recovery(bench):
    pidfile = os.path.join(str(bench.stack.state_dir), "haproxy", "haproxy.pid")
    with open(pidfile) as handle:
        pid = int(handle.readline())
    with PacedLoad(bench.infra["load_balancer"]["url"]) as load:
        time.sleep(2)
        killed = time.monotonic()
        os.kill(pid, 9)
        time.sleep(1)
        started = time.monotonic()
        bench.stack.up()
        returned = time.monotonic()
        time.sleep(5)
        end = time.monotonic()
    served = next((at for at, ok in load.results if ok and at > started), None)
    after, failed_after = load.between(returned, end)
    lost, failed_lost = load.between(killed, returned)
    return [
        {"name": "HAProxy SIGKILL: restore (pulumi up) until traffic is served again",
         "value": round(served - started, 3) if served else "never", "unit": "s", "goal": "<= 20",
         "detail": "pulumi up took %.2fs; %d of %d requests failed between the kill and its end"
                   % (returned - started, failed_lost, lost)},
        {"name": "HAProxy SIGKILL: failed requests after the restore returned",
         "value": failed_after, "unit": "req", "goal": "0",
         "detail": "%d requests in %.0fs after the restore" % (after, end - returned)},
    ]


def run() -> list:
    bench = Bench()
    try:
        bench.stack.up()
        bench.infra = bench.stack.outputs()
        v1 = bench.bake("1.0.0+b0b0b0b.b1")
        all_bad = bench.bake("1.0.3-fault100+b0b0b0b.b4", fault={"error_rate": 1.0})
        some_bad = bench.bake("1.0.4-fault10+b0b0b0b.b5", fault={"error_rate": 0.1})
        assert bench.deploy(v1, SIZE, settings={"max_surge": "100%", "max_unavailable": 0}
                            )["state"] == "live"
        rows = []
        for label, steps in (("local inventory steps (20 % first)", LOCAL_STEPS),
                             ("at 50 %", HALF_STEPS)):
            _res, row = faulty_canary(bench, all_bad, "100 %-error canary, " + label, steps)
            rows.append(row)
            res10, row10 = faulty_canary(bench, some_bad, "10 %-error canary, " + label, steps)
            rows.append({"name": "10 %%-error canary, %s: detected (rolled back)" % label,
                         "value": "yes" if res10["state"] == "rolled_back" else "no", "unit": "",
                         "goal": "yes", "detail": row10["detail"]})
            rows.append(row10)
        rows += restart_recovery(bench)
        return rows
    finally:
        bench.cleanup()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
