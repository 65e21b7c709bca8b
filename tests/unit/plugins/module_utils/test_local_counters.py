"""How the local driver turns HAProxy's per-server counters into attempts and
failed attempts (counters as measured on HAProxy 2.6, see metrics.attempts)."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.metrics import (
    CounterHistory, attempts, counters, window_metrics)


@pytest.mark.parametrize("delta, expected", [
    # req_tot, hrsp_5xx, econ, eresp, wretr, wredis
    ((10, 0, 0, 0, 0, 0), (10, 0)),      # all answered
    ((10, 4, 0, 0, 0, 0), (10, 4)),      # 5xx that reached users
    ((2, 2, 0, 0, 20, 20), (22, 22)),    # 5xx retried on another server: wretr and wredis
    ((0, 0, 0, 2, 20, 20), (22, 22)),    # empty responses: retried, then the last ones
    ((0, 0, 3, 0, 0, 12), (15, 15)),     # failed connects: redispatched, then the last ones
    ((5, 0, 0, 0, 7, 0), (12, 7)),       # retried on the same server (the only one)
])
def test_attempts(delta, expected):
    assert attempts(delta) == expected


def members(*names):
    return [{"instance": n} for n in names]


def stats(**requests):
    return {n: {"req_tot": str(r), "hrsp_5xx": "0", "ttime": "3"} for n, r in requests.items()}


def history_of(*points):
    """CounterHistory with snapshots (time, {server: req_tot}) in epoch "p1"."""
    history = CounterHistory()
    for at, reqs in points:
        history.add("g", at, counters(members(*reqs), stats(**reqs)), "p1")
    return history


def test_a_window_between_two_explicit_times_uses_the_snapshots_closest_to_them():
    history = history_of((100.0, {"a": 0}), (101.0, {"a": 10}), (103.0, {"a": 30}),
                         (110.0, {"a": 90}))
    first, last = history.near("g", 101.2), history.near("g", 102.9)
    assert first[0] == 101.0 and last[0] == 103.0
    got = window_metrics(first, last, members("a"), None)
    assert (got.requests, got.window) == (20, 2.0)
    assert history.near("g", 106.0) is None  # no snapshot within the resolution: no data
    assert history.near("g", 106.0, before=True)[0] == 103.0  # a start falls back to the latest before


def test_a_window_across_a_reset_or_a_new_process_gives_no_data():
    history = history_of((100.0, {"a": 40, "b": 40}), (101.0, {"a": 3, "b": 45}))
    got = window_metrics(history.near("g", 100.0), history.near("g", 101.0), members("a", "b"), None)
    assert got.requests == 0 and got.latency_ms is None  # a's counter went down: never clamped
    history = history_of((100.0, {"a": 40}), (101.0, {"a": 50}))
    history.forget(["a"])  # the driver removed and added a again
    history.add("g", 102.0, {"a": (60, 0, 0, 0, 0, 0)}, "p1")
    assert window_metrics(history.near("g", 100.0), history.near("g", 102.0), members("a"),
                          None).requests == 0
    history.add("g", 103.0, {"a": (70, 0, 0, 0, 0, 0)}, "p2")  # HAProxy restarted
    assert window_metrics(history.near("g", 102.0), history.near("g", 103.0), members("a"),
                          None).requests == 0
