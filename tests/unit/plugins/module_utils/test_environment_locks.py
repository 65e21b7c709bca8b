"""Which release store ``pulumi up`` of an environment locks
(pulumi_stack.EnvironmentLocks): the one its rollouts use (targets.make_store:
store_backend and the stack outputs), and what happens when that is the
Kubernetes store and its API server does not answer (proceed, with a warning
naming why) or answers wrongly (fail, naming the cause). Real sockets on
loopback; no cluster (tests/pytest/test_release_store_kubernetes.py holds a
Lease on a real one)."""
import socket
import threading
import time

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores import kubernetes
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore, LockHolder

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kube_infra(port=6443):
    return {"platform": "kubernetes", "kubernetes": {
        "api_server": "https://127.0.0.1:%d" % port, "ca_cert": CA, "token": "t0ken", "namespace": "phoenix"}}


def locks(tmp_path, infra, backend="auto", **kw):
    return pulumi_stack.EnvironmentLocks(str(tmp_path / "releases"), "k8s", ["catalog", "orders"],
                                         store_backend=backend, infra=infra, **kw)


@pytest.mark.parametrize("infra", [None, {}, {"platform": "local", "state_dir": "/nowhere"}, {"path": "/x"}])
def test_a_stack_that_is_not_a_clusters_locks_the_file_store_as_before(tmp_path, infra):
    env = locks(tmp_path, infra)
    assert isinstance(env.store, FileReleaseStore) and env.store.root == str(tmp_path / "releases")
    assert env.acquire("pulumi up of stack ci") is None
    assert sorted(lock.artifact for lock in env.held) == ["catalog", "orders"] and env.warning is None
    holder = FileReleaseStore(str(tmp_path / "releases")).lock_holder("catalog", "k8s")
    assert holder.action == "infra"
    env.release()
    assert FileReleaseStore(str(tmp_path / "releases")).lock_holder("catalog", "k8s") is None


def test_a_kubernetes_stack_locks_the_leases_its_rollouts_take(tmp_path):
    env = locks(tmp_path, kube_infra())
    assert isinstance(env.store, kubernetes.ConfigMapReleaseStore) and env.kubernetes
    assert env.store.namespace == "phoenix"
    assert env.store.retry_seconds == pytest.approx(env.store.lease_seconds * 2 / 3)
    assert isinstance(locks(tmp_path, kube_infra(), "file").store, FileReleaseStore)  # as rollout's store_backend
    assert isinstance(locks(tmp_path, kube_infra(), "kubernetes").store, kubernetes.ConfigMapReleaseStore)


def test_a_backend_the_outputs_cannot_serve_is_refused_naming_the_option(tmp_path):
    with pytest.raises(PhoenixError) as err:
        locks(tmp_path, {"platform": "local"}, "kubernetes")
    assert err.value.param == "release_lock"
    assert err.value.msg.startswith("release_lock: store_backend: kubernetes needs the outputs of a platform "
                                    "kubernetes stack")


def test_kubernetes_without_outputs_yet_proceeds_with_a_warning(tmp_path):
    env = locks(tmp_path, None, "kubernetes")
    assert env.acquire("pulumi up of stack k8s") is None and env.held == []
    assert "the stack has no outputs yet, so there is no cluster" in env.warning
    env.release()


def test_an_api_server_that_does_not_answer_lets_pulumi_up_proceed_with_a_warning(tmp_path):
    port = closed_port()  # the cluster is down: connection refused
    env = locks(tmp_path, kube_infra(port), unreachable_grace=0.6)
    t0 = time.monotonic()
    assert env.acquire("pulumi up of stack k8s", timeout=0) is None
    assert time.monotonic() - t0 < 10
    assert env.held == []
    assert env.warning.startswith("release locks of environment 'k8s' not taken: read the lock (lease) of "
                                  "catalog/k8s")
    assert "cannot reach the Kubernetes API server" in env.warning and "still failing after" in env.warning
    assert "https://127.0.0.1:%d" % port in env.warning
    assert "no rollout can be running against an API server that does not answer" in env.warning
    assert "stops writing after 20s" in env.warning and "t0ken" not in env.warning
    env.release()


def test_an_api_server_that_answers_wrongly_fails_naming_the_cause(tmp_path):
    """Something answers on the API server's address but is not the cluster (no TLS): that is no
    proof that nothing is rolling out, so it fails, naming the cause, and nothing is kept."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def answer():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _addr = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        env = locks(tmp_path, kube_infra(server.getsockname()[1]), unreachable_grace=0.6)
        with pytest.raises(PhoenixError) as err:
            env.acquire("pulumi up of stack k8s")
        assert err.value.param == "infra" and "TLS verification of the API server failed" in err.value.msg
        assert not err.value.details.get("unreachable") and env.held == [] and env.warning is None
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_unreachable_mark_survives_the_retries(tmp_path):
    store = kubernetes.ConfigMapReleaseStore(kube_infra(closed_port())["kubernetes"], str(tmp_path), retry_seconds=0.3)
    with pytest.raises(PhoenixError) as err:
        store.acquire("catalog", "k8s", LockHolder.current("deploy"))
    assert err.value.transient and err.value.details == {"unreachable": True}
    assert "still failing after" in err.value.msg
