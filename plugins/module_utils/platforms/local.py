# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local platform: server groups are supervisord programs started from a
local image bundle, traffic goes through the infra's HAProxy (runtime API,
no reloads).  Everything it needs comes from the infra stack outputs
(``instance_manager``, ``load_balancer``, ``network``, ``database``,
``state_dir``).

Where state lives (all of it observable after a controller restart):

* one ``<instance>.conf`` per instance in the supervisord include dir; its
  ``; phoenix:`` comment line says which artifact, environment, group,
  release, image, address and port it belongs to.  It is written before the
  program is added and removed after it is gone, so every running program and
  every HAProxy server of ours has one;
* supervisord's process table (running / starting / backoff / fatal);
* HAProxy's servers (``be_<artifact>/<instance>``): admin state, weight,
  check status and counters.  A group's traffic weight is derived from its
  servers' weights, so ``list_groups`` reports what HAProxy really does.

An instance is the program ``<group>.<index>`` (also its HAProxy server name);
its environment (PORT, BIND, DB_*, IMAGE_DIR, DRAIN_TIMEOUT and the caller's
``env``) is injected at deploy time through a 0600 env file, never baked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import fcntl
import http.client
import json
import os
import shlex
import socket
import threading
import time
import xmlrpc.client
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DRAINING, FAILED, READY, STARTING, Health, InstanceHealth, Metrics, Platform,
    PlatformError, ServerGroup)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.haproxy import (
    RuntimeAPI, RuntimeAPIError)

try:
    from supervisor.xmlrpc import SupervisorTransport
    HAS_SUPERVISOR = True
    SUPERVISOR_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - guarded for ansible-test sanity
    SupervisorTransport = object
    HAS_SUPERVISOR = False
    SUPERVISOR_IMPORT_ERROR = _exc


class _Transport(SupervisorTransport):
    """supervisord's transport keeps its connection alive; after supervisord
    was restarted (the infra restore after a crash) that connection is dead.
    Retry once on a new one, as ``xmlrpc.client.Transport`` does."""

    def request(self, host, handler, request_body, verbose=0):
        try:
            return SupervisorTransport.request(self, host, handler, request_body, verbose)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                http.client.RemoteDisconnected):
            self.close()
            return SupervisorTransport.request(self, host, handler, request_body, verbose)


try:
    from ansible_collections.phoenix.deploy.plugins.module_utils import images as _images
except ImportError:  # pragma: no cover - the image engine is optional here
    _images = None

MAX_WEIGHT = 256  # HAProxy's per-server maximum
META = "; phoenix: "
# supervisord states
_RUNNING, _STARTING, _BACKOFF, _STOPPING = "RUNNING", "STARTING", "BACKOFF", "STOPPING"
_STOPPED = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")
# HAProxy admin state bits (show servers state)
_ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20
_ADMIN_DRAIN = 0x08 | 0x10 | 0x40
# show stat counters per server that metrics() reads (see _attempts)
_COUNTERS = ("req_tot", "hrsp_5xx", "econ", "eresp", "wretr", "wredis")


def parse_image_ref(ref: str):
    """``<image name>@sha256:<hex>`` -> (name, digest); a bare name has no digest."""
    if not isinstance(ref, str) or not ref:
        raise PlatformError("image: %r is not an image reference; use "
                            "<image name>@sha256:<content digest>" % (ref,))
    name, _sep, digest = ref.partition("@")
    if "/" in name or name in (".", ".."):
        raise PlatformError("image: %r; the name may not contain '/'" % ref)
    return name, (digest or None)


