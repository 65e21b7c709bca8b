"""How the local driver turns HAProxy's per-server counters into attempts and
failed attempts (counters as measured on HAProxy 2.6, see metrics.attempts)."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.metrics import attempts


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
