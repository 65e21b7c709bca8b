"""The Kubernetes driver's names, validation, objects and error mapping
(no cluster: the objects are plain dicts; API errors are the client's own
ApiException / urllib3 exceptions)."""
import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    PlatformError, group_name, valid_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import (
    KubernetesGroups, objects as o)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import (
    Conflict, Kube, NotFound)

DIGEST = "sha256:" + "a" * 64
REF = "127.31.20.1:24000/phoenix-it/hello@" + DIGEST
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KUBE = {"api_server": "https://127.0.0.1:6443", "namespace": "phoenix", "ca_cert": CA, "token": "t0ken"}


def test_route_and_group_names_are_dns_labels():
    assert o.route_name("catalog", "integrated_qa") == "catalog-integrated-qa"
    assert o.route_name("catalog", "ci") == "catalog-ci"
    long = o.route_name("catalog", "x" * 80)
    assert valid_name(long) and long == o.route_name("catalog", "x" * 80)
    assert group_name("catalog", "ci", "v007") == "catalog-ci-v007"


@pytest.mark.parametrize("ref", [
    "127.0.0.1:5000/catalog:1.4.0", "catalog", "127.0.0.1:5000/catalog:latest", "catalog@" + DIGEST,
    "127.0.0.1:5000/catalog@sha256:abc", None, "", "127.0.0.1:5000/Catalog@" + DIGEST,
])
def test_images_by_digest_only(ref):
    with pytest.raises(PlatformError) as err:
        KubernetesGroups(driver=None).resolve_image(ref, "catalog")
    assert err.value.param == "image"
    assert "registry/repository@sha256:<64 hex digits>" in err.value.msg


def test_a_tag_is_refused_with_the_reason():
    with pytest.raises(PlatformError, match="a tag can move"):
        o.check_image("127.0.0.1:5000/catalog:1.4.0")
    assert KubernetesGroups(driver=None).resolve_image(REF) == REF


@pytest.mark.parametrize("value", ["", "-ci", "ci-", "a" * 64, "prod eu", "prod/eu"])
def test_label_values_are_checked_naming_the_parameter(value):
    with pytest.raises(PlatformError) as err:
        o.label_value(value, "environment")
    assert err.value.param == "environment" and "label value" in err.value.msg


def test_deployment_selector_holds_the_release_and_pods_drain():
    dep = o.deployment("phoenix", "catalog", "integrated_qa", "v007", "catalog-integrated-qa-v007", REF, 3,
                       {"PORT": "8080", "GREETING": "hi"}, 8080, "/healthz", owner="store-1",
                       prestop_seconds=3, drain_seconds=10)
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel == {o.ARTIFACT: "catalog", o.ENVIRONMENT: "integrated_qa", o.RELEASE: "v007",
                   o.GROUP: "catalog-integrated-qa-v007"}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels[o.MANAGED_BY] == "phoenix.deploy" and set(sel.items()) <= set(labels.items())
    assert dep["metadata"]["annotations"] == {o.IMAGE: REF, o.OWNER: "store-1"}
    pod = dep["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert box["image"] == REF and box["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert box["lifecycle"]["preStop"] == {"sleep": {"seconds": 3}}
    assert pod["terminationGracePeriodSeconds"] > 3 + 10
    assert {"name": "GREETING", "value": "hi"} in box["env"]
    assert dep["spec"]["replicas"] == 3


def test_bad_env_names_and_tags_never_make_a_deployment():
    with pytest.raises(PlatformError) as err:
        o.deployment("ns", "catalog", "ci", "v1", "catalog-ci-v1", REF, 1, {"BAD-NAME": "x"}, 8080, "/")
    assert err.value.param == "env" and "BAD-NAME" in err.value.msg
    with pytest.raises(PlatformError) as err:
        o.deployment("ns", "catalog", "ci", "v1", "catalog-ci-v1", "reg/catalog:1.0", 1, {}, 8080, "/")
    assert err.value.param == "image"


def test_service_selects_the_release_pods():
    svc = o.service("phoenix", "catalog", "ci", "v002", "catalog-ci-v002", 80, 8080, REF)
    assert svc["spec"]["selector"][o.RELEASE] == "v002"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]