class LocalPlatform(Platform):
    name = "local"
    poll_interval = 0.2

    def __init__(self, infra: dict, image_store: Optional[str] = None,
                 data_dir: Optional[str] = None, drain_timeout: float = 10.0,
                 verify_images: bool = True):
        if not HAS_SUPERVISOR:
            raise PlatformError("the local platform needs the supervisor Python package: %s"
                                % SUPERVISOR_IMPORT_ERROR)
        try:
            self.infra = infra
            manager = infra["instance_manager"]
            balancer = infra["load_balancer"]
            network = infra["network"]
            self.include_dir = manager["include_dir"]
            self.endpoint = manager["endpoint"]
            self.backends = dict(balancer["backends"])
            self.address = network["address"]
            self.port_range = [int(p) for p in network["port_range"]]
            self.state_dir = infra["state_dir"]
            self.database = dict(infra.get("database") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise PlatformError("infra: the stack outputs lack %s; pass the outputs of a "
                                "local-platform stack (phoenix.deploy.pulumi_stack)" % exc)
        if infra.get("platform", "local") != "local":
            raise PlatformError("infra: platform is %r; the local driver needs a local stack"
                                % infra.get("platform"))
        if not str(self.address).startswith("127."):
            raise PlatformError("infra: network.address %s is not a loopback address"
                                % self.address)
        self.api = RuntimeAPI(balancer["runtime_api"])
        # what the infra restore adds again after HAProxy restarted (see _record_servers)
        self.server_record = balancer.get("server_record") or os.path.join(
            os.path.dirname(balancer["runtime_api"]), "servers.json")
        self.image_store = image_store
        self.data_dir = data_dir or os.path.join(self.state_dir, "rollout")
        self.drain_timeout = float(drain_timeout)
        self.verify_images = verify_images
        self._baseline = {}
        # one XML-RPC connection per thread: the report sampler runs beside the
        # engine, and an http.client connection serves one request at a time
        self._local = threading.local()

    # ------------------------------------------------------------------ helpers
    @property
    def rpc(self):
        if getattr(self._local, "rpc", None) is None:
            transport = _Transport(None, None, self.endpoint)
            self._local.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._local.rpc

    def _call(self, what, fn, *args):
        try:
            return fn(*args)
        except xmlrpc.client.Fault as exc:
            raise PlatformError("supervisord %s: %s" % (what, exc.faultString))
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            self._local.rpc = None
            raise PlatformError("supervisord at %s unreachable (%s): %s"
                                % (self.endpoint, what, exc),
                                transient=isinstance(exc, ConnectionError))

    def _processes(self) -> dict:
        return {p["name"]: p for p in self._call("getAllProcessInfo",
                                                 self.rpc.supervisor.getAllProcessInfo)}

    def _backend(self, artifact: str) -> str:
        try:
            return self.backends[artifact]
        except KeyError:
            raise PlatformError("artifact %s has no load balancer backend in the infra "
                                "(backends: %s); add it to the stack's artifacts config"
                                % (artifact, ", ".join(sorted(self.backends)) or "none"))

    def _haproxy(self, what, fn, *args):
        try:
            return fn(*args)
        except RuntimeAPIError as exc:  # a refused or dropped connection is retried
            raise PlatformError("haproxy %s: %s" % (what, exc),
                                transient=isinstance(exc.__context__, ConnectionError))

    def _instances(self) -> dict:
        """Every instance of ours: conf metadata by instance name."""
        out = {}
        try:
            names = os.listdir(self.include_dir)
        except OSError as exc:
            raise PlatformError("supervisord include dir %s: %s" % (self.include_dir, exc))
        for fname in names:
            if not fname.endswith(".conf"):
                continue
            path = os.path.join(self.include_dir, fname)
            try:
                with open(path) as handle:
                    for line in handle:
                        if line.startswith(META):
                            meta = json.loads(line[len(META):])
                            meta["conf"] = path
                            out[meta["instance"]] = meta
                            break
            except (OSError, ValueError):
                continue
        return out

    def _members(self, group: str, instances: Optional[dict] = None) -> list:
        instances = self._instances() if instances is None else instances
        return sorted((m for m in instances.values() if m["group"] == group),
                      key=lambda m: m["index"])

    def _group_meta(self, group: str) -> list:
        members = self._members(group)
        if not members:
            raise PlatformError("no server group %r" % group)
        return members

    def _servers(self, backend: str) -> dict:
        return self._haproxy("show servers state", self.api.servers_state, backend)

    def _stat(self, backend: str) -> dict:
        return self._haproxy("show stat", self.api.stat, backend)

    @contextlib.contextmanager
    def _allocation_lock(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _port_free(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise PlatformError("cannot bind %s:%d: %s" % (self.address, port, exc))
        return True

    def _free_ports(self, count: int, taken: set) -> list:
        first, last = self.port_range
        ports = []
        for port in range(first, last + 1):
            if len(ports) == count:
                break
            if port not in taken and self._port_free(port):
                ports.append(port)
        if len(ports) < count:
            raise PlatformError("network.port_range %d-%d has only %d free port(s) on %s, "
                                "%d needed" % (first, last, len(ports), self.address, count))
        return ports

    def _resolve_image(self, artifact: str, ref: str) -> dict:
        """The bundle of ``ref`` (``name@digest``) in the image store, verified: its target, artifact
        and name come from its place in the store and its entrypoint from the layout, never from the
        bundle's own image.json."""
        name, digest = parse_image_ref(ref)
        root = self.image_store or (_images.default_store() if _images else None)
        if not root:
            raise PlatformError("image %s: no image store configured" % ref)
        path = os.path.join(root, "local", artifact, name)
        if not os.path.isdir(path):
            raise PlatformError("image %s not found in the image store (%s); bake it first "
                                "(phoenix.deploy.image_bake)" % (name, path))
        if self.verify_images and _images is not None:
            try:
                doc = _images.verify_image(path, digest, target="local", artifact=artifact)
            except Exception as exc:  # TamperError and unreadable bundles
                raise PlatformError("image %s refused: %s" % (name, exc))
        else:
            with open(os.path.join(path, "image.json")) as handle:
                doc = json.load(handle)
        entry = os.path.join(path, "rootfs", "opt", "phoenix", artifact, "bin", "run")
        if not os.path.isfile(entry) or not os.access(entry, os.X_OK):
            raise PlatformError("image %s has no executable entrypoint %s" % (name, entry))
        return {"path": path, "entrypoint": entry, "doc": doc}

    def _base_env(self) -> dict:
        db = self.database
        env = {"BIND": self.address, "DRAIN_TIMEOUT": "%g" % self.drain_timeout}
        for key, var in (("host", "DB_HOST"), ("port", "DB_PORT"), ("name", "DB_NAME"),
                         ("user", "DB_USER"), ("password", "DB_PASSWORD")):
            if db.get(key) not in (None, ""):
                env[var] = str(db[key])
        return env

    def config_inputs(self) -> dict:
        """What every instance gets besides ``env``; the password only as a digest."""
        env = self._base_env()
        password = env.pop("DB_PASSWORD", None)
        if password is not None:
            env["DB_PASSWORD_SHA256"] = hashlib.sha256(password.encode("utf-8")).hexdigest()
        return env

    @staticmethod
    def _write_private(path: str, text: str) -> None:
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def _conf(self, meta: dict, image: dict, env_file: str, log: str) -> str:
        inner = "set -a; . %s; set +a; exec %s" % (shlex.quote(env_file),
                                                   shlex.quote(image["entrypoint"]))
        command = "/bin/sh -c %s" % shlex.quote(inner)
        lines = [
            "; phoenix.deploy local platform: instance %s of %s (do not edit)"
            % (meta["instance"], meta["group"]),
            META + json.dumps(meta, sort_keys=True),
            "[program:%s]" % meta["instance"],
            "command=%s" % command.replace("%", "%%"),
            'environment=PORT="%d",IMAGE_DIR="%s"' % (
                meta["port"], image["path"].replace("%", "%%")),
            "autostart=true",
            "autorestart=true",  # auto-heal: a crashed instance restarts from the same image
            "startsecs=1",
            "startretries=2",
            "stopsignal=TERM",
            "stopwaitsecs=%d" % int(self.drain_timeout + 5),
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=%s" % log.replace("%", "%%"),
            "stdout_logfile_maxbytes=1MB",
            "stdout_logfile_backups=1",
            "",
        ]
        return "\n".join(lines)

    def _start_instances(self, artifact, environment, release_id, group, image_ref,
                         image, env, indexes, owner=None):
        """Write conf files, then reloadConfig + addProcessGroup; add each
        instance to HAProxy with weight 0 and health checks on."""
        backend = self._backend(artifact)
        group_dir = os.path.join(self.data_dir, group)
        os.makedirs(group_dir, mode=0o700, exist_ok=True)
        env_file = os.path.join(group_dir, "env")
        full_env = self._base_env()
        full_env.update({k: str(v) for k, v in (env or {}).items()})
        full_env.pop("PORT", None)
        bad = sorted(k for k in full_env if not k.replace("_", "").isalnum() or k[:1].isdigit())
        if bad:  # the engine refuses these first (check_env); never dropped silently
            raise PlatformError("env: invalid variable name(s) %s" % ", ".join(bad))
        self._write_private(env_file, "".join(
            "%s=%s\n" % (key, shlex.quote(value)) for key, value in sorted(full_env.items())))
        metas = []
        with self._allocation_lock():
            existing = self._instances()
            taken = {m["port"] for m in existing.values()}
            ports = self._free_ports(len(indexes), taken)
            for index, port in zip(indexes, ports):
                meta = {"instance": "%s.%03d" % (group, index), "group": group,
                        "artifact": artifact, "environment": environment,
                        "release_id": release_id, "image": image_ref, "index": index,
                        "address": self.address, "port": port, "backend": backend,
                        "owner": owner}
                log = os.path.join(group_dir, "%03d.log" % index)
                self._write_private(os.path.join(self.include_dir, meta["instance"] + ".conf"),
                                    self._conf(meta, image, env_file, log))
                metas.append(meta)
        self._call("reloadConfig", self.rpc.supervisor.reloadConfig)
        calls = [{"methodName": "supervisor.addProcessGroup", "params": [m["instance"]]}
                 for m in metas]
        for answer in self._call("addProcessGroup", self.rpc.system.multicall, calls):
            if isinstance(answer, dict) and answer.get("faultCode") not in (None, 90):
                raise PlatformError("supervisord addProcessGroup: %s" % answer.get("faultString"))
        self._add_servers(backend, metas, weight=0)
        return metas

    def _add_servers(self, backend, metas, weight):
        present = self._servers(backend)
        commands = []
        for meta in metas:
            srv = "%s/%s" % (backend, meta["instance"])
            if meta["instance"] not in present:
                commands.append(("add", "server", srv, "%s:%d" % (meta["address"], meta["port"]),
                                 "check", "weight", str(weight)))
            commands += [("set", "server", srv, "weight", str(weight)),
                         ("enable", "health", srv), ("enable", "server", srv)]
        self._haproxy("add server", self.api.batch, commands)
        self._forget_counters([m["instance"] for m in metas if m["instance"] not in present])
        self._record_servers(backend)

    def _forget_counters(self, names):
        """Servers removed or added again restart their counters: a metrics
        window that holds them gives no data, even if a counter has grown back
        past its value at the start of the window."""
        names = set(names)
        for group, (since, counters, _process) in list(self._baseline.items()):
            if names & set(counters):
                self._baseline[group] = (since, counters, None)

    def _record_servers(self, backend):
        """Record the runtime servers of ``backend`` (address, port, weight,
        admin state and the instance conf that owns each) in the load
        balancer's server record, a 0600 JSON file written atomically.  A
        restarted HAProxy starts with empty backends; the infra restore adds
        these servers again at their recorded weights (only those whose
        instance conf still names the same address and port).  Called after
        every change of servers or weights, under a lock, so the file always
        ends with the state after the last change."""
        instances = self._instances()
        try:
            fd = os.open(self.server_record + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise PlatformError("HAProxy server record %s: %s" % (self.server_record, exc))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            servers = self._servers(backend)
            try:
                with open(self.server_record) as handle:
                    record = json.load(handle)
                if not isinstance(record, dict) or not isinstance(record.get("backends"), dict):
                    raise ValueError("not a server record")
            except (OSError, ValueError):
                record = {"version": 1, "backends": {}}
            record["backends"][backend] = {
                name: {"address": srv["address"], "port": srv["port"], "weight": srv["weight"],
                       "admin": srv["admin"], "conf": instances[name]["conf"]}
                for name, srv in sorted(servers.items()) if name in instances}
            self._write_private(self.server_record, json.dumps(record, indent=1, sort_keys=True))
        except OSError as exc:
            raise PlatformError("HAProxy server record %s: %s" % (self.server_record, exc))
        finally:
            os.close(fd)

    # ------------------------------------------------------------ the interface
    def create_group(self, artifact, environment, release_id, image, size, env,
                     name=None, owner=None) -> ServerGroup:
        name = name or "%s-%s-%s" % (artifact, environment, release_id)
        self._backend(artifact)
        resolved = self._resolve_image(artifact, image)
        if self._members(name):
            raise PlatformError("server group %r already exists" % name)
        self._start_instances(artifact, environment, release_id, name, image, resolved,
                              env, list(range(1, size + 1)), owner=owner)
        self._baseline.pop(name, None)
        return ServerGroup(name, artifact, environment, release_id, image, size, 0, True,
                           owner=owner)

    def resize(self, group, size) -> None:
        """Converge the group to ``size`` members; members a dead controller left
        half-removed (program stopped or gone, or alone drained or off the load
        balancer while their siblings serve) are removed and replaced."""
        members = self._group_meta(group)
        first = members[0]
        broken = self._half_removed(members)
        if broken:
            self._remove(first["backend"], broken)
            members = [m for m in members if m not in broken]
        if size > len(members):
            resolved = self._resolve_image(first["artifact"], first["image"])
            start = max(m["index"] for m in members) + 1
            env = self._read_env(first["group"])
            # new servers join with weight 0: HAProxy counts a freshly enabled
            # server as UP before its first check, so they get traffic only
            # from the next set_weights, which the engine calls once healthy
            self._start_instances(first["artifact"], first["environment"], first["release_id"],
                                  group, first["image"], resolved, env,
                                  list(range(start, start + size - len(members))),
                                  owner=first.get("owner"))
        elif size < len(members):
            self._remove(first["backend"], members[size:])

    def _half_removed(self, members) -> list:
        procs = self._processes()
        servers = self._servers(members[0]["backend"])
        serving = [m for m in members if m["instance"] in servers
                   and not servers[m["instance"]]["admin"] & (_ADMIN_DRAIN | _ADMIN_MAINT)]
        broken = []
        for meta in members:
            proc = procs.get(meta["instance"])
            srv = servers.get(meta["instance"])
            if proc is None or proc["statename"] in ("STOPPED", "EXITED"):
                broken.append(meta)
            elif serving and (srv is None or srv["admin"] & (_ADMIN_DRAIN | _ADMIN_MAINT)):
                broken.append(meta)
        return broken

    def _read_env(self, group) -> dict:
        """The group's env file (``KEY='value'`` words, values may span lines)."""
        path = os.path.join(self.data_dir, group, "env")
        env = {}
        try:
            with open(path) as handle:
                for word in shlex.split(handle.read()):
                    key, _sep, value = word.partition("=")
                    env[key] = value
        except OSError:
            pass
        base = self._base_env()
        return {k: v for k, v in env.items() if base.get(k) != v}

    def health(self, group) -> Health:
        members = self._group_meta(group)
        backend = members[0]["backend"]
        procs = self._processes()
        stats = self._stat(backend)
        states = self._servers(backend)
        out = []
        for meta in members:
            proc = procs.get(meta["instance"])
            row = stats.get(meta["instance"])
            srv = states.get(meta["instance"])
            out.append(self._instance_health(meta, proc, row, srv))
        self._snapshot(group, members, stats)
        return Health(sum(1 for i in out if i.state == READY), len(out), out)

    def _instance_health(self, meta, proc, row, srv) -> InstanceHealth:
        name = meta["instance"]
        if proc is None:
            return InstanceHealth(name, STARTING, "not registered with supervisord")
        state = proc["statename"]
        if state in ("FATAL", _BACKOFF):
            return InstanceHealth(name, FAILED, "%s: %s (crash loop; log %s)" % (
                state.lower(), proc.get("spawnerr") or proc.get("description") or "exited",
                proc.get("stdout_logfile")), 1)
        if state != _RUNNING:
            return InstanceHealth(name, STARTING, state.lower())
        if srv is None or row is None:  # detached (warm): probe like HAProxy does
            if self._probe(meta):
                return InstanceHealth(name, READY, "running, detached")
            return InstanceHealth(name, STARTING, "running, /healthz failing (detached)")
        if srv["admin"] & _ADMIN_DRAIN:
            return InstanceHealth(name, DRAINING, "draining")
        status = row.get("status", "")
        if status.startswith("UP") and row.get("check_status") == "L7OK":
            return InstanceHealth(name, READY, "up")
        return InstanceHealth(name, STARTING, "%s (check %s)" % (status, row.get("check_status")))

    def _probe(self, meta) -> bool:
        conn = http.client.HTTPConnection(meta["address"], meta["port"], timeout=1.0)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # -- weights ---------------------------------------------------------------
    def _group_weights(self, backend: str, instances: Optional[dict] = None,
                       servers: Optional[dict] = None) -> dict:
        """Traffic share (0..100) of every group in ``backend``, derived from
        the weights of its attached (not maint, not draining) servers."""
        instances = self._instances() if instances is None else instances
        servers = self._servers(backend) if servers is None else servers
        sums = {}
        for name, srv in servers.items():
            meta = instances.get(name)
            if meta is None:
                continue
            active = not srv["admin"] & (_ADMIN_MAINT | _ADMIN_DRAIN)
            sums[meta["group"]] = sums.get(meta["group"], 0) + (srv["weight"] if active else 0)
        total = float(sum(sums.values()))
        return {g: (int(round(100.0 * s / total)) if total else 0) for g, s in sums.items()}

    def set_weights(self, weights) -> None:
        instances = self._instances()
        by_backend = {}
        for group, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise PlatformError("weight %r of %s out of range 0..100" % (weight, group))
            members = self._members(group, instances)
            if not members:
                raise PlatformError("no server group %r" % group)
            by_backend.setdefault(members[0]["backend"], {})[group] = (weight, members)
        for backend, wanted in by_backend.items():
            self._apply_weights(backend, wanted, instances)
        for backend, wanted in by_backend.items():  # metrics windows start now
            stats = self._stat(backend)
            for group, (_weight, members) in wanted.items():
                self._baseline.pop(group, None)
                self._snapshot(group, members, stats)

    def _apply_weights(self, backend, wanted, instances):
        servers = self._servers(backend)
        current = self._group_weights(backend, instances, servers)
        # re-attach detached groups that get traffic again: add their servers
        # with weight 0, wait until HAProxy's checks pass, then weigh them
        missing = [m for _g, (w, members) in wanted.items() if w > 0
                   for m in members if m["instance"] not in servers
                   or servers[m["instance"]]["admin"] & (_ADMIN_MAINT | _ADMIN_DRAIN)]
        if missing:
            self._add_servers(backend, missing, weight=0)
            self._wait_up(backend, missing, deadline=time.time() + 30)
            servers = self._servers(backend)
        shares = {}
        for name, srv in servers.items():
            meta = instances.get(name)
            if meta is not None:
                shares.setdefault(meta["group"], current.get(meta["group"], 0))
        for group, (weight, _members) in wanted.items():
            shares[group] = weight
        counts = {}
        for name in servers:
            meta = instances.get(name)
            if meta is not None:
                counts[meta["group"]] = counts.get(meta["group"], 0) + 1
        per_server = {g: (shares[g] / float(counts[g])) for g in counts if shares.get(g)}
        top = max(per_server.values()) if per_server else 0
        raises, lowers = [], []
        for name, srv in servers.items():
            meta = instances.get(name)
            if meta is None:
                continue
            group = meta["group"]
            value = 0
            if per_server.get(group):
                value = max(1, int(round(MAX_WEIGHT * per_server[group] / top)))
            if value == srv["weight"]:
                continue
            cmd = ("set", "server", "%s/%s" % (backend, name), "weight", str(value))
            (raises if value > srv["weight"] else lowers).append(cmd)
        # raise first, lower after: never a moment where every weight is 0
        self._haproxy("set weight", self.api.batch, raises + lowers)
        self._record_servers(backend)

    def _wait_up(self, backend, metas, deadline):
        names = {m["instance"] for m in metas}
        while True:
            stats = self._stat(backend)
            if all(stats.get(n, {}).get("check_status") == "L7OK"
                   and stats[n].get("status", "").startswith("UP") for n in names):
                return
            if time.time() > deadline:
                raise PlatformError("re-attached servers of %s did not pass HAProxy's health "
                                    "check within 30s" % ", ".join(sorted(names)))
            time.sleep(0.1)

    # -- drain / remove ----------------------------------------------------------
    def _drain_servers(self, backend, names):
        """drain -> wait for no current sessions -> maint -> del server."""
        servers = self._servers(backend)
        names = [n for n in names if n in servers]
        if not names:
            return
        self._haproxy("drain", self.api.batch, [
            ("set", "server", "%s/%s" % (backend, n), "state", "drain") for n in names])
        self._record_servers(backend)
        deadline = time.time() + self.drain_timeout
        while time.time() < deadline:
            stats = self._stat(backend)
            if all(int(stats.get(n, {}).get("scur") or 0) == 0 for n in names):
                break
            time.sleep(0.05)
        self._haproxy("maint", self.api.batch, [
            ("set", "server", "%s/%s" % (backend, n), "state", "maint") for n in names])
        self._haproxy("del server", self.api.batch, [
            ("del", "server", "%s/%s" % (backend, n)) for n in names])
        self._forget_counters(names)
        self._record_servers(backend)

    def _remove(self, backend, metas):
        """Drain from HAProxy, SIGTERM (the service drains too), wait, remove."""
        names = [m["instance"] for m in metas]
        self._drain_servers(backend, names)
        procs = self._processes()
        calls = [{"methodName": "supervisor.stopProcess", "params": [n, False]}
                 for n in names if n in procs and procs[n]["statename"] not in _STOPPED]
        if calls:
            self._call("stopProcess", self.rpc.system.multicall, calls)
        deadline = time.time() + self.drain_timeout + 10
        while True:
            procs = self._processes()
            running = [n for n in names if n in procs and procs[n]["statename"] not in _STOPPED]
            if not running:
                break
            if time.time() > deadline:
                raise PlatformError("instances %s did not stop within %gs"
                                    % (", ".join(running), self.drain_timeout + 10))
            time.sleep(0.05)
        calls = [{"methodName": "supervisor.removeProcessGroup", "params": [n]}
                 for n in names if n in procs]
        if calls:
            self._call("removeProcessGroup", self.rpc.system.multicall, calls)
        for meta in metas:
            try:
                os.unlink(meta["conf"])
            except FileNotFoundError:
                pass
            log = os.path.join(self.data_dir, meta["group"], "%03d.log" % meta["index"])
            for path in (log, log + ".1"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def cancel_drain(self, group) -> None:
        """Members a killed controller left in drain or maintenance (``del
        server`` never came) go back to serving at weight 0 once HAProxy's
        check passes; members already removed from HAProxy stay detached."""
        members = self._group_meta(group)
        backend = members[0]["backend"]
        servers = self._servers(backend)
        stuck = [m for m in members if m["instance"] in servers
                 and servers[m["instance"]]["admin"] & (_ADMIN_DRAIN | _ADMIN_MAINT)]
        if stuck:
            self._add_servers(backend, stuck, weight=0)

    def drain_and_detach(self, group) -> None:
        members = self._group_meta(group)
        self._drain_servers(members[0]["backend"], [m["instance"] for m in members])

    def destroy(self, group) -> None:
        members = self._members(group)
        if not members:
            return
        self._remove(members[0]["backend"], members)
        group_dir = os.path.join(self.data_dir, group)
        for fname in ("env", "env.tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(group_dir, fname))
        with contextlib.suppress(OSError):
            os.rmdir(group_dir)
        self._baseline.pop(group, None)

    # -- observation ---------------------------------------------------------------
    def list_groups(self, artifact, environment) -> list:
        instances = self._instances()
        mine = [m for m in instances.values()
                if m["artifact"] == artifact and m["environment"] == environment]
        if not mine:
            return []
        procs = self._processes()
        backend = self._backend(artifact)
        servers = self._servers(backend)
        weights = self._group_weights(backend, instances, servers)
        groups = {}
        for meta in mine:
            entry = groups.setdefault(meta["group"], {"meta": meta, "size": 0, "attached": False})
            if meta["instance"] in procs:
                entry["size"] += 1
            srv = servers.get(meta["instance"])
            if srv is not None and not srv["admin"] & (_ADMIN_MAINT | _ADMIN_DRAIN):
                entry["attached"] = True
        return [ServerGroup(name, artifact, environment, e["meta"]["release_id"],
                            e["meta"]["image"], e["size"], weights.get(name, 0)
                            if e["attached"] else 0, e["attached"], e["meta"].get("owner"))
                for name, e in sorted(groups.items())]

    @staticmethod
    def _counters(members, stats) -> dict:
        """{instance: (req_tot, hrsp_5xx, econ, eresp, wretr, wredis)} from one
        ``show stat`` (see ``_COUNTERS``)."""
        counters = {}
        for meta in members:
            row = stats.get(meta["instance"])
            if row is not None:
                counters[meta["instance"]] = tuple(int(row.get(k) or 0) for k in _COUNTERS)
        return counters

    @staticmethod
    def _attempts(delta) -> tuple:
        """(attempts, failed attempts) of one server from counter deltas.

        HAProxy counts each attempt on a server in exactly one place:
        ``req_tot`` (a response reached the client, ``hrsp_5xx`` among them),
        ``econ`` / ``eresp`` (the last attempt could not connect / got no or
        a broken response), or, when the attempt failed and the request was
        retried, ``wretr`` / ``wredis``: a retry after a 5xx, an empty
        response or a timeout counts in ``wretr`` and, when it went to
        another server, in ``wredis`` too; a retry after a failed connect
        counts in ``wredis`` when redispatched, else in ``wretr``.  With
        ``option redispatch 1`` and several servers every retry is
        redispatched, so ``max(wretr, wredis)`` is the number of retried
        attempts (measured on HAProxy 2.6)."""
        req, err5, econ, eresp, wretr, wredis = delta
        retried = max(wretr, wredis)
        return req + econ + eresp + retried, err5 + econ + eresp + retried

    def _process(self) -> str:
        return self._haproxy("show info", self.api.process_id)

    def _snapshot(self, group, members, stats):
        counters = self._counters(members, stats)
        if group not in self._baseline:
            self._baseline[group] = (time.time(), counters, self._process())
        return counters

    def metrics(self, group, window) -> Metrics:
        """Requests and server-side errors of ``group`` since the previous call
        (or since its weights were last set), from ``show stat`` counter
        deltas.  Errors are what the group's servers did, whether or not
        users saw it: 5xx answers, failed connects, empty or broken
        responses, and attempts HAProxy retried on another server (a retried
        attempt is in none of the 5xx counters).  A window in which HAProxy
        restarted or any counter went down (a reload, a server re-added)
        gives no data (inconclusive), never a clamped count.  HAProxy only
        keeps averages of response times (over the last 1024 requests), so
        ``latency_ms`` carries ``avg`` (and no percentiles): a percentile
        check on this platform is inconclusive, never a pass."""
        members = self._group_meta(group)
        stats = self._stat(members[0]["backend"])
        process = self._process()
        now = time.time()
        base = self._baseline.get(group)
        counters = self._counters(members, stats)
        self._baseline[group] = (now, counters, process)
        if base is None:
            return Metrics(0, 0, None, window)
        since, old_counters, old_process = base
        if process != old_process:
            return Metrics(0, 0, None, now - since)  # counters were reset: window lost
        requests = errors = 0
        if set(old_counters) - set(counters):  # a server gone mid-window: its share is unknown
            return Metrics(0, 0, None, now - since)
        for name, current in counters.items():
            old = old_counters.get(name, (0,) * len(_COUNTERS))  # added in this window
            delta = [c - o for c, o in zip(current, old)]
            if min(delta) < 0:  # a reset (server re-added, reload): discard, never clamp
                return Metrics(0, 0, None, now - since)
            attempts, failed = self._attempts(delta)
            requests += attempts
            errors += failed
        latency = None
        if requests:
            times = [int(stats[m["instance"]].get("ttime") or 0) for m in members
                     if m["instance"] in stats]
            latency = {"avg": sum(times) / float(len(times))} if times else None
        return Metrics(requests, errors, latency, now - since)
