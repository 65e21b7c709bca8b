"""The local cluster gateway's pure parts: weight split, the runtime-API plan
(slots, MAINT, deletes), route support checks, ready endpoints, and the
HAProxy config (checked by the real ``haproxy -c``). The controller against
a real cluster: tests/pytest/test_k8s_gateway.py."""
import subprocess

import pytest

from phoenix_infra.k8s_local import gateway_controller as gc
from phoenix_infra.k8s_local.gateway import GatewayHAProxyProvider

haproxy = gc.load_haproxy()
B = "be_ns_catalog-dev"


def srv(address, weight, admin=0, port=8080):
    return {"backend": B, "address": address, "port": port, "weight": weight, "admin": admin, "op_state": 2}


@pytest.mark.parametrize("refs, expected", [
    ({"v1": (100, ["a", "b"]), "v2": (0, ["c", "d"])}, {"v1": 50, "v2": 0}),
    ({"v1": (50, ["a", "b"]), "v2": (50, ["c", "d"])}, {"v1": 25, "v2": 25}),
    ({"v1": (1, ["a", "b", "c"]), "v2": (99, ["d"])}, {"v1": 1, "v2": 99}),  # a non-zero share never rounds to 0
    ({"v1": (1000, ["a"]), "v2": (500, ["b"])}, {"v1": 256, "v2": 128}),  # scaled into HAProxy's 0-256
    ({"v1": (100, [])}, {"v1": 0}),
])
def test_weights_split_over_ready_endpoints(refs, expected):
    assert gc.split_weights(refs) == expected


def test_plan_adds_servers_in_free_slots_and_keeps_gone_endpoints_in_maint():
    actual = {"v1.0": srv("10.0.0.1", 50), "v1.1": srv("10.0.0.2", 50)}
    desired = {"v1": (50, [("10.0.0.2", 8080), ("10.0.0.3", 8080)]), "v2": (0, [("10.0.0.4", 8080)])}
    commands, expected = gc.plan(B, actual, desired, haproxy)
    assert commands == [
        ("add", "server", f"{B}/v1.2", "10.0.0.3:8080", "weight", 50), ("enable", "server", f"{B}/v1.2"),
        ("set", "server", f"{B}/v1.0", "weight", 0), ("set", "server", f"{B}/v1.0", "state", "maint"),
        ("add", "server", f"{B}/v2.0", "10.0.0.4:8080", "weight", 0), ("enable", "server", f"{B}/v2.0"),
    ]
    assert expected == {"v1.0": ("10.0.0.1", 8080, 0, True), "v1.1": ("10.0.0.2", 8080, 50, False),
                        "v1.2": ("10.0.0.3", 8080, 50, False), "v2.0": ("10.0.0.4", 8080, 0, False)}


def test_plan_deletes_the_servers_of_a_service_that_left_the_route_and_readies_a_returning_endpoint():
    actual = {"v1.0": srv("10.0.0.1", 0, admin=1), "v2.0": srv("10.0.0.4", 25), "v2.1": srv("10.0.0.5", 0, admin=1)}
    commands, expected = gc.plan(B, actual, {"v1": (100, [("10.0.0.1", 8080)])}, haproxy)
    assert commands == [
        ("set", "server", f"{B}/v1.0", "weight", 100), ("set", "server", f"{B}/v1.0", "state", "ready"),
        ("set", "server", f"{B}/v2.0", "state", "maint"), ("del", "server", f"{B}/v2.0"),
        ("del", "server", f"{B}/v2.1"),
    ]
    assert expected == {"v1.0": ("10.0.0.1", 8080, 100, False)}
    assert gc.plan(B, {"v1.0": srv("10.0.0.1", 100)}, {"v1": (100, [("10.0.0.1", 8080)])}, haproxy)[0] == []


def test_server_and_backend_names_are_ones_haproxy_takes():
    assert haproxy.gateway_server("hello-v1", 3) == "hello-v1.3"
    assert haproxy.gateway_backend("phoenix-dev", "catalog-dev") == "be_phoenix-dev_catalog-dev"


