# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Traffic of a local group from HAProxy's per-server counters, over an
explicit window of clock times (the snapshot logic is shared with the
Kubernetes gateway's counters: ``platforms.counters``).

HAProxy keeps cumulative counters only, so the driver keeps timestamped
snapshots of them (``CounterHistory``): one every time it reads a group's
stats (each health poll, weight change, weight verification and metrics
call; the engine polls every ``poll_interval``).  ``metrics(group, start,
end)`` is the difference between the snapshot closest to ``start`` and the one
closest to ``end`` (a fresh one when ``end`` is now), each within
``RESOLUTION`` seconds of the asked time; ``Metrics.window`` is the span
really covered.  A start without a snapshot that close starts at the latest
snapshot before it (the window is longer, as ``window`` says); an end
without one, or no snapshot before the start, gives no data (inconclusive).
"""

from __future__ import annotations

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    Metrics, MetricsProvider)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.counters import (  # noqa: F401  (re-exported)
    COUNTERS, KEEP_COUNT, KEEP_SECONDS, RESOLUTION, CounterHistory, attempts, counters, window_metrics)

__all__ = ["COUNTERS", "KEEP_COUNT", "KEEP_SECONDS", "RESOLUTION", "CounterHistory", "LocalMetrics",
           "attempts", "counters", "window_metrics"]


class LocalMetrics(MetricsProvider):
    """The local platform's metrics provider (HAProxy counters; see the
    module docstring for the window rule).  Errors are what the group's
    servers did, whether or not users saw it: 5xx answers, failed connects,
    empty or broken responses, and attempts HAProxy retried on another
    server.  A window in which HAProxy restarted or any counter went down
    gives no data (inconclusive), never a clamped count.  HAProxy only keeps
    averages of response times (over the last 1024 requests), so
    ``latency_ms`` carries ``avg`` (and no percentiles): a percentile check
    on this platform is inconclusive, never a pass."""

    name = "local"
    resolution = RESOLUTION

    def __init__(self, driver):
        self.driver = driver

    def metrics(self, group, start, end) -> Metrics:
        driver = self.driver
        members = driver._group_meta(group)
        history = driver.history
        now = driver.clock.now()
        stats = None
        if end >= now - RESOLUTION:
            stats = driver._stat(members[0]["backend"])
            driver._snapshot(group, members, stats)
        first = history.near(group, start, before=True)
        last = history.near(group, end) if stats is None else history.groups[group][-1]
        if first is None or last is None or last[0] <= first[0]:
            return Metrics(0, 0, None, 0.0)
        return window_metrics(first, last, members, stats)
