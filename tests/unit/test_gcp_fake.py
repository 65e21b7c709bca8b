"""The schema-checking fake of Google's APIs (tests/gcp_fake) itself: it
refuses what the discovery documents refuse, with a message naming the
field, and keeps the state a GCE driver relies on."""
import json

import pytest
from googleapiclient.errors import HttpError

from gcp_fake import GoogleFake


@pytest.fixture
def fake():
    return GoogleFake(project="phoenix-fake", region="europe-west1")


@pytest.fixture
def compute(fake):
    return fake.build("compute", "v1")


def error_of(call):
    """(status, message, reason) of the HttpError ``call()`` raises."""
    with pytest.raises(HttpError) as info:
        call()
    body = json.loads(info.value.content)["error"]
    return info.value.status_code, body["message"], body["errors"][0]["reason"]


def wait(compute, fake, op, limit=10):
    """Poll an operation until DONE (bounded); the number of polls it took."""
    for polls in range(1, limit + 1):
        if "region" in op:
            op = compute.regionOperations().wait(project=fake.project, region=fake.region,
                                                 operation=op["name"]).execute()
        else:
            op = compute.globalOperations().wait(project=fake.project, operation=op["name"]).execute()
        if op["status"] == "DONE":
            assert "error" not in op, op["error"]
            return polls
    raise AssertionError("operation %s not DONE after %d polls" % (op["name"], limit))


