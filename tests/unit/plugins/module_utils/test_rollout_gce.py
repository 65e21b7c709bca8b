"""The rollout engine (module_utils/rollout.py) end to end on the GCE driver
against the schema-checking fake of the Compute and Monitoring APIs:
rolling, blue/green (old MIG warm, instant rollback), canary judged on canned
Monitoring series (pass, fail, inconclusive: no data and late data), crash
loops failing fast (a controller killed at every API call:
tests/pytest/test_rollout_gce_kill_every_call.py).  Every request of every test is checked against Google's
discovery documents (``fake.check()``)."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce import GcePlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.metrics import (
    BACKEND_LATENCIES, REQUEST_COUNT, rfc3339)
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, LIVE, ROLLED_BACK)
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout
from gcp_fake import GoogleFake
from gce_env import FakeClock, image, make_stack

V1, V2 = "catalog-v1-0-0-aaaaaaa-b1", "catalog-v1-1-0-bbbbbbb-b2"
#: GCE canary: windows of 2 minutes (Monitoring samples every 60 s) in pauses of 10
CANARY = {"steps": [{"set_weight": 10}, {"pause": {"duration": 600}}]}
ANALYSIS = {"max_error_rate": 0.05, "max_latency_ms": 500, "min_requests": 50, "interval": 120,
            "failure_limit": 2}


class Kill(BaseException):
    """The controller died at this API call (nothing catches a BaseException)."""


class KillingHttp:
    """``fake.http`` whose ``kill_at``-th request is answered by the fake (the
    change happens) and then kills the controller before it sees the answer."""

    def __init__(self, fake):
        self.fake, self.count, self.kill_at = fake, 0, None

    def request(self, uri, method="GET", body=None, headers=None, **kwargs):
        answer = self.fake.http.request(uri, method=method, body=body, headers=headers, **kwargs)
        self.count += 1
        if self.kill_at is not None and self.count == self.kill_at:
            raise Kill("killed after request %d: %s %s" % (self.count, method, uri.split("?")[0]))
        return answer

    def close(self):
        pass


class Env:
    def __init__(self, tmp_path, name="releases", scheme="EXTERNAL_MANAGED"):
        self.fake = GoogleFake(project="phoenix-fake", region="europe-west1")
        self.infra = make_stack(self.fake, scheme=scheme)
        self.images = {"v1": image(self.fake, V1), "v2": image(self.fake, V2)}
        self.clock = FakeClock()
        self.http = KillingHttp(self.fake)
        self.store = FileReleaseStore(str(tmp_path / name))

    def platform(self):
        return GcePlatform(self.infra, http=self.http, clock=self.clock)

    def engine(self):
        """A fresh controller: a new driver (no memory) on the same store."""
        return Rollout(self.platform(), self.store, "catalog", "ci", clock=self.clock)

    def deploy(self, version, size=2, strategy="rolling", settings=None, analysis=None):
        img = self.images["v1" if version == "1.0.0" else "v2"]
        return self.engine().deploy(version, img, size, strategy, settings, analysis)

    def groups(self):
        return {g.name: g for g in self.platform().groups.list_groups("catalog", "ci")}

    def series(self, group, ok_per_min, errors_per_min=0, until=None, latency_bucket=2):
        """Canned Monitoring data of ``group``'s backend service: one point a
        minute from now for 2 hours (or ``until`` seconds from now)."""
        start = self.clock.now() - self.clock.now() % 60
        stop = start + (until if until is not None else 7200)
        minutes = [start + 60 * i for i in range(int((stop - start) // 60))]
        for code, count in ((200, ok_per_min), (500, errors_per_min)):
            if count:
                self.fake.add_time_series({
                    "metric": {"type": REQUEST_COUNT, "labels": {"response_code_class": str(code)}},
                    "resource": {"type": "https_lb_rule", "labels": {"backend_service_name": group}},
                    "metricKind": "DELTA", "valueType": "INT64",
                    "points": [{"interval": {"startTime": rfc3339(m), "endTime": rfc3339(m + 60)},
                                "value": {"int64Value": str(count)}} for m in minutes]})
        counts = [0] * 6
        counts[latency_bucket] = ok_per_min + errors_per_min
        self.fake.add_time_series({
            "metric": {"type": BACKEND_LATENCIES},
            "resource": {"type": "https_lb_rule", "labels": {"backend_service_name": group}},
            "metricKind": "DELTA", "valueType": "DISTRIBUTION",
            "points": [{"interval": {"startTime": rfc3339(m), "endTime": rfc3339(m + 60)},
                        "value": {"distributionValue": {
                            "count": str(ok_per_min + errors_per_min),
                            "bucketOptions": {"explicitBuckets": {"bounds": [50, 100, 200, 400, 800]}},
                            "bucketCounts": [str(c) for c in counts]}}} for m in minutes]})


@pytest.fixture
def env(tmp_path):
    made = Env(tmp_path)
    yield made
    made.fake.check()


def live_at_100(env, version):
    history = env.store.load("catalog", "ci")
    live = history.live_release()
    assert live.version == version and live.status == LIVE
    groups = env.groups()
    assert groups[live.group].weight == 100 and groups[live.group].attached
    assert groups[live.group].size == live.size
    for name, group in groups.items():
        if name != live.group:
            assert group.weight == 0, groups
    return live, groups


def test_rolling_replaces_the_live_release(env):
    assert env.deploy("1.0.0").state == LIVE
    result = env.deploy("1.1.0", strategy="rolling")
    assert result.state == LIVE, result.msg
    live, groups = live_at_100(env, "1.1.0")
    assert list(groups) == [live.group] == ["catalog-ci-v002"]
    assert env.fake.names("instanceTemplates") == ["catalog-ci-v002"]
    assert "catalog-ci-v001" not in env.fake.names("backendServices")
    template = env.fake.get("instanceTemplates", "catalog-ci-v002")
    assert template["properties"]["disks"][0]["initializeParams"]["sourceImage"].endswith(V2)


def test_blue_green_keeps_the_old_mig_warm_for_an_instant_rollback(env):
    env.deploy("1.0.0")
    result = env.deploy("1.1.0", strategy="blue_green", settings={"scale_down_delay": 3600})
    assert result.state == LIVE, result.msg
    _live, groups = live_at_100(env, "1.1.0")
    old = groups["catalog-ci-v001"]
    assert old.size == 2 and not old.attached  # warm: instances kept, out of the URL map
    creates = env.fake.calls["compute.regionInstanceGroupManagers.insert"]
    back = env.engine().rollback()
    assert back.state == LIVE, back.msg
    live, groups = live_at_100(env, "1.0.0")
    assert live.group == "catalog-ci-v001"  # the warm group took the traffic back
    assert env.fake.calls["compute.regionInstanceGroupManagers.insert"] == creates  # nothing re-created


@pytest.mark.parametrize("case", ["pass", "fail", "no_data", "late_data", "slow"])
def test_canary_judged_on_monitoring(env, case):
    env.deploy("1.0.0")
    if case == "pass":
        env.series("catalog-ci-v002", ok_per_min=200)
    elif case == "fail":
        env.series("catalog-ci-v002", ok_per_min=150, errors_per_min=50)
    elif case == "late_data":  # Monitoring has only the first 3 minutes of the pause
        env.series("catalog-ci-v002", ok_per_min=200, until=180)
    elif case == "slow":
        env.series("catalog-ci-v002", ok_per_min=200, latency_bucket=4)  # 400..800 ms
    result = env.deploy("1.1.0", strategy="canary", settings=CANARY, analysis=ANALYSIS)
    messages = " | ".join(e["message"] for e in result.events)
    if case == "pass":
        assert result.state == LIVE, messages
        live_at_100(env, "1.1.0")
        assert "analysis pass" in messages
        return
    assert result.state == ROLLED_BACK, messages
    live, groups = live_at_100(env, "1.0.0")
    assert "catalog-ci-v002" not in groups or groups["catalog-ci-v002"].weight == 0
    reason = env.store.load("catalog", "ci").get("v002").reason
    if case == "fail":
        assert "error_rate 0.25 > max 0.05" in reason
    elif case == "slow":
        assert "latency_p99" in reason and "> max 500ms" in reason
    else:  # no data is never a pass
        assert "inconclusive" in reason and "no data" in reason, reason


READS = (".get", ".list", ".wait", ".validate", ".getHealth", ".listManagedInstances")


@pytest.mark.parametrize("case, param", [
    ("classic load balancer", "infra.gce.url_map"), ("foreign backend service", "environment"),
    ("image family", "image"), ("name over 63", "name")])
def test_bad_input_is_refused_before_any_change(tmp_path, case, param):
    env = Env(tmp_path, scheme="EXTERNAL" if case == "classic load balancer" else "EXTERNAL_MANAGED")
    image, name = env.images["v1"], None
    if case == "foreign backend service":
        env.fake.add("backendServices", {"name": "catalog-ci-v001", "description": "made by hand",
                                         "loadBalancingScheme": "EXTERNAL_MANAGED"})
    elif case == "image family":
        image = "projects/phoenix-fake/global/images/family/catalog"
    elif case == "name over 63":
        name = "catalog-" + "x" * 60
    mark = len(env.fake.log)
    with pytest.raises(PlatformError) as err:
        env.platform().groups.create_group("catalog", "ci", "v001", image, 2, {}, name=name, owner="o")
    assert err.value.param == param and not err.value.transient, err.value.msg
    changes = [m for m, _status in env.fake.log[mark:] if not m.endswith(READS)]
    assert changes == [], changes
    if name is not None:  # the engine names its groups itself (base.group_name, <= 63)
        return
    result = env.engine().deploy("1.0.0", image, 2)  # through the engine: failed, nothing made
    assert result.failed and result.state != LIVE, result.msg
    assert [m for m, _status in env.fake.log[mark:] if not m.endswith(READS)] == []
    env.fake.check()


@pytest.mark.parametrize("errors", [True, False])
def test_a_crash_loop_fails_fast_and_rolls_back(env, errors):
    env.deploy("1.0.0")
    started = env.clock.now()
    real = env.fake.http.request

    def crashing(uri, method="GET", body=None, headers=None, **kw):
        answer = real(uri, method=method, body=body, headers=headers, **kw)
        if "catalog-ci-v002" in env.fake.names("instanceGroupManagers", region="europe-west1") and \
                not getattr(crashing, "done", False):
            env.fake.crash_loop("catalog-ci-v002", errors=errors)
            crashing.done = True
        return answer
    env.fake.http.request = crashing
    result = env.deploy("1.1.0", strategy="rolling")
    assert result.state == ROLLED_BACK
    reason = env.store.load("catalog", "ci").get("v002").reason
    if errors:  # lastAttempt.errors: at the first health poll
        assert "CONDITION_NOT_MET" in reason and env.clock.now() - started < 120, reason
    else:  # recreated over and over: after MAX_RECREATING, well before the progress deadline
        assert "being recreated by autohealing" in reason, reason
        assert env.clock.now() - started < 600
    live_at_100(env, "1.0.0")


def test_transient_google_errors_during_a_deploy_are_retried(env):
    """412 on the URL-map patch (re-read inside the driver), 429 / 503 on reads
    and inserts and RESOURCE_NOT_READY in an operation (retried by the engine
    with backoff): the deploy still goes live, each retry in the events."""
    env.deploy("1.0.0")
    env.fake.inject("compute.urlMaps.patch", 412, times=2, reason="conditionNotMet")
    env.fake.inject("compute.regionInstanceGroupManagers.list", 429, reason="rateLimitExceeded")
    env.fake.inject("compute.backendServices.insert", 503, reason="backendError")
    env.fake.fail_operation("compute.instanceTemplates.insert", code="RESOURCE_NOT_READY", status=503)
    result = env.deploy("1.1.0", strategy="blue_green", settings={"scale_down_delay": 60})
    assert result.state == LIVE, result.msg
    live_at_100(env, "1.1.0")
    retries = [e["message"] for e in result.events if "transient error" in e["message"]]
    assert any("HTTP 503" in m for m in retries) and any("RESOURCE_NOT_READY" in m for m in retries), retries
    assert sum(1 for m, status in env.fake.log if m == "compute.urlMaps.patch" and status == 412) == 2
