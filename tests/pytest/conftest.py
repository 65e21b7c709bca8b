"""Shared pytest setup for the integration suite (real processes, loopback only).

Fixture modules live beside this file as ``fixtures_<area>.py`` and are loaded
automatically, so each area owns its fixtures without editing this file."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytest_plugins = sorted(
    f"fixtures_{p.stem[len('fixtures_'):]}" for p in pathlib.Path(__file__).parent.glob("fixtures_*.py")
)


def pytest_configure(config):
    missing = [v for v in ("PULUMI_HOME", "PULUMI_BACKEND_URL", "PHOENIX_STATE_DIR") if v not in os.environ]
    if missing:
        raise pytest.UsageError(
            f"environment not set up ({', '.join(missing)} missing): run the suite with `make test`, "
            "or `source scripts/env.sh` first"
        )


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture
def run():
    """Run a command, return CompletedProcess; fail the test with its output on error."""
    def _run(cmd, check=True, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(cmd, check=False, **kw)
        if check and proc.returncode != 0:
            pytest.fail(f"{cmd!r} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc
    return _run
