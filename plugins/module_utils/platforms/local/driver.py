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

Deletion is the platform's (``base.destroy_done``): ``destroy`` takes the
group off HAProxy, marks each member's conf ``"deleting": true`` (with
``autostart=false`` and ``autorestart=false``, so neither a restarted
supervisord nor the infra restore starts it again), asks supervisord to
stop the members and returns; a detached finisher process
(``detach.spawn_daemon``) removes the programs, confs and files once they
stopped.  Until the last conf is gone ``list_groups`` reports the group
``deleting`` (size 0, no traffic) and the driver refuses to create, resize,
weigh or undrain it.  A finisher or controller killed half-way leaves
marked confs: every ``create_group``, ``resize`` and ``destroy`` first
sweeps the deleting groups of the include dir (marks the rest of a
half-marked group, re-sends stops, removes what is stopped, starts a
finisher for the rest), never waiting for a stop.

An instance is the program ``<group>.<index>`` (also its HAProxy server name);
its environment (PORT, BIND, DB_*, IMAGE_DIR, DRAIN_TIMEOUT and the caller's
``env``) is injected at deploy time through a 0600 env file, never baked.
"""

from __future__ import annotations

import contextlib
import hashlib
import fcntl
import json
import os
import shlex
import time
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.detach import spawn_daemon
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DRAINING, FAILED, READY, STARTING, Clock, Health, InstanceHealth, PlatformError,
    ServerGroup, group_name, is_oci_ref)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.haproxy import (
    RuntimeAPI, RuntimeAPIError, check_options, is_time)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import (
    host, metrics as _metrics, ports as _ports)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.supervisor import (
    BACKOFF as _BACKOFF, BAD_NAME as _BAD_NAME, HAS_SUPERVISOR, NOT_RUNNING as _NOT_RUNNING,
    RUNNING as _RUNNING, STARTING as _STARTING, STOPPED as _STOPPED, SUPERVISOR_IMPORT_ERROR, Supervisor)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.weights import (
    ADMIN_DRAIN as _ADMIN_DRAIN, ADMIN_MAINT as _ADMIN_MAINT, group_weights, weight_commands)

try:
    from ansible_collections.phoenix.deploy.plugins.module_utils import images as _images
except ImportError:  # pragma: no cover - the image engine is optional here
    _images = None

META = "; phoenix: "
#: seconds a deletion finisher waits beyond ``drain_timeout`` for the members to stop
#: (supervisord SIGKILLs a member ``stopwaitsecs`` = drain_timeout + 5 after its stop)
FINISH_GRACE = 15.0


def _serving(row, srv) -> bool:
    """HAProxy's view of a server: attached, not draining, UP after a passed check."""
    return row is not None and srv is not None and not srv["admin"] & (_ADMIN_DRAIN | _ADMIN_MAINT) \
        and row.get("status", "").startswith("UP") and row.get("check_status") == "L7OK"


def parse_image_ref(ref: str):
    """``<image name>@sha256:<hex>`` -> (name, digest); a bare name has no digest."""
    if not isinstance(ref, str) or not ref:
        raise PlatformError("image: %r is not an image reference; use "
                            "<image name>@sha256:<content digest>" % (ref,), param="image")
    if is_oci_ref(ref):
        raise PlatformError("image: %s is an OCI image reference; the local platform runs "
                            "baked local images (<image name>@sha256:<content digest>, "
                            "phoenix.deploy.image_bake)" % ref, param="image")
    name, _sep, digest = ref.partition("@")
    if "/" in name or name in (".", ".."):
        raise PlatformError("image: %r; the name may not contain '/'" % ref, param="image")
    return name, (digest or None)


