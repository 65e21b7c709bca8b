"""The double-fork primitive (plugins/module_utils/detach.py) with real
processes: the daemon keeps nothing its caller had open."""
import fcntl
import os
import subprocess
import time

from ansible_collections.phoenix.deploy.plugins.module_utils import controller, detach


def _wait(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_daemon_holds_no_inherited_lock_or_pipe(tmp_path):
    lock = str(tmp_path / "caller.lock")
    lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    read_fd, write_fd = os.pipe()
    report, go = tmp_path / "fds.txt", tmp_path / "go"

    def work():
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[fd] = os.readlink("/proc/self/fd/%s" % fd)
            except OSError:
                pass
        report.write_text("\n".join("%s %s" % item for item in sorted(fds.items())) + "\n")
        end = time.monotonic() + 20
        while not go.exists() and time.monotonic() < end:
            time.sleep(0.02)

    try:
        pid = detach.spawn_daemon(work)
        assert pid > 0 and pid != os.getpid()
        assert _wait(lambda: report.exists() and report.read_text().endswith("\n"))
        targets = dict(line.split(" ", 1) for line in report.read_text().splitlines())
        assert set(targets.values()) == {os.devnull}, targets
    finally:
        os.close(lock_fd)
        os.close(write_fd)
    assert _alive(pid), "the daemon ended early"
    # the caller let go of its lock and its pipe: nobody else holds them
    assert subprocess.run(["flock", "-n", lock, "true"], check=False, timeout=10).returncode == 0
    assert os.read(read_fd, 1) == b""  # EOF: the daemon has no write end
    os.close(read_fd)
    go.write_text("")
    assert _wait(lambda: not _alive(pid)), "the daemon did not end"


def test_run_detached_reports_from_the_daemon():
    message = controller.run_detached(lambda report: report({"pid": os.getpid(), "sid": os.getsid(0)}))
    assert message["pid"] != os.getpid() and message["sid"] != os.getsid(0), message
