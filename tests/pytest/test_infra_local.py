"""The local platform of the infra program, end to end with the real Pulumi CLI
(Automation API), PostgreSQL, HAProxy and supervisord on a loopback block.

The tests share one stack (module fixture ``local_stack``) and run in file
order: up, use, kill + refresh + up, a failing up, no-op up, destroy."""
import contextlib
import ipaddress
import json
import os
import pathlib
import signal
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from pulumi import automation as auto
from supervisor.xmlrpc import SupervisorTransport

from fixtures_infra_local import PIDFILES, pid_alive, wait_for

pytestmark = pytest.mark.slow
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value in state


# --------------------------------------------------------------------------- helpers

def http_get(url, timeout=5, host=None):
    """(status, body, seconds) of a GET, HTTP errors included."""
    start = time.monotonic()
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), time.monotonic() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), time.monotonic() - start


def runtime_api(sock, command):
    """One command on HAProxy's runtime API (a line-based text protocol)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(sock)
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def supervisor(endpoint):
    return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                     transport=SupervisorTransport(None, None, endpoint))


def connect_db(out, **kw):
    db = out["database"]
    return psycopg.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                           password=kw.pop("password", db["password"]), connect_timeout=5, **kw)


class _Instance(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = b"ok\n" if self.path == "/healthz" else b"hello from a test instance\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # health checks hang up early
            super().handle_error(request, client_address)


@contextlib.contextmanager
def http_instance():
    """A real http.server on 127.0.0.1 (random port) answering /healthz."""
    server = _Server(("127.0.0.1", 0), _Instance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def listening(address, port):
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def resource_outputs(stack, type_suffix):
    deployment = stack.stack.export_stack().deployment
    return next(r.get("outputs", {}) for r in deployment["resources"] if r["type"].endswith(type_suffix))


def resource_outputs_all(stack, type_suffix):
    deployment = stack.stack.export_stack().deployment
    return [r.get("outputs", {}) for r in deployment["resources"] if r["type"].endswith(type_suffix)]


# --------------------------------------------------------------------------- up

def test_up_exports_the_outputs_contract(local_stack):
    out = local_stack.outputs()
    sd = local_stack.state_dir
    address = out["network"]["address"]

    assert out["platform"] == "local"
    assert ipaddress.ip_address(address) in ipaddress.ip_network(local_stack.block)
    assert out["network"]["cidr"] == local_stack.block
    assert out["database"]["host"] == address and out["database"]["port"] == out["network"]["ports"]["postgres"]
    exported = resource_outputs(local_stack, "pulumi:pulumi:Stack")["database"]["password"]
    assert isinstance(exported, dict) and SECRET_SIG in exported, "the password must be a Pulumi secret"
    backend = [p for p in (local_stack.tmp / "backend").rglob("*") if p.is_file()]
    assert backend and not [p for p in backend if out["database"]["password"] in p.read_text(errors="replace")]
    assert len(out["database"]["password"]) >= 24
    assert out["load_balancer"]["backends"] == {"catalog": "be_catalog", "search": "be_search"}
    assert out["load_balancer"]["url"] == f"http://{address}:{out['network']['ports']['frontend']}/"
    assert out["load_balancer"]["runtime_api"] == str(sd / "haproxy" / "haproxy.sock")
    assert out["instance_manager"] == {"kind": "supervisord",
                                       "endpoint": f"unix://{sd / 'supervisor' / 'supervisor.sock'}",
                                       "include_dir": str(sd / "supervisor" / "programs")}
    assert out["state_dir"] == str(sd)
    ports = out["network"]["ports"]
    assert out["registries"] == {"dev": f"http://{address}:{ports['registry_dev']}",
                                 "prod": f"http://{address}:{ports['registry_prod']}"}
    for env in ("dev", "prod"):
        assert http_get(out["registries"][env] + "/v2/")[0] == 200
        assert stat.S_IMODE((sd / f"registry-{env}" / "data").stat().st_mode) == 0o700
    first, last = out["network"]["port_range"]
    assert 25000 < first < last == 25999
    assert set(local_stack.live_pids()) == set(PIDFILES)
    for name, port in out["network"]["ports"].items():
        assert listening(address, port), f"{name} does not listen on {address}:{port}"
        assert not listening("127.0.0.1", port), f"{name} listens beyond {address}"


def test_state_dir_files_and_sockets_are_private(local_stack):
    sd = local_stack.state_dir
    port = local_stack.outputs()["database"]["port"]
    assert stat.S_IMODE(sd.stat().st_mode) == 0o700
    for rel in ("haproxy/haproxy.sock", "haproxy/haproxy.cfg", "haproxy/haproxy.pid",
                "registry-dev/config.yml", "registry-prod/config.yml", "registry-dev/registry.pid",
                "supervisor/supervisor.sock", "supervisor/supervisord.conf", "supervisor/supervisord.pid",
                "postgres/data/postmaster.pid", "postgres/data/pg_hba.conf", f"postgres/run/.s.PGSQL.{port}"):
        assert stat.S_IMODE((sd / rel).stat().st_mode) == 0o600, rel
    loose = [str(p) for p in sd.rglob("*") if stat.S_IMODE(p.lstat().st_mode) & 0o077]
    assert loose == [], f"group/other may access: {loose}"
    password = local_stack.outputs()["database"]["password"].encode()
    files = [p for p in sd.rglob("*") if p.is_file()]
    assert len(files) > 100 and not [str(p) for p in files if password in p.read_bytes()]


def test_database_accepts_the_output_credentials_only(local_stack):
    out = local_stack.outputs()
    with connect_db(out) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (note text)")
        conn.execute("INSERT INTO probe VALUES ('written by test_infra_local')")
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            out["database"]["user"], out["database"]["name"])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_db(out, password="not-the-password").close()


def test_frontend_answers_503_fast_then_200_through_a_runtime_server(local_stack):
    lb = local_stack.outputs()["load_balancer"]
    status, _body, seconds = http_get(lb["url"])
    assert status == 503 and seconds < 1.0, (status, seconds)
    assert http_get(lb["stats_url"])[0] == 200

    sock, backend = lb["runtime_api"], lb["backends"]["catalog"]
    with http_instance() as port:
        assert runtime_api(sock, f"add server {backend}/t1 127.0.0.1:{port} check inter 200ms").strip() \
            == "New server registered."
        try:
            runtime_api(sock, f"enable server {backend}/t1")
            runtime_api(sock, f"enable health {backend}/t1")
            assert wait_for(lambda: http_get(lb["url"])[0] == 200, 10), runtime_api(sock, "show servers state")
            assert http_get(lb["url"])[1] == "hello from a test instance\n"
        finally:
            runtime_api(sock, f"set server {backend}/t1 state maint")
            runtime_api(sock, f"del server {backend}/t1")
    assert http_get(lb["url"])[0] == 503


def test_registries_keep_images_and_only_dev_deletes(local_stack, tmp_path):
    from ansible_collections.phoenix.deploy.plugins.module_utils import registry
    from fixtures_registry import make_oci_image, require_tools
    require_tools()
    urls = local_stack.outputs()["registries"]
    dev = registry.Registry(urls["dev"], param="registries.dev")
    prod = registry.Registry(urls["prod"], param="registries.prod")
    digest = make_oci_image(tmp_path / "layout", "1.0.0", {"/probe": "restore"})
    assert dev.push(str(tmp_path / "layout"), "probe", "1.0.0") == digest
    assert prod.copy("probe@" + digest, "probe:1.0.0", src_registry=dev) == digest
    with pytest.raises(registry.RegistryError, match="storage.delete"):
        prod.delete("probe", digest)
    assert prod.exists("probe", digest)
    dev.push(str(tmp_path / "layout"), "scratch", "1.0.0")
    assert dev.delete("scratch", digest) and not dev.exists("scratch", digest)


def test_supervisord_starts_programs_from_the_include_dir(local_stack):
    im = local_stack.outputs()["instance_manager"]
    program = pathlib.Path(im["include_dir"]) / "probe.conf"
    program.write_text(f"[program:probe]\ncommand={sys.executable} -c \"import time; time.sleep(120)\"\n"
                       "startsecs=0\nautorestart=false\n")
    rpc = supervisor(im["endpoint"])
    try:
        added, _changed, _removed = rpc.supervisor.reloadConfig()[0]
        assert added == ["probe"]
        rpc.supervisor.addProcessGroup("probe")
        assert wait_for(lambda: rpc.supervisor.getProcessInfo("probe")["statename"] == "RUNNING", 10)
        environ = pathlib.Path(f"/proc/{rpc.supervisor.getProcessInfo('probe')['pid']}/environ").read_bytes()
        assert b"PULUMI_CONFIG_PASSPHRASE" not in environ, "Pulumi's secrets leaked into the programs"
    finally:
        rpc.supervisor.stopProcessGroup("probe")
        rpc.supervisor.removeProcessGroup("probe")
        program.unlink()


# --------------------------------------------------------------------------- refresh + up

def _service_ok(rel, out):
    if rel.startswith("postgres"):
        with connect_db(out) as conn:
            return conn.execute("SELECT count(*) FROM probe WHERE note = 'restore'").fetchone()[0] == 1
    if rel.startswith("registry"):  # same storage: the probe image pushed above is still there
        url = out["registries"][rel.split("/")[0].split("-")[1]]
        status, body = http_get(url + "/v2/probe/tags/list")[:2]
        return status == 200 and json.loads(body)["tags"] == ["1.0.0"]
    if rel.startswith("haproxy"):
        return http_get(out["load_balancer"]["url"])[0] == 503 and \
            "Name: HAProxy" in runtime_api(out["load_balancer"]["runtime_api"], "show info")
    return supervisor(out["instance_manager"]["endpoint"]).supervisor.getState()["statename"] == "RUNNING"


@pytest.mark.parametrize("rel", list(PIDFILES), ids=[p.split("/")[0] for p in PIDFILES])
def test_killed_process_is_noticed_by_refresh_and_restored_by_up(local_stack, rel):
    before = local_stack.outputs()
    if rel.startswith("postgres"):
        with connect_db(before) as conn:
            conn.execute("DELETE FROM probe WHERE note = 'restore'")
            conn.execute("INSERT INTO probe VALUES ('restore')")
    pid = local_stack.pid(rel)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 10)

    local_stack.refresh()
    kind = {"postgres": "PostgresCluster", "haproxy": "HAProxy", "supervisor": "Supervisord",
            "registry-dev": "DockerRegistry", "registry-prod": "DockerRegistry"}[rel.split("/")[0]]
    outs = [o for o in resource_outputs_all(local_stack, kind) if o.get("dir", "").endswith(rel.split("/")[0])
            or not rel.startswith("registry")]
    assert outs and outs[0]["running"] is False, "refresh did not notice the dead process"

    result = local_stack.up()
    assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
    new_pid = local_stack.pid(rel)
    assert new_pid != pid and pid_alive(new_pid, PIDFILES[rel])
    assert local_stack.outputs() == before, "outputs (ports, password) must survive a restore"
    assert _service_ok(rel, before)


# --------------------------------------------------------------------------- config changes

def test_new_artifact_reloads_haproxy_and_keeps_runtime_servers(local_stack):
    lb = local_stack.outputs()["load_balancer"]
    sock, pid = lb["runtime_api"], local_stack.pid("haproxy/haproxy.pid")
    with http_instance() as port:
        runtime_api(sock, f"add server be_catalog/keep 127.0.0.1:{port} check inter 200ms weight 7")
        try:
            runtime_api(sock, "enable health be_catalog/keep")
            runtime_api(sock, "enable server be_catalog/keep")
            assert wait_for(lambda: http_get(lb["url"])[0] == 200, 10)

            local_stack.set_config("artifacts", '["catalog", "search", "orders"]')
            result = local_stack.up()
            assert result.summary.resource_changes.get("update", 0) >= 1, result.summary.resource_changes
            assert local_stack.outputs()["load_balancer"]["backends"]["orders"] == "be_orders"
            assert local_stack.pid("haproxy/haproxy.pid") != pid, "haproxy was not reloaded"
            state = runtime_api(sock, "show servers state be_catalog")
            assert " keep 127.0.0.1 " in state and " 7 " in state, state
            assert wait_for(lambda: http_get(lb["url"])[0] == 200, 10), runtime_api(sock, "show stat")
            assert http_get(lb["url"], host="orders")[0] == 503  # routed to the new, empty backend
        finally:
            runtime_api(sock, "set server be_catalog/keep state maint")
            runtime_api(sock, "del server be_catalog/keep")


# --------------------------------------------------------------------------- failing and no-op ups

def test_taken_port_fails_naming_it_and_keeps_the_previous_infra(local_stack):
    out = local_stack.outputs()
    address = out["network"]["address"]
    pids = local_stack.live_pids()
    with socket.socket() as squatter:
        squatter.bind((address, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        local_stack.set_config("frontend_port", port)
        try:
            with pytest.raises(auto.CommandError) as failed:
                local_stack.up()
        finally:
            local_stack.remove_config("frontend_port")
    assert f"{address}:{port}" in str(failed.value)
    assert local_stack.live_pids() == pids
    assert local_stack.outputs() == out, "a failed up must keep the stack outputs (the contract)"
    assert http_get(out["load_balancer"]["url"])[0] == 503
    with connect_db(out) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_noop_up_changes_nothing(local_stack):
    result = local_stack.up()
    assert set(result.summary.resource_changes) == {"same"}, result.summary.resource_changes


# --------------------------------------------------------------------------- destroy

def test_destroy_leaves_no_process_port_or_dir_and_no_password_in_output(local_stack):
    out = local_stack.outputs()
    password = out["database"]["password"]
    pids = local_stack.live_pids()
    address, ports = out["network"]["address"], out["network"]["ports"]
    assert len(pids) == 5

    local_stack.destroy()
    assert wait_for(lambda: not any(pid_alive(p) for p in pids.values()), 10), pids
    assert not [p for p in ports.values() if listening(address, p)]
    assert not local_stack.state_dir.exists()
    assert local_stack.stack.outputs() == {}

    printed = "\n".join(local_stack.log)
    assert "Resources:" in printed and password not in printed