@pytest.mark.parametrize("spec, why", [
    ({"rules": [{"backendRefs": []}]}, None),
    ({"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}, None),
    ({"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]}]}, "path prefix '/'"),
    ({"rules": [{"matches": [{"path": {"type": "Exact", "value": "/"}}]}]}, "path prefix '/'"),
    ({"rules": [{"matches": [{"headers": [{"name": "x", "value": "y"}]}]}]}, "path prefix '/'"),
    ({"rules": [{}, {}]}, "exactly one rule"),
    ({"hostnames": ["a.example"], "rules": [{}]}, "hostnames"),
    ({"rules": [{"filters": [{"type": "RequestHeaderModifier"}]}]}, "filters"),
])
def test_only_one_rule_at_path_prefix_slash_is_supported(spec, why):
    result = gc.unsupported({"spec": spec})
    assert (result is None) if why is None else (why in result)


def test_ready_endpoints_follow_endpointslice_readiness_and_the_service_port():
    service = {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
    slices = [{"addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.4"], "conditions": {}},
    ]}]
    assert gc.ready_endpoints(service, slices, 80) == [("10.0.0.1", 8080), ("10.0.0.4", 8080)]
    assert gc.ready_endpoints(service, slices, 81) is None


def test_parent_refs_name_our_gateway_only():
    route = {"spec": {"parentRefs": [{"name": "phoenix"}, {"name": "other"}, {"name": "phoenix", "namespace": "x"},
                                     {"name": "phoenix", "kind": "Service", "group": ""}]}}
    assert gc.parent_refs(route, "phoenix", "ns") == [{"name": "phoenix"}]


def test_haproxy_config_has_a_frontend_per_listener_and_passes_haproxy_check(tmp_path):
    props = {"address": "127.0.0.1", "stats_port": 24010, "listeners": {
        "catalog": {"listener": "catalog", "port": 24011.0, "route": "catalog-dev", "backend": "be_ns_catalog-dev"},
        "orders": {"listener": "orders", "port": 24012, "route": "orders-dev", "backend": "be_ns_orders-dev"}}}
    text = GatewayHAProxyProvider.config(props, str(tmp_path / "s.sock"))
    assert "frontend fe_catalog\n    bind 127.0.0.1:24011\n    default_backend be_ns_catalog-dev" in text
    assert "backend be_ns_orders-dev" in text and "httpchk" not in text
    assert sorted(GatewayHAProxyProvider.ports(props)) == [
        (24010, "gateway stats"), (24011, "gateway listener catalog"), (24012, "gateway listener orders")]
    (tmp_path / "h.cfg").write_text(text)
    subprocess.run(["haproxy", "-c", "-q", "-f", str(tmp_path / "h.cfg")], check=True, timeout=30)


class _RuntimeAPI:
    """The controller's view of HAProxy's runtime API: ``servers_state`` and
    ``batch`` over one backend's servers (what the real one answers is
    checked against a real cluster in tests/pytest/test_k8s_gateway.py)."""

    def __init__(self, servers):
        self.servers, self.batches = servers, []

    def servers_state(self, _backend):
        return {name: dict(s) for name, s in self.servers.items()}

    def batch(self, commands):
        self.batches.append(commands)
        for verb, _what, target, *rest in commands:
            name = target.split("/", 1)[1]
            if verb == "add":
                ip, port = rest[0].split(":")
                self.servers[name] = srv(ip, rest[2], port=int(port))
            elif verb == "del":
                self.servers.pop(name)
            elif verb == "set" and rest[0] == "weight":
                self.servers[name]["weight"] = rest[1]
            elif verb == "set" and rest[0] == "state":
                self.servers[name]["admin"] = 1 if rest[1] == "maint" else 0


class _Routes:
    def __init__(self):
        self.patched = []

    def patch_namespaced_custom_object_status(self, *args):
        self.patched.append(args[-1]["status"]["parents"][0]["conditions"][0]["observedGeneration"])


def _controller(proxy):
    ctl = object.__new__(gc.Controller)
    ctl.ns, ctl.gateway, ctl.controller_name = "ns", "phoenix", "phoenix.deploy/haproxy-gateway"
    ctl.routes_by_name = {"catalog-dev": {"route": "catalog-dev", "backend": B, "listener": "catalog", "port": 8000}}
    ctl.haproxy, ctl.proxy, ctl.custom = haproxy, proxy, _Routes()
    ctl.written, ctl.applied, ctl.held = {}, {}, {}
    return ctl


def _slice(service, *addresses):
    return {"metadata": {"labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


def test_a_generation_weighing_a_service_without_ready_endpoints_is_held_until_one_is_ready():
    """The EndpointSlice watch can lag the pods' readiness: the driver sees a
    new group healthy and weighs it 100, and the controller's cache has no
    endpoint of it yet. Applying that generation set the old group to 0 and
    the new one had no server: 503s, and a status saying the weights were
    served. Held, HAProxy keeps serving the old generation's weights."""
    services = {name: {"spec": {"ports": [{"name": "http", "port": 80}]}} for name in ("v1", "v2")}
    proxy = _RuntimeAPI({"v1.0": srv("10.0.0.1", 100)})
    ctl = _controller(proxy)
    route = {"metadata": {"name": "catalog-dev", "generation": 2}, "spec": {
        "parentRefs": [{"name": "phoenix"}],
        "rules": [{"backendRefs": [{"name": "v1", "port": 80, "weight": 0}, {"name": "v2", "port": 80, "weight": 100}]}]}}
    refs = gc.parent_refs(route, "phoenix", "ns")
    ctl._route("catalog-dev", route, refs, services, [_slice("v1", "10.0.0.1")])
    assert proxy.batches == [] and ctl.custom.patched == []
    assert proxy.servers == {"v1.0": srv("10.0.0.1", 100)}  # still served
    ctl._route("catalog-dev", route, refs, services, [_slice("v1", "10.0.0.1"), _slice("v2", "10.0.0.2")])
    assert proxy.servers["v1.0"]["weight"] == 0 and proxy.servers["v2.0"]["weight"] == 100
    assert ctl.custom.patched == [2]
    # once applied, that generation follows its endpoints: v2's pod gone -> MAINT (not held)
    ctl._route("catalog-dev", route, refs, services, [_slice("v1", "10.0.0.1")])
    assert proxy.servers["v2.0"]["admin"] == 1
