"""Restoring supervisord after it died, while the instances it had started live on.

A SIGKILLed supervisord leaves its programs running (re-parented to init):
they keep their ports and keep serving through HAProxy, but nothing supervises
them any more, and a new supervisord could not start the programs of its
include dir on their recorded ports. We do not adopt them (supervisord cannot
take over a process it did not fork, and an unsupervised instance neither
restarts after a crash nor stops on ``destroy``). Phoenix-style, each is
*replaced*: in rounds that keep every group serving (at most a quarter of a
group, at least one instance, per round), an orphan's HAProxy server is set to
drain, the orphan gets SIGTERM (the service drains in-flight requests; SIGKILL
after the program's ``stopwaitsecs``), supervisord starts the program afresh on
its recorded port, and once ``/healthz`` answers and HAProxy sees it UP the
server is set ready again (same weight). Orphans whose program file is gone
are stopped, and so are orphans of a group the rollout engine was deleting
(``"deleting": true`` in the metadata): they are never started again, the
driver's next sweep removes their programs. Orphans that no longer answer ``/healthz`` are no capacity to
keep: they are all replaced at once, before the rounds (an app that logs to
its stdout fails its requests once supervisord, the reader of that pipe, is
gone - the sample catalog service does).

The new supervisord first starts without its ``[include]`` section (so it
cannot race the orphans for their ports), the section is put back and the
programs are added through XML-RPC. ``restore-drained.json`` names the servers
this restore set to drain, so a restore that was itself interrupted hands them
back on the next ``pulumi up``.

Plain functions, no module-level state (see ``providers.py``)."""
import json
import os
import re
import time
import xmlrpc.client

from phoenix_infra.local import procs

META = "; phoenix: "
ALREADY_ADDED = 90  # supervisord fault code
_STOPWAIT = re.compile(r"^stopwaitsecs\s*=\s*(\d+)\s*$", re.M)


def instances(include_dir):
    """``{program: meta}`` from the ``; phoenix:`` line of each program file
    (written by the rollout engine), plus its ``stopwaitsecs``."""
    out = {}
    try:
        names = sorted(os.listdir(include_dir))
    except OSError:
        return out
    for fname in names:
        if not fname.endswith(".conf"):
            continue
        text = procs.read_text(os.path.join(include_dir, fname)) or ""
        for line in text.splitlines():
            if line.startswith(META):
                try:
                    meta = json.loads(line[len(META):])
                    name = meta["instance"]
                except (ValueError, KeyError, TypeError):
                    break
                found = _STOPWAIT.search(text)
                meta["stopwaitsecs"] = int(found.group(1)) if found else 10
                out[name] = meta
                break
    return out


def _runtime(sock, command):
    """One HAProxy runtime API command; None when HAProxy cannot be reached."""
    if not sock or not os.path.exists(sock):
        return None
    try:
        return procs.haproxy_runtime(sock, command)
    except OSError:
        return None


def server_state(sock, backend, name):
    """``(op_state, admin_state)`` of HAProxy server ``backend/name`` or None
    (op_state 2 = UP; admin 0 = ready, 0x08 = drain)."""
    text = _runtime(sock, f"show servers state {backend}") or ""
    try:
        srv = procs.haproxy.parse_servers_state(text, strict=False).get(name)
    except ValueError:
        return None
    return (srv["op_state"], srv["admin"]) if srv else None


def serving(sock, backend, name):
    """True when HAProxy sends ``backend/name`` traffic and its last check
    passed: ``show stat`` status exactly UP (not "UP 1/2", a server going
    down) and check L7OK -- what the rollout driver counts as ready. A
    server HAProxy does not know (or an unreachable HAProxy) is not waited on."""
    text = _runtime(sock, f"show stat {backend} 4 -1")
    if text is None:
        return True
    try:
        row = procs.haproxy.parse_stat(text, backend).get(name)
    except procs.haproxy.RuntimeAPIError:
        return True
    return row is None or (row.get("status") == "UP" and row.get("check_status") == "L7OK")


def healthy(meta):
    return procs.healthy(meta["address"], int(meta["port"]))


def _add(rpc, names):
    if not names:
        return
    calls = [{"methodName": "supervisor.addProcessGroup", "params": [n]} for n in names]
    for name, answer in zip(names, rpc.system.multicall(calls)):
        if isinstance(answer, dict) and answer.get("faultCode") not in (None, ALREADY_ADDED):
            raise procs.InfraError(f"supervisord could not add program {name}: {answer.get('faultString')}")


