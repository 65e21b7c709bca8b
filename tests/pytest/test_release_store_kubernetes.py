"""The Kubernetes release store (history in a ConfigMap written with
resourceVersion compare-and-swap, the lock in a coordination.k8s.io Lease)
against a real k8s-local cluster: the release store contract
(tests/unit/.../release_store_contract.py, also run on FileReleaseStore),
racing writers and controllers (threads and processes), lease renewal and
takeover of an expired lease, fencing of a lost lease, RBAC of the deployer
token, and the errors of bad credentials and an unreachable API server.

The cluster shared with the Kubernetes driver tests (fixtures_k8s_rollout;
run under flock /tmp/phoenix-k8s.lock); all
traffic goes to the stack's loopback address."""
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import releases
from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores import kubernetes as kstore
from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores.kubernetes import (
    ConfigMapReleaseStore, object_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, LockHeld, LockHolder, Release, StoreError)
from fixtures_k8s_local import wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils"))
from release_store_contract import ReleaseStoreContract, StoreSubject  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(releases.__file__), *[".."] * 5))
NAMES = itertools.count(1)


@pytest.fixture(scope="module")
def k8s(k8s_rollout_stack):
    """The shared cluster of the Kubernetes driver tests (fixtures_k8s_rollout)."""
    k8s_rollout_stack.kube = k8s_rollout_stack.infra["kubernetes"]
    return k8s_rollout_stack


def make_store(k8s, keep=100, **kw):
    return ConfigMapReleaseStore(k8s.kube, str(k8s.tmp / "local"), keep=keep, **kw)


def fresh_env():
    return "e%d" % next(NAMES)


def admin(k8s):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(k8s.state_dir / "pki" / "admin.kubeconfig"), client_configuration=cfg)
    api = client.ApiClient(cfg)
    return client.CoreV1Api(api), client.CoordinationV1Api(api), client.RbacAuthorizationV1Api(api)


def release(env, rid="v001"):
    return Release(release_id=rid, artifact="catalog", environment=env, version="1.0.0+b1",
                   image="reg/catalog@sha256:" + "a" * 64, strategy="rolling", started=1700000000.0)


class TestConfigMapReleaseStoreContract(ReleaseStoreContract):
    @pytest.fixture
    def subject(self, k8s):
        return StoreSubject(lambda keep=100: make_store(k8s, keep), environment=fresh_env())


# --------------------------------------------------------------------------- shape

def test_the_objects_are_a_labelled_configmap_and_a_lease(k8s):
    env = fresh_env()
    store = make_store(k8s)
    history = store.load("catalog", env)
    history.add(release(env, history.new_release_id()))
    store.save(history)
    lock = store.acquire("catalog", env, LockHolder.current("deploy", "v001"))
    core, coord, _rbac = admin(k8s)
    ns, name = k8s.kube["namespace"], object_name("catalog", env)
    assert name == f"phoenix-releases-catalog-{env}-" + name.rsplit("-", 1)[1]
    cm = core.read_namespaced_config_map(name, ns)
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "phoenix.deploy"
    assert cm.metadata.annotations == {"phoenix.deploy/artifact": "catalog", "phoenix.deploy/environment": env}
    assert json.loads(cm.data["history.json"]) == history.as_dict() and history.revision == 1
    lease = coord.read_namespaced_lease(name, ns)
    assert lease.spec.holder_identity.endswith("/%d/%s" % (os.getpid(), lock.holder.token))
    assert lease.spec.lease_duration_seconds == 30 and lease.spec.renew_time is not None
    assert json.loads(lease.metadata.annotations["phoenix.deploy/holder"])["release_id"] == "v001"
    store.release(lock)
    assert not coord.list_namespaced_lease(ns, field_selector=f"metadata.name={name}").items


# --------------------------------------------------------------------------- races

