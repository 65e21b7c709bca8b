"""Rollout reports: the JSON report and the PNG timeline (real matplotlib),
and the rollout module's import not paying for matplotlib (0.4 CPU-s on
every module run, also the ones that draw nothing)."""
import json
import os
import subprocess
import sys

from ansible_collections.phoenix.deploy.plugins.module_utils import report as reporting


def _samples():
    return [{"at": 100.0 + i, "groups": {"catalog-v1": {"weight": 100 - 20 * i, "requests": 50, "errors": 0},
                                         "catalog-v2": {"weight": 20 * i, "requests": 10 * i, "errors": i}}}
            for i in range(6)]


def test_json_and_png_of_a_rollout(tmp_path):
    result = {"action": "deploy", "state": "live", "msg": "done",
              "release": {"artifact": "catalog", "version": "1.1.0", "strategy": "canary"},
              "events": [{"at": 101.0, "message": "weights", "weights": {"catalog-v2": 20}},
                         {"at": 103.0, "message": "analysis passed", "verdict": "pass"}]}
    data = reporting.build_report(result, _samples(), {"duration": 6.0})
    assert data["per_group"] == {"catalog-v1": {"requests": 300, "errors_5xx": 0},
                                 "catalog-v2": {"requests": 150, "errors_5xx": 15}}
    path = reporting.write_json(str(tmp_path / "r" / "report.json"), data)
    assert json.loads(open(path, encoding="utf-8").read())["state"] == "live"
    png = reporting.write_png(str(tmp_path / "r" / "report.png"), data)
    assert png == str(tmp_path / "r" / "report.png")
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000  # two charts with lines, not an empty canvas
    assert not [f for f in os.listdir(tmp_path / "r") if ".tmp" in f]


def test_importing_the_rollout_module_does_not_import_matplotlib():
    code = ("import sys; import ansible_collections.phoenix.deploy.plugins.modules.rollout; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]", out.stdout