def test_route_backend_edits():
    route = o.route("phoenix", "catalog", "ci", "phoenix")
    assert route["metadata"]["name"] == "catalog-ci"
    assert route["spec"]["parentRefs"][0]["name"] == "phoenix"
    assert o.edit_backends(route, {"a": 0}, {"a": 80}, attach_zero=True)
    assert o.weights_of(route) == {"a": 0}
    assert not o.edit_backends(route, {"a": 0}, {"a": 80})  # nothing to change
    assert not o.edit_backends(route, {"b": 0}, {"b": 80})  # weight 0: a detached group stays detached
    assert o.edit_backends(route, {"a": 90, "b": 10}, {"a": 80, "b": 80})
    assert o.weights_of(route) == {"a": 90, "b": 10}
    assert o.edit_backends(route, {}, {}, remove=["a"])
    assert o.backends(route) == [{"group": "", "kind": "Service", "name": "b", "port": 80, "weight": 10}]


def _status(generation, observed, accepted="True", resolved="True", message="", gateway="phoenix"):
    conds = [{"type": "Accepted", "status": accepted, "observedGeneration": observed, "reason": "R",
              "message": message},
             {"type": "ResolvedRefs", "status": resolved, "observedGeneration": observed, "reason": "S",
              "message": ""}]
    route = o.route("phoenix", "catalog", "ci", gateway)
    o.edit_backends(route, {"a": 100, "b": 0}, {"a": 80, "b": 80}, attach_zero=True)
    route["metadata"]["generation"] = generation
    route["status"] = {"parents": [{"parentRef": {"name": gateway}, "controllerName": "x", "conditions": conds}]}
    return route


def test_route_verdict():
    assert o.route_verdict(_status(3, 3), {"a": 100, "b": 0}, "phoenix")[0] is True
    assert o.route_verdict(_status(3, 3), {"a": 100}, "phoenix")[0] is True
    assert o.route_verdict(_status(3, 3), {"a": 100, "c": 0}, "phoenix")[0] is True  # absent = weight 0
    assert o.route_verdict(_status(3, 3), {"a": 0, "b": 100}, "phoenix")[0] is False  # spec differs
    stale = o.route_verdict(_status(4, 3), {"a": 100}, "phoenix")
    assert stale[0] is False and "generation 3" in stale[1]
    assert o.route_verdict(_status(3, 3, resolved="False"), {"a": 100}, "phoenix")[0] is False
    refused = o.route_verdict(_status(3, 3, accepted="False", message="no listener"), {"a": 100}, "phoenix")
    assert refused[0] == "refused" and "no listener" in refused[1]
    assert o.route_verdict(_status(3, 3, gateway="other"), {"a": 100}, "phoenix")[0] is False
    assert o.route_verdict({}, {"a": 0}, "phoenix")[0] is False


def _api_error(status, details=None, message="boom"):
    exc = ApiException(status=status, reason="R")
    exc.body = json.dumps({"kind": "Status", "message": message, "details": details or {}})
    return exc


@pytest.mark.parametrize("status, transient", [(429, True), (500, True), (503, True), (400, False)])
def test_api_errors_transient_or_not(status, transient):
    err = Kube(KUBE).error("list pods", _api_error(status))
    assert err.transient is transient and "list pods" in err.msg


def test_permanent_api_errors_name_cause_and_fix():
    kube = Kube(KUBE)
    err = kube.error("create Deployment x", _api_error(401))
    assert not err.transient and "expired or invalid" in err.msg and "pulumi up" in err.msg
    assert "t0ken" not in err.msg
    err = kube.error("create Deployment x", _api_error(403, message="cannot create deployments"))
    assert "RBAC" in err.msg and "cannot create deployments" in err.msg and "phoenix-deployer" in err.msg
    err = kube.error("create Deployment x", _api_error(404, {"name": "phoenix", "kind": "namespaces"}))
    assert "namespace phoenix does not exist" in err.msg and not isinstance(err, NotFound)
    assert isinstance(kube.error("read Deployment x", _api_error(404, {"kind": "deployments"})), NotFound)
    assert isinstance(kube.error("replace HTTPRoute r", _api_error(409)), Conflict)


