"""The gce platform (stacks gcp-dev, gcp-prod) under schema-validating mocks."""
import ipaddress

import pulumi
import pytest

from pulumi_harness import DB_PASSWORD, SIG, SchemaMocks, run_stack, validate

pulumi.runtime.set_mocks(SchemaMocks(), project="phoenix-infra", stack="gcp-dev", preview=False)

from phoenix_infra import contract  # noqa: E402  (the program is imported after set_mocks)
from phoenix_infra.gcp import INSTANCE_ROLES  # noqa: E402

GOOGLE_RANGES = {"35.191.0.0/16", "130.211.0.0/22"}
IAP_RANGE = {"35.235.240.0/20"}
SQL = "gcp:sql/databaseInstance:DatabaseInstance"
FIREWALL = "gcp:compute/firewall:Firewall"


@pytest.fixture(scope="module")
def runs():
    return {stack: run_stack(stack) for stack in ("gcp-dev", "gcp-prod")}


@pytest.fixture(params=["gcp-dev", "gcp-prod"])
def run(request, runs):
    return runs[request.param]


def test_mock_rejects_requests_outside_the_provider_schema():
    errors = validate(FIREWALL, {"sourceRange": ["10.0.0.0/8"], "allows": [{"protocol": "tcp", "port": "22"}]})
    assert any("sourceRange: unknown property" in e for e in errors)
    assert any(".network: required property missing" in e for e in errors)
    assert any("allows[0].port: unknown property" in e for e in errors)
    errors = validate(SQL, {"databaseVersion": "POSTGRES_16",
                            "settings": {"tier": "db-f1-micro", "ipConfiguration": {"ipv4Enabled": "no"}}})
    assert errors == [f"{SQL}.settings.ipConfiguration.ipv4Enabled: expected bool, got 'no'"]
    assert validate("gcp:compute/noSuch:Thing", {}) == ["gcp:compute/noSuch:Thing: no schema known for this resource type"]


def test_cloud_sql_has_a_private_ip_only(run):
    settings = run.one(SQL).inputs["settings"]
    ip = settings["ipConfiguration"]
    assert ip["ipv4Enabled"] is False
    assert ip["privateNetwork"] == run.one("gcp:compute/network:Network").name + "-id"
    assert "authorizedNetworks" not in ip
    assert ip["sslMode"] == "ENCRYPTED_ONLY"
    peering = run.one("gcp:servicenetworking/connection:Connection").inputs
    assert peering["service"] == "servicenetworking.googleapis.com"
    reserved = [r.inputs for r in run.custom("gcp:compute/globalAddress:GlobalAddress")
                if r.inputs.get("purpose") == "VPC_PEERING"]
    assert len(reserved) == 1 and reserved[0]["addressType"] == "INTERNAL"
    assert ipaddress.ip_network(f"{reserved[0]['address']}/{int(reserved[0]['prefixLength'])}").is_private


def test_firewall_admits_only_google_ranges_to_tagged_instances(run):
    rules = {r.name.rsplit("-allow-", 1)[-1]: r.inputs for r in run.custom(FIREWALL)}
    assert set(rules) == {"lb-health-checks", "iap-ssh"}
    tag = run.outputs["gce"]["network_tags"]
    for rule in rules.values():
        assert rule["direction"] == "INGRESS"
        assert "0.0.0.0/0" not in rule["sourceRanges"]
        assert rule["targetTags"] == tag
    assert set(rules["lb-health-checks"]["sourceRanges"]) == GOOGLE_RANGES
    assert rules["lb-health-checks"]["allows"] == [{"protocol": "tcp", "ports": ["8080"]}]
    assert set(rules["iap-ssh"]["sourceRanges"]) == IAP_RANGE
    assert rules["iap-ssh"]["allows"] == [{"protocol": "tcp", "ports": ["22"]}]


def test_egress_goes_through_cloud_nat(run):
    nat = run.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    assert [s["name"] for s in nat["subnetworks"]] == [run.one("gcp:compute/subnetwork:Subnetwork").name + "-id"]


@pytest.mark.parametrize("stack, protected", [("gcp-dev", False), ("gcp-prod", True)])
def test_deletion_protection_only_on_prod(runs, stack, protected):
    sql = runs[stack].one(SQL).inputs
    assert sql["deletionProtection"] is protected
    assert sql["settings"]["deletionProtectionEnabled"] is protected
    assert sql["settings"]["availabilityType"] == ("REGIONAL" if protected else "ZONAL")


