"""The project's own Pulumi CLI build is not asked `pulumi version` on every
module run: install-pulumi.sh wrote its version beside it."""
from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.pulumi_stack import pulumi_command


@pytest.fixture
def cli(tmp_path):
    """A stand-in `bin/pulumi` that records each run and answers `version`."""
    runs = tmp_path / "runs"
    binary = tmp_path / "bin" / "pulumi"
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\necho "$*" >> %s\necho v3.259.0\n' % runs)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return tmp_path, runs


def test_the_version_file_beside_the_binary_replaces_a_version_run(cli):
    root, runs = cli
    (root / "bin" / ".version").write_text("3.259.0\n")
    command = pulumi_command(str(root))
    assert str(command.version) == "3.259.0"
    assert command.command == os.path.join(str(root), "bin", "pulumi")
    assert not runs.exists()


@pytest.mark.parametrize("content", [None, "not a version\n", ""])
def test_without_a_readable_version_file_the_cli_is_asked(cli, content):
    root, runs = cli
    if content is not None:
        (root / "bin" / ".version").write_text(content)
    command = pulumi_command(str(root))
    assert str(command.version) == "3.259.0"
    assert runs.read_text().split() == ["version"]
