"""Run every Ansible integration target under tests/integration/targets with
a real ansible-playbook (tests/integration/run_target.yml includes the target
as a role, as ansible-test does: its meta/main.yml dependencies run first).
Inside each target: check mode -> run -> idempotent check -> idempotent run."""
import os
import pathlib

import pytest
import yaml

TARGETS_DIR = pathlib.Path(__file__).parents[1] / "integration" / "targets"
# setup_* targets are hidden (ansible-test runs them only as dependencies)
TARGETS = sorted(p.name for p in TARGETS_DIR.iterdir()
                 if (p / "tasks" / "main.yml").exists() and not p.name.startswith("setup_"))


def test_targets_have_the_shape_ansible_test_expects():
    """aliases, meta/main.yml depending on setup_local_stack, tasks/tests/*.yml
    each with its cleanup in always: (as community.docker's targets)."""
    assert TARGETS, "no integration targets found"
    assert (TARGETS_DIR / "setup_local_stack" / "tasks" / "main.yml").exists()
    for target in TARGETS:
        path = TARGETS_DIR / target
        aliases = (path / "aliases").read_text().split() if (path / "aliases").exists() else []
        assert [a for a in aliases if not a.startswith("#")], f"{target}: no aliases"
        deps = yaml.safe_load((path / "meta" / "main.yml").read_text())["dependencies"]
        names = [d if isinstance(d, str) else d["role"] for d in deps]
        assert "setup_local_stack" in names, f"{target}: meta/main.yml does not depend on setup_local_stack"
        tests = sorted((path / "tasks" / "tests").glob("*.yml"))
        assert tests, f"{target}: no tasks/tests/*.yml"
        for test in tests:
            blocks = [t for t in yaml.safe_load(test.read_text()) if "block" in t]
            assert blocks and all("always" in b for b in blocks), f"{test}: cleanup is not in always:"


@pytest.mark.parametrize("target", TARGETS)
def test_target(target, run, repo_root):
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(TARGETS_DIR))
    proc = run(["ansible-playbook", str(repo_root / "tests/integration/run_target.yml"), "-e", f"target={target}"],
               check=False, cwd=repo_root, env=env)
    assert proc.returncode == 0, f"target {target} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "failed=0" in proc.stdout
    assert "duplicate mapping key" not in proc.stdout + proc.stderr
