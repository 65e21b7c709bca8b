"""A private containerd for tests: Debian's containerd + runc, its own root, state and sockets.

``containerd`` (session fixture) starts ``containerd --config <tmp>/config.toml`` with ``root``,
``state``, the gRPC and ttrpc sockets under a temp dir (never the system's /run/containerd), the
CRI plugin off, the overlayfs snapshotter and the runc v2 runtime. What it offers:

* ``import_layout(layout, ref)``: ``ctr images import`` of an OCI image layout (as a tar);
* ``pull(ref, plain_http=True)``: ``ctr images pull`` from a registry (loopback);
* ``run(ref, env)``: ``ctr run -d --net-host`` with the given environment, output to a log file;
  returns a :class:`Container` (``stop()``, ``output()``, ``exited()``).

Every container is killed and deleted at the end; containerd itself is ended by its pid and its
mounts under the temp dir are unmounted. A missing tool fails the test (make setup installs them)."""
import os
import pathlib
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

import pytest

from fixtures_bake import http

TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
NAMESPACE = "phoenix-test"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Container(object):
    def __init__(self, daemon, cid, log):
        self.daemon, self.id, self.log = daemon, cid, log

    def output(self):
        try:
            return pathlib.Path(self.log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self):
        out = self.daemon.ctr("tasks", "ls", check=False).stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == self.id:
                return parts[-1]
        return None

    def exited(self):
        return self.status() in (None, "STOPPED")

    def stop(self, timeout=30):
        """SIGTERM, wait (bounded), SIGKILL, then delete the task and the container."""
        self.daemon.ctr("tasks", "kill", "-s", "SIGTERM", self.id, check=False)
        deadline = time.monotonic() + timeout
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not self.exited():
            self.daemon.ctr("tasks", "kill", "-s", "SIGKILL", self.id, check=False)
            deadline = time.monotonic() + 10
            while not self.exited() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.daemon.ctr("tasks", "delete", self.id, check=False)
        self.daemon.ctr("containers", "delete", self.id, check=False)


class Containerd(object):
    def __init__(self, base):
        self.base = pathlib.Path(base)
        self.address = str(self.base / "containerd.sock")
        self.proc = None
        self.containers = []
        self._n = 0

    def config(self):
        b = self.base
        return "\n".join([
            "version = 2",
            'root = "%s"' % (b / "root"),
            'state = "%s"' % (b / "state"),
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            '  address = "%s"' % self.address,
            "[ttrpc]",
            '  address = "%s.ttrpc"' % self.address,
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.service.v1.diff-service"]',
            '  default = ["walking"]',
            "",
        ])

    def start(self, timeout=30):
        (self.base / "config.toml").write_text(self.config())
        self.logf = open(self.base / "containerd.log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("containerd exited %s:\n%s" % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.address) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("containerd not answering on %s after %ss:\n%s"
                             % (self.address, timeout, self.log_tail()))

    def log_tail(self, n=40):
        self.logf.flush()
        return "\n".join((self.base / "containerd.log").read_text(errors="replace").splitlines()[-n:])

    def ctr(self, *args, check=True, timeout=300):
        proc = subprocess.run(["ctr", "--address", self.address, "--namespace", NAMESPACE] + list(args),
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("ctr %s failed (%d): %s\n%s" % (" ".join(args), proc.returncode,
                                                                 proc.stderr.strip(), self.log_tail(15)))
        return proc

    def import_layout(self, layout, name):
        """Import an OCI image layout (as a tar) under image name ``name``; returns ``name@sha256:...``
        of its image (the layout's manifest digest)."""
        archive = self.base / ("import-%d.tar" % time.monotonic_ns())
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(os.listdir(layout)):
                tar.add(os.path.join(layout, entry), arcname=entry)
        try:
            out = self.ctr("images", "import", "--base-name", name, "--digests", "--snapshotter", "overlayfs",
                           str(archive)).stdout
        finally:
            archive.unlink()
        refs = [w for w in out.split() if w.startswith(name + "@sha256:")]
        if not refs:
            raise AssertionError("ctr images import gave no %s@sha256:... image:\n%s" % (name, out))
        return refs[0]

    def pull(self, ref, plain_http=True):
        args = ["images", "pull", "--snapshotter", "overlayfs"] + (["--plain-http"] if plain_http else []) + [ref]
        return self.ctr(*args)

    def image_digest(self, ref):
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == ref:
                return parts[2]
        return None

    def run(self, ref, env, name=None):
        self._n += 1
        cid = name or "phoenix-test-%d-%d" % (os.getpid(), self._n)
        log = self.base / ("%s.log" % cid)
        args = ["run", "-d", "--net-host", "--snapshotter", "overlayfs", "--log-uri", "file://%s" % log]
        for key in sorted(env):
            args += ["--env", "%s=%s" % (key, env[key])]
        self.ctr(*(args + [ref, cid]))
        c = Container(self, cid, log)
        self.containers.append(c)
        return c

    def stop(self):
        for c in self.containers:
            try:
                c.stop(timeout=10)
            except Exception:  # teardown goes on: containerd and its mounts must go
                pass
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # shims of our containers (their own sessions) keep running only while a task lives; unmount what is left
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(str(self.base))), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True, check=False)
        self.logf.close()


@pytest.fixture(scope="session")
def containerd():
    """A running private containerd (see the module docstring)."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.fail("%s missing: apt-get install -y containerd runc (make setup installs them)" % ", ".join(missing))
    if os.geteuid() != 0:
        pytest.fail("containerd tests need root (containerd, runc and overlay mounts)")
    base = tempfile.mkdtemp(prefix="phx-ctrd-", dir="/tmp")  # short: unix socket paths are limited to 108 bytes
    os.chmod(base, 0o700)
    daemon = Containerd(base)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def wait_http(url, container, timeout=60, want=200):
    """GET ``url`` until it answers ``want``; fails at once when the container exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if container.exited():
            raise AssertionError("container exited before %s answered:\n%s" % (url, container.output()))
        try:
            last = http("GET", url, timeout=2)
            if last[0] == want:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError("%s: no %d after %ss (last %r):\n%s" % (url, want, timeout, last, container.output()))
