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


def test_the_outputs_an_up_read_serve_the_next_outputs_call_once(cli, tmp_path, monkeypatch):
    """``Stack.up`` reads both output documents when the update ends; the
    module's own outputs right after it take them (masked or revealed, as the
    CLI printed them) instead of a third run; the next call asks the CLI."""
    from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack

    root, runs = cli
    (root / "bin" / ".version").write_text("3.259.0\n")
    masked = '{"db": "[secret]", "lb": {"url": "http://127.0.0.1:1/", "token": "[secret]"}}'
    revealed = '{"db": {"password": "pw"}, "lb": {"url": "http://127.0.0.1:1/", "token": "t"}}'
    (root / "bin" / "pulumi").write_text(
        '#!/bin/sh\necho "$*" >> %s\ncase "$*" in *--show-secrets*) echo \'%s\';; *) echo \'%s\';; esac\n'
        % (runs, revealed, masked))
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    monkeypatch.setenv("PHOENIX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "x")
    monkeypatch.setattr(pulumi_stack, "find_pulumi_root", lambda _path: str(root))
    runner = pulumi_stack.StackRunner(str(project), "dev")

    def ran():
        return [line for line in runs.read_text().splitlines() if "stack output" in line] if runs.exists() else []

    outputs = runner.workspace.stack_outputs("dev")  # what Stack.up calls when the update ends
    assert (outputs["db"].secret, outputs["lb"].secret) == (True, False)
    assert outputs["db"].value == {"password": "pw"} and len(ran()) == 2
    assert runner.outputs() == {"db": "[secret]", "lb": {"url": "http://127.0.0.1:1/", "token": "[secret]"}}
    assert len(ran()) == 2  # no third run
    assert runner.outputs(show_secrets=True)["lb"]["token"] == "t" and len(ran()) == 3  # taken once
    runner.workspace.stack_outputs("dev")
    runner._run(lambda: None)  # every operation drops what an earlier one read
    assert runner.outputs(show_secrets=True)["db"] == {"password": "pw"} and len(ran()) == 6


def test_config_the_settings_file_already_holds_needs_no_cli_run(cli, tmp_path, monkeypatch):
    """Plain values the stack's settings file holds as that text: no change,
    no ``stack select`` or ``pulumi config`` run. A different value, a secret
    or an ESC environment: the CLI is asked, as before."""
    from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack

    root, runs = cli
    (root / "bin" / ".version").write_text("3.259.0\n")
    current = '{"p:greeting": {"value": "hello", "secret": false}, "p:delay": {"value": "0", "secret": false}}'
    (root / "bin" / "pulumi").write_text(
        '#!/bin/sh\necho "$*" >> %s\ncase "$*" in *config*) echo \'%s\';; esac\n' % (runs, current))
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: p\nruntime: python\n")
    settings = project / "Pulumi.dev.yaml"
    settings.write_text('config:\n  p:greeting: hello\n  p:delay: "0"\n')
    monkeypatch.setenv("PHOENIX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "x")
    monkeypatch.setattr(pulumi_stack, "find_pulumi_root", lambda _path: str(root))
    runner = pulumi_stack.StackRunner(str(project), "dev")

    def ran():
        return runs.read_text().splitlines() if runs.exists() else []

    assert runner.config_changes({"greeting": "hello", "delay": 0}) == {} and ran() == []
    assert runner.config_changes({}) == {} and ran() == []
    assert runner.config_changes({"greeting": "bye"}) == {"p:greeting": ("hello", "bye")}
    assert [r for r in ran() if "config" in r]  # asked
    for config, text in (({"greeting": {"value": "hello", "secret": True}}, None),
                         ({"greeting": "hello"}, 'environment: [prod]\nconfig:\n  p:greeting: hello\n')):
        if text:
            settings.write_text(text)
        before = len(ran())
        runner.config_changes(config)
        assert len([r for r in ran()[before:] if "config" in r]) == 1, config
