"""Small process and filesystem helpers for the local dynamic providers.

Plain functions, no module-level state: the providers that call them are
pickled by reference into the Pulumi state and this module is imported again
in the provider process (cwd ``infra/``)."""
import errno
import os
import shutil
import signal
import socket
import subprocess
import time


class InfraError(Exception):
    """An error whose message is shown to the user as is."""


def ensure_dir(path, mode=0o700):
    """Create ``path`` (and parents) if missing; return True if it was created."""
    created = not os.path.isdir(path)
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    return created


def write_private(path, text):
    """Write ``text`` to ``path`` atomically with mode 0600."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def remove_tree(path):
    if os.path.isdir(path):
        shutil.rmtree(path)


def port_free(address, port):
    """True if ``address:port`` can be bound right now (probe by binding, with
    SO_REUSEADDR like the servers, so TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise InfraError(f"cannot bind {address}:{port}: {exc}") from exc
    return True


def require_free(address, port, what):
    if not port_free(address, port):
        raise InfraError(f"port {address}:{port} ({what}) is already in use by another process; "
                         f"free it or choose another port / port_range")


def read_pid(pidfile):
    """The first line of ``pidfile`` as an int, or None."""
    try:
        with open(pidfile) as fh:
            return int(fh.readline().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid, exe_hint=None):
    """True if ``pid`` runs and (if given) its command line mentions ``exe_hint``
    (guards against a recycled pid). Zombies count as dead."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return exe_hint is None or exe_hint in cmdline


def wait_until(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pid(pid, exe_hint, sig=signal.SIGTERM, timeout=30):
    """Signal ``pid`` (only if it is still the process we started) and wait for it
    to exit; SIGKILL after ``timeout``. Returns True if it was running."""
    if not pid_alive(pid, exe_hint):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    if not wait_until(lambda: not pid_alive(pid), timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_until(lambda: not pid_alive(pid), 5)
    return True


def daemon_env():
    """The environment for long-lived processes: without Pulumi's variables
    (PULUMI_CONFIG_PASSPHRASE must not reach supervisord's programs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PULUMI")}


def run(cmd, what, timeout=60, **kw):
    """Run ``cmd`` with ``daemon_env()``; raise InfraError with its output (not
    the command line, which may be long) when it fails."""
    kw.setdefault("env", daemon_env())
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        proc = subprocess.run(cmd, timeout=timeout, check=False, **kw)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what} did not finish within {timeout} s") from exc
    if proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise InfraError(f"{what} failed (exit {proc.returncode}): {out[-2000:]}")
    return proc


def tail(path, lines=20):
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip()
    except OSError:
        return ""


def read_text(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


# --------------------------------------------------------------------------- supervised processes

def _proc_stat(pid):
    """(state, ppid) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def descends_from(pid, ancestor):
    """True if ``ancestor`` is ``pid``'s parent, grand-parent, ..."""
    seen = set()
    while pid and pid not in seen and pid != 1:
        seen.add(pid)
        stat = _proc_stat(pid)
        if stat is None:
            return False
        pid = stat[1]
        if pid == ancestor:
            return True
    return False


def supervised_orphans(sock, supervisor_pid=None):
    """Processes a supervisord on unix socket ``sock`` started (supervisord puts
    ``SUPERVISOR_SERVER_URL=unix://<sock>`` and ``SUPERVISOR_PROCESS_NAME`` in
    every program's environment; children inherit it) that the live
    ``supervisor_pid`` (if any) did not start: ``{program name: [pid, ...]}``."""
    url = f"unix://{sock}"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        env = _environ(pid)
        if env.get("SUPERVISOR_SERVER_URL") != url:
            continue
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        if supervisor_pid and descends_from(pid, supervisor_pid):
            continue
        found.setdefault(env.get("SUPERVISOR_PROCESS_NAME", "?"), []).append(pid)
    return found


def stop_pids(pids, grace):
    """SIGTERM every pid, wait up to ``grace`` seconds, then SIGKILL what is
    left. Returns the pids that needed a SIGKILL."""
    live = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            live.append(pid)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(pid_alive(p) for p in live), grace)
    killed = []
    for pid in live:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    wait_until(lambda: not any(pid_alive(p) for p in killed), 10)
    return killed


def haproxy_runtime(sock, command):
    """One command on HAProxy's runtime API (a line-based text protocol on
    the unix socket); the infra's one client for it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(sock)
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()
