"""Changelog fragments follow antsibull-changelog's format."""


def test_changelog_lint(run, repo_root):
    proc = run(["antsibull-changelog", "lint"], cwd=repo_root, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
