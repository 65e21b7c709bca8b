"""Restarts of the local platform's own processes, with real supervisord,
HAProxy, PostgreSQL and catalog instances (fixtures_rollout.py): supervisord
is SIGKILLed under load while a live group runs, `pulumi up` restores it."""
import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from fixtures_infra_local import pid_alive, wait_for
from fixtures_rollout import Env, LoadGen


def _proc(pid):
    """(state, ppid, environ) of pid, or None."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return stat[0], int(stat[1]), env


def _ancestors(pid):
    seen = []
    while pid > 1 and (info := _proc(pid)) is not None and len(seen) < 64:
        pid = info[1]
        seen.append(pid)
    return seen


def supervised(sock):
    """Live processes started by a supervisord on unix socket ``sock``:
    {pid: program name} (supervisord puts its URL into every program's env)."""
    url = f"unix://{sock}".encode()
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _proc(int(entry))) is not None:
            state, _ppid, env = info
            if env.get(b"SUPERVISOR_SERVER_URL") == url and state != "Z":
                out[int(entry)] = env.get(b"SUPERVISOR_PROCESS_NAME", b"?").decode()
    return out


def listeners(address, port):
    """Socket inodes listening on address:port (IPv4), from /proc/net/tcp."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(address.split("."))), port)
    inodes = []
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            inodes.append(f[9])
    return inodes


def socket_owner(inode):
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry)
            except OSError:
                pass
    return None


def get(url, path="/items"):
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "catalog"})
        return conn.getresponse().status
    finally:
        conn.close()


def weights(env):
    state = env.platform.api.servers_state("be_catalog")
    return {n: s["weight"] for n, s in state.items() if n.startswith("catalog-%s-" % env.environment)}


def restore_log(stack):
    """The restore's summary line in supervisord's log (timings of its rounds)."""
    text = (stack.state_dir / "supervisor" / "supervisord.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.startswith("phoenix: restore")][-1:]


def kill_supervisord(stack):
    pid = stack.pid("supervisor/supervisord.pid")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 10)
    return pid


def test_supervisord_killed_under_load_restore_replaces_orphans(rollout_env):
    """Its instances outlive a SIGKILLed supervisord; `pulumi up` replaces
    them (recorded ports, fresh processes under the new supervisord), the
    live group is whole and serving, no orphan is left, no port is shared."""
    env, stack = rollout_env, rollout_env.stack
    assert env.deploy("v1", size=3).state == "live"
    group = env.history().live_release().group
    sock = env.infra["instance_manager"]["endpoint"][len("unix://"):]
    metas = {m["instance"]: m for m in env.platform._instances().values() if m["group"] == group}
    old = {n: p["pid"] for n, p in env.platform._processes().items() if n in metas}
    assert len(old) == 3 and all(old.values())
    before = weights(env)

    with LoadGen(env.url) as load:
        time.sleep(1.0)
        dead = kill_supervisord(stack)
        time.sleep(0.5)
        # the premise: the instances outlived their supervisord and still serve
        assert all(pid_alive(pid) for pid in old.values()), old
        started = time.monotonic()
        result = stack.up()
        restore_s = time.monotonic() - started
        failed_before, total_before = load.failed, load.total
        time.sleep(2.0)
    after = (load.total - total_before, load.failed - failed_before)
    print("supervisord restore: up took %.1f s; kill to end of up: %d requests, %d failed "
          "(statuses %s); after the up: %d requests, %d failed; changes %s"
          % (restore_s, total_before, failed_before, load.statuses, after[0], after[1],
             result.summary.resource_changes), restore_log(stack))

    new_sup = stack.pid("supervisor/supervisord.pid")
    assert new_sup != dead and pid_alive(new_sup, "supervisord")
    table = env.platform._processes()
    for name, meta in metas.items():
        info = table.get(name)
        assert info is not None and info["statename"] == "RUNNING", (name, info)
        assert info["pid"] != old[name] and new_sup in _ancestors(info["pid"]), (name, info)
        socks = listeners(meta["address"], meta["port"])
        assert len(socks) == 1, "port %d of %s: %d listeners" % (meta["port"], name, len(socks))
        owner = socket_owner(socks[0])
        assert owner is not None and (owner == info["pid"] or info["pid"] in _ancestors(owner)), \
            (name, owner, info["pid"])
    assert not [pid for pid in old.values() if pid_alive(pid)], "orphans left running"
    strays = {pid: n for pid, n in supervised(sock).items() if new_sup not in _ancestors(pid)}
    assert not strays, "processes of the dead supervisord left: %s" % strays
    health = env.platform.health(group)
    assert health.ready == 3, health
    groups = env.groups()
    assert list(groups) == [group] and groups[group].weight == 100 and groups[group].attached
    assert weights(env) == before, "HAProxy weights of the live group changed"
    assert get(env.url) == 200
    assert after[0] > 50 and after[1] == 0, "failed requests after the restore: %s" % load.summary()
    # the engine drives the restored supervisord: the next release rolls out
    assert env.deploy("v2", size=3).state == "live"


SERVER = r"""
import os, signal, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):  # logs nothing: survives the loss of its stdout pipe
        pass

