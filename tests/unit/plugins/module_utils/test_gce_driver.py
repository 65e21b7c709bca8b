"""Edge cases of the GCE driver, one HTTP exchange at a time
(googleapiclient.http.HttpMockSequence behind the real discovery-built
clients): bad input refused before any mutating call, 412 on the URL map
patch re-read and retried, an operation not DONE after the first wait,
429 / 5xx transient, quota / permission permanent naming the field,
crash loops failed fast, Monitoring windows without data inconclusive,
missing credentials named."""
import json

import pytest
from googleapiclient.http import HttpMockSequence

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    FAILED, READY, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce import GcePlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.api import Api
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.metrics import (
    parse_time, percentiles, rfc3339)

PROJECT, REGION = "phoenix-test", "europe-west1"
IMAGE = "projects/phoenix-test/global/images/catalog-v1-4-0-abc1234-b7"
BS = "https://www.googleapis.com/compute/v1/projects/%s/global/backendServices/" % PROJECT


class FakeClock:
    def __init__(self):
        self.t = 1_800_000_000.0
        self.slept = []

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.t += max(seconds, 0)


def infra(**gce):
    base = {"project": PROJECT, "region": REGION, "network": "net", "subnetwork": "sub",
            "service_account": "sa@phoenix-test.iam.gserviceaccount.com",
            "network_tags": ["phoenix"], "backend_services": {"catalog": "phoenix-catalog"},
            "health_check": "phoenix-health", "url_map": "phoenix-urls",
            "routes": {"catalog": {"path_matcher": "artifacts", "paths": None}}}
    base.update(gce)
    return {"platform": "gce", "gce": base,
            "database": {"host": "10.0.0.3", "port": 5432, "name": "phoenix", "user": "phoenix",
                         "password": "s3cret", "password_secret": "projects/phoenix-test/secrets/db/versions/1"}}


def ok(body):
    return ({"status": "200"}, json.dumps(body))


def err(status, reason, message="boom", location=None):
    error = {"reason": reason, "message": message}
    if location:
        error["location"] = location
    body = {"error": {"code": status, "message": message, "errors": [error]}}
    return ({"status": str(status)}, json.dumps(body))


def op(name="op-1", status="DONE", region=False, error=None):
    body = {"kind": "compute#operation", "name": name, "status": status}
    if region:
        body["region"] = "https://www.googleapis.com/compute/v1/projects/%s/regions/%s" % (PROJECT, REGION)
    if error:
        body["error"] = {"errors": [error]}
    return ok(body)


def url_map(weights=None, fingerprint="fp1"):
    weights = weights or {}
    entries = [{"backendService": BS + "phoenix-catalog", "weight": 0 if any(weights.values()) else 100}]
    entries += [{"backendService": BS + n, "weight": w} for n, w in weights.items()]
    return ok({"name": "phoenix-urls", "fingerprint": fingerprint,
               "defaultService": BS + "phoenix-catalog",
               "hostRules": [{"hosts": ["*"], "pathMatcher": "artifacts"}],
               "pathMatchers": [{"name": "artifacts", "defaultRouteAction": {
                   "weightedBackendServices": entries}}]})


def template_bs(scheme="EXTERNAL_MANAGED"):
    return ok({"name": "phoenix-catalog", "loadBalancingScheme": scheme, "protocol": "HTTP",
               "portName": "http", "timeoutSec": 30,
               "healthChecks": ["https://www.googleapis.com/compute/v1/projects/%s/global/healthChecks/phoenix-health"
                                % PROJECT],
               "connectionDraining": {"drainingTimeoutSec": 30}})


def make(responses, clock=None, **gce):
    http = HttpMockSequence(list(responses))
    platform = GcePlatform(infra(**gce), http=http, clock=clock or FakeClock())
    return platform, http


def methods(http):
    return [(method, uri.split("/compute/v1/")[-1].split("?")[0]) for uri, method, _b, _h in
            http.request_sequence]


def mutating(http):
    return [m for m in methods(http) if m[0] != "GET" and not m[1].endswith("/validate")]


NOT_FOUND = err(404, "notFound", "not found")


# -- bad input, before anything changes ------------------------------------------------

