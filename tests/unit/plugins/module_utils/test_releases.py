"""Release store: records, atomic history, locks with holder info and stale recovery.
The behaviour every store shares is the contract (release_store_contract.py),
run here against FileReleaseStore; the rest is what only files do."""
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import releases
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, History, LockHeld, LockHolder, Release,
    StoreError, atomic_write, pid_alive)
from release_store_contract import ReleaseStoreContract, StoreSubject

COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(releases.__file__),
                                           *[".."] * 5))


def release(rid="v001", **kw):
    data = dict(release_id=rid, artifact="catalog", environment="ci", version="1.0.0+b1",
                image="sha256:aaa", strategy="rolling", started=1700000000.5,
                ci_build_url="https://ci.example/job/42")
    data.update(kw)
    return Release(**data)


class TestFileReleaseStoreContract(ReleaseStoreContract):
    @pytest.fixture
    def subject(self, tmp_path):
        return StoreSubject(lambda keep=100: FileReleaseStore(str(tmp_path), keep=keep))


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_history_roundtrip_and_file_mode(tmp_path):
    store = FileReleaseStore(str(tmp_path))
    history = store.load("catalog", "ci")
    assert history.releases == [] and history.live is None
    rel = history.add(release(history.new_release_id()))
    rel.event(1700000001.25, "deploy started", step=1)
    history.live = rel.release_id
    store.save(history)
    path = tmp_path / "catalog" / "ci" / "history.json"
    assert mode(path) == 0o600
    assert mode(tmp_path / "catalog" / "ci") == 0o700
    loaded = store.load("catalog", "ci")
    assert loaded.live == "v001" and loaded.next_seq == 2 and loaded.revision == 1
    got = loaded.get("v001")
    assert got.ci_build_url == "https://ci.example/job/42"
    assert got.events == [{"at": 1700000001.25, "time": "2023-11-14T22:13:21.250Z",
                           "message": "deploy started", "step": 1}]
    assert json.loads(path.read_text())["releases"][0]["started_iso"] == \
        "2023-11-14T22:13:20.500Z"


def test_atomic_write_crash_before_rename_leaves_old_content(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    atomic_write(str(path), b'{"old": true}')

    def crash(src, dst):
        raise KeyboardInterrupt("killed between temp write and rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), b'{"new": true, "big": "' + b"x" * 100000 + b'"}')
    assert json.loads(path.read_bytes()) == {"old": True}
    assert os.listdir(tmp_path) == ["history.json"]


def test_atomic_write_real_process_death_before_rename(tmp_path):
    """A child process writes the temp file, fsyncs and dies (os._exit)
    right before the rename: the history stays complete and loadable."""
    store = FileReleaseStore(str(tmp_path))
    history = store.load("catalog", "ci")
    history.add(release())
    store.save(history)
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, %r)
        from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
            FileReleaseStore, Release)
        os.replace = lambda *a: os._exit(137)
        store = FileReleaseStore(%r)
        h = store.load("catalog", "ci")
        h.add(Release("v002", "catalog", "ci", "2.0.0", "sha256:b", "rolling"))
        store.save(h)
    """) % (COLLECTIONS, str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == 137
    loaded = store.load("catalog", "ci")
    assert [r.release_id for r in loaded.releases] == ["v001"]
    leftovers = [n for n in os.listdir(tmp_path / "catalog" / "ci") if n.endswith(".tmp")]
    assert len(leftovers) == 1  # the abandoned temp file, never read
    loaded.add(release("v002"))
    store.save(loaded)  # and the store keeps working
    assert store.load("catalog", "ci").get("v002") is not None


def test_corrupt_history_is_reported(tmp_path):
    store = FileReleaseStore(str(tmp_path))
    path = tmp_path / "catalog" / "ci"
    path.mkdir(parents=True)
    (path / "history.json").write_text("{trunc")
    with pytest.raises(StoreError, match="is not valid JSON"):
        store.load("catalog", "ci")


# -- locks ------------------------------------------------------------------------
def child(script, *args):
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, %r)
        from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
            FileReleaseStore, LockHolder)
        store = FileReleaseStore(%r)
    """) % (COLLECTIONS, args[0]) + textwrap.dedent(script)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_second_acquirer_gets_error_naming_the_holder(tmp_path):
    proc = child("""
        store.acquire("catalog", "ci", LockHolder.current("deploy", "v007"))
        print("locked", flush=True)
        time.sleep(60)
    """, str(tmp_path))
    try:
        assert proc.stdout.readline().strip() == "locked"
        store = FileReleaseStore(str(tmp_path))
        with pytest.raises(LockHeld) as err:
            store.acquire("catalog", "ci", LockHolder.current("rollback"))
        text = str(err.value)
        assert "catalog/ci is locked by deploy of release v007 by pid %d on host %s" % (
            proc.pid, socket.gethostname()) in text
        assert "(user " in text and " since " in text
        assert err.value.holder.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_dead_holder_is_recovered(tmp_path):
    proc = child("""
        store.acquire("catalog", "ci", LockHolder.current("deploy", "v003"))
        import os
        os._exit(9)  # dies without releasing
    """, str(tmp_path))
    proc.wait()
    store = FileReleaseStore(str(tmp_path))
    holder = store.lock_holder("catalog", "ci")
    assert holder.pid == proc.pid and not pid_alive(holder.pid, holder.proc_start)
    lock = store.acquire("catalog", "ci", LockHolder.current("deploy", "v004"))
    assert lock.recovered_from.pid == proc.pid
    assert lock.recovered_from.release_id == "v003"
    assert store.lock_holder("catalog", "ci").release_id == "v004"
    assert mode(tmp_path / "catalog" / "ci" / "lock") == 0o600
    store.release(lock)
    assert store.lock_holder("catalog", "ci") is None


def test_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    store = FileReleaseStore(str(tmp_path))
    holder = LockHolder.current("deploy")
    holder.proc_start = "1"  # our pid, but a different process start time
    store.acquire("catalog", "ci", holder)
    lock = store.acquire("catalog", "ci", LockHolder.current("deploy"))
    assert lock.recovered_from.token == holder.token


def test_store_interface_is_abstract():
    with pytest.raises(TypeError):
        releases.ReleaseStore()  # pylint: disable=abstract-class-instantiated
    assert isinstance(History("a", "b").new_release_id(), str)
