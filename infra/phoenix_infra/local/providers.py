"""Dynamic providers of the local platform: loopback ports, PostgreSQL, HAProxy
and supervisord, run as real processes under the stack's state dir.

Pulumi pickles a dynamic provider (dill) into the state file. Classes from an
importable module are pickled *by reference* (``phoenix_infra.local.providers
.PostgresProvider``), so the state holds a name, not code: refresh/destroy
import this module again in the provider process (started in ``infra/``).
The providers therefore keep no attributes and no module-level state; all they
need comes from the resource's inputs/outputs.

Every provider writes its own ``diff``: only the listed ``KEYS`` count, the
``REPLACE`` ones force a (delete-before-)replace, and a dead process is a
change (``running``) so ``pulumi up`` starts it again with the same data.
"""
import ipaddress
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import sys
import xmlrpc.client

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from phoenix_infra.local import orphans, procs

PG_VERSION = "15"
HAPROXY = "haproxy"
INFRA_PORTS = 16  # the head of port_range reserved for infra; the rest is for instances
MAX_STATE_DIR = 107 - len("/postgres/run/.s.PGSQL.65535")


class _Provider(ResourceProvider):
    KEYS = ()
    REPLACE = ()
    serialize_as_secret_always = False  # the provider holds no secret

    def alive(self, outs):
        return True

    def diff(self, _id, olds, news):
        changed = [k for k in self.KEYS if olds.get(k) != news.get(k)]
        if not self.alive(olds):
            changed.append("running")
        replaces = [k for k in changed if k in self.REPLACE]
        return DiffResult(changes=bool(changed), replaces=replaces,
                          delete_before_replace=bool(replaces))

    def read(self, id_, props):
        """A process resource: gone with its dir; ``running`` tells refresh whether it lives."""
        if not os.path.isdir(props["dir"]):
            return ReadResult(None, {})
        return ReadResult(id_, {**props, "running": self.alive(props)})


# --------------------------------------------------------------------------- network

class NetworkProvider(_Provider):
    """An address of a loopback block plus named ports probed free by binding.
    Ports are recorded in the outputs and kept on update."""
    KEYS = ("state_dir", "cidr", "address", "port_range", "names", "pinned")
    REPLACE = ("state_dir",)

    def alive(self, outs):
        return os.path.isdir(outs["state_dir"])  # a removed state dir is made again by `up`

    def create(self, props):
        self._validate(props)
        os.makedirs(os.path.dirname(props["state_dir"]), mode=0o700, exist_ok=True)
        created = procs.ensure_dir(props["state_dir"])
        try:
            ports = self._allocate(props, {})
        except Exception:
            if created:
                os.rmdir(props["state_dir"])
            raise
        return CreateResult(props["state_dir"], {**props, "ports": ports, "created_dir": created,
                                                 "instance_port_range": self._instances(props)})

    def update(self, _id, olds, news):
        self._validate(news)
        created = procs.ensure_dir(news["state_dir"])
        same_addr = olds.get("address") == news["address"]
        ports = self._allocate(news, (olds.get("ports") or {}) if same_addr else {})
        created = bool(olds.get("created_dir")) or created
        return UpdateResult({**news, "ports": ports, "created_dir": created,
                             "instance_port_range": self._instances(news)})

    def read(self, id_, props):
        return ReadResult(id_, props)

    def delete(self, _id, props):
        if props.get("created_dir"):
            try:
                os.rmdir(props["state_dir"])  # only if empty: never remove what others left
            except OSError:
                pass

    @staticmethod
    def _validate(props):
        props["port_range"] = [int(p) for p in props["port_range"]]
        if len(props["state_dir"]) > MAX_STATE_DIR:  # sun_path holds 107 bytes
            raise procs.InfraError(f"state_dir {props['state_dir']} is too long for the unix sockets "
                                   f"under it (at most {MAX_STATE_DIR} characters)")
        block = ipaddress.ip_network(props["cidr"])
        if not block.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
            raise procs.InfraError(f"address_block {props['cidr']} is not inside 127.0.0.0/8 (loopback)")
        if ipaddress.ip_address(props["address"]) not in block:
            raise procs.InfraError(f"address {props['address']} is not inside {props['cidr']}")
        first, last = props["port_range"]
        if not (1024 <= first and last <= 65535 and last - first >= 2 * INFRA_PORTS):
            raise procs.InfraError(f"port_range {first}-{last} must lie in 1024-65535 and hold "
                                   f"at least {2 * INFRA_PORTS} ports")

    @staticmethod
    def _instances(props):
        first, last = props["port_range"]
        return [first + INFRA_PORTS, last]

    @staticmethod
    def _allocate(props, current):
        address = props["address"]
        first = props["port_range"][0]
        pool = range(first, first + INFRA_PORTS)
        pinned = {k: int(v) for k, v in (props.get("pinned") or {}).items() if v}
        current = {k: int(v) for k, v in current.items()}
        ports = {}
        for name in props["names"]:
            port = pinned.get(name) or current.get(name)
            if port and (port in pool or name in pinned):
                if port != current.get(name):
                    procs.require_free(address, port, name)
            else:
                port = next((p for p in pool if p not in ports.values()
                             and p not in pinned.values() and procs.port_free(address, p)), None)
                if port is None:
                    raise procs.InfraError(f"no free port for {name} in {address}:{pool[0]}-{pool[-1]}")
            ports[name] = int(port)
        return ports