def _state_of(rpc, name):
    try:
        return rpc.supervisor.getProcessInfo(name)["statename"]
    except (OSError, xmlrpc.client.Error):
        return None


class _Drained:
    """The servers this restore set to drain, kept in a file across crashes."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path) as fh:
                self.names = {k: tuple(v) for k, v in json.load(fh).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            self.names = {}

    def save(self):
        if self.names:
            procs.write_private(self.path, json.dumps(self.names, sort_keys=True))
        elif os.path.exists(self.path):
            os.unlink(self.path)


def _ready(lb_sock, drained, names, timeout=15):
    """Hand drained servers back to HAProxy (state ready) and wait until UP."""
    for name in names:
        backend, server = drained.names[name]
        _runtime(lb_sock, f"set server {backend}/{server} state ready")
    procs.wait_until(lambda: all(serving(lb_sock, *drained.names[n]) for n in names), timeout, 0.1)
    for name in names:
        drained.names.pop(name, None)
    drained.save()


def _replace(rpc, batch, metas, orphans, lb_sock, drained):
    """Drain, stop and start afresh the programs in ``batch``."""
    for name in batch:
        meta = metas[name]
        state = server_state(lb_sock, meta.get("backend"), name) if meta.get("backend") else None
        if state is not None and state[1] == 0:
            _runtime(lb_sock, f"set server {meta['backend']}/{name} state drain")
            drained.names[name] = (meta["backend"], name)
    drained.save()
    grace = max(metas[n]["stopwaitsecs"] for n in batch)
    started = time.monotonic()
    procs.stop_pids([pid for n in batch for pid in orphans.get(n, [])], grace)
    timing = {"stop_s": round(time.monotonic() - started, 2)}
    procs.wait_until(lambda: all(procs.port_free(metas[n]["address"], int(metas[n]["port"]))
                                 for n in batch), 10, 0.05)
    _add(rpc, batch)
    # bounded: an instance that cannot start is left to supervisord (and the
    # rollout engine's health checks); the restore itself goes on
    procs.wait_until(lambda: all(_state_of(rpc, n) in ("RUNNING", "FATAL", "EXITED") and
                                 (_state_of(rpc, n) != "RUNNING" or healthy(metas[n]))
                                 for n in batch), 60, 0.1)
    timing["healthy_s"] = round(time.monotonic() - started, 2)
    _ready(lb_sock, drained, [n for n in batch if n in drained.names])
    timing["up_s"] = round(time.monotonic() - started, 2)
    return timing


def restore_programs(rpc, include_dir, orphans, lb_sock, state_path):
    """Bring every program of ``include_dir`` under the (new) supervisord
    behind ``rpc``, replacing the ``orphans`` ({program: [pid]}) of the old one.
    Returns a summary dict for the log."""
    metas = instances(include_dir)
    deleting = {n for n, meta in metas.items() if meta.get("deleting")}
    added = rpc.supervisor.reloadConfig()[0][0]  # in the config, not yet in the process table
    pending = [n for n in added if n in metas and n not in deleting]
    strays = [pid for n, pids in orphans.items() if n not in metas or n in deleting for pid in pids]
    procs.stop_pids(strays, 30)
    # programs whose process is gone (and program files without our metadata): start now
    # (a deleting program is not: its autostart=false, the driver removes it)
    _add(rpc, [n for n in added if (n not in orphans or n not in metas) and n not in deleting])
    drained = _Drained(state_path)
    # an orphan that no longer answers /healthz is no capacity to keep: all of
    # them are replaced at once, first (an app that logs to stdout typically
    # fails every request once supervisord, the reader of its pipe, is gone)
    sick = [n for n in pending if n in orphans and not healthy(metas[n])]
    timings = []
    if sick:
        timings.append(_replace(rpc, sick, metas, orphans, lb_sock, drained))
    groups = {}
    for name in pending:
        if name in orphans and name not in sick:
            groups.setdefault(metas[name]["group"], []).append(name)
    sizes = {g: sum(1 for m in metas.values() if m["group"] == g) for g in groups}
    while any(groups.values()):
        batch = []
        for group, names in groups.items():
            take = max(1, sizes[group] // 4)
            batch += names[:take]
            del names[:take]
        timings.append(_replace(rpc, batch, metas, orphans, lb_sock, drained))
    if drained.names:  # left drained by an interrupted restore
        _ready(lb_sock, drained, list(drained.names))
    return {"replaced": sum(1 for n in pending if n in orphans), "sick": len(sick), "started": len(added),
            "stopped_strays": len(strays), "rounds": timings}
