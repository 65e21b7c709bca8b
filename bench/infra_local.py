"""Benchmark: `pulumi up --yes` (preview + update, as typed by a user) of the
local-platform stack, cold and no-op (median of 3), and a no-op through the
Automation API (what the pulumi_stack module runs: up + outputs + history).

Runs the real infra program (PostgreSQL, HAProxy, supervisord) in a throwaway
stack (own backend, state dir and loopback block, see
tests/pytest/fixtures_infra_local.py) and destroys it afterwards.
Needs the environment of scripts/env.sh. ``python bench/infra_local.py``
prints the rows."""
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _temp_stack():
    sys.path.insert(0, str(ROOT / "tests" / "pytest"))
    from fixtures_infra_local import TempLocalStack
    return TempLocalStack(name=f"bench-{os.getpid() % 100000}",
                          block=f"127.23.{os.getpid() % 250 + 1}.0/24")


def _timed(fn):
    start = time.monotonic()
    fn()
    return round(time.monotonic() - start, 2)


def run() -> list:
    stack = _temp_stack()
    try:
        cold = _timed(lambda: stack.cli("up", "--yes"))
        noop = statistics.median(_timed(lambda: stack.cli("up", "--yes")) for _i in range(3))
        noop_api = statistics.median(_timed(stack.up) for _i in range(3))
    finally:
        stack.cleanup()
    return [
        {"name": "local stack pulumi up (cold)", "value": cold, "unit": "s", "goal": "<= 20"},
        {"name": "local stack pulumi up (no-op)", "value": noop, "unit": "s", "goal": "<= 5"},
        {"name": "local stack Automation API up (no-op, as the pulumi_stack module)",
         "value": noop_api, "unit": "s", "goal": "<= 5"},
    ]


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
