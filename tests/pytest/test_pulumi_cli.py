"""The Pulumi CLI that `make setup` installs really works: its version matches
the pinned SDK, and it runs a Python program with a dynamic provider through
up / stack output / destroy on a private file backend."""
import json
import os
import pathlib
import re
import shutil

import pytest

PASSPHRASE = "cli-test-passphrase"
TOKEN = "tok-3f9c1e2a-never-printed"


@pytest.fixture
def tiny(tmp_path, repo_root):
    project = tmp_path / "project"
    shutil.copytree(repo_root / "tests/fixtures/pulumi-tiny", project)
    backend = tmp_path / "backend"
    backend.mkdir()
    env = dict(os.environ, PULUMI_BACKEND_URL=f"file://{backend}", PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
               PULUMI_HOME=str(tmp_path / "home"))
    return project, env, tmp_path


def test_version_matches_sdk(run, repo_root):
    pinned = re.search(r"^pulumi==([0-9.]+)", (repo_root / "requirements.txt").read_text(), re.M).group(1)
    assert run(["pulumi", "version"]).stdout.strip() == f"v{pinned}"
    from importlib.metadata import version
    assert version("pulumi") == pinned, "the PyPI SDK and the CLI must be the same release"


def test_up_output_destroy(tiny, run):
    project, env, tmp = tiny
    target = tmp / "written.txt"

    def pulumi(*args):
        return run(["pulumi", *args, "--non-interactive"], cwd=project, env=env)

    pulumi("stack", "init", "cli")
    pulumi("config", "set", "path", str(target))
    pulumi("config", "set", "--secret", "token", TOKEN)
    up = pulumi("up", "--yes", "--skip-preview")
    assert target.read_text() == "hello"
    assert "2 created" in up.stdout
    outputs = json.loads(pulumi("stack", "output", "--json").stdout)
    assert outputs["file"] == {"path": str(target), "token": "[secret]"}
    revealed = json.loads(pulumi("stack", "output", "--json", "--show-secrets").stdout)
    assert revealed["file"]["token"] == TOKEN
    # The secret is encrypted at rest and never printed by up.
    state_files = list(pathlib.Path(env["PULUMI_BACKEND_URL"][7:]).rglob("*.json"))
    assert state_files and not any(TOKEN in p.read_text() for p in state_files)
    assert TOKEN not in up.stdout + up.stderr
    noop = pulumi("up", "--yes", "--skip-preview")
    assert "2 unchanged" in noop.stdout
    pulumi("destroy", "--yes", "--skip-preview")
    assert not target.exists()