# --------------------------------------------------------------------------- postgres

class PostgresProvider(_Provider):
    """A PostgreSQL cluster in ``<dir>/data`` listening on one loopback address.

    As root, initdb/postgres must run as the ``postgres`` user, who cannot
    traverse the 0700 state dirs; they run in a private mount namespace where
    ``<dir>`` is bind-mounted on an empty public directory (``/srv``)."""
    KEYS = ("dir", "address", "port", "database", "user")
    REPLACE = ("dir", "database", "user")

    # -- helpers
    @staticmethod
    def _view(props):
        """(command prefix, path of <dir> as the postgres processes see it)."""
        if os.geteuid() != 0:
            return [], props["dir"]
        mnt = next(d for d in ("/srv", "/mnt", "/opt") if os.path.isdir(d))
        script = 'mount --bind "$1" "$2" && shift 2 && exec runuser -u postgres -- "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                props["dir"], mnt], mnt

    @staticmethod
    def _pid(props):
        return procs.read_pid(os.path.join(props["dir"], "data", "postmaster.pid"))

    def alive(self, outs):
        return procs.pid_alive(self._pid(outs), "postgres")

    @staticmethod
    def _bindir():
        """``$PHOENIX_PG_BIN``, else Debian's versioned dir, else initdb on PATH."""
        for d in (os.environ.get("PHOENIX_PG_BIN"), f"/usr/lib/postgresql/{PG_VERSION}/bin",
                  os.path.dirname(shutil.which("initdb") or "")):
            if d and os.path.exists(os.path.join(d, "initdb")):
                return d
        raise procs.InfraError(f"PostgreSQL {PG_VERSION} server binaries not found: install "
                               "postgresql (make setup) or set PHOENIX_PG_BIN")

    def _pg(self, props, tool, args, what, timeout=90):
        prefix, view = self._view(props)
        cmd = prefix + [os.path.join(self._bindir(), tool)] + [a.replace("{dir}", view) for a in args]
        return procs.run(cmd, what, timeout=timeout, umask=0o077)

    def _initdb(self, props):
        """initdb unless a cluster exists (never over existing data)."""
        data = os.path.join(props["dir"], "data")
        if os.path.exists(os.path.join(data, "PG_VERSION")):
            return
        for d in (props["dir"], data, os.path.join(props["dir"], "run")):
            procs.ensure_dir(d)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for d in (props["dir"], data, os.path.join(props["dir"], "run")):
                os.chown(d, pg.pw_uid, pg.pw_gid)
        self._pg(props, "initdb", ["-D", "{dir}/data", "-U", "postgres", "--auth-local=peer",
                                   "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"], "initdb")
        me = pwd.getpwuid(os.geteuid()).pw_name
        hba = ("# written by phoenix.deploy (local platform)\n"
               "local all postgres peer map=admin\n"
               "host all all 127.0.0.0/8 scram-sha-256\n")
        ident = f"admin {me} postgres\nadmin postgres postgres\n"
        for name, text in (("pg_hba.conf", hba), ("pg_ident.conf", ident)):
            path = os.path.join(data, name)
            procs.write_private(path, text)
            if os.geteuid() == 0:
                os.chown(path, pg.pw_uid, pg.pw_gid)

    def _start(self, props):
        if self.alive(props):
            return False
        procs.require_free(props["address"], int(props["port"]), "postgres")
        opts = (f"-c listen_addresses={props['address']} -p {int(props['port'])} "
                f"-k {shlex.quote('{dir}/run')} -c unix_socket_permissions=0600")
        log = os.path.join(props["dir"], "postgres.log")
        last = None
        for _i in range(10):  # a killed postmaster's backends may need a moment to exit
            try:
                self._pg(props, "pg_ctl", ["start", "-w", "-t", "60", "-D", "{dir}/data",
                                           "-l", "{dir}/postgres.log", "-o", opts], "pg_ctl start")
                return True
            except procs.InfraError as exc:
                last = exc
                if not any(m in procs.tail(log, 5) for m in ("still in use", "lock file")):
                    break
                procs.wait_until(lambda: False, 1.0)
        raise procs.InfraError(f"{last}\n{procs.tail(log)}")

    def _stop(self, props):
        procs.stop_pid(self._pid(props), "postgres", sig=signal.SIGINT, timeout=60)

    def _ensure_role(self, props, password):
        import psycopg
        from psycopg import sql
        with psycopg.connect(host=os.path.join(props["dir"], "run"), port=int(props["port"]),
                             user="postgres", dbname="postgres", autocommit=True,
                             connect_timeout=10) as conn:
            verifier = conn.pgconn.encrypt_password(password.encode(), props["user"].encode(),
                                                    b"scram-sha-256").decode()
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (props["user"],)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(props["user"]), sql.Literal(verifier)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (props["database"],)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(props["database"]), sql.Identifier(props["user"])))

    # -- CRUD
    def create(self, props):
        fresh = not os.path.exists(props["dir"])
        started = False
        try:
            self._initdb(props)
            started = self._start(props)
            password = secrets.token_urlsafe(24)
            self._ensure_role(props, password)
        except Exception:
            if started:
                self._stop(props)
            if fresh:
                procs.remove_tree(props["dir"])
            raise
        return CreateResult(os.path.join(props["dir"], "data"),
                            {**props, "password": password, "running": True})

    def update(self, _id, olds, news):
        moved = (olds["address"], olds["port"]) != (news["address"], news["port"])
        if moved:
            procs.require_free(news["address"], int(news["port"]), "postgres")
            self._stop(olds)
        try:
            self._initdb(news)
            self._start(news)
        except Exception:
            if moved:  # leave the previous cluster running
                self._start(olds)
            raise
        return UpdateResult({**news, "password": olds["password"], "running": True})

    def read(self, id_, props):
        if not os.path.exists(os.path.join(props["dir"], "data", "PG_VERSION")):
            return ReadResult(None, {})
        return ReadResult(id_, {**props, "running": self.alive(props)})

    def delete(self, _id, props):
        self._stop(props)
        procs.remove_tree(props["dir"])