@pytest.mark.parametrize("key,value,param", [
    ("project", None, "infra.gce.project"),
    ("project", "Phoenix_Test", "infra.gce.project"),
    ("region", "", "infra.gce.region"),
    ("region", "europe west1", "infra.gce.region"),
    ("url_map", None, "infra.gce.url_map"),
])
def test_infra_missing_or_malformed_names_the_option(key, value, param):
    with pytest.raises(PlatformError) as exc:
        make([], **{key: value})
    assert exc.value.param == param and key in exc.value.msg


@pytest.mark.parametrize("image", [
    "catalog-v1-4-0@sha256:" + "a" * 64,
    "europe-docker.pkg.dev/p/r/catalog@sha256:" + "a" * 64,
    "projects/phoenix-test/global/images/family/catalog",
    "projects/phoenix-test/zones/x/images/catalog",
    "global/images/catalog",
])
def test_an_image_that_is_not_a_gce_self_link_is_refused(image):
    platform, http = make([])
    with pytest.raises(PlatformError) as exc:
        platform.groups.resolve_image(image, "catalog")
    assert exc.value.param == "image"
    with pytest.raises(PlatformError) as exc:
        platform.groups.create_group("catalog", "ci", "v001", image, 1, {}, owner="o")
    assert exc.value.param == "image" and http.request_sequence == []


def test_a_self_link_resolves_to_its_path():
    platform, _http = make([])
    assert platform.groups.resolve_image("https://www.googleapis.com/compute/v1/" + IMAGE) == IMAGE
    assert platform.groups.resolve_image(IMAGE) == IMAGE


def test_a_name_over_63_characters_is_refused():
    platform, http = make([])
    with pytest.raises(PlatformError) as exc:
        platform.groups.create_group("catalog", "ci", "v001", IMAGE, 1, {}, name="a" * 64)
    assert exc.value.param == "name" and "63" in exc.value.msg and http.request_sequence == []


def test_a_url_map_that_is_not_external_managed_is_refused_before_any_change():
    platform, http = make([template_bs("EXTERNAL")])
    with pytest.raises(PlatformError) as exc:
        platform.groups.create_group("catalog", "ci", "v001", IMAGE, 1, {}, owner="o")
    assert exc.value.param == "infra.gce.url_map" and "EXTERNAL_MANAGED" in exc.value.msg
    assert mutating(http) == []


def test_a_backend_service_of_someone_else_is_refused_before_any_change():
    foreign = ok({"name": "catalog-ci-v001", "description": "made by hand"})
    platform, http = make([template_bs(), NOT_FOUND, NOT_FOUND, foreign])
    with pytest.raises(PlatformError) as exc:
        platform.groups.create_group("catalog", "ci", "v001", IMAGE, 1, {}, owner="o")
    assert exc.value.param == "environment" and "belongs to someone else" in exc.value.msg
    assert mutating(http) == []


# -- create: get-or-create, operation waits ----------------------------------------------

