"""Benchmark: the GCE driver through the rollout engine against the
schema-checking fake of the Compute and Monitoring APIs (tests/gcp_fake; no
Google API is reached), replacing a live release of 10 and of 100 instances.

Rows per strategy (rolling, blue/green, canary with one 10-minute pause):
API calls of the deploy (goal: the same for 10 and 100 instances — calls grow
with steps and polls, not with instances) and the controller's CPU time
(the in-process fake included, so an upper bound).

``python bench/gce.py`` prints the rows (environment of scripts/env.sh).
"""
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _path in (ROOT / ".tools" / "collections", ROOT / "tests", ROOT / "tests" / "unit" / "plugins" / "module_utils"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

STRATEGIES = (("rolling", None), ("blue_green", {"scale_down_delay": 60}),
              ("canary", {"steps": [{"set_weight": 10}, {"pause": {"duration": 600}}]}))


def run() -> list:
    from test_rollout_gce import Env  # pylint: disable=import-outside-toplevel
    rows, calls = [], {}
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-gce-") as tmp:
        for size in (10, 100):
            for strategy, settings in STRATEGIES:
                env = Env(pathlib.Path(tmp), "%s-%d" % (strategy, size))
                env.deploy("1.0.0", size=size)
                before = env.http.count
                cpu = time.process_time()
                result = env.deploy("1.1.0", size=size, strategy=strategy, settings=settings)
                cpu = time.process_time() - cpu
                if result.state != "live":
                    raise RuntimeError("%s deploy of %d instances ended %s: %s"
                                       % (strategy, size, result.state, result.msg))
                env.fake.check()
                calls[(strategy, size)] = env.http.count - before
                rows.append({"name": "%s deploy, %d instances: API calls" % (strategy, size),
                             "value": calls[(strategy, size)], "unit": "calls",
                             "goal": "= the 10-instance figure" if size == 100 else "-"})
                rows.append({"name": "%s deploy, %d instances: controller CPU" % (strategy, size),
                             "value": round(cpu, 3), "unit": "s", "goal": "-"})
    for strategy, _settings in STRATEGIES:
        if calls[(strategy, 100)] > calls[(strategy, 10)]:
            raise RuntimeError("%s: %d API calls for 100 instances, %d for 10: calls grow with instances"
                               % (strategy, calls[(strategy, 100)], calls[(strategy, 10)]))
    return rows


if __name__ == "__main__":
    for row in run():
        print("%-50s %10s %-5s %s" % (row["name"], row["value"], row["unit"], row["goal"]))