# --------------------------------------------------------------------------- haproxy

def _instance_meta(conf):
    """The ``; phoenix:`` metadata line of an instance conf (written by the
    local driver into supervisord's include dir), or None."""
    try:
        with open(conf) as fh:
            for line in fh:
                if line.startswith("; phoenix: "):
                    meta = json.loads(line[len("; phoenix: "):])
                    return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None
    return None


class HAProxyProvider(_Provider):
    """HAProxy with one frontend, one backend per artifact (no static servers:
    the rollout engine adds them through the runtime API socket)."""
    KEYS = ("dir", "address", "frontend_port", "stats_port", "backends", "check_inter", "check_up_inter")
    REPLACE = ("dir",)

    @staticmethod
    def _paths(props):
        d = props["dir"]
        return {k: os.path.join(d, f) for k, f in (("cfg", "haproxy.cfg"), ("pid", "haproxy.pid"),
                                                   ("sock", "haproxy.sock"), ("log", "haproxy.log"),
                                                   ("servers", "servers.json"))}

    def alive(self, outs):
        return procs.pid_alive(procs.read_pid(self._paths(outs)["pid"]), "haproxy")

    def diff(self, _id, olds, news):
        """As every provider, plus: a config this code would write differently
        (a new release of the collection) is a change, so `up` reloads it."""
        result = super().diff(_id, olds, news)
        if result.changes:
            return result
        try:
            wanted = self.config(news, self._paths(news)["sock"])
        except (KeyError, TypeError, ValueError, IndexError):  # unknown inputs during a preview
            return result
        if procs.read_text(self._paths(olds)["cfg"]) != wanted:
            return DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return result

    @staticmethod
    def config(props, sock):
        addr = props["address"]
        backends = props["backends"]
        lines = ["# written by phoenix.deploy (local platform); servers are added at run time",
                 *HAProxyProvider.common(sock),
                 "frontend fe_phoenix",
                 f"    bind {addr}:{int(props['frontend_port'])}"]
        for artifact, backend in sorted(backends.items()):
            lines.append(f"    use_backend {backend} if {{ req.hdr(host),field(1,:),field(1,.) -m str {artifact} }}")
        lines.append(f"    default_backend {backends[sorted(backends)[0]]}")
        for _artifact, backend in sorted(backends.items()):
            lines += ["", f"backend {backend}", "    balance roundrobin",
                      "    http-request disable-l7-retry if !METH_GET !METH_HEAD !METH_OPTIONS",
                      "    option httpchk GET /healthz", "    http-check expect status 200",
                      "    default-server " + HAProxyProvider.server_options(props)]
        lines += ["", "listen stats", f"    bind {addr}:{int(props['stats_port'])}",
                  "    stats enable", "    stats uri /stats", "    stats refresh 5s", ""]
        return "\n".join(lines)

    @staticmethod
    def common(sock):
        """The global and defaults sections (also the k8s-local gateway's)."""
        return [
            "global",
            f"    stats socket {sock} mode 600 level admin",
            "    stats timeout 30s",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode http",
            "    option dontlognull",
            # a failed connect, an empty response, a timeout or a 5xx is retried on another
            # server (every retry redispatches), so users rarely see what one bad instance (a
            # faulty canary, one starting or draining) does; the failed attempts still count
            # on that server (econ, eresp, wretr, wredis), which is what analysis reads.  Only
            # failed connects are retried for every method (the request never left); the rest
            # only for safe methods (see disable-l7-retry in each backend).  A redispatch avoids
            # only the server just tried, so it may land on another canary instance: 5 retries
            # keep a 100 %-error canary at 50 % (2 + 2 instances) under 0.5 % failed requests
            "    option redispatch 1",
            "    retries 5",
            "    retry-on conn-failure empty-response response-timeout 500 502 503 504",
            "    timeout connect 1s",
            "    timeout queue 1s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout http-request 10s",
            "",
        ]

    @staticmethod
    def ports(props):
        """(port, what) of every port this HAProxy binds."""
        return [(int(props["frontend_port"]), "haproxy frontend"), (int(props["stats_port"]), "haproxy stats")]

    @staticmethod
    def server_options(props):
        """``add server`` options of a restored run-time server."""
        return " ".join(procs.haproxy.check_options(props["check_inter"], props.get("check_up_inter")))

    def _apply(self, props, old=None):
        """Write + validate the config, then start (or soft-reload) HAProxy."""
        paths = self._paths(props)
        procs.ensure_dir(props["dir"])
        text = self.config(props, paths["sock"])
        new = paths["cfg"] + ".new"
        procs.write_private(new, text)
        procs.run([HAPROXY, "-c", "-q", "-f", new], "haproxy config check")
        running = old is not None and self.alive(old)
        bound = {p for p, _w in self.ports(old)} if running and old.get("address") == props["address"] else set()
        for port, what in self.ports(props):
            if port not in bound:
                procs.require_free(props["address"], port, what)
        old_pid = procs.read_pid(self._paths(old)["pid"]) if running else None
        previous = procs.read_text(paths["cfg"])
        if running and old.get("dir") == props["dir"] and previous == text:
            os.unlink(new)
            return
        if running:  # a reload: the running process knows its servers best
            servers = self.runtime_servers(paths["sock"], old["backends"].values())
        else:  # a (re)start after a crash or a kill: what the rollout engine recorded
            servers = self.recorded_servers(paths["servers"])
        os.replace(new, paths["cfg"])
        try:
            self._launch(paths, old_pid, props)
        except Exception:
            if previous is not None:
                procs.write_private(paths["cfg"], previous)
            raise
        self._restore_servers(paths["sock"], servers, props)

    def _launch(self, paths, old_pid, props):
        """Start HAProxy as a daemon; with ``old_pid``, a soft reload (-sf)."""
        cmd = [HAPROXY, "-f", paths["cfg"], "-p", paths["pid"], "-D"] + (["-sf", str(old_pid)] if old_pid else [])
        with open(paths["log"], "ab") as log:
            os.chmod(paths["log"], 0o600)
            procs.run(cmd, "haproxy start", stdout=log, stderr=log, capture_output=False, umask=0o077)
        ok = procs.wait_until(lambda: procs.read_pid(paths["pid"]) != old_pid and self.alive(props)
                              and os.path.exists(paths["sock"]), 15)
        if not ok:
            raise procs.InfraError(f"haproxy did not come up: {procs.tail(paths['log'])}")

    @staticmethod
    def runtime(sock, command):
        """One command on the runtime API (see procs.haproxy_runtime)."""
        return procs.haproxy_runtime(sock, command)

    def runtime_servers(self, sock, backends):
        """Servers the rollout engine added at run time: (backend, name, addr, port, weight, admin)."""
        found = []
        for backend in backends:
            state = procs.haproxy.parse_servers_state(self.runtime(sock, f"show servers state {backend}"),
                                                      strict=False)
            found += [(s["backend"], name, s["address"], s["port"], s["weight"], s["admin"])
                      for name, s in state.items()]
        return found

    @staticmethod
    def recorded_servers(path):
        """The servers the rollout engine recorded (``servers.json``, written
        by the local driver after each change of servers or weights), as
        ``runtime_servers`` gives them.  A server is kept only while the
        instance conf that owns it still names its address and port, so a
        stale entry never sends traffic to a port another instance reuses,
        and is not being deleted (the driver took it off HAProxy first)."""
        try:
            with open(path) as fh:
                record = json.load(fh)
            backends = record["backends"]
            entries = [(backend, name, srv) for backend, servers in sorted(backends.items())
                       for name, srv in sorted(servers.items())]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise procs.InfraError(f"HAProxy server record {path} is unreadable ({exc}); remove it "
                                   "and run a deploy to set the traffic weights again")
        found = []
        for backend, name, srv in entries:
            try:
                address, port = str(srv["address"]), int(srv["port"])
                weight, admin, conf = int(srv["weight"]), int(srv["admin"]), str(srv["conf"])
            except (KeyError, TypeError, ValueError) as exc:
                raise procs.InfraError(f"HAProxy server record {path}: server {name} is "
                                       f"malformed ({exc})")
            meta = _instance_meta(conf)
            if meta and meta.get("instance") == name and meta.get("address") == address \
                    and int(meta.get("port") or 0) == port and not meta.get("deleting"):
                found.append((backend, name, address, port, weight, admin))
        return found

    def _restore_servers(self, sock, servers, props):
        """A started or reloaded HAProxy has empty backends: add the run-time
        servers again (same address, weight and admin state) to the backends
        that remain.  Any refusal is an error (the user sees it in `up`)."""
        for backend, name, addr, port, weight, admin in servers:
            if backend not in props["backends"].values():
                continue
            srv = f"{backend}/{name}"
            commands = [f"add server {srv} {addr}:{port} {self.server_options(props)} weight {weight}"]
            if not admin & 0x01:  # SRV_ADMF_FMAINT: it was in maintenance, leave it there
                commands += [f"enable health {srv}", f"enable server {srv}"]
                if admin & 0x08:  # SRV_ADMF_FDRAIN
                    commands.append(f"set server {srv} state drain")
            answer = self.runtime(sock, "; ".join(commands))
            bad = [line.strip() for line in answer.splitlines()
                   if line.strip() not in ("", "New server registered.")]
            if bad:
                raise procs.InfraError(f"haproxy: restoring server {srv} ({addr}:{port}, weight "
                                       f"{weight}) failed: {'; '.join(bad)}")

    def create(self, props):
        try:
            self._apply(props)
        except Exception:
            self.delete(None, props)
            raise
        return CreateResult(self._paths(props)["sock"], self._outs(props))

    def _outs(self, props):
        p = self._paths(props)
        return {**props, "runtime_api": p["sock"], "config": p["cfg"], "server_record": p["servers"],
                "running": True}

    def update(self, _id, olds, news):
        self._apply(news, old=olds)
        return UpdateResult(self._outs(news))

    def delete(self, _id, props):
        procs.stop_pid(procs.read_pid(self._paths(props)["pid"]), "haproxy", timeout=15)
        procs.remove_tree(props["dir"])


