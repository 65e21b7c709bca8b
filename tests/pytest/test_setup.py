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


def test_the_virtualenvs_hold_exactly_their_locks(repo_root):
    """Whatever installed them (uv, or pip as the fallback), each virtualenv
    holds every pinned version of its lock, and nothing else besides the
    installers' own pip, setuptools and wheel; and its packages are
    byte-compiled (under PYTHONDONTWRITEBYTECODE no process would write the
    .pyc files, and each would compile ansible again)."""
    installers = {"pip", "setuptools", "wheel"}
    for venv, lock in ((".venv", "requirements.lock"), (".tools/galaxy-venv", "requirements-galaxy.lock")):
        pinned = {}
        for line in (repo_root / lock).read_text().splitlines():
            name, _sep, version = line.split("#", 1)[0].strip().partition("==")
            if name:
                pinned[re.sub(r"[-_.]+", "-", name).lower()] = version.split(";")[0].strip()
        listing = subprocess.run(
            [str(repo_root / venv / "bin" / "python"), "-c",
             "import importlib.metadata as m, importlib.util as u, ansible, os; "
             "print('\\n'.join('%s==%s' % (d.metadata['Name'], d.version) for d in m.distributions())); "
             "print('compiled==%s' % os.path.exists(u.cache_from_source(ansible.__file__)))"],
            capture_output=True, text=True, check=True, timeout=60).stdout.split()
        installed = {re.sub(r"[-_.]+", "-", n).lower(): v for n, _s, v in (x.partition("==") for x in listing)}
        assert installed.pop("compiled") == "True", f"{venv}: ansible is not byte-compiled"
        wrong = {n: (v, installed.get(n)) for n, v in pinned.items() if installed.get(n) != v}
        extra = sorted(set(installed) - set(pinned) - installers)
        assert not wrong and not extra, f"{venv}: pinned vs installed {wrong}; not in {lock}: {extra}"