def test_connection_errors_are_transient_and_tls_errors_are_not():
    kube = Kube(KUBE)
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")
    assert kube.connection_error("list pods", refused).transient
    bad_ca = urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"))
    err = kube.connection_error("list pods", bad_ca)
    assert not err.transient and "ca_cert" in err.msg


def test_make_platform_picks_the_kubernetes_driver_and_checks_the_outputs():
    platform = targets.make_platform({"platform": "kubernetes", "kubernetes": KUBE})
    assert platform.name == "kubernetes" and platform.groups.name == "kubernetes"
    with pytest.raises(PhoenixError) as err:
        targets.make_platform({"platform": "kubernetes", "kubernetes": None})
    assert err.value.param == "infra" and "kubernetes.namespace" in err.value.msg
    with pytest.raises(PhoenixError) as err:
        targets.make_platform({"platform": "kubernetes", "kubernetes": dict(KUBE, ca_cert=None)})
    assert err.value.param == "infra" and "ca_cert" in err.value.msg


def test_no_gateway_socket_means_no_data_never_a_pass():
    platform = targets.make_platform({"platform": "kubernetes", "kubernetes": KUBE})
    got = platform.metrics.metrics("catalog-ci-v001", 0.0, 1e10)
    assert got.requests == 0 and got.error_rate is None and got.latency_ms is None


def _closed_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _driver(routes):
    from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import KubernetesDriver
    gateway = {"name": "phoenix"} if routes is None else {"name": "phoenix", "routes": routes}
    kube = dict(KUBE, api_server="https://127.0.0.1:%d" % _closed_port(), service_names={"catalog": "catalog"},
                gateway=gateway)
    return KubernetesDriver({"platform": "kubernetes", "kubernetes": kube})


def test_the_driver_edits_the_route_the_stack_outputs_name():
    driver = _driver({"catalog": "catalog-dev", "orders": "orders-dev"})
    assert driver.route_name("catalog", "dev") == "catalog-dev"
    # the API calls go to that route (a closed loopback port: the refused call names what it was)
    with pytest.raises(PlatformError, match="read HTTPRoute catalog-dev") as err:
        driver.read_route("catalog", "dev")
    assert err.value.transient
    driver._where["catalog-dev-v001"] = ("catalog", "dev")  # the gateway backend follows the same name
    assert driver.backend("catalog-dev-v001") == "be_phoenix_catalog-dev"
    # no routes in the outputs (an older local stack): the driver's own name
    assert _driver(None).route_name("catalog", "integrated_qa") == "catalog-integrated-qa"
    assert _driver({"orders": "orders-qa"}).route_name("catalog", "qa") == "catalog-qa"


def test_a_stack_route_the_driver_does_not_manage_is_refused_naming_the_output():
    driver = _driver({"catalog": "catalog"})  # a GKE stack from before the routes were <artifact>-<environment>
    with pytest.raises(PlatformError) as err:
        driver.route_name("catalog", "dev")
    assert err.value.param == "infra"
    assert "infra: kubernetes.gateway.routes.catalog is HTTPRoute 'catalog'" in err.value.msg
    assert "manages HTTPRoute 'catalog-dev' for artifact catalog in environment dev" in err.value.msg
    assert "set the stack's phoenix-infra:environment to dev and run pulumi up" in err.value.msg
    for call in (lambda: driver.read_route("catalog", "dev"),
                 lambda: driver.create_group("catalog", "dev", "v001", REF, 1, {}, "catalog-dev-v001")):
        with pytest.raises(PlatformError, match="kubernetes.gateway.routes.catalog") as err:
            call()  # refused before any API call (the API server's port is closed)
        assert not err.value.transient
    other_env = _driver({"catalog": "catalog-prod"})
    with pytest.raises(PlatformError, match="routes.catalog is HTTPRoute 'catalog-prod'.*'catalog-qa'"):
        other_env.route_name("catalog", "qa")
