"""`make setup` is idempotent (a second run does nothing) and a machine that
lacks what setup cannot install fails at once with the exact fix."""
import os
import re
import subprocess


def test_second_setup_is_a_noop(repo_root):
    proc = subprocess.run(["bash", str(repo_root / "scripts/setup.sh")], capture_output=True, text=True,
                          cwd=repo_root, check=False)
    assert proc.returncode == 0, proc.stderr
    steps = [ln for ln in proc.stdout.splitlines() if ln.startswith("==> ") and "setup complete" not in ln]
    assert len(steps) == 8, proc.stdout
    did_work = [ln for ln in steps if not re.search(r"\bok\b", ln)]
    assert not did_work, f"setup on a ready machine did work:\n{proc.stdout}"


def test_missing_python_fails_fast_with_the_fix(repo_root, tmp_path):
    proc = subprocess.run(["bash", str(repo_root / "scripts/setup.sh")], capture_output=True, text=True,
                          cwd=repo_root, env=dict(os.environ, PYTHON=str(tmp_path / "no-such-python")),
                          timeout=60, check=False)
    assert proc.returncode != 0
    assert "SETUP FAILED" in proc.stderr and "no-such-python" in proc.stderr
    assert "apt-get install" in proc.stderr
    assert "==> virtualenv" not in proc.stdout  # nothing was started