def test_create_group_makes_template_mig_backend_and_attaches_at_weight_0():
    clock = FakeClock()
    platform, http = make([
        template_bs(), NOT_FOUND, NOT_FOUND, NOT_FOUND, url_map(),
        op("t1", status="RUNNING"), op("t1"),  # template insert: not DONE at first, then wait
        op("m1", region=True, status="PENDING"), op("m1", region=True, status="RUNNING"),
        op("m1", region=True),  # MIG insert, wait returned early once
        ok({"name": "catalog-ci-v001", "instanceGroup": "https://www.googleapis.com/compute/v1/projects/"
            "phoenix-test/regions/europe-west1/instanceGroups/catalog-ci-v001"}),
        ok({"name": "catalog-ci-v001", "fingerprint": "abc"}),  # instance group: no named port yet
        op("n1", region=True),  # setNamedPorts
        op("b1"),  # backend service insert
        url_map(), ok({"result": {"loadSucceeded": True}}), op("u1"),
    ], clock=clock)
    group = platform.groups.create_group("catalog", "ci", "v001", IMAGE, 2, {"GREETING": "hi"},
                                         name="catalog-ci-v001", owner="store-1")
    assert group.weight == 0 and group.attached and group.size == 2
    calls = methods(http)
    assert [c for c in calls if c[0] != "GET"] == [
        ("POST", "projects/phoenix-test/global/instanceTemplates"),
        ("POST", "projects/phoenix-test/global/operations/t1/wait"),
        ("POST", "projects/phoenix-test/regions/europe-west1/instanceGroupManagers"),
        ("POST", "projects/phoenix-test/regions/europe-west1/operations/m1/wait"),
        ("POST", "projects/phoenix-test/regions/europe-west1/operations/m1/wait"),
        ("POST", "projects/phoenix-test/regions/europe-west1/instanceGroups/catalog-ci-v001/setNamedPorts"),
        ("POST", "projects/phoenix-test/global/backendServices"),
        ("POST", "projects/phoenix-test/global/urlMaps/phoenix-urls/validate"),
        ("PATCH", "projects/phoenix-test/global/urlMaps/phoenix-urls"),
    ]
    bodies = [json.loads(b) for _u, m, b, _h in http.request_sequence if m in ("POST", "PATCH") and b]
    template = [b for b in bodies if "properties" in b][0]
    assert template["properties"]["disks"][0]["initializeParams"]["sourceImage"] == IMAGE
    env = json.loads(template["properties"]["metadata"]["items"][0]["value"])
    assert env["GREETING"] == "hi" and env["DB_PASSWORD_SECRET"].startswith("projects/")
    assert "s3cret" not in json.dumps(bodies)  # the password never leaves as a value
    assert template["properties"]["labels"]["phoenix-owner"] == "store-1"
    mig = [b for b in bodies if "targetSize" in b][0]
    assert mig["updatePolicy"] == {"type": "OPPORTUNISTIC"}
    assert mig["autoHealingPolicies"][0]["healthCheck"].endswith("/healthChecks/phoenix-health")
    service = [b for b in bodies if b.get("backends")][0]
    assert service["connectionDraining"] == {"drainingTimeoutSec": 30}
    assert service["loadBalancingScheme"] == "EXTERNAL_MANAGED"
    patch = bodies[-1]
    assert patch["fingerprint"] == "fp1"
    entries = patch["pathMatchers"][0]["defaultRouteAction"]["weightedBackendServices"]
    assert {e["backendService"].rsplit("/", 1)[-1]: e["weight"] for e in entries} == {
        "phoenix-catalog": 100, "catalog-ci-v001": 0}


def test_an_operation_error_names_the_field_and_is_permanent():
    platform, _http = make([
        template_bs(), NOT_FOUND, NOT_FOUND, NOT_FOUND, url_map(),
        op("t1", error={"code": "QUOTA_EXCEEDED", "location": "properties.machineType",
                        "message": "Quota 'CPUS' exceeded"})])
    with pytest.raises(PlatformError) as exc:
        platform.groups.create_group("catalog", "ci", "v001", IMAGE, 2, {}, owner="o")
    assert not exc.value.transient and exc.value.param == "properties.machineType"
    assert "QUOTA_EXCEEDED" in exc.value.msg


def test_resource_not_ready_in_an_operation_is_transient():
    platform, _http = make([op("r1", region=True, error={"code": "RESOURCE_NOT_READY", "message": "x"})])
    with pytest.raises(PlatformError) as exc:
        platform.groups.resize("catalog-ci-v001", 3)
    assert exc.value.transient


@pytest.mark.parametrize("status,reason,transient", [
    (429, "rateLimitExceeded", True), (503, "backendError", True), (500, "internalError", True),
    (403, "forbidden", False), (403, "quotaExceeded", False), (400, "invalid", False),
])
def test_http_errors_are_classified(status, reason, transient):
    platform, _http = make([err(status, reason, "nope", location="size")])
    with pytest.raises(PlatformError) as exc:
        platform.groups.resize("catalog-ci-v001", 3)
    assert exc.value.transient is transient
    assert ("HTTP %d" % status) in exc.value.msg and reason in exc.value.msg
    if not transient:
        assert exc.value.param == "size"