def test_prod_follows_the_stack_name_unless_configured(runs):
    assert run_stack("gcp-dev", set={"phoenix-infra:prod": True}).one(SQL).inputs["deletionProtection"] is True


def test_backups_and_point_in_time_recovery_are_on(run):
    backup = run.one(SQL).inputs["settings"]["backupConfiguration"]
    assert backup["enabled"] is True
    assert backup["pointInTimeRecoveryEnabled"] is True
    assert backup["backupRetentionSettings"]["retainedBackups"] >= 7


def test_database_password_is_a_secret_everywhere(run):
    assert run.secret_outputs["database.password"] is True
    assert run.outputs["database"]["password"] == DB_PASSWORD
    user = run.one("gcp:sql/user:User").inputs
    assert user["password"] == {SIG: user["password"][SIG], "value": DB_PASSWORD}
    assert [k for k, secret in run.secret_outputs.items() if secret] == ["database.password"]


def test_instance_service_account_has_least_privilege(run):
    members = run.custom("gcp:projects/iAMMember:IAMMember")
    email = run.outputs["gce"]["service_account"]
    assert sorted(m.inputs["role"] for m in members) == sorted(INSTANCE_ROLES)
    assert {m.inputs["member"] for m in members} == {f"serviceAccount:{email}"}


def test_load_balancer_has_one_empty_backend_service_per_artifact():
    run = run_stack("gcp-dev", set={"phoenix-infra:artifacts": ["catalog", "orders"]})
    services = {r.name: r.inputs for r in run.custom("gcp:compute/backendService:BackendService")}
    assert set(services) == {"phoenix-gcp-dev-catalog", "phoenix-gcp-dev-orders"}
    for service in services.values():
        assert service["loadBalancingScheme"] == "EXTERNAL_MANAGED"
        assert "backends" not in service
        assert service["healthChecks"] == "phoenix-gcp-dev-health-id"
    url_map = run.one("gcp:compute/uRLMap:URLMap").inputs
    assert url_map["defaultService"] == "phoenix-gcp-dev-catalog-id"
    assert url_map["hostRules"] == [{"hosts": ["*"], "pathMatcher": "artifacts"}]
    matcher = url_map["pathMatchers"][0]
    assert matcher["name"] == run.outputs["gce"]["path_matcher"] == "artifacts"
    assert matcher["defaultRouteAction"]["weightedBackendServices"] == [
        {"backendService": "phoenix-gcp-dev-catalog-id", "weight": 100}]
    assert matcher["pathRules"] == [{"paths": ["/orders", "/orders/*"], "routeAction": {
        "weightedBackendServices": [{"backendService": "phoenix-gcp-dev-orders-id", "weight": 100}]}}]
    assert run.outputs["gce"]["routes"] == {
        "catalog": {"path_matcher": "artifacts", "paths": None},
        "orders": {"path_matcher": "artifacts", "paths": ["/orders", "/orders/*"]}}
    rule = run.one("gcp:compute/globalForwardingRule:GlobalForwardingRule").inputs
    assert (rule["portRange"], rule["loadBalancingScheme"]) == ("80", "EXTERNAL_MANAGED")
    assert set(run.outputs["load_balancer"]["backends"]) == {"catalog", "orders"}
    assert run.outputs["gce"]["backend_services"] == run.outputs["load_balancer"]["backends"]


def test_outputs_follow_the_contract(run):
    out = run.outputs
    assert tuple(out) == contract.KEYS
    assert out["platform"] == "gce"
    assert set(out["gce"]) == {"project", "region", "network", "subnetwork", "service_account",
                               "network_tags", "backend_services", "health_check", "url_map",
                               "path_matcher", "routes", "named_port", "port", "backend_template",
                               "db_password_secret"}
    assert all(value not in (None, "", [], {}) for value in out["gce"].values())
    assert out["gce"]["backend_template"]["load_balancing_scheme"] == "EXTERNAL_MANAGED"
    assert out["gce"]["backend_template"]["draining_timeout_sec"] == 30
    assert set(out["database"]) == {"host", "port", "name", "user", "password"}
    assert set(out["load_balancer"]) == {"address", "url", "backends"}
    assert out["load_balancer"]["url"] == f"http://{out['load_balancer']['address']}/"
    assert out["kubernetes"] is None and out["instance_manager"] is None