class LocalDriver:
    """What the three local roles share: the infra outputs, the supervisord
    and HAProxy clients, the instance table and the counter history."""

    name = "local"
    poll_interval = 0.2

    def __init__(self, infra: dict, image_store: Optional[str] = None,
                 data_dir: Optional[str] = None, drain_timeout: float = 10.0,
                 verify_images: bool = True, clock: Optional[Clock] = None):
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
        # the backend's check settings for the servers we add (an older stack
        # has no check_inter output: HAProxy's default interval, 2s; nor a
        # check_up_inter one: servers that are up are checked every check_inter)
        inter, up_inter = balancer.get("check_inter"), balancer.get("check_up_inter")
        for key, value in (("check_inter", inter), ("check_up_inter", up_inter)):
            if value is not None and not is_time(value):
                raise PlatformError("infra: load_balancer.%s %r is not an HAProxy time "
                                    "(a number with us, ms, s, m, h or d, like 500ms)" % (key, value))
        self.check_words = check_options(inter, up_inter)
        # what the infra restore adds again after HAProxy restarted (see _record_servers)
        self.server_record = balancer.get("server_record") or os.path.join(
            os.path.dirname(balancer["runtime_api"]), "servers.json")
        self.image_store = image_store
        self.data_dir = data_dir or os.path.join(self.state_dir, "rollout")
        self.drain_timeout = float(drain_timeout)
        self.verify_images = verify_images
        self.clock = clock or Clock()
        self.history = _metrics.CounterHistory()
        self._probation = {}  # instance -> pid counted READY while supervisord says STARTING
        self._settled = set()  # instances seen RUNNING and serving: re-read from supervisord when not
        self._conf_cache = {}  # conf file name -> ((inode, size, mtime), metadata)
        self.supervisor = Supervisor(self.endpoint)
        self.finishers = []  # pids of the deletion finishers this driver started

    # ------------------------------------------------------------------ helpers
    @property
    def rpc(self):
        """supervisord's XML-RPC proxy (this thread's connection)."""
        return self.supervisor.rpc

    def _processes(self, names=None) -> dict:
        """supervisord's process table by name; only ``names`` when given
        (the whole table costs supervisord about 0.4 ms per program)."""
        if names is None:
            return self.supervisor.processes()
        return self.supervisor.info(list(names)) if names else {}

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
        """Every instance of ours: conf metadata by instance name.  A conf file
        is only ever replaced whole (written aside, renamed), so one parsed
        before is reused while its inode, size and mtime are the same."""
        out, cache = {}, {}
        try:
            with os.scandir(self.include_dir) as entries:
                confs = [e for e in entries if e.name.endswith(".conf")]
                keys = {}
                for entry in confs:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:  # removed meanwhile
                        continue
                    keys[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            raise PlatformError("supervisord include dir %s: %s" % (self.include_dir, exc))
        for fname, key in keys.items():
            hit = self._conf_cache.get(fname)
            if hit is not None and hit[0] == key:
                meta = hit[1]
            else:
                meta = self._read_meta(os.path.join(self.include_dir, fname))
                if meta is False:
                    continue
            cache[fname] = (key, meta)
            if meta is not None:
                out[meta["instance"]] = meta
        self._conf_cache = cache
        return out

    @staticmethod
    def _read_meta(path):
        """The ``; phoenix:`` metadata of one conf file; None when it has none,
        False when it cannot be read now."""
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(META):
                        meta = json.loads(line[len(META):])
                        meta["conf"] = path
                        return meta
        except ValueError:
            return None
        except OSError:
            return False
        return None

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

    def _free_ports(self, count: int, taken: set) -> list:
        """``count`` free ports of the infra's range on its address (ports.free_ports)."""
        return _ports.free_ports(self.address, self.port_range, count, taken)

    def resolve_image(self, artifact: str, ref: str) -> dict:
        """``_resolve_image`` with every refusal naming the ``image`` parameter."""
        try:
            return self._resolve_image(artifact, ref)
        except PlatformError as exc:
            exc.param = exc.param or "image"
            raise

    def _resolve_image(self, artifact: str, ref: str) -> dict:
        """The bundle of ``ref`` (``name@digest``) in the image store, verified: its target, artifact
        and name come from its place in the store and its entrypoint from the layout, never from the
        bundle's own image.json."""
        name, digest = parse_image_ref(ref)
        root = self.image_store or (_images.default_store() if _images else None)
        if not root or _images is None:
            raise PlatformError("image %s: no image store configured" % ref, param="image")
        path = _images.ImageStore(root).path("local", artifact, name)
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

    _write_private = staticmethod(host.write_private)

    def _conf(self, meta: dict, image: dict, env_file: str, log: str) -> str:
        # the start gate (see _start_gate): wait, sleeping, while a start of the group holds it
        gate = os.path.join(os.path.dirname(env_file), "start.gate")
        inner = "if command -v flock >/dev/null; then flock -s %s true; fi; set -a; . %s; set +a; exec %s" % (
            shlex.quote(gate), shlex.quote(env_file), shlex.quote(image["entrypoint"]))
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
        with self._start_gate(group_dir) as gate:
            self.supervisor.reload_config()
            for answer in self.supervisor.multicall("addProcessGroup", "supervisor.addProcessGroup",
                                                    [[m["instance"]] for m in metas]):
                if isinstance(answer, dict) and answer.get("faultCode") not in (None, 90):
                    raise PlatformError("supervisord addProcessGroup: %s" % answer.get("faultString"))
            self._wait_spawned([m["instance"] for m in metas], gate)
        self._add_servers(backend, metas, weight=0)
        return metas

    @contextlib.contextmanager
    def _start_gate(self, group_dir):
        """supervisord forks the new programs one after the other, and the
        ones already started take the CPU it needs for the next fork (100
        programs took as long to spawn as the machine needs to start them
        all).  Each program first waits on the group's gate file (``flock
        -s``, sleeping) while this holds it; released when all are spawned
        (or when this process dies), they start together."""
        fd = os.open(os.path.join(group_dir, "start.gate"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            # how /proc/locks names this file (fs/locks.c: "%02x:%02x:%lu" of major, minor, inode)
            yield "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        finally:
            os.close(fd)

    @staticmethod
    def _gate_waiters(gate) -> Optional[int]:
        """Processes blocked on the start gate ``gate`` (its /proc/locks id);
        None when /proc/locks does not show the gate (no /proc, another
        namespace): then only supervisord can tell."""
        try:
            with open("/proc/locks") as handle:
                rows = [line.split() for line in handle]
        except OSError:
            return None
        held = waiting = 0
        for row in rows:
            if len(row) > 6 and row[1] == "->" and row[6] == gate:
                waiting += 1
            elif len(row) > 5 and row[1] == "FLOCK" and row[5] == gate:
                held += 1
        return waiting if held else None

    def _wait_spawned(self, names, gate=None, timeout=10.0):
        """Until supervisord has forked each of ``names`` (a pid, or a spawn
        error), at most ``timeout`` seconds on the clock.  Each program
        waits on the start gate first, so while the gate is held the kernel's
        lock table counts the forked ones without a question to supervisord
        (whose whole list, asked every 20 ms, took the CPU it needs to fork);
        supervisord is asked every 50 ms, only about the programs not yet
        seen forked."""
        deadline = self.clock.now() + timeout
        left, ask = list(names), self.clock.now()
        while self.clock.now() < deadline:
            waiters = self._gate_waiters(gate) if gate else None
            if waiters is not None and waiters >= len(names):
                return
            if self.clock.now() >= ask:
                procs = self._processes(left)
                left = [n for n in left if not (n in procs and (
                    procs[n].get("pid") or procs[n]["statename"] not in ("STOPPED", _STARTING)))]
                if not left:
                    return
                ask = self.clock.now() + (0.05 if waiters is not None else 0.02)
            self.clock.sleep(0.02)

    def _add_servers(self, backend, metas, weight):
        present = self._servers(backend)
        commands = []
        for meta in metas:
            srv = "%s/%s" % (backend, meta["instance"])
            if meta["instance"] not in present:
                commands.append(("add", "server", srv, "%s:%d" % (meta["address"], meta["port"]))
                                + self.check_words + ("weight", str(weight)))
            commands += [("set", "server", srv, "weight", str(weight)),
                         ("enable", "health", srv), ("enable", "server", srv)]
        self._haproxy("add server", self.api.batch, commands)
        self._forget_counters([m["instance"] for m in metas if m["instance"] not in present])
        self._record_servers(backend)

    def _forget_counters(self, names):
        """Servers removed or added again restart their counters: a metrics
        window that holds them gives no data, even if a counter has grown back
        past its value at the start of the window."""
        self.history.forget(names)

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
        name = name or group_name(artifact, environment, release_id)
        self._backend(artifact)
        resolved = self._resolve_image(artifact, image)
        self._spawn_pending(self._sweep())
        members = self._members(name)
        self._refuse_deleting(name, members, "created again until it is gone")
        if members:
            raise PlatformError("server group %r already exists" % name)
        self._start_instances(artifact, environment, release_id, name, image, resolved,
                              env, list(range(1, size + 1)), owner=owner)
        self.history.drop(name)
        return ServerGroup(name, artifact, environment, release_id, image, size, 0, True,
                           owner=owner)

    def resize(self, group, size) -> None:
        """Converge the group to ``size`` members; members a dead controller left
        half-removed (program stopped or gone, or alone drained or off the load
        balancer while their siblings serve) are removed and replaced."""
        self._spawn_pending(self._sweep())
        members = self._group_meta(group)
        self._refuse_deleting(group, members, "resized")
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
        procs = self._processes([m["instance"] for m in members])
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
        """Each member from HAProxy's check and supervisord's process table;
        a member seen RUNNING and serving before, and serving still, is not
        asked about again (a poll of 100 starting instances reads only those
        that are not settled yet)."""
        members = self._group_meta(group)
        if self._is_deleting(members):  # being deleted: no member of it is capacity any more
            out = [InstanceHealth(m["instance"], DRAINING, "group being deleted") for m in members]
            return Health(0, len(out), out)
        backend = members[0]["backend"]
        names = [m["instance"] for m in members]
        # supervisord first, HAProxy last: supervisord answers slowly while many
        # instances start (they take the CPU), and a check passed meanwhile counts now
        known = set(self._settled)
        procs = self._processes([n for n in names if n not in known])
        stats = self._stat(backend)
        states = self._servers(backend)
        settled = {n for n in names if n in known and _serving(stats.get(n), states.get(n))}
        lapsed = [n for n in names if n in known and n not in settled]
        if lapsed:  # settled before, not serving now: what does supervisord say
            procs.update(self._processes(lapsed))
        out = []
        for meta in members:
            name = meta["instance"]
            if name in settled:
                out.append(InstanceHealth(name, READY, "up"))
                continue
            proc, row, srv = procs.get(name), stats.get(name), states.get(name)
            health = self._instance_health(meta, proc, row, srv)
            if health.state == READY and proc["statename"] == _RUNNING and _serving(row, srv):
                self._settled.add(name)
            else:
                self._settled.discard(name)
            out.append(health)
        self._snapshot(group, members, stats)
        return Health(sum(1 for i in out if i.state == READY), len(out), out)

    def _instance_health(self, meta, proc, row, srv) -> InstanceHealth:
        """READY once HAProxy's check passed (status UP, L7OK), also while
        supervisord still says STARTING (its ``startsecs`` gate): a first run
        of the program (never stopped) can only have been checked by HAProxy
        in this run (a detached instance is probed now).  Such an instance
        stays on probation until supervisord says RUNNING: if it exits or
        comes back as another process before that, it is FAILED (a crash at
        start), as BACKOFF and FATAL are."""
        name = meta["instance"]
        if proc is None:
            return InstanceHealth(name, STARTING, "not registered with supervisord")
        state = proc["statename"]
        if state in ("FATAL", _BACKOFF):
            return InstanceHealth(name, FAILED, "%s: %s (crash loop; log %s)" % (
                state.lower(), proc.get("spawnerr") or proc.get("description") or "exited",
                proc.get("stdout_logfile")), 1)
        probation = self._probation.get(name)
        if probation is not None and proc.get("pid") != probation:
            self._probation.pop(name, None)
            # it exited by itself (a program made again, or stopped on request, is not a crash)
            if proc.get("stop") and state in (_STARTING, "EXITED"):
                return InstanceHealth(name, FAILED, "exited after passing its health check, "
                                      "before supervisord counted it as started (crash at start; "
                                      "now %s; log %s)" % (state.lower(), proc.get("stdout_logfile")), 1)
        elif probation is not None and state == _RUNNING:
            self._probation.pop(name, None)
        if state not in (_RUNNING, _STARTING):
            return InstanceHealth(name, STARTING, state.lower())
        if srv is None or row is None:  # detached (warm): probe like HAProxy does
            if self._probe(meta):
                if state == _STARTING:
                    self._probation[name] = proc.get("pid")
                return InstanceHealth(name, READY, "%s, detached" % state.lower())
            return InstanceHealth(name, STARTING, "%s, /healthz failing (detached)" % state.lower())
        if srv["admin"] & _ADMIN_DRAIN:
            return InstanceHealth(name, DRAINING, "draining")
        status = row.get("status", "")
        if _serving(row, srv):
            if state == _RUNNING:
                return InstanceHealth(name, READY, "up")
            if not proc.get("stop") and proc.get("pid"):  # first run: the check saw this process
                self._probation[name] = proc["pid"]
                return InstanceHealth(name, READY, "up (starting)")
        return InstanceHealth(name, STARTING, "%s, %s (check %s)" % (
            state.lower(), status, row.get("check_status")))

    @staticmethod
    def _probe(meta) -> bool:
        return host.healthy(meta["address"], meta["port"])

    # -- weights ---------------------------------------------------------------
    def _group_weights(self, backend: str, instances: Optional[dict] = None,
                       servers: Optional[dict] = None) -> dict:
        """Traffic share (0..100) of every group in ``backend`` (weights.group_weights)."""
        instances = self._instances() if instances is None else instances
        servers = self._servers(backend) if servers is None else servers
        return group_weights(servers, instances)

    def set_weights(self, weights) -> None:
        instances = self._instances()
        by_backend = {}
        for group, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise PlatformError("weight %r of %s out of range 0..100" % (weight, group))
            members = self._members(group, instances)
            if not members:
                raise PlatformError("no server group %r" % group)
            if weight > 0:
                self._refuse_deleting(group, members, "given traffic")
            by_backend.setdefault(members[0]["backend"], {})[group] = (weight, members)
        for backend, wanted in by_backend.items():
            self._apply_weights(backend, wanted, instances)
        for backend, wanted in by_backend.items():  # a counter snapshot at the change
            stats = self._stat(backend)
            for group, (_weight, members) in wanted.items():
                self._snapshot(group, members, stats)

    def verify_weights(self, weights) -> bool:
        """True when HAProxy serves ``weights`` (shares derived from its
        server weights, a weighted group attached)."""
        instances = self._instances()
        backends = {}
        for group in weights:
            members = self._members(group, instances)
            if not members:
                return False
            backends.setdefault(members[0]["backend"], []).append(group)
        for backend, groups in backends.items():
            servers = self._servers(backend)
            shares = self._group_weights(backend, instances, servers)
            stats = self._stat(backend)
            for group in groups:
                members = self._members(group, instances)
                self._snapshot(group, members, stats)
                attached = any(m["instance"] in servers and not servers[m["instance"]]["admin"]
                               & (_ADMIN_MAINT | _ADMIN_DRAIN) for m in members)
                if shares.get(group, 0) != weights[group] or (weights[group] and not attached):
                    return False
        return True

    def _apply_weights(self, backend, wanted, instances):
        servers = self._servers(backend)
        # re-attach detached groups that get traffic again: add their servers
        # with weight 0, wait until HAProxy's checks pass, then weigh them
        missing = [m for _g, (w, members) in wanted.items() if w > 0
                   for m in members if m["instance"] not in servers
                   or servers[m["instance"]]["admin"] & (_ADMIN_MAINT | _ADMIN_DRAIN)]
        if missing:
            self._add_servers(backend, missing, weight=0)
            self._wait_up(backend, missing, deadline=self.clock.now() + 30)
            servers = self._servers(backend)
        commands = weight_commands(backend, servers, instances,
                                   {g: w for g, (w, _members) in wanted.items()})
        # raise first, lower after: never a moment where every weight is 0
        self._haproxy("set weight", self.api.batch, commands)
        self._record_servers(backend)

    def _wait_up(self, backend, metas, deadline):
        names = {m["instance"] for m in metas}
        while True:
            stats = self._stat(backend)
            if all(stats.get(n, {}).get("check_status") == "L7OK"
                   and stats[n].get("status", "").startswith("UP") for n in names):
                return
            if self.clock.now() > deadline:
                raise PlatformError("re-attached servers of %s did not pass HAProxy's health "
                                    "check within 30s" % ", ".join(sorted(names)))
            self.clock.sleep(0.1)

    # -- drain / remove ----------------------------------------------------------
    def _drain_servers(self, backend, names):
        """drain -> wait for no current sessions (``drain_timeout``) -> maint ->
        sessions still open after the timeout are shut -> del server.  The
        waits run on the driver's clock."""
        servers = self._servers(backend)
        names = [n for n in names if n in servers]
        if not names:
            return
        self._haproxy("drain", self.api.batch, [
            ("set", "server", "%s/%s" % (backend, n), "state", "drain") for n in names])
        self._record_servers(backend)
        busy = self._wait_sessions(backend, names, self.drain_timeout)
        self._haproxy("maint", self.api.batch, [
            ("set", "server", "%s/%s" % (backend, n), "state", "maint") for n in names])
        if busy:  # HAProxy refuses to delete a server with sessions attached
            self._haproxy("shutdown sessions", self.api.batch, [
                ("shutdown", "sessions", "server", "%s/%s" % (backend, n)) for n in busy])
            self._wait_sessions(backend, busy, 5.0)
        self._haproxy("del server", self.api.batch, [
            ("del", "server", "%s/%s" % (backend, n)) for n in names])
        self._forget_counters(names)
        self._record_servers(backend)

    def _wait_sessions(self, backend, names, timeout) -> list:
        """Wait (on the clock) until ``names`` have no current sessions; the
        names that still have some after ``timeout``."""
        deadline = self.clock.now() + timeout
        while True:
            stats = self._stat(backend)
            busy = [n for n in names if int(stats.get(n, {}).get("scur") or 0) > 0]
            if not busy or self.clock.now() >= deadline:
                return busy
            self.clock.sleep(0.05)

    def _remove(self, backend, metas):
        """Drain from HAProxy, SIGTERM (the service drains too), wait, remove."""
        names = [m["instance"] for m in metas]
        for name in names:
            self._probation.pop(name, None)
            self._settled.discard(name)
        self._drain_servers(backend, names)
        procs = self._processes(names)
        known = list(procs)
        running = [n for n in known if procs[n]["statename"] not in _STOPPED]
        self.supervisor.multicall("stopProcess", "supervisor.stopProcess", [[n, False] for n in running])
        deadline = self.clock.now() + self.drain_timeout + 10
        while running:
            if self.clock.now() > deadline:
                raise PlatformError("instances %s did not stop within %gs"
                                    % (", ".join(running), self.drain_timeout + 10))
            self.clock.sleep(0.1)
            procs = self._processes(running)
            running = [n for n in running if n in procs and procs[n]["statename"] not in _STOPPED]
        self.supervisor.multicall("removeProcessGroup", "supervisor.removeProcessGroup",
                                  [[n] for n in known])
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
        self._refuse_deleting(group, members, "put back into the load balancer")
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
        """Off HAProxy (drained), marked deleting, stop requested; the rest is
        the finisher's (see the module docstring).  Returns without waiting
        for a member to stop."""
        pending = self._sweep()
        members = self._members(group)
        if not members or any(m.get("deleting") for m in members):
            return  # gone, or deleting (the sweep did what it needs)
        names = [m["instance"] for m in members]
        for name in names:
            self._probation.pop(name, None)
            self._settled.discard(name)
        self._drain_servers(members[0]["backend"], names)
        self._delete(group, members, pending)
        if pending:
            self._spawn_finisher(pending)

    # -- platform-owned deletion ------------------------------------------------
    @staticmethod
    def _is_deleting(members) -> bool:
        return any(m.get("deleting") for m in members)

    def _refuse_deleting(self, group, members, what):
        """A group under deletion is never started, resized or routed to again."""
        if self._is_deleting(members):
            raise PlatformError("server group %s is being deleted (its programs are stopping); it "
                                "cannot be %s; deploy or restore the release as a new group" % (group, what))

    def _mark_deleting(self, metas) -> None:
        """Rewrite each conf (aside + rename) with ``"deleting": true`` in its
        metadata and ``autostart=false``, ``autorestart=false``."""
        for meta in metas:
            if meta.get("deleting"):
                continue
            try:
                with open(meta["conf"]) as handle:
                    text = handle.read()
            except FileNotFoundError:
                continue
            lines = []
            for line in text.split("\n"):
                if line.startswith(META):
                    doc = json.loads(line[len(META):])
                    doc["deleting"] = True
                    line = META + json.dumps(doc, sort_keys=True)
                elif line.startswith("autostart="):
                    line = "autostart=false"
                elif line.startswith("autorestart="):
                    line = "autorestart=false"
                lines.append(line)
            self._write_private(meta["conf"], "\n".join(lines))
            meta["deleting"] = True

    def _stop_deleting(self, names, procs) -> None:
        """``stopProcess(name, wait=False)`` for the members still running."""
        running = [n for n in names if n in procs and procs[n]["statename"] in (_RUNNING, _STARTING, _BACKOFF)]
        answers = self.supervisor.multicall("stopProcess", "supervisor.stopProcess",
                                            [[n, False] for n in running])
        for name, answer in zip(running, answers):
            if isinstance(answer, dict) and answer.get("faultCode") not in (None, _BAD_NAME, _NOT_RUNNING):
                raise PlatformError("supervisord stopProcess %s: %s" % (name, answer.get("faultString")))

    def _reap(self, group, members, procs) -> bool:
        """Remove the marked members of ``group`` that stopped (or that
        supervisord does not know): program, log files, conf; the group's
        own files go before its last confs, so its name is free only once
        nothing of it is left.  True when the group is gone."""
        done = [m for m in members if m.get("deleting") and (
            m["instance"] not in procs or procs[m["instance"]]["statename"] in _STOPPED)]
        if not done:
            return False
        known = [m["instance"] for m in done if m["instance"] in procs]
        answers = self.supervisor.multicall("removeProcessGroup", "supervisor.removeProcessGroup",
                                            [[n] for n in known])
        refused = {n for n, answer in zip(known, answers)
                   if isinstance(answer, dict) and answer.get("faultCode") not in (None, _BAD_NAME)}
        done = [m for m in done if m["instance"] not in refused]
        for meta in done:
            log = os.path.join(self.data_dir, group, "%03d.log" % meta["index"])
            for path in (log, log + ".1"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        last = len(done) == len(members)
        if last:
            group_dir = os.path.join(self.data_dir, group)
            for fname in ("env", "env.tmp", "start.gate"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(group_dir, fname))
            with contextlib.suppress(OSError):
                os.rmdir(group_dir)
        for meta in done:
            for path in (meta["conf"], meta["conf"] + ".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return last

    def _sweep(self) -> list:
        """The deleting groups of this include dir, brought forward without
        waiting: a half-marked group is marked whole (and off HAProxy), stops
        are sent again, stopped members removed.  Returns the groups that
        still have members (for a finisher)."""
        instances = self._instances()
        deleting = {}
        for meta in instances.values():
            if meta.get("deleting"):
                deleting[meta["group"]] = True
        pending = []
        for group in sorted(deleting):
            members = self._members(group, instances)
            names = [m["instance"] for m in members]
            backend = members[0]["backend"]
            servers = self._servers(backend)
            attached = [n for n in names if n in servers]
            if attached:  # never re-added by us; removed again if anything did
                self._drain_servers(backend, attached)
            self._delete(group, members, pending)
        return pending

    def _delete(self, group, members, pending) -> None:
        """Mark ``group`` (off HAProxy) deleting, ask supervisord to stop its
        members, remove those already stopped; ``pending`` gets the group
        when members are left for a finisher."""
        self._mark_deleting(members)
        names = [m["instance"] for m in members]
        procs = self._processes(names)
        self._stop_deleting(names, procs)
        if not self._reap(group, members, procs):
            pending.append(group)
        self.history.drop(group)

    def _spawn_pending(self, pending) -> None:
        if pending:
            self._spawn_finisher(pending)

    def _spawn_finisher(self, groups) -> int:
        """A detached process (``detach.spawn_daemon``: its own session, no
        inherited descriptor but stdio on /dev/null) that removes the members
        of the deleting ``groups`` as they stop, for at most ``drain_timeout``
        + FINISH_GRACE seconds; what is left then goes at the next sweep."""
        bound = self.drain_timeout + FINISH_GRACE

        def finish():
            self.supervisor = Supervisor(self.endpoint)  # a connection of its own
            self._conf_cache = {}
            end = time.monotonic() + bound
            left = list(groups)
            while left:
                try:
                    instances = self._instances()
                    still = []
                    for group in left:
                        members = [m for m in self._members(group, instances) if m.get("deleting")]
                        if members and not self._reap(group, members, self._processes(
                                [m["instance"] for m in members])):
                            still.append(group)
                    left = still
                except PlatformError:  # supervisord restarting: try again until the bound
                    pass
                if not left or time.monotonic() >= end:
                    return
                time.sleep(0.1)
        pid = spawn_daemon(finish)
        self.finishers.append(pid)
        return pid

    # -- observation ---------------------------------------------------------------
    def list_groups(self, artifact, environment) -> list:
        instances = self._instances()
        mine = [m for m in instances.values()
                if m["artifact"] == artifact and m["environment"] == environment]
        if not mine:
            return []
        backend = self._backend(artifact)
        servers = self._servers(backend)
        # a member seen RUNNING and serving (health), serving still, is in the
        # process table: supervisord is asked about the others only
        known = set(self._settled)
        if known:
            stats = self._stat(backend)
            known = {n for n in known if _serving(stats.get(n), servers.get(n))}
        procs = self._processes([m["instance"] for m in mine
                                 if not m.get("deleting") and m["instance"] not in known])
        procs.update({n: {"statename": _RUNNING} for n in known})
        weights = self._group_weights(backend, instances, servers)
        groups = {}
        for meta in mine:
            entry = groups.setdefault(meta["group"], {"meta": meta, "size": 0, "attached": False,
                                                      "deleting": False})
            if meta["instance"] in procs:
                entry["size"] += 1
            srv = servers.get(meta["instance"])
            if srv is not None and not srv["admin"] & (_ADMIN_MAINT | _ADMIN_DRAIN):
                entry["attached"] = True
            entry["deleting"] = entry["deleting"] or bool(meta.get("deleting"))
        out = []
        for name, e in sorted(groups.items()):
            if e["deleting"]:  # no capacity, no traffic, until its last conf is gone
                e["size"], e["attached"] = 0, False
            out.append(ServerGroup(name, artifact, environment, e["meta"]["release_id"],
                                   e["meta"]["image"], e["size"], weights.get(name, 0)
                                   if e["attached"] else 0, e["attached"], e["meta"].get("owner"),
                                   deleting=e["deleting"]))
        return out

    def _process(self) -> str:
        return self._haproxy("show info", self.api.process_id)

    def _snapshot(self, group, members, stats):
        """Record the group's counters now (see metrics.CounterHistory)."""
        counts = _metrics.counters(members, stats)
        self.history.add(group, self.clock.now(), counts, self._process())
        return counts