def test_a_conflict_on_insert_converges():
    """A rerun whose insert answers 409 (the dead controller's insert won) goes on."""
    platform, http = make([
        template_bs(), NOT_FOUND, NOT_FOUND, NOT_FOUND, url_map(),
        err(409, "alreadyExists"),  # template
        err(409, "alreadyExists"),  # MIG
        ok({"name": "catalog-ci-v001"}),
        ok({"name": "catalog-ci-v001", "namedPorts": [{"name": "http", "port": 8080}]}),
        err(409, "alreadyExists"),  # backend service
        url_map({"catalog-ci-v001": 0}),  # attached already: no patch
    ])
    platform.groups.create_group("catalog", "ci", "v001", IMAGE, 1, {}, owner="o")
    assert not any(m == "PATCH" for m, _p in methods(http))


# -- weights ----------------------------------------------------------------------------

def test_a_412_on_patch_rereads_and_retries():
    platform, http = make([
        ok({"name": "catalog-ci-v001", "description": 'phoenix.deploy: {"artifact": "catalog"}'}),
        url_map({"catalog-ci-v001": 0}, "fp1"), ok({"result": {"loadSucceeded": True}}),
        err(412, "conditionNotMet", "fingerprint mismatch"),
        url_map({"catalog-ci-v001": 0}, "fp2"), ok({"result": {"loadSucceeded": True}}), op("u2"),
        url_map({"catalog-ci-v001": 100}, "fp3"),
    ])
    platform.traffic.set_weights({"catalog-ci-v001": 100})
    patches = [json.loads(b) for _u, m, b, _h in http.request_sequence if m == "PATCH"]
    assert [p["fingerprint"] for p in patches] == ["fp1", "fp2"]
    assert platform.traffic.verify_weights({"catalog-ci-v001": 100}) is None


def test_verify_weights_is_false_when_the_url_map_differs():
    platform, _http = make([url_map({"catalog-ci-v001": 0})])
    assert platform.traffic.verify_weights({"catalog-ci-v001": 100}) is False
    assert platform.traffic.settle_time > 0


def test_a_url_map_that_does_not_validate_is_not_patched():
    platform, http = make([
        ok({"name": "catalog-ci-v001", "description": 'phoenix.deploy: {"artifact": "catalog"}'}),
        url_map({"catalog-ci-v001": 0}), ok({"result": {"loadSucceeded": False, "loadErrors": ["bad"]}})])
    with pytest.raises(PlatformError) as exc:
        platform.traffic.set_weights({"catalog-ci-v001": 100})
    assert "bad" in exc.value.msg and not any(m == "PATCH" for m, _p in methods(http))


def test_drain_waits_the_draining_timeout_then_detaches():
    clock = FakeClock()
    platform, http = make([
        url_map({"catalog-ci-v001": 100}),
        url_map({"catalog-ci-v001": 100}), ok({"result": {"loadSucceeded": True}}), op("u1"),
        ok({"name": "catalog-ci-v001", "connectionDraining": {"drainingTimeoutSec": 30}}),
        url_map({"catalog-ci-v001": 0}), ok({"result": {"loadSucceeded": True}}), op("u2"),
    ], clock=clock)
    platform.traffic.drain_and_detach("catalog-ci-v001")
    assert clock.slept == [platform.traffic.settle_time + 30]
    last = json.loads([b for _u, m, b, _h in http.request_sequence if m == "PATCH"][-1])
    entries = last["pathMatchers"][0]["defaultRouteAction"]["weightedBackendServices"]
    assert [e["backendService"].rsplit("/", 1)[-1] for e in entries] == ["phoenix-catalog"]
    assert entries[0]["weight"] == 100


# -- health -----------------------------------------------------------------------------

MIG = ok({"name": "catalog-ci-v001", "targetSize": 1,
          "instanceGroup": "projects/phoenix-test/regions/europe-west1/instanceGroups/catalog-ci-v001"})
INSTANCE = "https://www.googleapis.com/compute/v1/projects/phoenix-test/zones/europe-west1-b/instances/catalog-ci-v001-abcd"


def managed(action="NONE", status="RUNNING", errors=None):
    item = {"instance": INSTANCE, "name": "catalog-ci-v001-abcd", "currentAction": action,
            "instanceStatus": status}
    if errors:
        item["lastAttempt"] = {"errors": {"errors": errors}}
    return ok({"managedInstances": [item]})


def lb(state):
    return ok({"healthStatus": [{"instance": INSTANCE, "healthState": state}]})


