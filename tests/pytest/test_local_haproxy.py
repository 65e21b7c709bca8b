"""The local platform's HAProxy side, with real HAProxy, supervisord and
PostgreSQL (fixtures_rollout.py): what metrics count, retries that hide a bad
canary from users but not from analysis, and traffic coming back after
HAProxy is killed and restored by the infra stack."""
import http.client
import json
import os
import re
import signal
import sys
import time

import pytest

from fixtures_rollout import LoadGen
from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from fixtures_infra_local import pid_alive, read_pid, wait_for

# a stand-in instance: /healthz answers 200, every other request gets what
# FAULT_MODE says (close: the connection is closed without a response)
BAD_APP = r'''#!%s
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
MODE = os.environ.get("FAULT_MODE", "close")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/healthz" or MODE == "ok":
            status = 200
        elif MODE == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        else:
            status = int(MODE)
        body = b"x\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

server = ThreadingHTTPServer((os.environ.get("BIND", "127.0.0.1"), int(os.environ["PORT"])), Handler)
server.daemon_threads = True
server.serve_forever()
''' % sys.executable


def start_fake_group(env, tmp_path, mode, size=1):
    """A server group of stand-in instances run by supervisord and registered
    in HAProxy through the driver, like any group (weight 0 until set)."""
    app = tmp_path / "badapp"
    app.mkdir(exist_ok=True)
    entry = app / "run"
    entry.write_text(BAD_APP)
    entry.chmod(0o755)
    group = "catalog-%s-fake%s" % (env.environment, mode)
    env.platform._start_instances("catalog", env.environment, "fake" + mode, group,
                                  "fake@sha256:" + "0" * 64, {"entrypoint": str(entry),
                                                              "path": str(app)},
                                  {"FAULT_MODE": mode}, list(range(1, size + 1)))
    assert wait_for(lambda: env.platform.health(group).ready == size, 30), \
        env.platform.health(group).summary()
    return group


def get(url, method="GET", path="/items"):
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=b"x" if method == "POST" else None,
                     headers={"Host": "catalog"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["close", "500"])
def test_metrics_count_failed_attempts_that_users_did_not_see(rollout_env, tmp_path, mode):
    """An instance that closes connections (or answers 500) shows up as
    errors in metrics, although HAProxy retried those GETs on the stable group
    and users saw them succeed; a POST is not retried (users see it)."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    stable = env.history().live_release().group
    bad = start_fake_group(env, tmp_path, mode)
    env.platform.traffic.set_weights({stable: 50, bad: 50})
    start = env.platform.clock.now()  # the metrics window starts here
    statuses = [get(env.url) for _i in range(120)]
    end = env.platform.clock.now()
    metrics = env.platform.metrics.metrics(bad, start, end)
    stable_metrics = env.platform.metrics.metrics(stable, start, end)
    print(mode, "users:", {s: statuses.count(s) for s in set(statuses)}, "bad:", metrics,
          "stable:", stable_metrics)
    assert statuses.count(200) == len(statuses), statuses  # retried on the stable group
    assert metrics.requests >= 20 and metrics.errors_5xx == metrics.requests, metrics
    assert stable_metrics.errors_5xx == 0 and stable_metrics.requests >= len(statuses)
    # a non-idempotent method is not retried on another server after a response error
    env.platform.set_weights({stable: 0, bad: 100})
    posts = [get(env.url, "POST") for _i in range(5)]
    assert all(s != 200 for s in posts), posts
    env.platform.set_weights({stable: 100, bad: 0})


def test_window_with_a_counter_reset_is_discarded_not_clamped(rollout_env):
    """A server removed and added again within a window (its counters restart
    at 0) gives no data for that window, instead of a count clamped at 0."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    group = env.history().live_release().group
    member = env.platform._group_meta(group)[0]
    weight = env.servers()[member["instance"]]["weight"]
    for _i in range(40):
        assert get(env.url) == 200
    start = env.platform.clock.now()
    env.platform.metrics.metrics(group, start, start)  # the window starts, counters are > 0
    # HAProxy's own runtime API (not the driver): remove the server and add it back
    srv = "be_catalog/" + member["instance"]
    env.platform.api.batch([
        ("set", "server", srv, "state", "maint"), ("del", "server", srv),
        ("add", "server", srv, "%s:%d" % (member["address"], member["port"]), "check",
         "weight", str(weight)), ("enable", "health", srv), ("enable", "server", srv)])
    for _i in range(10):
        get(env.url)
    end = env.platform.clock.now()
    metrics = env.platform.metrics.metrics(group, start, end)
    assert metrics.requests == 0 and metrics.errors_5xx == 0 and metrics.latency_ms is None, (
        metrics, start, end, env.platform.history.groups[group][-4:])
    # the next window counts again
    for _i in range(10):
        assert get(env.url) == 200
    assert env.platform.metrics.metrics(group, end, env.platform.clock.now()).requests >= 10


