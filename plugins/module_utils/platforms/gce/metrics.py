# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metrics of a GCE server group from Cloud Monitoring (``projects.timeSeries.list``).

* requests and server-side errors: ``loadbalancing.googleapis.com/https/request_count``
  of the group's backend service (``resource.labels.backend_service_name``), deltas
  summed per ``response_code_class`` (500 = 5xx errors);
* latency: ``https/backend_latencies``, a distribution (milliseconds) summed over the
  window; p50 / p90 / p99 are read from its buckets (linear inside a bucket).

Monitoring data arrives minutes late (the load balancer's metrics are sampled every
60 s and visible up to ~210 s later).  A window without data, or whose newest point
ends earlier than the window's end by more than ``resolution``, is answered as *no
data* (``Metrics()`` with 0 requests), which the analysis judges inconclusive, never
a pass.  Canary pauses on GCE are therefore long (see ``CANARY_STEPS``).
"""

from __future__ import annotations

import datetime
import math

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    Metrics, MetricsProvider)

REQUEST_COUNT = "loadbalancing.googleapis.com/https/request_count"
BACKEND_LATENCIES = "loadbalancing.googleapis.com/https/backend_latencies"
#: the alignment period of the queries, seconds (the metrics' sampling period)
ALIGNMENT = 60
#: canary steps that see data despite Monitoring's delay: pauses of 10 minutes
CANARY_STEPS = [{"set_weight": 10}, {"pause": {"duration": 600}},
                {"set_weight": 50}, {"pause": {"duration": 600}}]


def rfc3339(seconds: float) -> str:
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    text = text.rstrip("Z")
    if "." in text:
        main, frac = text.split(".", 1)
        frac = float("0." + frac)
    else:
        main, frac = text, 0.0
    stamp = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp() + frac


def _inside(point: dict, start: float, end: float) -> bool:
    """A point counts for the window when its interval ends inside ``(start, end]``
    (aligned deltas: each request is counted in exactly one of two adjacent windows)."""
    try:
        stamp = parse_time(point["interval"]["endTime"])
    except (KeyError, TypeError, ValueError):
        return False
    return start < stamp <= end + 1e-6


def bucket_bounds(options: dict, count: int) -> list:
    """``[(lower, upper)]`` of each of ``count`` buckets (underflow and overflow included)."""
    if "explicitBuckets" in options:
        bounds = [float(b) for b in options["explicitBuckets"].get("bounds") or []]
    elif "exponentialBuckets" in options:
        exp = options["exponentialBuckets"]
        bounds = [float(exp.get("scale", 1)) * float(exp.get("growthFactor", 2)) ** i
                  for i in range(int(exp.get("numFiniteBuckets", 0)) + 1)]
    elif "linearBuckets" in options:
        lin = options["linearBuckets"]
        bounds = [float(lin.get("offset", 0)) + float(lin.get("width", 1)) * i
                  for i in range(int(lin.get("numFiniteBuckets", 0)) + 1)]
    else:
        bounds = []
    edges = [0.0] + bounds + [bounds[-1] if bounds else math.inf]
    out = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return (out + [(edges[-1], edges[-1])] * count)[:count]


def percentiles(options: dict, counts: list, wanted=(50, 90, 99)) -> dict:
    total = sum(counts)
    if not total:
        return {}
    bounds = bucket_bounds(options, len(counts))
    out = {}
    for pct in wanted:
        rank = total * pct / 100.0
        seen = 0
        for (low, high), count in zip(bounds, counts):
            if count and seen + count >= rank:
                out["p%d" % pct] = round(low + (high - low) * (rank - seen) / count, 3)
                break
            seen += count
    return out


class GceMetrics(MetricsProvider):
    """Requests, 5xx errors and backend latency of a group's backend service."""

    name = "gce"
    resolution = float(ALIGNMENT)

    def __init__(self, driver):
        self.driver = driver

    def _series(self, group, metric, start, end, group_by=None) -> list:
        cfg = self.driver.config
        flt = ('metric.type="%s" AND resource.type="https_lb_rule" AND '
               'resource.labels.backend_service_name="%s"' % (metric, group))
        kwargs = {"name": "projects/%s" % cfg.project, "filter": flt,
                  "interval_startTime": rfc3339(start), "interval_endTime": rfc3339(end),
                  "aggregation_alignmentPeriod": "%ds" % ALIGNMENT,
                  "aggregation_perSeriesAligner": "ALIGN_DELTA",
                  "aggregation_crossSeriesReducer": "REDUCE_SUM"}
        if group_by:
            kwargs["aggregation_groupByFields"] = group_by
        series, token = [], None
        api = self.driver.api
        for _i in range(50):
            if token:
                kwargs["pageToken"] = token
            page = api.call("timeSeries.list", api.monitoring.projects().timeSeries().list(**kwargs))
            series.extend(page.get("timeSeries") or [])
            token = page.get("nextPageToken")
            if not token:
                break
        return series

    def metrics(self, group: str, start: float, end: float) -> Metrics:
        if end <= start:
            return Metrics(window=0.0)
        counts = self._series(group, REQUEST_COUNT, start, end, ["metric.labels.response_code_class"])
        points = [(s, p) for s in counts for p in s.get("points") or [] if _inside(p, start, end)]
        if not points:
            return Metrics(window=0.0)
        newest = max(parse_time(p["interval"]["endTime"]) for _s, p in points)
        covered = max(0.0, min(newest, end) - start)
        if newest < end - self.resolution:  # late data: the window is partial
            return Metrics(window=covered)
        requests = errors = 0
        for series, point in points:
            value = int(point.get("value", {}).get("int64Value") or 0)
            requests += value
            code = str(((series.get("metric") or {}).get("labels") or {}).get("response_code_class", ""))
            if code.startswith("5"):
                errors += value
        latency = None
        dists = [p.get("value", {}).get("distributionValue") for s in
                 self._series(group, BACKEND_LATENCIES, start, end) for p in s.get("points") or []
                 if _inside(p, start, end)]
        dists = [d for d in dists if d and d.get("bucketCounts")]
        if dists:
            width = max(len(d["bucketCounts"]) for d in dists)
            merged = [0] * width
            for dist in dists:
                for i, count in enumerate(dist["bucketCounts"]):
                    merged[i] += int(count)
            latency = percentiles(dists[0].get("bucketOptions") or {}, merged) or None
        return Metrics(requests=requests, errors_5xx=errors, latency_ms=latency, window=covered)
