"""Run every Ansible integration target under tests/integration/targets with
a real ansible-playbook (check mode → run → idempotent check → idempotent run
inside each target)."""
import pathlib

import pytest

TARGETS = sorted(p.name for p in (pathlib.Path(__file__).parents[1] / "integration" / "targets").iterdir()
                 if (p / "tasks" / "main.yml").exists())


@pytest.mark.parametrize("target", TARGETS)
def test_target(target, run, repo_root):
    proc = run(["ansible-playbook", str(repo_root / "tests/integration/run_target.yml"), "-e", f"target={target}"],
               check=False, cwd=repo_root)
    assert proc.returncode == 0, f"target {target} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "failed=0" in proc.stdout
