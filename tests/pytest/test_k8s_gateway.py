"""The local cluster's gateway for real: `pulumi up` of a k8s-local stack
installs the Gateway API standard CRDs, GatewayClass ``phoenix-haproxy``,
Gateway ``phoenix``, an HAProxy on a loopback port and the gateway
controller; HTTPRoute weights then carry real traffic to real pods (two
"releases" of the hello image), status follows HAProxy, a deleted pod's
server goes MAINT with 0 failed requests, a missing Service is reported, a
killed controller (or HAProxy) is noticed by refresh and restored by up,
destroy removes it all.

One module-scoped stack; tests run in file order. Traffic goes only to the
stack's loopback address (the gateway) and pod IPs on the stack's bridge."""
import collections
import json
import os
import signal
import stat
import threading
import time
import urllib.error
import urllib.request

import pytest

from fixtures_k8s_local import TempK8sStack, build_hello_image, pid_alive, push, read_pid, wait_for

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
ENV = "it"
ROUTE = f"catalog-{ENV}"
CRDS = {f"{p}.{GROUP}" for p in ("gatewayclasses", "gateways", "httproutes", "referencegrants")}


def _haproxy_module():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "module_utils", "platforms", "local",
                        "haproxy.py")
    spec = importlib.util.spec_from_file_location("gw_test_haproxy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


haproxy = _haproxy_module()


@pytest.fixture(scope="module")
def k8s():
    if os.geteuid() != 0:
        pytest.fail("test_k8s_gateway needs root (kubelet and containerd run as root)")
    stack = TempK8sStack()
    try:
        stack.set_config("environment", ENV)
        t0 = time.monotonic()
        stack.up()
        print(f"\nk8s-local cluster + gateway bring-up: {time.monotonic() - t0:.1f} s")
        out = stack.outputs()
        stack.image = push(build_hello_image(stack.tmp / "img"), out["registries"]["dev"], "phoenix-it/hello")
        stack.ns = out["kubernetes"]["namespace"]
        stack.gw = out["kubernetes"]["gateway"]
        stack.backend = f"be_{stack.ns}_{ROUTE}"
        yield stack
    finally:
        stack.cleanup()


def _api(kubeconfig):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def admin(stack):
    return _api(stack.state_dir / "pki" / "admin.kubeconfig")


def deployer(stack):
    return _api(stack.outputs()["kubernetes"]["kubeconfig"])


def custom(api):
    from kubernetes import client
    return client.CustomObjectsApi(api)


def _resource_outputs(stack, name):
    deployment = stack.stack.export_stack().deployment
    return next(r.get("outputs", {}) for r in deployment["resources"] if r["urn"].endswith(f"::{name}"))


def _release(name, image):
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                     "containers": [{"name": "hello", "image": image, "ports": [{"containerPort": 8080}],
                                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                     "lifecycle": {"preStop": {"sleep": {"seconds": 2}}}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    return deployment, service


def _route(refs, generation_hint=None, path="/"):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HTTPRoute", "metadata": {"name": ROUTE},
            "spec": {"parentRefs": [{"name": "phoenix"}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": n, "port": 80, "weight": w} for n, w in refs]}]}}


def _replace_route(stack, refs, path="/"):
    """Replace the route's spec with ``refs`` (resourceVersion CAS); its new generation."""
    api = custom(deployer(stack))
    current = api.get_namespaced_custom_object(GROUP, VERSION, stack.ns, "httproutes", ROUTE)
    body = _route(refs, path=path)
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    return api.replace_namespaced_custom_object(GROUP, VERSION, stack.ns, "httproutes", ROUTE, body)[
        "metadata"]["generation"]


def _conditions(stack, generation, timeout=15):
    """The route's conditions from our controller once they carry ``generation``
    (None on timeout), and the seconds that took."""
    api = custom(admin(stack))
    box, t0 = {}, time.monotonic()

    def observed():
        route = api.get_namespaced_custom_object(GROUP, VERSION, stack.ns, "httproutes", ROUTE)
        for parent in (route.get("status") or {}).get("parents") or []:
            if parent["controllerName"] == "phoenix.deploy/haproxy-gateway":
                conds = {c["type"]: c for c in parent["conditions"]}
                if all(c.get("observedGeneration") == generation for c in conds.values()):
                    box["conds"] = conds
                    return True
        return False
    wait_for(observed, timeout, 0.1)
    return box.get("conds"), time.monotonic() - t0


def _servers(stack):
    return haproxy.RuntimeAPI(stack.gw["haproxy_socket"]).servers_state(stack.backend)


def _get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return None, str(exc)


def _tally(url, n):
    counts = collections.Counter()
    for _i in range(n):
        status, body = _get(url)
        counts[body.split()[-1].rsplit("-", 2)[0] if status == 200 else f"HTTP {status}"] += 1
    return counts


def _pod_ips(stack, app):
    from kubernetes import client
    pods = client.CoreV1Api(admin(stack)).list_namespaced_pod(stack.ns, label_selector=f"app={app}").items
    return {p.metadata.name: p.status.pod_ip for p in pods}


# --------------------------------------------------------------------------- up

def test_up_installs_the_gateway_api_crds_the_class_the_gateway_and_haproxy(k8s):
    from kubernetes import client
    gw = k8s.gw
    address = k8s.outputs()["network"]["address"]
    assert sorted(gw) == ["class", "haproxy_socket", "name", "routes", "url"]
    assert gw["name"] == "phoenix" and gw["class"] == "phoenix-haproxy" and gw["routes"] == {"catalog": ROUTE}
    assert gw["url"]["catalog"].startswith(f"http://{address}:")
    port = int(gw["url"]["catalog"].rstrip("/").rsplit(":", 1)[1])
    assert stat.S_IMODE(os.stat(gw["haproxy_socket"]).st_mode) == 0o600
    for d in ("gateway-haproxy", "gateway-controller"):
        assert stat.S_IMODE(os.stat(k8s.state_dir / d).st_mode) == 0o700
    ext = client.ApiextensionsV1Api(admin(k8s))
    names = {c.metadata.name: c for c in ext.list_custom_resource_definition().items}
    assert CRDS <= set(names)
    for name in CRDS:
        assert {c.type: c.status for c in names[name].status.conditions}["Established"] == "True"
        assert names[name].metadata.annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.3"
    api = custom(admin(k8s))
    cls = api.get_cluster_custom_object(GROUP, VERSION, "gatewayclasses", "phoenix-haproxy")
    assert cls["spec"]["controllerName"] == "phoenix.deploy/haproxy-gateway"
    gateway = api.get_namespaced_custom_object(GROUP, VERSION, k8s.ns, "gateways", "phoenix")
    assert gateway["spec"]["addresses"] == [{"type": "IPAddress", "value": address}]
    assert [(ls["name"], ls["port"], ls["protocol"]) for ls in gateway["spec"]["listeners"]] == \
        [("catalog", port, "HTTP")]

    def programmed():
        g = api.get_namespaced_custom_object(GROUP, VERSION, k8s.ns, "gateways", "phoenix")
        c = api.get_cluster_custom_object(GROUP, VERSION, "gatewayclasses", "phoenix-haproxy")
        conds = {x["type"]: x["status"] for x in (g.get("status") or {}).get("conditions") or []}
        cls_conds = {x["type"]: x["status"] for x in (c.get("status") or {}).get("conditions") or []}
        return conds.get("Programmed") == "True" and cls_conds.get("Accepted") == "True" and \
            (g.get("status") or {}).get("addresses") == [{"type": "IPAddress", "value": address}]
    assert wait_for(programmed, 15, 0.2)
    assert _get(gw["url"]["catalog"])[0] == 503  # the listener answers; no route yet


# --------------------------------------------------------------------------- routes and traffic

def test_route_at_100_0_is_accepted_at_generation_1_and_all_traffic_goes_to_v1(k8s):
    from kubernetes import client, utils
    api = deployer(k8s)
    for name in ("hello-v1", "hello-v2"):
        for manifest in _release(name, k8s.image):
            utils.create_from_dict(api, manifest, namespace=k8s.ns)
    apps = client.AppsV1Api(api)

    def available():
        return all((apps.read_namespaced_deployment(n, k8s.ns).status.available_replicas or 0) == 2
                   for n in ("hello-v1", "hello-v2"))
    assert wait_for(available, 120, 0.5)
    route = custom(api).create_namespaced_custom_object(GROUP, VERSION, k8s.ns, "httproutes",
                                                        _route([("hello-v1", 100), ("hello-v2", 0)]))
    assert route["metadata"]["generation"] == 1
    conds, took = _conditions(k8s, 1)
    print(f"\nroute created -> Accepted at generation 1 in {took:.2f} s")
    assert conds is not None, "no status at generation 1"
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("True", "Accepted")
    assert (conds["ResolvedRefs"]["status"], conds["ResolvedRefs"]["reason"]) == ("True", "ResolvedRefs")
    servers = _servers(k8s)
    ips = {**{ip: "hello-v1" for ip in _pod_ips(k8s, "hello-v1").values()},
           **{ip: "hello-v2" for ip in _pod_ips(k8s, "hello-v2").values()}}
    assert sorted(servers) == ["hello-v1.0", "hello-v1.1", "hello-v2.0", "hello-v2.1"]
    for name, srv in servers.items():
        assert ips[srv["address"]] == name.split(".")[0] and srv["port"] == 8080
        assert srv["weight"] == (50 if name.startswith("hello-v1") else 0) and not srv["admin"] & 1
    counts = _tally(k8s.gw["url"]["catalog"], 100)
    assert counts == {"hello-v1": 100}, counts


def test_route_at_50_50_is_observed_at_generation_2_and_both_releases_answer(k8s):
    generation = _replace_route(k8s, [("hello-v1", 50), ("hello-v2", 50)])
    assert generation == 2
    conds, took = _conditions(k8s, 2)
    print(f"\nweights 50/50 -> Accepted at generation 2 in {took:.2f} s")
    assert conds is not None and conds["Accepted"]["status"] == "True"
    assert {n: s["weight"] for n, s in _servers(k8s).items()} == {
        "hello-v1.0": 25, "hello-v1.1": 25, "hello-v2.0": 25, "hello-v2.1": 25}
    counts = _tally(k8s.gw["url"]["catalog"], 240)
    print(f"240 requests at 50/50: {dict(counts)}")
    assert set(counts) == {"hello-v1", "hello-v2"}, counts
    assert abs(counts["hello-v1"] - 120) <= 30, counts


def test_a_deleted_pod_goes_maint_and_traffic_continues_without_a_failed_request(k8s):
    from kubernetes import client
    core = client.CoreV1Api(admin(k8s))
    url = k8s.gw["url"]["catalog"]
    results, stop = collections.Counter(), threading.Event()

    def load():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            status, body = _get(url)
            results["ok" if status == 200 else f"{status} {body}"] += 1
    threads = [threading.Thread(target=load) for _i in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        victim, ip = sorted(_pod_ips(k8s, "hello-v1").items())[0]
        before = {s["address"]: n for n, s in _servers(k8s).items()}
        core.delete_namespaced_pod(victim, k8s.ns)
        t0 = time.monotonic()
        assert wait_for(lambda: _servers(k8s)[before[ip]]["admin"] & 1, 10, 0.05), _servers(k8s)
        print(f"\npod deleted -> its server {before[ip]} in MAINT after {time.monotonic() - t0:.2f} s")

        def replaced():
            ready = [s for s in _servers(k8s).values() if s["address"] != ip and not s["admin"] & 1]
            return len(ready) == 4
        assert wait_for(replaced, 60, 0.2), _servers(k8s)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(70)
    print(f"load during the pod deletion: {dict(results)}")
    assert results["ok"] >= 100 and set(results) == {"ok"}, results
    servers = _servers(k8s)
    gone = servers[before[ip]]
    assert gone["weight"] == 0 and gone["admin"] & 1 and gone["address"] == ip  # kept for its counters
    assert sorted(servers) == ["hello-v1.0", "hello-v1.1", "hello-v1.2", "hello-v2.0", "hello-v2.1"]

    def weighted():  # a pod whose readiness probe missed on a busy machine is back within seconds
        return sum(1 for s in _servers(k8s).values() if not s["admin"] & 1 and s["weight"] == 25) == 4
    assert wait_for(weighted, 30, 0.2), _servers(k8s)


def test_a_route_naming_a_missing_service_has_resolved_refs_false(k8s):
    generation = _replace_route(k8s, [("hello-v1", 100), ("hello-missing", 0)])
    conds, _took = _conditions(k8s, generation)
    assert conds is not None
    assert (conds["ResolvedRefs"]["status"], conds["ResolvedRefs"]["reason"]) == ("False", "BackendNotFound")
    assert "hello-missing" in conds["ResolvedRefs"]["message"]
    assert conds["Accepted"]["status"] == "True"
    servers = _servers(k8s)  # hello-v2 left the route: its servers are gone; hello-v1 takes it all
    assert not [n for n in servers if n.startswith("hello-v2")]
    assert sorted(s["weight"] for s in servers.values() if not s["admin"] & 1) == [50, 50]
    assert _tally(k8s.gw["url"]["catalog"], 40) == {"hello-v1": 40}


def test_an_unsupported_path_is_refused_and_haproxy_keeps_the_last_accepted_state(k8s):
    before = _servers(k8s)
    generation = _replace_route(k8s, [("hello-v1", 100)], path="/api")
    conds, _took = _conditions(k8s, generation)
    assert conds is not None
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == ("False", "UnsupportedValue")
    assert "'/'" in conds["Accepted"]["message"]
    assert _servers(k8s) == before
    generation = _replace_route(k8s, [("hello-v1", 100)])
    conds, _took = _conditions(k8s, generation)
    assert conds is not None and conds["Accepted"]["status"] == "True"


# --------------------------------------------------------------------------- refresh + up

def test_a_killed_controller_is_noticed_by_refresh_restored_by_up_and_status_catches_up(k8s):
    pidfile = k8s.state_dir / "gateway-controller" / "daemon.pid"
    pid = read_pid(pidfile)
    assert pid_alive(pid, "gateway_controller")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 10)
    generation = _replace_route(k8s, [("hello-v1", 100), ("hello-v2", 100)])
    conds, _took = _conditions(k8s, generation, timeout=2)
    assert conds is None  # nobody programs HAProxy: no status for this generation
    k8s.refresh()
    assert _resource_outputs(k8s, "gateway-controller")["running"] is False
    result = k8s.up()
    assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
    assert pid_alive(read_pid(pidfile), "gateway_controller") and read_pid(pidfile) != pid
    conds, took = _conditions(k8s, generation)
    print(f"\nup -> route status caught up (generation {generation}) {took:.2f} s after up returned")
    assert conds is not None and conds["Accepted"]["status"] == "True"
    weights = {n.split(".")[0]: s["weight"] for n, s in _servers(k8s).items() if not s["admin"] & 1}
    assert weights == {"hello-v1": 50, "hello-v2": 50}


def test_a_killed_haproxy_is_restored_by_up_and_the_controller_adds_the_servers_again(k8s):
    pidfile = k8s.state_dir / "gateway-haproxy" / "haproxy.pid"
    pid = read_pid(pidfile)

    def serving():  # slots are numbered afresh in a new HAProxy (its counters start at 0 anyway)
        return sorted((n.split(".")[0], s["address"], s["weight"]) for n, s in _servers(k8s).items()
                      if not s["admin"] & 1)
    before = serving()
    assert len(before) == 4
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 10)
    k8s.refresh()
    assert _resource_outputs(k8s, "gateway-haproxy")["running"] is False
    result = k8s.up()
    assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
    t0 = time.monotonic()
    assert wait_for(lambda: serving() == before, 10, 0.05), (serving(), before)
    print(f"\nHAProxy restarted by up: servers back {time.monotonic() - t0:.2f} s after up returned")
    assert set(_tally(k8s.gw["url"]["catalog"], 40)) == {"hello-v1", "hello-v2"}
    controller = read_pid(k8s.state_dir / "gateway-controller" / "daemon.pid")
    with open(f"/proc/{controller}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    print(f"gateway controller RSS: {rss / 1024:.0f} MB")


# --------------------------------------------------------------------------- destroy

def test_destroy_removes_the_crds_the_gateway_haproxy_and_the_controller(k8s):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    pids = {"haproxy": read_pid(k8s.state_dir / "gateway-haproxy" / "haproxy.pid"),
            "gateway_controller": read_pid(k8s.state_dir / "gateway-controller" / "daemon.pid")}
    assert all(pid_alive(pid, hint) for hint, pid in pids.items())
    urns = [r["urn"] for r in k8s.stack.export_stack().deployment["resources"]
            if r["urn"].endswith(("::gateway-crds", "::gateway-haproxy"))]
    assert len(urns) == 2
    k8s.destroy(target=urns, target_dependents=True)
    k8s.destroyed = False  # the cluster is still up
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not (k8s.state_dir / "gateway-haproxy").exists() and not (k8s.state_dir / "gateway-controller").exists()
    ext = client.ApiextensionsV1Api(admin(k8s))
    assert not {c.metadata.name for c in ext.list_custom_resource_definition().items} & CRDS
    with pytest.raises(ApiException) as exc:
        custom(admin(k8s)).get_cluster_custom_object(GROUP, VERSION, "gatewayclasses", "phoenix-haproxy")
    assert exc.value.status == 404
    assert _get(k8s.gw["url"]["catalog"])[0] is None  # nothing listens on the gateway port
    k8s.destroy()
    assert not k8s.state_dir.exists()
    assert json.loads(k8s.cli("stack", "export").stdout)["deployment"].get("resources") in (None, [])