def test_faulty_canary_is_rolled_back_while_users_see_almost_no_errors(rollout_env):
    """A canary failing 50 % of its requests at 50 % of the traffic: analysis
    sees its errors and rolls it back; retries on the stable group keep what
    users see far below what the canary did."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    with LoadGen(env.url, pause=0.01) as load:
        res = env.deploy("faulty", size=2, strategy="canary", analysis={
            "max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 2},
            settings={"steps": [{"set_weight": 50}, {"pause": {"duration": 30}}]})
    print("faulty canary:", load.summary(), "| reason:", res.release["reason"])
    assert res.state == "rolled_back", res.msg
    reason = res.release["reason"]
    assert "error_rate" in reason and "> max 0.05" in reason, reason
    rate = float(re.search(r"error_rate ([0-9.]+)", reason).group(1))
    assert rate >= 0.3, reason  # the canary's own rate (0.5), not what users saw
    assert load.total > 100 and load.failed <= max(2, 0.01 * load.total), load.summary()
    assert env.history().live_release().version == env.images["v1"]["version"]


def test_canary_failing_ten_percent_is_still_detected(rollout_env, shared_bake_store, bake):
    """Retries keep a 10 %-error canary's failures from users; analysis still
    sees its own error rate (about 0.1) and rolls it back."""
    env = rollout_env
    version = "1.3.0-fault10+5eed0f1.b13"
    bake(shared_bake_store, version, fault={"error_rate": 0.1})
    env.images["fault10"] = targets.resolve_image("catalog", version, None, str(shared_bake_store))
    assert env.deploy("v1", size=2).state == "live"
    with LoadGen(env.url, pause=0.005) as load:
        res = env.deploy("fault10", size=2, strategy="canary", analysis={
            "max_error_rate": 0.05, "min_requests": 20, "interval": 2, "failure_limit": 2},
            settings={"steps": [{"set_weight": 50}, {"pause": {"duration": 40}}]})
    print("10 % canary:", load.summary(), "| reason:", res.release["reason"])
    assert res.state == "rolled_back", res.msg
    rate = float(re.search(r"error_rate ([0-9.]+)", res.release["reason"]).group(1))
    assert 0.06 <= rate <= 0.2, res.release["reason"]
    assert load.total > 100 and load.failed <= max(2, 0.01 * load.total), load.summary()


def test_haproxy_killed_traffic_returns_after_restore(rollout_env):
    """SIGKILL HAProxy under load, run the infra restore (`pulumi up` of the
    stack, as playbooks/infra.yml does): the live group's servers come back at
    their recorded weights and no request fails after the restore returned."""
    env = rollout_env
    assert env.deploy("v1", size=2).state == "live"
    assert env.deploy("v2", size=2, strategy="canary", settings={
        "steps": [{"set_weight": 25}, {"pause": {}}]}).state == "paused"
    servers = {n: (s["weight"], s["admin"]) for n, s in env.servers().items()}
    weights = {n: g.weight for n, g in env.groups().items()}
    assert sorted(weights.values()) == [25, 75], weights
    pidfile = os.path.join(env.stack.state_dir, "haproxy", "haproxy.pid")
    pid = read_pid(pidfile)
    with LoadGen(env.url, pause=0.005) as load:
        assert wait_for(lambda: load.ok > 20, 10)
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(pid, "haproxy"), 10)
        assert wait_for(lambda: load.failed > 0, 10)  # users notice
        started = time.monotonic()
        env.stack.up()
        restore = time.monotonic() - started
        ok, failed = load.ok, load.failed
        time.sleep(3)
    print("restore %.2fs;" % restore, load.summary())
    assert load.ok - ok > 50, load.summary()
    assert load.failed == failed, load.summary()  # 0 failed after the restore returned
    assert {n: (s["weight"], s["admin"]) for n, s in env.servers().items()} == servers
    assert {n: g.weight for n, g in env.groups().items()} == weights
    path = env.infra["load_balancer"].get("server_record") or os.path.join(
        env.stack.state_dir, "haproxy", "servers.json")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path) as handle:
        record = json.load(handle)["backends"]["be_catalog"]
    assert {n: s["weight"] for n, s in record.items() if n in servers} == \
        {n: w for n, (w, _a) in servers.items()}
    env.engine().abort()  # back to the stable group; the fixture cleans up
