"""Fixtures for the local-platform infra tests: a throwaway Pulumi stack of the
real ``infra/`` program, driven through the Automation API.

The stack lives in a temp dir (own file backend, own state dir, own loopback
block), never in the repository: a tiny project file there points ``main`` at
``infra/``, so ``Pulumi.<stack>.yaml`` is written to the temp dir, not to
``infra/``. Used by ``bench/infra_local.py`` too (``TempLocalStack``)."""
import copy
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from pulumi import automation as auto

ROOT = pathlib.Path(__file__).resolve().parents[2]
PIDFILES = {  # relative to the state dir -> process name expected in its command line
    "postgres/data/postmaster.pid": "postgres",
    "haproxy/haproxy.pid": "haproxy",
    "supervisor/supervisord.pid": "supervisord",
    "registry-dev/registry.pid": "docker-registry",
    "registry-prod/registry.pid": "docker-registry",
}


def read_pid(path):
    try:
        return int(pathlib.Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid, hint=None):
    """True if pid runs (zombies do not count) and its command line mentions hint."""
    if not pid:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and (hint is None or hint in cmdline)


BLOCK_LOCKS = pathlib.Path(tempfile.gettempdir()) / "phoenix-test-blocks"


def lease_block(prefix):
    """A free loopback block ``<prefix>.<n>.0/24`` (prefix like ``127.22``) and
    the open lock file that reserves it: n starts at pid % 250 + 1 and moves on
    while another test process (an xdist worker, another checkout) holds the
    block's flock.  The lock goes with the fd, so a killed run frees it."""
    BLOCK_LOCKS.mkdir(exist_ok=True)
    start = os.getpid() % 250
    for step in range(250):
        n = (start + step) % 250 + 1
        fd = os.open(BLOCK_LOCKS / f"{prefix}.{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return f"{prefix}.{n}.0/24", fd
    raise RuntimeError(f"every loopback block {prefix}.1-250.0/24 is leased")


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class TempLocalStack:
    """One stack of the infra program with platform=local in a temp dir."""

    def __init__(self, name=None, block=None, artifacts=("catalog", "search"), extra_config=None):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="phx-"))  # short: unix socket paths
        self.name = name or f"it-{os.getpid() % 100000}"
        self.block_lock = None
        if block is None:
            block, self.block_lock = lease_block("127.22")
        self.block = block
        self.state_dir = self.tmp / "st"
        self.log = []  # every line Pulumi printed, for the secret check
        self.destroyed = False
        self._outputs = None  # (checkpoint, outputs)
        proj = self.tmp / "proj"
        proj.mkdir()
        (self.tmp / "backend").mkdir()
        (proj / "Pulumi.yaml").write_text(json.dumps({
            "name": "phoenix-infra",
            "runtime": {"name": "python", "options": {"virtualenv": str(ROOT / ".venv")}},
            "main": str(ROOT / "infra"),
        }))
        config = {"phoenix-infra:platform": "local", "phoenix-infra:artifacts": list(artifacts),
                  "phoenix-infra:state_dir": str(self.state_dir),
                  "phoenix-infra:address_block": self.block,
                  "phoenix-infra:port_range": "25000-25999"}
        config.update(extra_config or {})
        (proj / f"Pulumi.{self.name}.yaml").write_text(json.dumps({"config": config}))
        env = {"PULUMI_BACKEND_URL": f"file://{self.tmp / 'backend'}",
               "PULUMI_CONFIG_PASSPHRASE": os.environ.get("PULUMI_CONFIG_PASSPHRASE", "phoenix-local"),
               "PULUMI_SKIP_UPDATE_CHECK": "1", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}
        self.proj, self.env = proj, env
        ws = auto.LocalWorkspace(work_dir=str(proj), env_vars=env, secrets_provider="passphrase")
        self.stack = auto.Stack.create(self.name, ws)

    # -- pulumi operations (output captured in self.log)
    def _capture(self, op, **kw):
        try:
            return op(on_output=self.log.append, color="never", **kw)
        except auto.CommandError as exc:
            self.log.append(str(exc))
            raise

    def up(self, **kw):
        result = self._capture(self.stack.up, **kw)
        self._outputs = (self._checkpoint(), {k: v.value for k, v in result.outputs.items()})  # read by up
        return result

    def refresh(self, **kw):
        return self._capture(self.stack.refresh, **kw)

    def destroy(self, **kw):
        result = self._capture(self.stack.destroy, **kw)
        self.destroyed = True
        return result

    def cli(self, *args, timeout=300):
        """Run the pulumi CLI itself on this stack (output captured in self.log)."""
        proc = subprocess.run(["pulumi", *args, "--stack", self.name, "--non-interactive"],
                              cwd=self.proj, env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=timeout, check=False)
        self.log.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"pulumi {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def set_config(self, key, value):
        self.stack.set_config(f"phoenix-infra:{key}", auto.ConfigValue(str(value)))

    def remove_config(self, key):
        self.stack.remove_config(f"phoenix-infra:{key}")

    def _checkpoint(self):
        """(mtime, size) of the stack's checkpoint in the file backend: it
        changes with every update of the stack, by whichever process."""
        try:
            st = os.stat(self.tmp / "backend" / ".pulumi" / "stacks" / "phoenix-infra" / f"{self.name}.json")
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def outputs(self):
        """The stack outputs (a fresh copy), read again only when the stack's
        checkpoint changed: each read is two Pulumi CLI runs."""
        key = self._checkpoint()
        if self._outputs is None or key is None or self._outputs[0] != key:
            self._outputs = (key, {k: v.value for k, v in self.stack.outputs().items()})
        return copy.deepcopy(self._outputs[1])

    # -- processes
    def pid(self, rel):
        return read_pid(self.state_dir / rel)

    def live_pids(self):
        return {rel: pid for rel, hint in PIDFILES.items()
                if pid_alive(pid := self.pid(rel), hint)}

    def cleanup(self):
        """Destroy if still up; then stop (by pid, from our own pidfiles) anything
        a failed destroy left, and remove the temp dir."""
        if not self.destroyed:
            try:
                self.destroy()
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        for rel, hint in PIDFILES.items():
            pid = self.pid(rel)
            if pid_alive(pid, hint):
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not pid_alive(pid), 10)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.block_lock is not None:
            os.close(self.block_lock)
            self.block_lock = None


@pytest.fixture(scope="module")
def local_stack():
    """A local-platform stack, `pulumi up` done; destroyed and removed at the end."""
    stack = TempLocalStack()
    try:
        stack.up_result = stack.up()
        yield stack
    finally:
        stack.cleanup()
