"""The kubernetes platform (stack gke-dev) under schema-validating mocks."""
import pathlib
import runpy

import pulumi
import pytest

from pulumi_harness import INFRA, SchemaMocks, run_stack, use_stack, validate

pulumi.runtime.set_mocks(SchemaMocks(), project="phoenix-infra", stack="gke-dev", preview=False)

from phoenix_infra import contract  # noqa: E402  (the program is imported after set_mocks)
from phoenix_infra.contract import route_name  # noqa: E402

ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
EXPECTED_RULES = {
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "replicasets"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch", "delete"},  # delete: chaos.yml
    ("", "services"): {"get", "list", "create", "patch", "delete"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "create", "update", "patch"},
    ("", "configmaps"): {"get", "create", "update"},  # the release store: history (resourceVersion CAS)
    ("coordination.k8s.io", "leases"): {"get", "create", "update", "delete"},  # and its lock
}


@pytest.fixture(scope="module")
def run():
    return run_stack("gke-dev", set={"phoenix-infra:artifacts": ["catalog", "orders"]})


def test_mock_validates_gateway_api_resources():
    errors = validate("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "spec": {"rules": [{"backendRefs": [{"port": 80, "wieght": 1}]}]}})
    assert sorted(errors) == sorted([
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute.spec.rules[0].backendRefs[0].wieght: unknown property "
        "(known: filters, group, kind, name, namespace, port, weight)",
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute.spec.rules[0].backendRefs[0].name: required property missing",
    ])
    errors = validate(ROLE, {"rules": [{"verbs": ["get"], "resourceName": ["x"]}]})
    assert errors == [f"{ROLE}.rules[0].resourceName: unknown property (known: apiGroups, nonResourceURLs, "
                      "resourceNames, resources, verbs)"]


def test_deployer_role_grants_only_what_the_rollout_engine_uses(run):
    rules = run.one(ROLE).inputs["rules"]
    granted = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES
    flat = [item for rule in rules for key in ("apiGroups", "resources", "verbs") for item in rule[key]]
    assert "*" not in flat and "secrets" not in flat
    assert not [r for r in run.resources if r.typ.endswith((":ClusterRole", ":ClusterRoleBinding"))]
    binding = run.one("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding").inputs
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "phoenix-deployer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "phoenix-deployer", "namespace": "phoenix-dev"}]


def test_network_policy_limits_egress_to_the_database_and_dns(run):
    spec = run.one(POLICY).inputs["spec"]
    reserved = next(r.inputs for r in run.custom("gcp:compute/globalAddress:GlobalAddress")
                    if r.inputs.get("purpose") == "VPC_PEERING")
    db_range = f"{reserved['address']}/{int(reserved['prefixLength'])}"
    assert spec["policyTypes"] == ["Egress"]
    assert spec["podSelector"]["matchLabels"] == run.outputs["kubernetes"]["labels"]
    database, dns = spec["egress"]
    assert database == {"to": [{"ipBlock": {"cidr": db_range}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert "0.0.0.0/0" not in str(spec)


def test_database_is_private_and_dev_is_not_deletion_protected(run):
    sql = run.one("gcp:sql/databaseInstance:DatabaseInstance").inputs
    assert sql["settings"]["ipConfiguration"]["ipv4Enabled"] is False
    assert sql["settings"]["ipConfiguration"]["privateNetwork"]
    assert sql["settings"]["backupConfiguration"]["pointInTimeRecoveryEnabled"] is True
    assert sql["deletionProtection"] is False
    assert run.secret_outputs["database.password"] is True


def test_cluster_is_private_autopilot_in_the_stack_network(run):
    cluster = run.one("gcp:container/cluster:Cluster").inputs
    assert cluster["enableAutopilot"] is True
    assert cluster["privateClusterConfig"]["enablePrivateNodes"] is True
    assert cluster["network"] == run.one("gcp:compute/network:Network").name + "-id"
    assert cluster["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}
    node_roles = [m.inputs["role"] for m in run.custom("gcp:projects/iAMMember:IAMMember")]
    assert node_roles == ["roles/container.defaultNodeServiceAccount"]


def test_every_kubernetes_object_goes_to_the_stack_cluster(run):
    objects = [r for r in run.resources if r.custom and r.typ.startswith("kubernetes:")]
    assert len(objects) == 10
    # provider reference: "<provider URN>::<provider id>"
    providers = {r.provider.rsplit("::", 1)[0] for r in objects}
    assert len(providers) == 1
    (urn,) = providers
    assert urn.endswith("$pulumi:providers:kubernetes::phoenix-gke-dev-k8s")


def test_services_and_routes_per_artifact(run):
    services = {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in run.custom("kubernetes:core/v1:Service")}
    assert set(services) == {"catalog", "orders"}
    assert services["orders"]["selector"] == {**run.outputs["kubernetes"]["labels"], "app": "orders"}
    routes = {r.inputs["metadata"]["name"]: r.inputs for r in run.custom("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute")}
    # the very routes the rollout driver edits: objects.route_name(artifact, environment), the environment
    # being the stack's (default: the stack name)
    assert set(routes) == {route_name("catalog", "gke-dev"), route_name("orders", "gke-dev")} \
        == {"catalog-gke-dev", "orders-gke-dev"}
    assert {name: r["spec"]["rules"][0]["matches"][0]["path"]["value"] for name, r in routes.items()} == \
        {"catalog-gke-dev": "/", "orders-gke-dev": "/orders"}
    assert routes["orders-gke-dev"]["metadata"]["labels"] == {
        **run.outputs["kubernetes"]["labels"], "phoenix.deploy/artifact": "orders",
        "phoenix.deploy/environment": "gke-dev"}
    # no backend until the first rollout attaches its release's Service (the artifact Service is not one)
    assert routes["orders-gke-dev"]["spec"]["rules"][0]["backendRefs"] == []
    assert run.outputs["kubernetes"]["gateway"]["routes"] == {"catalog": "catalog-gke-dev", "orders": "orders-gke-dev"}
    gateway = run.one("kubernetes:gateway.networking.k8s.io/v1:Gateway").inputs["spec"]
    assert gateway["gatewayClassName"] == "gke-l7-global-external-managed"


def test_the_route_is_named_for_the_configured_environment():
    out = run_stack("gke-dev", set={"phoenix-infra:environment": "qa"}).outputs
    assert out["kubernetes"]["gateway"]["routes"] == {"catalog": "catalog-qa"}
    mocks = SchemaMocks()
    with pytest.raises(pulumi.RunError, match="'phoenix-infra:environment' is 'Q A'"):
        run_stack("gke-dev", set={"phoenix-infra:environment": "Q A"}, mocks=mocks)
    assert mocks.resources == []


def test_the_engine_owned_route_backends_are_ignored_by_pulumi_up(monkeypatch):
    """``pulumi up`` must not undo a rollout: the backendRefs (release Services and
    their weights) of each HTTPRoute are ``ignore_changes``, and each ignored path
    names a property the program really sets."""
    from phoenix_infra.kubernetes import app
    seen = {}
    real = app.k8s.apiextensions.CustomResource

    def recording(name, opts=None, **kwargs):
        seen[kwargs["kind"]] = seen.get(kwargs["kind"], []) + [list(opts.ignore_changes or [])]
        return real(name, opts=opts, **kwargs)
    monkeypatch.setattr(app.k8s.apiextensions, "CustomResource", recording)
    run = run_stack("gke-dev", set={"phoenix-infra:artifacts": ["catalog", "orders"]})
    assert app.ENGINE_OWNED == ["spec.rules[*].backendRefs"]
    assert seen == {"Gateway": [[]], "HTTPRoute": [app.ENGINE_OWNED, app.ENGINE_OWNED]}
    for route in run.custom("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"):
        for path in app.ENGINE_OWNED:
            value = route.inputs
            for part in path.split("."):
                value = value[part.replace("[*]", "")]
                if part.endswith("[*]"):
                    assert len(value) == 1
                    value = value[0]
            assert value == []


def test_outputs_follow_the_contract(run):
    out = run.outputs
    ip = out["load_balancer"]["address"]
    assert tuple(out) == contract.KEYS
    assert out["platform"] == "kubernetes" and out["gce"] is None
    assert tuple(sorted(out["kubernetes"])) == tuple(sorted(contract.KUBERNETES_KEYS))
    assert out["kubernetes"] == {
        "api_server": "https://198.51.100.7",  # the mocked cluster endpoint
        "ca_cert": "mock",  # PEM, decoded from the cluster's base64 CA (not a secret)
        "token": None, "kubeconfig": None,  # credentials come from gke-gcloud-auth-plugin
        "namespace": "phoenix-dev",
        "service_names": {"catalog": "catalog", "orders": "orders"},
        "deployer_service_account": "phoenix-deployer",
        "labels": {"app.kubernetes.io/part-of": "phoenix-deploy", "phoenix.deploy/stack": "gke-dev"},
        "gateway": {"name": "phoenix", "class": "gke-l7-global-external-managed",
                    "url": {"catalog": f"http://{ip}/", "orders": f"http://{ip}/orders"},
                    "routes": {"catalog": "catalog-gke-dev", "orders": "orders-gke-dev"}, "haproxy_socket": None},
    }
    assert tuple(sorted(out["kubernetes"]["gateway"])) == tuple(sorted(contract.GATEWAY_KEYS))
    assert set(out["database"]) == {"host", "port", "name", "user", "password"}
    assert out["load_balancer"]["backends"] == out["kubernetes"]["service_names"]


def test_main_composes_the_gke_stack():
    mocks = use_stack("gke-dev")
    pulumi.runtime.test(lambda: runpy.run_path(str(pathlib.Path(INFRA, "__main__.py"))) and None)()
    assert not mocks.errors
    assert {r.typ for r in mocks.resources} >= {ROLE, POLICY, "gcp:sql/databaseInstance:DatabaseInstance"}


def test_missing_config_fails_before_any_resource():
    mocks = SchemaMocks()
    with pytest.raises(pulumi.RunError, match="phoenix-infra:db_password"):
        run_stack("gke-dev", unset=["phoenix-infra:db_password"], mocks=mocks)
    assert mocks.resources == []


def test_registries_are_two_artifact_registry_repositories_the_nodes_read(run):
    repos = run.custom("gcp:artifactregistry/repository:Repository")
    assert sorted(r.inputs["repositoryId"] for r in repos) == ["phoenix-gke-dev-dev", "phoenix-gke-dev-prod"]
    project = repos[0].inputs["project"]
    assert run.outputs["registries"] == {
        env: f"{repos[0].inputs['location']}-docker.pkg.dev/{project}/phoenix-gke-dev-{env}" for env in ("dev", "prod")}
    readers = run.custom("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
    nodes = next(a for a in run.custom("gcp:serviceaccount/account:Account") if a.name.endswith("-nodes"))
    assert len(readers) == 2 and {m.inputs["member"] for m in readers} == {
        f"serviceAccount:{nodes.inputs['accountId']}@mock-project.iam.gserviceaccount.com"}