# --------------------------------------------------------------------------- supervisord

class SupervisordProvider(_Provider):
    """supervisord with XML-RPC on a 0600 unix socket and an [include] dir the
    rollout engine writes ``[program:x]`` files into."""
    KEYS = ("dir",)
    REPLACE = ("dir",)

    @staticmethod
    def _paths(props):
        d = props["dir"]
        return {"conf": os.path.join(d, "supervisord.conf"), "pid": os.path.join(d, "supervisord.pid"),
                "sock": os.path.join(d, "supervisor.sock"), "log": os.path.join(d, "supervisord.log"),
                "include": os.path.join(d, "programs"), "logs": os.path.join(d, "logs")}

    def alive(self, outs):
        """Running, and not stopped half-way through a restore (config without
        its [include] section: see ``orphans.py``)."""
        p = self._paths(outs)
        return (procs.pid_alive(procs.read_pid(p["pid"]), "supervisord")
                and self._conf(p) == procs.read_text(p["conf"]))

    @staticmethod
    def _conf(p, include=True):
        return "\n".join([
            "; written by phoenix.deploy (local platform)",
            "[unix_http_server]", f"file={p['sock']}", "chmod=0600", "",
            "[supervisord]", f"logfile={p['log']}", f"pidfile={p['pid']}", f"childlogdir={p['logs']}",
            "umask=077", "silent=true", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{p['sock']}", ""]
            + (["[include]", f"files = {p['include']}/*.conf", ""] if include else []))

    @staticmethod
    def rpc(sock):
        from supervisor.xmlrpc import SupervisorTransport
        return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                         transport=SupervisorTransport(None, None, f"unix://{sock}"))

    def _state(self, sock):
        try:
            return self.rpc(sock).supervisor.getState()["statename"]
        except (OSError, xmlrpc.client.Error):
            return None

    def _start(self, props):
        """Start supervisord; after a crash, replace the instances the dead one
        left running (``orphans.py``) instead of racing them for their ports."""
        p = self._paths(props)
        for d in (props["dir"], p["include"], p["logs"]):
            procs.ensure_dir(d)
        if self.alive(props):
            return
        pid = procs.read_pid(p["pid"])
        running = procs.pid_alive(pid, "supervisord")  # stopped half-way through a restore
        orphaned = procs.supervised_orphans(p["sock"], pid if running else None)
        if not running:
            procs.write_private(p["conf"], self._conf(p, include=not orphaned))
            with open(p["log"], "ab") as log:
                os.chmod(p["log"], 0o600)
                procs.run([sys.executable, "-m", "supervisor.supervisord", "-c", p["conf"]],
                          "supervisord start", stdout=log, stderr=log, capture_output=False,
                          umask=0o077, cwd=props["dir"])
            if not procs.wait_until(lambda: self._state(p["sock"]) == "RUNNING", 20, 0.1):
                raise procs.InfraError(f"supervisord did not come up: {procs.tail(p['log'])}")
            if not orphaned:
                return
        procs.write_private(p["conf"], self._conf(p))
        try:
            done = orphans.restore_programs(self.rpc(p["sock"]), p["include"], orphaned,
                                            props.get("load_balancer_api"),
                                            os.path.join(props["dir"], "restore-drained.json"))
        except (OSError, xmlrpc.client.Error) as exc:
            raise procs.InfraError(f"supervisord restore: {exc}") from exc
        with open(p["log"], "a") as log:
            log.write(f"phoenix: restore after a supervisord crash: {json.dumps(done)}\n")

    def _outs(self, props):
        p = self._paths(props)
        return {**props, "socket": p["sock"], "include_dir": p["include"], "running": True}

    def create(self, props):
        try:
            self._start(props)
        except Exception:
            self.delete(None, props)
            raise
        return CreateResult(self._paths(props)["sock"], self._outs(props))

    def update(self, _id, olds, news):
        self._start(news)
        return UpdateResult(self._outs(news))

    def delete(self, _id, props):
        # SIGTERM: supervisord stops its programs, then exits; programs a dead
        # supervisord left running are stopped too (they would keep their ports)
        p = self._paths(props)
        procs.stop_pid(procs.read_pid(p["pid"]), "supervisord", timeout=60)
        procs.stop_pids([pid for pids in procs.supervised_orphans(p["sock"]).values() for pid in pids], 30)
        procs.remove_tree(props["dir"])