@pytest.mark.parametrize("key, hint", [
    ("gcp:project", "pulumi config set gcp:project"),
    ("gcp:region", "pulumi config set gcp:region"),
    ("phoenix-infra:db_password", "pulumi config set --secret db_password"),
    ("phoenix-infra:artifacts", "e.g. [catalog]"),
])
def test_missing_config_fails_naming_the_key_before_any_resource(key, hint):
    mocks = SchemaMocks()
    with pytest.raises(Exception, match=key) as failure:
        run_stack("gcp-dev", unset=[key], mocks=mocks)
    assert hint in str(failure.value)
    assert mocks.resources == []


def test_unknown_platform_fails_naming_the_key_before_any_resource():
    mocks = SchemaMocks()
    with pytest.raises(pulumi.RunError, match="phoenix-infra:platform.*'aws'"):
        run_stack("gcp-dev", set={"phoenix-infra:platform": "aws"}, mocks=mocks)
    assert mocks.resources == []


REPO = "gcp:artifactregistry/repository:Repository"


@pytest.mark.parametrize("stack", ["gcp-dev", "gcp-prod"])
def test_two_artifact_registry_repositories_are_the_registries_outputs(runs, stack):
    run = runs[stack]
    prefix = f"phoenix-{stack}"
    repos = {r.inputs["repositoryId"]: r for r in run.custom(REPO)}
    assert set(repos) == {f"{prefix}-dev", f"{prefix}-prod"}
    for env, repo in ((env, repos[f"{prefix}-{env}"]) for env in ("dev", "prod")):
        assert repo.inputs["format"] == "DOCKER" and repo.inputs["location"] == "europe-west1"
        assert repo.inputs["dockerConfig"] == {"immutableTags": env == "prod"}
        project = repo.inputs["project"]
        assert run.outputs["registries"][env] == f"europe-west1-docker.pkg.dev/{project}/{prefix}-{env}"
    assert set(run.outputs["registries"]) == {"dev", "prod"}
    email = run.outputs["gce"]["service_account"]
    readers = run.custom("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
    assert sorted(m.inputs["repository"] for m in readers) == sorted(repos)
    assert {(m.inputs["role"], m.inputs["member"]) for m in readers} == \
        {("roles/artifactregistry.reader", f"serviceAccount:{email}")}


def test_the_engine_owned_url_map_parts_are_ignored_by_pulumi_up(monkeypatch):
    """``pulumi up`` must not undo a rollout: the route weights and the per-release
    backend services of the URL map are ``ignore_changes``, and each ignored path
    names a property the program really sets."""
    from phoenix_infra.gcp import load_balancer
    seen = []
    real = load_balancer.gcp.compute.URLMap

    def recording(name, opts=None, **kwargs):
        seen.append(list(opts.ignore_changes or []))
        return real(name, opts=opts, **kwargs)
    monkeypatch.setattr(load_balancer.gcp.compute, "URLMap", recording)
    run = run_stack("gcp-dev", set={"phoenix-infra:artifacts": ["catalog", "orders"]})
    assert seen == [load_balancer.ENGINE_OWNED]
    inputs = run.one("gcp:compute/uRLMap:URLMap").inputs
    for path in load_balancer.ENGINE_OWNED:
        value = inputs
        for part in path.split("."):
            key = part.replace("[*]", "")
            value = value[key]
            if part.endswith("[*]"):
                value = value[0]
        assert isinstance(value, list) and value, path


def test_the_database_password_reaches_instances_only_through_secret_manager(run):
    version = run.one("gcp:secretmanager/secretVersion:SecretVersion").inputs
    assert version["secretData"] == {SIG: version["secretData"][SIG], "value": DB_PASSWORD}
    reader = run.one("gcp:secretmanager/secretIamMember:SecretIamMember").inputs
    assert reader["role"] == "roles/secretmanager.secretAccessor"
    assert reader["member"] == "serviceAccount:" + run.outputs["gce"]["service_account"]
    assert DB_PASSWORD not in str(run.outputs["gce"])
