# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy counter snapshots and windows, shared by every driver whose
metrics come from HAProxy's per-server counters (the local platform's
HAProxy, the local Kubernetes cluster's gateway).

HAProxy keeps cumulative counters only, so a driver keeps timestamped
snapshots of them (``CounterHistory``) whenever it reads a group's stats.
``metrics(group, start, end)`` is the difference between the snapshot closest
to ``start`` and the one closest to ``end`` (a fresh one when ``end`` is now),
each within ``RESOLUTION`` seconds of the asked time; ``Metrics.window`` is the
span really covered.  A start without a snapshot that close starts at the
latest snapshot before it (the window is longer, as ``window`` says); an end
without one, or no snapshot before the start, gives no data (inconclusive).
A ``members`` list is ``[{"instance": <HAProxy server name>}, ...]``.
"""

from __future__ import annotations

import bisect

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Metrics

#: show stat counters per server that metrics() reads (see attempts)
COUNTERS = ("req_tot", "hrsp_5xx", "econ", "eresp", "wretr", "wredis")
#: seconds between a window boundary and the snapshot that stands for it
RESOLUTION = 1.0
#: snapshots kept per group (seconds, count)
KEEP_SECONDS, KEEP_COUNT = 3600.0, 4096


def counters(members, stats) -> dict:
    """{instance: (req_tot, hrsp_5xx, econ, eresp, wretr, wredis)} from one
    ``show stat`` (see ``COUNTERS``)."""
    out = {}
    for meta in members:
        row = stats.get(meta["instance"])
        if row is not None:
            out[meta["instance"]] = tuple(int(row.get(k) or 0) for k in COUNTERS)
    return out


def attempts(delta) -> tuple:
    """(attempts, failed attempts) of one server from counter deltas.

    HAProxy counts each attempt on a server in exactly one place:
    ``req_tot`` (a response reached the client, ``hrsp_5xx`` among them),
    ``econ`` / ``eresp`` (the last attempt could not connect / got no or
    a broken response), or, when the attempt failed and the request was
    retried, ``wretr`` / ``wredis``: a retry after a 5xx, an empty
    response or a timeout counts in ``wretr`` and, when it went to
    another server, in ``wredis`` too; a retry after a failed connect
    counts in ``wredis`` when redispatched, else in ``wretr``.  With
    ``option redispatch 1`` and several servers every retry is
    redispatched, so ``max(wretr, wredis)`` is the number of retried
    attempts (measured on HAProxy 2.6)."""
    req, err5, econ, eresp, wretr, wredis = delta
    retried = max(wretr, wredis)
    return req + econ + eresp + retried, err5 + econ + eresp + retried


class CounterHistory:
    """Timestamped counter snapshots per group: ``(time, counters, epoch)``.
    ``epoch`` is HAProxy's process id; None marks a snapshot whose servers
    were removed or added again since (their counters restarted)."""

    def __init__(self):
        self.groups = {}

    def add(self, group, at, counts, epoch):
        entries = self.groups.setdefault(group, [])
        if entries and entries[-1][0] > at:  # another thread was later: keep order
            at = entries[-1][0]
        entries.append((at, counts, epoch))
        while entries and (len(entries) > KEEP_COUNT or entries[0][0] < at - KEEP_SECONDS):
            entries.pop(0)

    def forget(self, names):
        """Servers removed or added again restart their counters: a window
        from a snapshot that holds them gives no data."""
        names = set(names)
        for group, entries in self.groups.items():
            self.groups[group] = [(at, c, None if names & set(c) else epoch)
                                  for at, c, epoch in entries]

    def drop(self, group):
        self.groups.pop(group, None)

    def near(self, group, at, before=False):
        """The snapshot standing for time ``at``: the closest one, if within
        RESOLUTION; with ``before``, else the latest one before ``at``; else None."""
        entries = self.groups.get(group) or []
        index = bisect.bisect_right([e[0] for e in entries], at)
        close = [e for e in entries[max(0, index - 1):index + 1] if abs(e[0] - at) <= RESOLUTION]
        if close:
            return min(close, key=lambda e: abs(e[0] - at))
        return entries[index - 1] if before and index else None


def window_metrics(first, last, members, stats) -> Metrics:
    """Metrics between two snapshots; no data across a reset."""
    since, old_counters, old_epoch = first
    now, new_counters, epoch = last
    span = max(0.0, now - since)
    if old_epoch is None or epoch is None or epoch != old_epoch:
        return Metrics(0, 0, None, span)  # counters were reset: window lost
    if set(old_counters) - set(new_counters):  # a server gone mid-window: its share is unknown
        return Metrics(0, 0, None, span)
    requests = errors = 0
    for name, current in new_counters.items():
        old = old_counters.get(name, (0,) * len(COUNTERS))  # added in this window
        delta = [c - o for c, o in zip(current, old)]
        if min(delta) < 0:  # a reset (server re-added, reload): discard, never clamp
            return Metrics(0, 0, None, span)
        tried, failed = attempts(delta)
        requests += tried
        errors += failed
    latency = None
    if requests and stats is not None:
        times = [int(stats[m["instance"]].get("ttime") or 0) for m in members
                 if m["instance"] in stats]
        latency = {"avg": sum(times) / float(len(times))} if times else None
    return Metrics(requests, errors, latency, span)
