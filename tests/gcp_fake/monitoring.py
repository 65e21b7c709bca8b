"""Builders of the Cloud Monitoring time series a global external Application
Load Balancer writes per backend service, for ``GoogleFake.add_time_series``::

    from gcp_fake import monitoring
    fake.add_time_series(monitoring.request_count(fake.project, "catalog-ci-v002", end, 95, code_class=200))
    fake.add_time_series(monitoring.request_count(fake.project, "catalog-ci-v002", end, 5, code_class=500))
    fake.add_time_series(monitoring.backend_latencies(fake.project, "catalog-ci-v002", end, [12.0, 40.5, 230.0]))

``end`` is a Unix time (the end of the sample's ``period``-second interval).
Calling again with the same labels adds points to the same series."""

import datetime
import math

LB_RESOURCE = "https_lb_rule"
REQUEST_COUNT = "loadbalancing.googleapis.com/https/request_count"
BACKEND_LATENCIES = "loadbalancing.googleapis.com/https/backend_latencies"
#: the exponential bucket layout of the load balancer's latency distributions
BUCKETS = {"exponentialBuckets": {"numFiniteBuckets": 66, "growthFactor": 1.4, "scale": 1.0}}


def rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def lb_resource(project, backend_service, url_map="lb"):
    return {"type": LB_RESOURCE, "labels": {
        "project_id": project, "region": "global", "url_map_name": url_map,
        "forwarding_rule_name": url_map + "-https", "target_proxy_name": url_map + "-proxy",
        "matched_url_path_rule": "/", "backend_target_name": backend_service,
        "backend_target_type": "BACKEND_SERVICE", "backend_service_name": backend_service,
        "backend_type": "INSTANCE_GROUP", "backend_scope_type": "REGION", "backend_scope": "europe-west1",
        "backend_name": backend_service}}


def _point(end, period, value):
    return {"interval": {"startTime": rfc3339(end - period), "endTime": rfc3339(end)}, "value": value}


def request_count(project, backend_service, end, count, code_class=200, period=60, url_map="lb"):
    """``https/request_count`` (DELTA INT64) of one response code class."""
    return {"metric": {"type": REQUEST_COUNT, "labels": {"response_code_class": str(code_class),
                                                         "response_code": str(code_class),
                                                         "protocol": "HTTP/1.1", "cache_result": "DISABLED"}},
            "resource": lb_resource(project, backend_service, url_map), "metricKind": "DELTA",
            "valueType": "INT64", "unit": "1", "points": [_point(end, period, {"int64Value": str(int(count))})]}


def distribution(samples_ms):
    """A Monitoring ``Distribution`` of ``samples_ms`` in the LB's buckets."""
    opts = BUCKETS["exponentialBuckets"]
    counts = [0] * (opts["numFiniteBuckets"] + 2)
    for value in samples_ms:
        if value < opts["scale"]:
            index = 0
        else:
            index = min(int(math.floor(math.log(value / opts["scale"], opts["growthFactor"]))) + 1,
                        opts["numFiniteBuckets"] + 1)
        counts[index] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    mean = sum(samples_ms) / len(samples_ms) if samples_ms else 0.0
    return {"count": str(len(samples_ms)), "mean": mean,
            "sumOfSquaredDeviation": sum((v - mean) ** 2 for v in samples_ms),
            "bucketOptions": BUCKETS, "bucketCounts": [str(c) for c in counts]}


def backend_latencies(project, backend_service, end, samples_ms, code_class=200, period=60, url_map="lb"):
    """``https/backend_latencies`` (DELTA DISTRIBUTION, milliseconds)."""
    return {"metric": {"type": BACKEND_LATENCIES, "labels": {"response_code_class": str(code_class),
                                                             "protocol": "HTTP/1.1"}},
            "resource": lb_resource(project, backend_service, url_map), "metricKind": "DELTA",
            "valueType": "DISTRIBUTION", "unit": "ms",
            "points": [_point(end, period, {"distributionValue": distribution(samples_ms)})]}