def template_body(fake, name="catalog-ci-v001", image=None):
    return {"name": name, "properties": {
        "machineType": "e2-small",
        "disks": [{"boot": True, "autoDelete": True,
                   "initializeParams": {"sourceImage": image or fake.add_image("catalog-1-0-0")}}],
        "labels": {"artifact": "catalog", "release": "v001"},
        "tags": {"items": ["catalog"]},
        "metadata": {"items": [{"key": "phoenix-env", "value": "{}"}]},
        "networkInterfaces": [{"subnetwork": "regions/europe-west1/subnetworks/app"}],
        "serviceAccounts": [{"email": "app@phoenix-fake.iam.gserviceaccount.com",
                             "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]}}


def seed_lb(fake):
    """What the infra stack makes: health check, the artifact's backend
    service (no backends) and an EXTERNAL_MANAGED URL map routing to it."""
    fake.add("healthChecks", {"name": "catalog-hc", "type": "HTTP",
                              "httpHealthCheck": {"port": 8080, "requestPath": "/health"}})
    fake.add("backendServices", {"name": "catalog-ci", "loadBalancingScheme": "EXTERNAL_MANAGED",
                                 "protocol": "HTTP", "portName": "http",
                                 "healthChecks": [fake.link("global/healthChecks/catalog-hc")]})
    fake.add("urlMaps", {"name": "catalog-ci-lb", "defaultService": fake.link("global/backendServices/catalog-ci"),
                         "hostRules": [{"hosts": ["*"], "pathMatcher": "catalog"}],
                         "pathMatchers": [{"name": "catalog",
                                           "defaultService": fake.link("global/backendServices/catalog-ci")}]})


# ------------------------------------------------------------------ refusals
def test_unknown_body_field_refused(fake, compute):
    status, message, reason = error_of(lambda: compute.healthChecks().insert(
        project=fake.project, body={"name": "hc", "type": "HTTP", "httpHealthCheck": {"port": 80, "path": "/"}}).execute())
    assert (status, reason) == (400, "invalid")
    assert "body.httpHealthCheck: unknown field 'path' of HTTPHealthCheck" in message
    assert "requestPath" in message  # the known fields are listed
    assert fake.violations and fake.names("healthChecks") == []
    with pytest.raises(AssertionError, match="unknown field 'path'"):
        fake.check()


def test_wrong_type_refused(fake, compute):
    status, message, _reason = error_of(lambda: compute.healthChecks().insert(
        project=fake.project, body={"name": "hc", "type": "HTTP", "httpHealthCheck": {"port": "80"}}).execute())
    assert status == 400
    assert "body.httpHealthCheck.port is a string '80', expected an integer" in message


def test_output_only_field_refused(fake, compute):
    seed_lb(fake)
    current = compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()
    # the whole resource as read: selfLink, id, kind, creationTimestamp are output only
    status, message, _reason = error_of(lambda: compute.urlMaps().patch(
        project=fake.project, urlMap="catalog-ci-lb", body=current).execute())
    assert status == 400
    assert "is output only (set by the server); do not send it" in message
    # also in nested objects: [Output Only] marked by the description only
    status, message, _reason = error_of(lambda: compute.regionInstanceGroupManagers().insert(
        project=fake.project, region=fake.region,
        body={"name": "m", "baseInstanceName": "m", "targetSize": 1, "namedPorts": []}).execute())
    assert "body.namedPorts is output only" in message


def test_bad_enum_refused(fake, compute):
    status, message, _reason = error_of(lambda: compute.regionInstanceGroupManagers().insert(
        project=fake.project, region=fake.region,
        body={"name": "m", "baseInstanceName": "m", "targetSize": 1,
              "updatePolicy": {"type": "SOMETIMES"}}).execute())
    assert status == 400
    assert "body.updatePolicy.type is 'SOMETIMES', expected one of OPPORTUNISTIC, PROACTIVE" in message


def test_required_field_and_pattern_refused(fake, compute):
    body = template_body(fake)
    del body["properties"]["machineType"]
    status, message, _reason = error_of(lambda: compute.instanceTemplates().insert(
        project=fake.project, body=body).execute())
    assert status == 400 and ("body.properties: required field 'machineType' of InstanceProperties is missing "
                              "(required by compute.instanceTemplates.insert)") in message
    image = fake.link("global/images/catalog-1-0-0")
    status, message, _reason = error_of(lambda: compute.instanceTemplates().insert(
        project=fake.project, body=template_body(fake, "catalog-" + "x" * 60, image=image)).execute())
    assert status == 400 and "body.name is 'catalog-xxx" in message and "does not match the pattern" in message
    body = template_body(fake, "t2", image=image)
    body["properties"]["tags"]["items"] = ["Not_A_Tag"]
    status, message, _reason = error_of(lambda: compute.instanceTemplates().insert(
        project=fake.project, body=body).execute())
    assert "body.properties.tags.items[0] is 'Not_A_Tag', which does not match the pattern" in message


def test_missing_required_parameter_refused(fake):
    # googleapiclient refuses it client-side; the fake must refuse a raw request too
    response, content = fake.http.request(
        "https://compute.googleapis.com/compute/v1/projects/phoenix-fake/regions/europe-west1/"
        "instanceGroupManagers/m/resize?alt=json", method="POST")
    assert response.status == 400
    assert ("compute.regionInstanceGroupManagers.resize: required query parameter 'size' is missing"
            in json.loads(content)["error"]["message"])


def test_bad_parameter_type_and_unknown_parameter_refused(fake):
    base = ("https://compute.googleapis.com/compute/v1/projects/phoenix-fake/regions/europe-west1/"
            "instanceGroupManagers/m/resize")
    response, content = fake.http.request(base + "?size=many", method="POST")
    assert response.status == 400 and "parameter size='many' is not an integer" in content.decode()
    response, content = fake.http.request(base + "?size=2&force=true", method="POST")
    assert response.status == 400 and "unknown query parameter 'force'" in content.decode()


def test_unknown_method_refused(fake):
    response, content = fake.http.request(
        "https://compute.googleapis.com/compute/v1/projects/phoenix-fake/global/urlMaps/lb/setWeights",
        method="POST", body="{}")
    assert response.status == 404
    assert "compute API has no method POST /compute/v1/projects/phoenix-fake/global/urlMaps/lb/setWeights" in \
        json.loads(content)["error"]["message"]
    response, content = fake.http.request(
        "https://compute.googleapis.com/compute/v1/projects/phoenix-fake/global/urlMaps/lb", method="PUT2")
    assert response.status == 404 and "this path knows DELETE, GET, PATCH, PUT" in content.decode()


def test_path_parameter_pattern_checked(fake):
    response, content = fake.http.request(
        "https://compute.googleapis.com/compute/v1/projects/phoenix-fake/global/urlMaps/Bad_Name")
    assert response.status == 400 and "does not match the pattern" in content.decode()


def test_body_on_a_method_without_request_schema_refused(fake):
    response, content = fake.http.request(
        "https://compute.googleapis.com/compute/v1/projects/phoenix-fake/global/urlMaps/lb", method="GET",
        body=b'{"x": 1}')
    assert response.status == 400 and "takes no request body" in content.decode()


# ---------------------------------------------------------------- lifecycle
def test_mig_backend_service_url_map_lifecycle(fake, compute):
    seed_lb(fake)
    p, r = fake.project, fake.region
    op = compute.instanceTemplates().insert(project=p, body=template_body(fake)).execute()
    assert op["status"] == "PENDING" and op["targetLink"] == fake.link("global/instanceTemplates/catalog-ci-v001")
    wait(compute, fake, op)
    op = compute.regionInstanceGroupManagers().insert(project=p, region=r, body={
        "name": "catalog-ci-v001", "baseInstanceName": "catalog-ci-v001", "targetSize": 2,
        "instanceTemplate": fake.link("global/instanceTemplates/catalog-ci-v001"),
        "autoHealingPolicies": [{"healthCheck": fake.link("global/healthChecks/catalog-hc"),
                                 "initialDelaySec": 120}],
        "updatePolicy": {"type": "OPPORTUNISTIC"}}).execute()
    wait(compute, fake, op)
    mig = compute.regionInstanceGroupManagers().get(project=p, region=r,
                                                    instanceGroupManager="catalog-ci-v001").execute()
    group = mig["instanceGroup"]
    assert group == fake.link("regions/europe-west1/instanceGroups/catalog-ci-v001")
    wait(compute, fake, compute.regionInstanceGroups().setNamedPorts(
        project=p, region=r, instanceGroup="catalog-ci-v001",
        body={"namedPorts": [{"name": "http", "port": 8080}]}).execute())

    # instances per targetSize, healthy after a few polls
    states = []
    for _i in range(3):
        listed = compute.regionInstanceGroupManagers().listManagedInstances(
            project=p, region=r, instanceGroupManager="catalog-ci-v001").execute()["managedInstances"]
        states.append(sorted({(m["currentAction"], m["instanceHealth"][0]["detailedHealthState"]) for m in listed}))
        assert len(listed) == 2 and all(m["name"].startswith("catalog-ci-v001-") for m in listed)
    assert states[0] == [("CREATING", "UNKNOWN")] and states[-1] == [("NONE", "HEALTHY")]
    wait(compute, fake, compute.regionInstanceGroupManagers().resize(
        project=p, region=r, instanceGroupManager="catalog-ci-v001", size=3).execute())
    assert compute.regionInstanceGroups().get(project=p, region=r,
                                              instanceGroup="catalog-ci-v001").execute()["size"] == 3

    # a backend is the instance group, never the manager
    _status, message, _reason = error_of(lambda: compute.backendServices().insert(project=p, body={
        "name": "catalog-ci-v001", "loadBalancingScheme": "EXTERNAL_MANAGED",
        "backends": [{"group": mig["selfLink"]}]}).execute())
    assert "not its manager" in message
    wait(compute, fake, compute.backendServices().insert(project=p, body={
        "name": "catalog-ci-v001", "loadBalancingScheme": "EXTERNAL_MANAGED", "protocol": "HTTP",
        "portName": "http", "healthChecks": [fake.link("global/healthChecks/catalog-hc")],
        "connectionDraining": {"drainingTimeoutSec": 30},
        "backends": [{"group": group, "balancingMode": "UTILIZATION", "capacityScaler": 1.0}]}).execute())
    health = compute.backendServices().getHealth(project=p, backendService="catalog-ci-v001",
                                                 body={"group": group}).execute()["healthStatus"]
    assert [h["port"] for h in health] == [8080] * 3
    assert sorted(h["healthState"] for h in health) == ["HEALTHY", "HEALTHY", "UNHEALTHY"]  # the new third

    # weights: get -> edit -> validate -> patch with the fingerprint
    url_map = compute.urlMaps().get(project=p, urlMap="catalog-ci-lb").execute()
    edit = {"fingerprint": url_map["fingerprint"], "pathMatchers": [{
        "name": "catalog", "defaultService": fake.link("global/backendServices/catalog-ci"),
        "routeRules": [{"priority": 1, "matchRules": [{"prefixMatch": "/"}], "routeAction": {
            "weightedBackendServices": [
                {"backendService": fake.link("global/backendServices/catalog-ci"), "weight": 90},
                {"backendService": fake.link("global/backendServices/catalog-ci-v001"), "weight": 10}]}}]}]}
    result = compute.urlMaps().validate(project=p, urlMap="catalog-ci-lb", body={
        "resource": dict(edit, name="catalog-ci-lb", hostRules=url_map["hostRules"])}).execute()["result"]
    assert result["loadSucceeded"] is True
    wait(compute, fake, compute.urlMaps().patch(project=p, urlMap="catalog-ci-lb", body=edit).execute())
    after = compute.urlMaps().get(project=p, urlMap="catalog-ci-lb").execute()
    assert after["fingerprint"] != url_map["fingerprint"]
    weights = after["pathMatchers"][0]["routeRules"][0]["routeAction"]["weightedBackendServices"]
    assert [w["weight"] for w in weights] == [90, 10]
    assert after["hostRules"] == url_map["hostRules"]  # merge patch keeps what was not sent

    # destroy in order: what is referenced cannot go first
    status, message, reason = error_of(lambda: compute.backendServices().delete(
        project=p, backendService="catalog-ci-v001").execute())
    assert (status, reason) == (400, "resourceInUseByAnotherResource") and "urlMaps/catalog-ci-lb" in message
    status, message, reason = error_of(lambda: compute.regionInstanceGroupManagers().delete(
        project=p, region=r, instanceGroupManager="catalog-ci-v001").execute())
    assert reason == "resourceInUseByAnotherResource" and "backendServices/catalog-ci-v001" in message
    _status, _message, reason = error_of(lambda: compute.instanceTemplates().delete(
        project=p, instanceTemplate="catalog-ci-v001").execute())
    assert reason == "resourceInUseByAnotherResource"
    edit = {"fingerprint": after["fingerprint"], "pathMatchers": [{
        "name": "catalog", "defaultService": fake.link("global/backendServices/catalog-ci")}]}
    wait(compute, fake, compute.urlMaps().patch(project=p, urlMap="catalog-ci-lb", body=edit).execute())
    wait(compute, fake, compute.backendServices().delete(project=p, backendService="catalog-ci-v001").execute())
    wait(compute, fake, compute.regionInstanceGroupManagers().delete(
        project=p, region=r, instanceGroupManager="catalog-ci-v001").execute())
    wait(compute, fake, compute.instanceTemplates().delete(project=p, instanceTemplate="catalog-ci-v001").execute())
    assert fake.names("instanceGroupManagers") == [] and fake.names("instanceGroups") == []
    assert fake.names("backendServices") == ["catalog-ci"]
    status, _message, reason = error_of(lambda: compute.regionInstanceGroupManagers().get(
        project=p, region=r, instanceGroupManager="catalog-ci-v001").execute())
    assert (status, reason) == (404, "notFound")
    fake.check()
    assert fake.calls["compute.urlMaps.patch"] == 2 and fake.calls["compute.urlMaps.get"] == 2


def test_insert_twice_is_409_and_missing_reference_404(fake, compute):
    wait(compute, fake, compute.instanceTemplates().insert(project=fake.project, body=template_body(fake)).execute())
    status, _message, reason = error_of(lambda: compute.instanceTemplates().insert(
        project=fake.project, body=template_body(fake, image=fake.link("global/images/catalog-1-0-0"))).execute())
    assert (status, reason) == (409, "alreadyExists")
    status, message, _reason = error_of(lambda: compute.instanceTemplates().insert(
        project=fake.project, body=template_body(fake, "other", image=fake.link("global/images/nope"))).execute())
    assert status == 404 and "global/images/nope' was not found" in message


def test_weights_need_external_managed(fake, compute):
    seed_lb(fake)
    fake.add("backendServices", {"name": "classic", "loadBalancingScheme": "EXTERNAL"})
    url_map = compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()
    status, message, _reason = error_of(lambda: compute.urlMaps().patch(
        project=fake.project, urlMap="catalog-ci-lb", body={"fingerprint": url_map["fingerprint"], "pathMatchers": [{
            "name": "catalog", "defaultRouteAction": {"weightedBackendServices": [
                {"backendService": fake.link("global/backendServices/classic"), "weight": 100}]}}]}).execute())
    assert status == 400 and "need loadBalancingScheme EXTERNAL_MANAGED" in message


def test_stale_fingerprint_is_412(fake, compute):
    seed_lb(fake)
    first = compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()
    second = compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()
    wait(compute, fake, compute.urlMaps().patch(project=fake.project, urlMap="catalog-ci-lb", body={
        "fingerprint": first["fingerprint"], "description": "one"}).execute())
    status, _message, reason = error_of(lambda: compute.urlMaps().patch(
        project=fake.project, urlMap="catalog-ci-lb",
        body={"fingerprint": second["fingerprint"], "description": "two"}).execute())
    assert (status, reason) == (412, "conditionNotMet")
    status, message, _reason = error_of(lambda: compute.urlMaps().patch(
        project=fake.project, urlMap="catalog-ci-lb", body={"description": "three"}).execute())
    assert status == 412 and "fingerprint missing" in message
    assert fake.get("urlMaps", "catalog-ci-lb")["description"] == "one"


def test_operations_progress(fake, compute):
    fake.op_polls = 3
    op = compute.healthChecks().insert(project=fake.project, body={"name": "hc", "type": "TCP",
                                                                   "tcpHealthCheck": {"port": 80}}).execute()
    seen = [op["status"]]
    for _i in range(3):
        op = compute.globalOperations().wait(project=fake.project, operation=op["name"]).execute()
        seen.append(op["status"])
    assert seen == ["PENDING", "RUNNING", "RUNNING", "DONE"]
    assert op["progress"] == 100 and "endTime" in op
    # a global operation is not a regional one
    status, _message, _reason = error_of(lambda: compute.regionOperations().get(
        project=fake.project, region=fake.region, operation=op["name"]).execute())
    assert status == 404


def test_injected_errors_in_google_shape(fake, compute):
    seed_lb(fake)
    fake.inject("compute.urlMaps.get", 503, times=2)
    fake.inject("compute.urlMaps.get", 429)
    for status in (503, 503, 429):
        got, _message, reason = error_of(lambda: compute.urlMaps().get(project=fake.project,
                                                                       urlMap="catalog-ci-lb").execute())
        assert got == status and reason == {503: "backendError", 429: "rateLimitExceeded"}[status]
    assert compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()["name"] == "catalog-ci-lb"
    fake.inject("compute.urlMaps.patch", 412)
    fingerprint = fake.get("urlMaps", "catalog-ci-lb")["fingerprint"]
    status, _message, reason = error_of(lambda: compute.urlMaps().patch(
        project=fake.project, urlMap="catalog-ci-lb", body={"fingerprint": fingerprint, "description": "x"}).execute())
    assert (status, reason) == (412, "conditionNotMet")
    assert "description" not in fake.get("urlMaps", "catalog-ci-lb")  # no effect
    fake.inject("compute.backendServices.insert", 400, reason="resourceNotReady", message="RESOURCE_NOT_READY")
    status, message, reason = error_of(lambda: compute.backendServices().insert(
        project=fake.project, body={"name": "x", "loadBalancingScheme": "EXTERNAL_MANAGED"}).execute())
    assert (status, reason, message) == (400, "resourceNotReady", "RESOURCE_NOT_READY")
    assert fake.calls["compute.urlMaps.get"] == 4
    fake.inject("compute.urlMaps.get", 503, times=5)
    fake.clear_injections("compute.urlMaps.get")
    assert compute.urlMaps().get(project=fake.project, urlMap="catalog-ci-lb").execute()["name"] == "catalog-ci-lb"
    with pytest.raises(ValueError, match="unknown method id"):
        fake.inject("compute.urlMaps.explode", 503)


def test_hook_kills_a_controller_after_the_effect(fake, compute):
    class Killed(BaseException):
        pass

    def hook(method_id, phase):
        if method_id == "compute.healthChecks.insert" and phase == "after":
            raise Killed()
    fake.hook = hook
    with pytest.raises(Killed):
        compute.healthChecks().insert(project=fake.project, body={"name": "hc", "type": "TCP",
                                                                  "tcpHealthCheck": {"port": 80}}).execute()
    fake.hook = None
    assert fake.names("healthChecks") == ["hc"]  # applied, though the caller never saw the answer
    status, _message, reason = error_of(lambda: compute.healthChecks().insert(
        project=fake.project, body={"name": "hc", "type": "TCP", "tcpHealthCheck": {"port": 80}}).execute())
    assert (status, reason) == (409, "alreadyExists")


def test_failed_operation(fake, compute):
    fake.op_polls = 1
    fake.fail_operation("compute.healthChecks.insert", code="QUOTA_EXCEEDED", message="Quota 'HEALTH_CHECKS' exceeded")
    op = compute.healthChecks().insert(project=fake.project, body={"name": "hc", "type": "TCP",
                                                                   "tcpHealthCheck": {"port": 80}}).execute()
    op = compute.globalOperations().wait(project=fake.project, operation=op["name"]).execute()
    assert op["status"] == "DONE" and op["error"]["errors"][0]["code"] == "QUOTA_EXCEEDED"
    assert op["httpErrorStatusCode"] == 403 and fake.names("healthChecks") == []


def test_crash_loop_and_slow_health(fake, compute):
    seed_lb(fake)
    wait(compute, fake, compute.instanceTemplates().insert(project=fake.project, body=template_body(fake)).execute())
    for name in ("bad", "slow"):
        wait(compute, fake, compute.regionInstanceGroupManagers().insert(
            project=fake.project, region=fake.region, body={
                "name": name, "baseInstanceName": name, "targetSize": 2,
                "instanceTemplate": fake.link("global/instanceTemplates/catalog-ci-v001"),
                "autoHealingPolicies": [{"healthCheck": fake.link("global/healthChecks/catalog-hc")}]}).execute())
    fake.crash_loop("bad")
    fake.set_healthy_after(5, mig="slow")
    for poll in range(1, 6):
        bad = compute.regionInstanceGroupManagers().listManagedInstances(
            project=fake.project, region=fake.region, instanceGroupManager="bad").execute()["managedInstances"]
        assert {m["currentAction"] for m in bad} == {"RECREATING"}
        assert "health check failed" in bad[0]["lastAttempt"]["errors"]["errors"][0]["message"]
        slow = compute.regionInstanceGroupManagers().listManagedInstances(
            project=fake.project, region=fake.region, instanceGroupManager="slow").execute()["managedInstances"]
        healthy = {m["instanceHealth"][0]["detailedHealthState"] for m in slow}
        assert healthy == ({"HEALTHY"} if poll >= 5 else healthy - {"HEALTHY"}), (poll, healthy)
    fake.heal("bad")
    with pytest.raises(ValueError, match="no managed instance group 'nope'"):
        fake.crash_loop("nope")


def test_list_by_name_and_pages(fake, compute):
    wait(compute, fake, compute.instanceTemplates().insert(project=fake.project, body=template_body(fake)).execute())
    image = fake.link("global/images/catalog-1-0-0")
    for index in range(2, 5):
        compute.instanceTemplates().insert(project=fake.project,
                                           body=template_body(fake, "catalog-ci-v%03d" % index, image)).execute()
    compute.instanceTemplates().insert(project=fake.project, body=template_body(fake, "other", image)).execute()
    listed = compute.instanceTemplates().list(project=fake.project, filter='name eq "catalog-ci-v.*"',
                                              maxResults=3).execute()
    assert [t["name"] for t in listed["items"]] == ["catalog-ci-v001", "catalog-ci-v002", "catalog-ci-v003"]
    more = compute.instanceTemplates().list(project=fake.project, filter='name eq "catalog-ci-v.*"', maxResults=3,
                                            pageToken=listed["nextPageToken"]).execute()
    assert [t["name"] for t in more["items"]] == ["catalog-ci-v004"] and "nextPageToken" not in more


def test_googleapiclient_build_on_the_bundled_documents(fake):
    from googleapiclient import discovery
    for http in (fake.http, fake):
        compute = discovery.build("compute", "v1", http=http, static_discovery=True)
        op = compute.healthChecks().insert(project=fake.project, body={
            "name": "hc-%d" % len(fake.names("healthChecks")), "type": "TCP", "tcpHealthCheck": {"port": 80}}).execute()
        assert op["kind"] == "compute#operation"
    assert fake.names("healthChecks") == ["hc-0", "hc-1"]


def test_other_region_or_project_is_404(fake, compute):
    status, _message, _reason = error_of(lambda: compute.regionInstanceGroupManagers().get(
        project=fake.project, region="us-east1", instanceGroupManager="m").execute())
    assert status == 404
    assert compute.images().get(project="phoenix-fake", image=fake.add_image("img")
                                .rsplit("/", 1)[1]).execute()["status"] == "READY"
    public = fake.add_image("debian-12", project="debian-cloud", family="debian-12")
    assert public == "https://www.googleapis.com/compute/v1/projects/debian-cloud/global/images/debian-12"
    assert compute.images().get(project="debian-cloud", image="debian-12").execute()["family"] == "debian-12"
    assert error_of(lambda: compute.images().get(project="debian-cloud", image="nope").execute())[0] == 404
    wait(compute, fake, compute.instanceTemplates().insert(project=fake.project,
                                                           body=template_body(fake, "t", image=public)).execute())
    with pytest.raises(ValueError, match="does not return a compute operation"):
        fake.fail_operation("compute.urlMaps.get")


# ------------------------------------------------------------------ storage
def _upload(data):
    import io
    from googleapiclient.http import MediaIoBaseUpload
    return MediaIoBaseUpload(io.BytesIO(data), mimetype="application/json")


def test_storage_generation_match(fake):
    fake.add_bucket("releases")
    gcs = fake.build("storage", "v1")
    name = "releases/catalog/ci.json"
    first = gcs.objects().insert(bucket="releases", name=name, media_body=_upload(b"one"),
                                 ifGenerationMatch=0).execute()
    status, _message, reason = error_of(lambda: gcs.objects().insert(
        bucket="releases", name=name, media_body=_upload(b"two"), ifGenerationMatch=0).execute())
    assert (status, reason) == (412, "conditionNotMet")
    # multipart (metadata + media) with the current generation wins once
    second = gcs.objects().insert(bucket="releases", body={"name": name, "contentType": "application/json"},
                                  media_body=_upload(b"two"), ifGenerationMatch=first["generation"]).execute()
    assert int(second["generation"]) > int(first["generation"]) and second["size"] == "3"
    status, _message, _reason = error_of(lambda: gcs.objects().insert(
        bucket="releases", name=name, media_body=_upload(b"three"), ifGenerationMatch=first["generation"]).execute())
    assert status == 412
    assert gcs.objects().get_media(bucket="releases", object=name).execute() == b"two"
    assert gcs.objects().get(bucket="releases", object=name).execute()["generation"] == second["generation"]
    status, _message, _reason = error_of(lambda: gcs.objects().delete(
        bucket="releases", object=name, ifGenerationMatch=first["generation"]).execute())
    assert status == 412
    gcs.objects().delete(bucket="releases", object=name, ifGenerationMatch=second["generation"]).execute()
    status, message, _reason = error_of(lambda: gcs.objects().get(bucket="releases", object=name).execute())
    assert status == 404 and "No such object: releases/releases/catalog/ci.json" in message
    status, message, _reason = error_of(lambda: gcs.objects().get(bucket="nope", object=name).execute())
    assert status == 404 and "bucket does not exist" in message
    fake.check()


def test_storage_body_checked(fake):
    fake.add_bucket("releases")
    gcs = fake.build("storage", "v1")
    status, message, _reason = error_of(lambda: gcs.objects().insert(
        bucket="releases", body={"name": "x", "colour": "blue"}, media_body=_upload(b"x")).execute())
    assert status == 400 and "unknown field 'colour' of Object" in message


# --------------------------------------------------------------- monitoring
def _series(service, code_class, points):
    return {"metric": {"type": "loadbalancing.googleapis.com/https/request_count",
                       "labels": {"response_code_class": code_class}},
            "resource": {"type": "https_lb_rule", "labels": {"backend_service_name": service}},
            "metricKind": "DELTA", "valueType": "INT64",
            "points": [{"interval": {"startTime": "2026-11-28T10:%02d:00Z" % (minute - 1),
                                     "endTime": "2026-11-28T10:%02d:00Z" % minute},
                        "value": {"int64Value": str(count)}} for minute, count in points]}


def test_monitoring_filter_and_interval(fake):
    monitoring = fake.build("monitoring", "v3")
    fake.add_time_series(_series("catalog-ci-v002", "200", [(1, 100), (2, 90), (3, 80)]))
    fake.add_time_series(_series("catalog-ci-v002", "500", [(2, 5)]))
    fake.add_time_series(_series("catalog-ci-v001", "200", [(2, 1000)]))

    def listed(service, start, end):
        return monitoring.projects().timeSeries().list(
            name="projects/" + fake.project, interval_startTime=start, interval_endTime=end,
            filter='metric.type = "loadbalancing.googleapis.com/https/request_count" '
                   'AND resource.labels.backend_service_name = "%s"' % service,
            aggregation_alignmentPeriod="60s", aggregation_perSeriesAligner="ALIGN_DELTA").execute()

    got = listed("catalog-ci-v002", "2026-11-28T10:01:30Z", "2026-11-28T10:03:00.000000001Z")["timeSeries"]
    assert [s["metric"]["labels"]["response_code_class"] for s in got] == ["200", "500"]
    assert [p["value"]["int64Value"] for p in got[0]["points"]] == ["80", "90"]  # newest first
    assert listed("catalog-ci-v002", "2026-11-28T11:00:00Z", "2026-11-28T11:05:00Z") == {}  # late data: none
    status, message, _reason = error_of(lambda: monitoring.projects().timeSeries().list(
        name="projects/" + fake.project, interval_endTime="2026-11-28T11:05:00Z",
        filter='metric.type = starts_with("loadbalancing")').execute())
    assert status == 400 and "the fake understands only an AND" in message
    status, message, _reason = error_of(lambda: monitoring.projects().timeSeries().list(
        name="projects/" + fake.project, filter='metric.type = "x"').execute())
    assert status == 400 and "interval.endTime" in message
    # googleapiclient checks enums client-side; the fake checks a raw request too
    response, content = fake.http.request(
        "https://monitoring.googleapis.com/v3/projects/phoenix-fake/timeSeries?filter=x&"
        "interval.endTime=2026-11-28T11%3A05%3A00Z&aggregation.perSeriesAligner=ALIGN_SOMETIMES&alt=json")
    assert response.status == 400
    assert "aggregation.perSeriesAligner='ALIGN_SOMETIMES' is not one of ALIGN_NONE" in content.decode()
    with pytest.raises(Exception, match="expected an object"):
        fake.add_time_series({"metric": "request_count"})


def test_monitoring_builders_one_series_per_labels(fake):
    from gcp_fake import monitoring as lbm
    api = fake.build("monitoring", "v3")
    end = 1_800_000_000.0
    for minute in range(3):
        fake.add_time_series(lbm.request_count(fake.project, "catalog-ci-v002", end + 60 * minute, 100))
        fake.add_time_series(lbm.backend_latencies(fake.project, "catalog-ci-v002", end + 60 * minute,
                                                   [0.5, 10.0, 10.0, 300.0]))
    got = api.projects().timeSeries().list(
        name="projects/" + fake.project, interval_startTime=lbm.rfc3339(end - 1), interval_endTime=lbm.rfc3339(end + 600),
        filter='metric.type = "%s" AND resource.type = "https_lb_rule" AND '
               'resource.labels.backend_service_name = "catalog-ci-v002"' % lbm.BACKEND_LATENCIES).execute()
    (series,) = got["timeSeries"]
    assert len(series["points"]) == 3 and series["valueType"] == "DISTRIBUTION"
    dist = series["points"][0]["value"]["distributionValue"]
    assert dist["count"] == "4" and dist["mean"] == pytest.approx(80.125)
    counts = [int(c) for c in dist["bucketCounts"]]
    # 0.5 ms underflows; 10 ms is in [1.4**6, 1.4**7) = bucket 7; 300 ms in [1.4**16, 1.4**17) = bucket 17
    assert counts[0] == 1 and counts[7] == 2 and counts[17] == 1 and sum(counts) == 4