def test_health_ready_needs_the_mig_and_the_load_balancer():
    platform, _http = make([MIG, managed(), lb("UNHEALTHY"), MIG, managed(), lb("HEALTHY")])
    assert platform.groups.health("catalog-ci-v001").ready == 0
    health = platform.groups.health("catalog-ci-v001")
    assert health.ready == 1 and health.instances[0].state == READY


def test_last_attempt_errors_fail_fast():
    platform, _http = make([MIG, managed("CREATING", "PROVISIONING", errors=[
        {"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "no e2-small in europe-west1-b"}]), lb("UNHEALTHY")])
    health = platform.groups.health("catalog-ci-v001")
    assert health.instances[0].state == FAILED
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in health.summary()


def test_repeated_recreation_is_a_crash_loop():
    seq = []
    for action in ("RECREATING", "NONE", "RECREATING"):
        seq += [MIG, managed(action, "STAGING" if action != "NONE" else "RUNNING"), lb("UNHEALTHY")]
    platform, _http = make(seq)
    healths = [platform.groups.health("catalog-ci-v001") for _i in range(3)]
    assert [h.instances[0].state for h in healths][:2] == ["starting", "starting"]
    assert healths[2].instances[0].state == FAILED and "recreated 2 times" in healths[2].summary()


# -- metrics ----------------------------------------------------------------------------

def series(code, count, start, end):
    return {"metric": {"labels": {"response_code_class": str(code)}},
            "points": [{"interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)},
                        "value": {"int64Value": str(count)}}]}


def test_metrics_full_window():
    start, end = 1_800_000_000.0, 1_800_000_600.0
    latency = {"timeSeries": [{"points": [{"interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)},
                                           "value": {"distributionValue": {
                                               "count": "100",
                                               "bucketOptions": {"explicitBuckets": {"bounds": [10, 20, 40, 80]}},
                                               "bucketCounts": ["0", "50", "40", "9", "1"]}}}]}]}
    platform, http = make([ok({"timeSeries": [series(200, 95, start, end), series(500, 5, start, end)]}),
                           ok(latency)])
    got = platform.metrics.metrics("catalog-ci-v001", start, end)
    assert got.requests == 100 and got.errors_5xx == 5
    assert got.latency_ms == {"p50": 20.0, "p90": 40.0, "p99": 80.0}
    assert got.window == pytest.approx(600)
    uri = http.request_sequence[0][0]
    assert "backend_service_name" in uri and "response_code_class" in uri and "ALIGN_DELTA" in uri


def test_metrics_without_data_or_with_a_partial_window_are_no_data():
    start, end = 1_800_000_000.0, 1_800_000_600.0
    platform, _http = make([ok({}), ok({"timeSeries": [series(200, 500, start, start + 300)]})])
    empty = platform.metrics.metrics("catalog-ci-v001", start, end)
    assert empty.requests == 0 and empty.latency_ms is None
    partial = platform.metrics.metrics("catalog-ci-v001", start, end)
    assert partial.requests == 0 and partial.window == pytest.approx(300)


def test_percentiles_and_times():
    assert percentiles({"linearBuckets": {"numFiniteBuckets": 2, "width": 10, "offset": 0}},
                       [0, 10, 10, 0])["p50"] == 10.0
    assert parse_time(rfc3339(1_800_000_000.25)) == pytest.approx(1_800_000_000.25)


# -- credentials ------------------------------------------------------------------------

def test_missing_credentials_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    platform = GcePlatform(infra(), clock=FakeClock())
    with pytest.raises(PlatformError) as exc:
        platform.groups.list_groups("catalog", "ci")
    assert exc.value.param == "credentials" and "GOOGLE_APPLICATION_CREDENTIALS" in exc.value.msg


def test_api_records_calls():
    api = Api(PROJECT, REGION, http=HttpMockSequence([ok({"items": [{"name": "a"}], "nextPageToken": "t"}),
                                                      ok({"items": [{"name": "b"}]})]))
    names = [i["name"] for i in api.items("backendServices.list", api.compute.backendServices().list,
                                          project=PROJECT)]
    assert names == ["a", "b"] and api.calls == ["backendServices.list"] * 2
