"""The release store contract: what the engine relies on from every
``ReleaseStore`` (history round trip, compare-and-swap, trimming, locks that
name their holder, recovery of a dead holder's lock, only our lock changed).

A store's test module subclasses ``ReleaseStoreContract`` (collected only
through subclasses) and gives a ``subject`` fixture returning a
``StoreSubject``: ``make(keep=100)`` opens another store on the same backing
storage (another controller), ``artifact`` / ``environment`` are names no
other test uses.  Today: ``FileReleaseStore`` (test_releases.py) and the
Kubernetes ConfigMap/Lease store on a real k8s-local cluster
(tests/pytest/test_release_store_kubernetes.py).
"""
import re
import subprocess
import threading

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import releases
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, LockHeld, LockHolder, Release)


class StoreSubject:
    def __init__(self, make, artifact="catalog", environment="ci"):
        self.make, self.artifact, self.environment = make, artifact, environment

    def release(self, rid="v001", **kw):
        data = dict(release_id=rid, artifact=self.artifact, environment=self.environment,
                    version="1.0.0+b1", image="sha256:aaa", strategy="rolling",
                    started=1700000000.5, ci_build_url="https://ci.example/job/42")
        data.update(kw)
        return Release(**data)


def dead_pid():
    """The pid of a process of this host that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


class ReleaseStoreContract:
    def test_history_round_trip(self, subject):
        store = subject.make()
        history = store.load(subject.artifact, subject.environment)
        assert history.releases == [] and history.live is None and history.revision == 0
        rel = history.add(subject.release(history.new_release_id()))
        rel.event(1700000001.25, "deploy started", step=1)
        history.live = rel.release_id
        store.save(history)
        assert history.revision == 1
        loaded = subject.make().load(subject.artifact, subject.environment)
        assert loaded.live == "v001" and loaded.next_seq == 2 and loaded.revision == 1
        got = loaded.get("v001")
        assert got.ci_build_url == "https://ci.example/job/42" and got.started == 1700000000.5
        assert got.events == [{"at": 1700000001.25, "time": "2023-11-14T22:13:21.250Z",
                               "message": "deploy started", "step": 1}]
        loaded.add(subject.release(loaded.new_release_id()))
        store.save(loaded)  # a history loaded by another instance saves here too
        assert [r.release_id for r in subject.make().load(
            subject.artifact, subject.environment).releases] == ["v001", "v002"]

    def test_concurrent_change_is_a_conflict(self, subject):
        store = subject.make()
        first = store.load(subject.artifact, subject.environment)
        second = subject.make().load(subject.artifact, subject.environment)
        third = store.load(subject.artifact, subject.environment)
        first.add(subject.release())
        store.save(first)
        second.add(subject.release("v009"))
        with pytest.raises(ConflictError, match="changed concurrently"):
            subject.make().save(second)
        third.add(subject.release("v008"))
        with pytest.raises(ConflictError, match="changed concurrently"):
            store.save(third)
        assert third.revision == 0  # a lost save leaves the caller's revision alone
        assert [r.release_id for r in store.load(subject.artifact, subject.environment).releases] == ["v001"]

    def test_bad_names_are_refused(self, subject):
        with pytest.raises(ValueError, match="artifact: '../etc' is not a valid name"):
            subject.make().load("../etc", subject.environment)
        with pytest.raises(ValueError, match="environment: 'a b' is not a valid name"):
            subject.make().acquire(subject.artifact, "a b", LockHolder.current("deploy"))

    def test_trim_keeps_live_and_recent(self, subject):
        store = subject.make(keep=3)
        history = store.load(subject.artifact, subject.environment)
        for _i in range(6):
            history.add(subject.release(history.new_release_id(), status=releases.RETIRED))
        history.releases[0].status = releases.LIVE
        history.live = "v001"
        store.save(history)
        assert [r.release_id for r in store.load(subject.artifact, subject.environment).releases] == \
            ["v001", "v005", "v006"]

    def test_store_id_is_made_once(self, subject):
        first, second = subject.make().store_id, subject.make().store_id
        assert re.fullmatch(r"store-[0-9a-f]{16}", first) and first == second

    # -- locks ---------------------------------------------------------------
    def test_second_acquirer_gets_an_error_naming_the_holder(self, subject):
        store = subject.make()
        lock = store.acquire(subject.artifact, subject.environment, LockHolder.current("deploy", "v007"))
        try:
            with pytest.raises(LockHeld) as err:
                subject.make().acquire(subject.artifact, subject.environment, LockHolder.current("rollback"))
            text = str(err.value)
            assert "%s/%s is locked by deploy of release v007 by pid %d on host %s" % (
                subject.artifact, subject.environment, lock.holder.pid, lock.holder.host) in text
            assert "(user " in text and " since " in text
            assert err.value.holder.token == lock.holder.token
            assert store.lock_holder(subject.artifact, subject.environment).token == lock.holder.token
        finally:
            store.release(lock)

    def test_parallel_acquirers_exactly_one_wins(self, subject):
        stores = [subject.make() for _i in range(3)]
        gate = threading.Barrier(len(stores))
        results = [None] * len(stores)

        def take(i):
            gate.wait(30)
            try:
                results[i] = stores[i].acquire(subject.artifact, subject.environment,
                                               LockHolder.current("deploy", "v%03d" % (i + 1)))
            except LockHeld as exc:
                results[i] = exc
        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        won = [(i, r) for i, r in enumerate(results) if isinstance(r, releases.Lock)]
        assert len(won) == 1, results
        index, lock = won[0]
        for other in results:
            if other is not lock:
                assert isinstance(other, LockHeld) and other.holder.token == lock.holder.token
                assert "release v%03d" % (index + 1) in str(other)
        stores[index].release(lock)
        assert stores[0].lock_holder(subject.artifact, subject.environment) is None

    def test_the_lock_of_a_dead_holder_is_recovered(self, subject):
        dead = LockHolder.current("deploy", "v003", pid=dead_pid())
        subject.make().acquire(subject.artifact, subject.environment, dead)
        store = subject.make()
        holder = store.lock_holder(subject.artifact, subject.environment)
        assert holder.pid == dead.pid and holder.is_stale()
        lock = store.acquire(subject.artifact, subject.environment, LockHolder.current("deploy", "v004"))
        assert lock.recovered_from.pid == dead.pid and lock.recovered_from.release_id == "v003"
        assert store.lock_holder(subject.artifact, subject.environment).release_id == "v004"
        store.release(lock)
        assert store.lock_holder(subject.artifact, subject.environment) is None

    def test_a_live_holder_on_another_host_is_not_stale(self, subject):
        remote = LockHolder.current("deploy")
        remote.host, remote.pid = "other-controller", 999999
        lock = subject.make().acquire(subject.artifact, subject.environment, remote)
        try:
            with pytest.raises(LockHeld) as err:
                subject.make().acquire(subject.artifact, subject.environment, LockHolder.current("deploy"))
            assert err.value.holder.host == "other-controller"
            assert "on host other-controller" in str(err.value)
        finally:
            subject.make().release(releases.Lock(subject.artifact, subject.environment, lock.holder))

    def test_update_and_release_only_our_lock(self, subject):
        store = subject.make()
        lock = store.acquire(subject.artifact, subject.environment, LockHolder.current("deploy"))
        store.update_lock(lock, release_id="v010")
        assert subject.make().lock_holder(subject.artifact, subject.environment).release_id == "v010"
        stranger = releases.Lock(subject.artifact, subject.environment, LockHolder.current("deploy"))
        subject.make().release(stranger)  # not ours: no effect
        assert store.lock_holder(subject.artifact, subject.environment).token == lock.holder.token
        store.release(lock)
        assert store.lock_holder(subject.artifact, subject.environment) is None
