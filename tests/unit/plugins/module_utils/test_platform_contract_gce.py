"""The driver conformance suite (platform_contract.py) against the GCE driver
on the schema-checking fake of the Compute and Monitoring APIs (tests/gcp_fake).

``send(n)`` cannot send real requests (there is no load balancer here): it
models them as the load balancer's Cloud Monitoring data.  It reads the URL
map from the fake's state, splits ``n`` requests between the backend services
of the route by their weights, and adds one ``https/request_count`` point
(response code class 200) per backend service with traffic, for the clock
second the requests took.  What the driver then reads back is what it would
read from Monitoring: the requests of its group's backend service in a window.
"""
import contextlib

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce import GcePlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.metrics import (
    REQUEST_COUNT, rfc3339)
from gcp_fake import GoogleFake
from gce_env import FakeClock, image, make_stack
from platform_contract import PlatformContract, Subject


def add_requests(fake, service, count, start, end, code=200):
    fake.add_time_series({
        "metric": {"type": REQUEST_COUNT, "labels": {"response_code_class": str(code)}},
        "resource": {"type": "https_lb_rule", "labels": {"backend_service_name": service,
                                                         "project_id": fake.project}},
        "metricKind": "DELTA", "valueType": "INT64",
        "points": [{"interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)},
                    "value": {"int64Value": str(count)}}]})


def route_weights(fake, url_map="phoenix-urls"):
    """``{backend service name: weight}`` of the default route, from the fake's state."""
    matcher = fake.get("urlMaps", url_map)["pathMatchers"][0]
    entries = matcher["defaultRouteAction"]["weightedBackendServices"]
    return {e["backendService"].rsplit("/", 1)[-1]: int(e.get("weight", 0)) for e in entries}


class GceSubject(Subject):
    timeout = 600.0  # clock seconds (a fake clock: nothing sleeps)
    slack = 0

    def __init__(self, fake, platform, clock, img):
        super().__init__(platform, clock, "catalog", "ci", img)
        self.fake = fake

    def send(self, n):
        """n requests through the URL map, as Monitoring would count them."""
        weights = {k: v for k, v in route_weights(self.fake).items() if v > 0}
        start = self.clock.now()
        self.clock.sleep(1.0)
        total = sum(weights.values())
        left = n
        for index, (service, weight) in enumerate(sorted(weights.items())):
            share = left if index == len(weights) - 1 else n * weight // total
            left -= share
            if share:
                add_requests(self.fake, service, share, start, self.clock.now())

    @contextlib.contextmanager
    def fault(self, op, transient, count=1):
        assert op == "health"  # a health poll reads the MIG first
        self.fake.inject("compute.regionInstanceGroupManagers.get", 503 if transient else 403,
                         times=count, reason="backendError" if transient else "forbidden")
        try:
            yield
        finally:
            self.fake.clear_injections("compute.regionInstanceGroupManagers.get")


@pytest.fixture
def subject():
    fake = GoogleFake(project="phoenix-fake", region="europe-west1")
    infra = make_stack(fake)
    clock = FakeClock()
    platform = GcePlatform(infra, http=fake.http, clock=clock)
    subj = GceSubject(fake, platform, clock, image(fake))
    yield subj
    subj.cleanup()
    fake.check()  # no request the discovery documents refuse


class TestGceContract(PlatformContract):
    pass