def test_racing_saves_from_the_same_history_exactly_one_wins(k8s):
    env = fresh_env()
    stores = [make_store(k8s), make_store(k8s)]
    for round_ in range(5):
        loaded = [s.load("catalog", env) for s in stores]
        assert loaded[0].revision == loaded[1].revision == round_
        gate, outcome = threading.Barrier(2), [None, None]

        def save(i):
            loaded[i].add(release(env, "v%03d" % (10 * round_ + i + 1)))
            gate.wait(30)
            try:
                stores[i].save(loaded[i])
                outcome[i] = "won"
            except ConflictError as exc:
                outcome[i] = exc
        threads = [threading.Thread(target=save, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(map(str, outcome)).count("won") == 1, outcome
        loser = next(o for o in outcome if o != "won")
        assert "changed concurrently" in str(loser)
    final = make_store(k8s).load("catalog", env)
    assert final.revision == 5 and len(final.releases) == 5


CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, %r)
    from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores.kubernetes import (
        ConfigMapReleaseStore)
    from ansible_collections.phoenix.deploy.plugins.module_utils.releases import LockHeld, LockHolder
    args = json.loads(sys.stdin.readline())
    store = ConfigMapReleaseStore(args["kube"], args["local"], lease_seconds=args.get("lease", 30))
    store.store_id  # connected before the start line
    holder = LockHolder.current("deploy", args["release"])
    if args.get("host"):
        holder.host = args["host"]
    while time.time() < args["start"]:
        time.sleep(0.001)
    try:
        lock = store.acquire("catalog", args["env"], holder)
    except LockHeld as exc:
        print(json.dumps({"won": False, "msg": str(exc), "holder": exc.holder.pid}), flush=True)
        sys.exit(0)
    print(json.dumps({"won": True}), flush=True)
    sys.stdin.readline()  # hold the lock until told (or killed)
    store.release(lock)
""") % COLLECTIONS


def child(k8s, env, release_id, start, **extra):
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    args = {"kube": k8s.kube, "local": str(k8s.tmp / "local"), "env": env, "release": release_id,
            "start": start, **extra}
    proc.stdin.write(json.dumps(args) + "\n")  # the token goes through a pipe, not argv
    proc.stdin.flush()
    return proc


def test_two_controller_processes_racing_for_the_lock_exactly_one_wins(k8s):
    for _round in range(3):
        env = fresh_env()
        start = time.time() + 3
        procs = [child(k8s, env, "v%03d" % (i + 1), start) for i in (0, 1)]
        try:
            results = [json.loads(p.stdout.readline()) for p in procs]
            assert [r["won"] for r in results].count(True) == 1, results
            winner = procs[[r["won"] for r in results].index(True)]
            loser = next(r for r in results if not r["won"])
            assert loser["holder"] == winner.pid
            assert f"catalog/{env} is locked by deploy of release v00" in loser["msg"]
            assert f"by pid {winner.pid} on host " in loser["msg"]
            holder = make_store(k8s).lock_holder("catalog", env)
            assert holder.pid == winner.pid and not holder.is_stale()
            winner.stdin.write("\n")
            winner.stdin.flush()
            assert winner.wait(30) == 0
            assert make_store(k8s).lock_holder("catalog", env) is None
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- leases

def test_an_expired_lease_is_taken_over(k8s):
    """A controller on another machine (its host differs, so its death is not
    provable here) is killed while holding a 2 s lease: the lock stays held
    until the lease expires, then the next acquirer takes it over."""
    env = fresh_env()
    proc = child(k8s, env, "v001", 0, lease=2, host="other-machine")
    try:
        assert json.loads(proc.stdout.readline())["won"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    store = make_store(k8s, lease_seconds=2)
    with pytest.raises(LockHeld) as err:
        store.acquire("catalog", env, LockHolder.current("deploy", "v002"))
    assert "on host other-machine" in str(err.value) and "expires in" in str(err.value)
    assert "its lease expires 2s after its last renewal" in str(err.value)
    got = {}

    def take():
        try:
            got["lock"] = store.acquire("catalog", env, LockHolder.current("deploy", "v002"))
        except LockHeld:
            return False
        return True
    assert wait_for(take, 10, 0.2)
    waited = time.monotonic() - killed
    print(f"\nexpired lease (2 s) taken over {waited:.1f} s after its holder was killed")
    assert 1.0 < waited < 5.0
    lock = got["lock"]
    assert lock.recovered_from.host == "other-machine" and lock.recovered_from.release_id == "v001"
    lease = admin(k8s)[1].read_namespaced_lease(object_name("catalog", env), k8s.kube["namespace"])
    assert lease.spec.lease_transitions == 1
    store.release(lock)


def test_a_held_lease_is_renewed_and_never_taken_over(k8s):
    env = fresh_env()
    holder_store = make_store(k8s, lease_seconds=2)
    lock = holder_store.acquire("catalog", env, LockHolder.current("deploy"))
    remote = lock.holder
    remote.host = "other-machine"  # not provably dead from here: only the lease protects it
    holder_store.update_lock(lock)
    first = holder_store.lock_holder("catalog", env).renewed
    time.sleep(3)
    with pytest.raises(LockHeld):
        make_store(k8s, lease_seconds=2).acquire("catalog", env, LockHolder.current("deploy"))
    assert holder_store.lock_holder("catalog", env).renewed > first + 1
    holder_store.release(lock)


def test_a_lost_lease_stops_the_holder_writing(k8s):
    """Another controller took the lease over (as after an expiry while this
    holder was cut off): the holder's next renewal notices, and its store
    writes no more history."""
    env = fresh_env()
    store = make_store(k8s, lease_seconds=2)
    history = store.load("catalog", env)
    lock = store.acquire("catalog", env, LockHolder.current("deploy"))
    coord, ns, name = admin(k8s)[1], k8s.kube["namespace"], object_name("catalog", env)
    lease = coord.read_namespaced_lease(name, ns)
    other = LockHolder.current("deploy", "v002")
    other.host = "other-machine"
    lease.spec.holder_identity = "other-machine/1/" + other.token
    lease.metadata.annotations["phoenix.deploy/holder"] = json.dumps(vars(other))
    coord.replace_namespaced_lease(name, ns, lease)
    assert wait_for(lambda: store._held[("catalog", env)].lost, 5, 0.1)  # pylint: disable=protected-access
    history.add(release(env))
    with pytest.raises(StoreError, match=r"the lock of catalog/%s was lost \(the lease was taken over by "
                                         r"deploy of release v002 by pid \d+ on host other-machine" % env):
        store.save(history)
    assert make_store(k8s).load("catalog", env).releases == []
    store.release(lock)  # not ours any more: no effect, no error
    assert make_store(k8s).lock_holder("catalog", env).token == other.token


# --------------------------------------------------------------------------- RBAC, errors

def test_the_deployer_role_grants_exactly_the_store_verbs(k8s):
    role = admin(k8s)[2].read_namespaced_role("phoenix-deployer", k8s.kube["namespace"])
    granted = {}
    for rule in role.rules:
        for group in rule.api_groups:
            for resource in rule.resources:
                granted.setdefault(resource + ("." + group if group else ""), set()).update(rule.verbs)
    for resource, verbs in kstore.VERBS.items():
        assert granted[resource] == set(verbs), resource


def test_a_token_of_another_namespace_is_refused_with_a_clear_error(k8s):
    from kubernetes import client
    core, _coord, rbac = admin(k8s)
    other = "other-team"
    core.create_namespace({"metadata": {"name": other}})
    core.create_namespaced_service_account(other, {"metadata": {"name": "deployer"}})
    rbac.create_namespaced_role(other, {"metadata": {"name": "deployer"}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "delete"]}]})
    rbac.create_namespaced_role_binding(other, {
        "metadata": {"name": "deployer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": other}]})
    token = core.create_namespaced_service_account_token(
        "deployer", other, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    theirs = ConfigMapReleaseStore(dict(k8s.kube, token=token, namespace=other), str(k8s.tmp / "local"))
    env = fresh_env()
    history = theirs.load("catalog", env)  # the token works in its own namespace
    history.add(release(env))
    theirs.save(history)
    theirs.release(theirs.acquire("catalog", env, LockHolder.current("deploy")))
    intruder = ConfigMapReleaseStore(dict(k8s.kube, token=token), str(k8s.tmp / "local"))
    for call in (lambda: intruder.load("catalog", env),
                 lambda: intruder.acquire("catalog", env, LockHolder.current("deploy"))):
        with pytest.raises(StoreError) as err:
            call()
        msg = err.value.msg
        assert err.value.param == "infra" and not err.value.transient
        assert "forbidden by RBAC (HTTP 403" in msg and "system:serviceaccount:other-team:deployer" in msg
        assert "needs get, create, update on configmaps; get, create, update, delete on " \
               "leases.coordination.k8s.io in namespace %s" % k8s.kube["namespace"] in msg
        assert token not in msg
    assert make_store(k8s).load("catalog", env).releases == []  # nothing written in ours


def test_an_invalid_token_and_a_wrong_ca_are_named(k8s):
    bad = ConfigMapReleaseStore(dict(k8s.kube, token="not-a-token"), str(k8s.tmp / "local"))
    with pytest.raises(StoreError, match=r"refused the credentials \(HTTP 401.*infra.kubernetes.token is "
                                         r"invalid or expired") as err:
        bad.load("catalog", "ci")
    assert err.value.param == "infra" and "not-a-token" not in err.value.msg
    bundle = pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    other_ca = bundle[:bundle.index("-----END CERTIFICATE-----") + 25] + "\n"
    wrong = ConfigMapReleaseStore(dict(k8s.kube, ca_cert=other_ca), str(k8s.tmp / "local"))
    with pytest.raises(StoreError, match="TLS verification of the API server failed .*infra.kubernetes.ca_cert "
                                         "is not the cluster's CA") as err:
        wrong.load("catalog", "ci")
    assert not err.value.transient


def test_an_unreachable_api_server_is_a_clear_transient_error(k8s):
    host = k8s.outputs()["network"]["address"]
    gone = ConfigMapReleaseStore(dict(k8s.kube, api_server=f"https://{host}:1"), str(k8s.tmp / "local"),
                                 retry_seconds=1.5)
    for call in (lambda: gone.load("catalog", "ci"),
                 lambda: gone.acquire("catalog", "ci", LockHolder.current("deploy"))):
        t0 = time.monotonic()
        with pytest.raises(StoreError) as err:
            call()
        assert time.monotonic() - t0 < 10
        assert err.value.transient
        assert "cannot reach the Kubernetes API server (" in err.value.msg
        assert f"API server https://{host}:1" in err.value.msg
        assert "check that the cluster runs (pulumi up of its stack) and infra.kubernetes.api_server" in err.value.msg
        assert "still failing after" in err.value.msg


def test_pulumi_up_of_the_environment_waits_for_a_rollouts_lease(k8s):
    """pulumi_stack's release_lock on a kubernetes stack takes the rollouts' Leases (store_backend
    auto, from the stack outputs), not lock files: while a rollout holds one, it waits, then fails
    naming the holder; once that is released it takes them (and a rollout then waits for it)."""
    from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
    from ansible_collections.phoenix.deploy.plugins.module_utils.pulumi_stack import EnvironmentLocks
    env = fresh_env()
    rollout = make_store(k8s)
    lock = rollout.acquire("catalog", env, LockHolder.current("deploy", release_id="v007"))
    infra = EnvironmentLocks(str(k8s.tmp / "local"), env, ["catalog", "orders"], infra=k8s.outputs())
    assert isinstance(infra.store, ConfigMapReleaseStore) and infra.store.namespace == k8s.kube["namespace"]
    t0 = time.monotonic()
    with pytest.raises(PhoenixError) as err:
        infra.acquire("pulumi up of stack k8s-local", timeout=2, poll=0.5)
    waited = time.monotonic() - t0
    assert err.value.param == "release_lock"
    assert err.value.msg.startswith("pulumi up of stack k8s-local of environment '%s' must not run during a "
                                    "rollout: catalog/%s is locked by deploy of release v007 by pid %d"
                                    % (env, env, os.getpid()))
    assert "(lease %s/%s" % (k8s.kube["namespace"], object_name("catalog", env)) in err.value.msg
    assert "(waited 2s)" in err.value.msg and waited >= 2
    assert err.value.details["holder"].startswith("deploy of release v007 by pid")
    assert infra.held == [] and infra.warning is None
    assert rollout.lock_holder("orders", env) is None  # all or none: nothing kept while waiting
    rollout.release(lock)
    assert infra.acquire("pulumi up of stack k8s-local", timeout=2, poll=0.5) is None
    assert sorted(held.artifact for held in infra.held) == ["catalog", "orders"]
    assert rollout.lock_holder("catalog", env).action == "infra"
    with pytest.raises(LockHeld, match="is locked by infra by pid"):
        rollout.acquire("orders", env, LockHolder.current("deploy", release_id="v008"))
    infra.release()
    assert rollout.lock_holder("catalog", env) is None and rollout.lock_holder("orders", env) is None


def test_save_and_lock_round_trips_are_fast(k8s):
    """Figures for the README: one save (a PUT with resourceVersion), one
    acquire + release (create + delete of the Lease), one load."""
    env = fresh_env()
    store = make_store(k8s)
    history = store.load("catalog", env)
    history.add(release(env))
    store.save(history)
    timings = {}
    t0 = time.monotonic()
    for _i in range(50):
        history.releases[0].event(time.time(), "tick")
        store.save(history)
    timings["save"] = (time.monotonic() - t0) / 50
    t0 = time.monotonic()
    for _i in range(20):
        store.release(store.acquire("catalog", env, LockHolder.current("deploy")))
    timings["acquire+release"] = (time.monotonic() - t0) / 20
    t0 = time.monotonic()
    for _i in range(50):
        make_store(k8s).load("catalog", env)
    timings["load (new client)"] = (time.monotonic() - t0) / 50
    print("\n" + ", ".join("%s %.1f ms" % (k, v * 1000) for k, v in timings.items()))
    assert history.revision == 51
    assert all(v < 0.5 for v in timings.values()), timings