server = ThreadingHTTPServer((os.environ["BIND"], int(os.environ["PORT"])), Handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.1)
server.server_close()
"""


def start_quiet_group(env, size):
    """A group of ``size`` instances of a small HTTP server that keeps serving
    after its supervisord died, written the way the engine writes instances
    (program file with the phoenix metadata line, HAProxy server, weight)."""
    platform = env.platform
    group = "catalog-%s-v900" % env.environment
    ports = platform._free_ports(size, {m["port"] for m in platform._instances().values()})
    script = env.stack.tmp / "quiet_server.py"
    script.write_text(SERVER)
    metas = []
    for index, port in enumerate(ports, 1):
        meta = {"instance": "%s.%03d" % (group, index), "group": group, "artifact": "catalog",
                "environment": env.environment, "release_id": "v900", "image": "quiet@sha256:0",
                "index": index, "address": platform.address, "port": port, "backend": "be_catalog"}
        conf = "\n".join([
            "; phoenix: " + json.dumps(meta, sort_keys=True),
            "[program:%s]" % meta["instance"],
            "command=%s %s" % (sys.executable, script),
            'environment=PORT="%d",BIND="%s"' % (port, platform.address),
            "autostart=true", "autorestart=true", "startsecs=1", "stopwaitsecs=5",
            "stopasgroup=true", "killasgroup=true", "redirect_stderr=true", ""])
        path = pathlib.Path(platform.include_dir) / (meta["instance"] + ".conf")
        path.write_text(conf)
        meta["conf"] = str(path)
        metas.append(meta)
    platform.rpc.supervisor.reloadConfig()
    for meta in metas:
        platform.rpc.supervisor.addProcessGroup(meta["instance"])
    platform._add_servers("be_catalog", metas, weight=100)
    platform._wait_up("be_catalog", metas, deadline=time.time() + 30)
    return group, metas


def test_supervisord_killed_orphans_that_still_serve_are_replaced_in_rounds(rollout_env):
    """Orphans that still serve are capacity: the restore replaces them a few
    at a time (drain, stop, start afresh, wait UP), so the group never has 0
    servers UP and no request fails."""
    env, stack = rollout_env, rollout_env.stack
    group, metas = start_quiet_group(env, 4)
    old = {n: p["pid"] for n, p in env.platform._processes().items() if n.startswith(group + ".")}
    watch = {"min_up": 99, "samples": 0}
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            rows = env.platform._stat("be_catalog")
            up = sum(1 for n, r in rows.items() if n.startswith(group + ".")
                     and r["status"].startswith("UP") and int(r["weight"] or 0) > 0)
            watch["min_up"] = min(watch["min_up"], up)
            watch["samples"] += 1
            time.sleep(0.05)

    with LoadGen(env.url, path="/") as load:
        time.sleep(1.0)
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        kill_supervisord(stack)
        time.sleep(1.0)
        assert all(pid_alive(pid) for pid in old.values()) and get(env.url, "/") == 200
        started = time.monotonic()
        stack.up()
        restore_s = time.monotonic() - started
        time.sleep(1.0)
        stop.set()
        mon.join(5)
    print("supervisord restore (serving orphans): up took %.1f s; %s; min UP %s"
          % (restore_s, load.summary(), watch), restore_log(stack))
    new_sup = stack.pid("supervisor/supervisord.pid")
    table = env.platform._processes()
    for meta in metas:
        info = table[meta["instance"]]
        assert info["statename"] == "RUNNING" and info["pid"] != old[meta["instance"]]
        assert new_sup in _ancestors(info["pid"])
        assert len(listeners(meta["address"], meta["port"])) == 1
    assert not [pid for pid in old.values() if pid_alive(pid)]
    assert watch["samples"] > 20 and watch["min_up"] >= 1, watch
    assert load.total > 100 and load.failed == 0, load.summary()
    assert "restore-drained" not in " ".join(os.listdir(stack.state_dir / "supervisor"))


def test_restore_interrupted_half_way_is_finished_by_the_next_up(rollout_env):
    """The state a restore killed half-way leaves: the new supervisord runs
    without its [include] section, one instance's server drained and its
    orphan stopped (named in restore-drained.json), the other orphan still
    running. The next `pulumi up` notices and finishes the restore."""
    env, stack = rollout_env, rollout_env.stack
    assert env.deploy("v1", size=2).state == "live"
    group = env.history().live_release().group
    names = sorted(m["instance"] for m in env.platform._instances().values() if m["group"] == group)
    old = {n: p["pid"] for n, p in env.platform._processes().items() if n in names}
    sup_dir = stack.state_dir / "supervisor"
    conf = (sup_dir / "supervisord.conf").read_text()
    kill_supervisord(stack)
    # what the interrupted restore had done
    first = names[0]
    env.platform.api.batch([("set", "server", "be_catalog/%s" % first, "state", "drain")])
    (sup_dir / "restore-drained.json").write_text(json.dumps({first: ["be_catalog", first]}))
    os.kill(old[first], signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(old[first]), 20)
    boot = conf[:conf.index("[include]")]
    (sup_dir / "supervisord.conf").write_text(boot)
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(sup_dir / "supervisord.conf")],
                   cwd=sup_dir, check=True, timeout=30)
    assert wait_for(lambda: pid_alive(stack.pid("supervisor/supervisord.pid"), "supervisord"), 20)
    half = stack.pid("supervisor/supervisord.pid")

    stack.up()
    assert stack.pid("supervisor/supervisord.pid") == half, "the running supervisord was replaced"
    assert (sup_dir / "supervisord.conf").read_text() == conf
    assert not (sup_dir / "restore-drained.json").exists()
    table = env.platform._processes()
    for name in names:
        assert table[name]["statename"] == "RUNNING" and half in _ancestors(table[name]["pid"]), table[name]
    assert not [pid for pid in old.values() if pid_alive(pid)]
    state = env.platform.api.servers_state("be_catalog")
    assert all(state[n]["admin"] == 0 for n in names), state
    assert env.platform.health(group).ready == 2
    assert get(env.url) == 200


def test_destroy_after_supervisord_was_killed_leaves_no_instance(rollout_stack, rollout_images, tmp_path):
    """`pulumi destroy` of a stack whose supervisord died stops the instances
    it had started (they would hold their ports forever). Last in this module:
    it destroys the module's stack."""
    env = Env(rollout_stack, rollout_images, "tdestroy", tmp_path)
    assert env.deploy("v1", size=2).state == "live"
    sock = env.infra["instance_manager"]["endpoint"][len("unix://"):]
    ports = [(m["address"], m["port"]) for m in env.platform._instances().values()]
    pids = [p["pid"] for p in env.platform._processes().values() if p["pid"]]
    assert pids
    kill_supervisord(rollout_stack)
    assert all(pid_alive(pid) for pid in pids)
    rollout_stack.destroy()
    assert not [pid for pid in pids if pid_alive(pid)], "instances outlived destroy"
    assert not supervised(sock)
    assert not [p for p in ports if listeners(*p)], "instance ports still taken"
