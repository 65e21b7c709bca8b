"""Secrets never reach logs (issue 9, item 15).

The documented EXAMPLES of pulumi_stack (read the stack with show_secrets, preview with a secret
config value), release_info and rollout (infra from the registered stack outputs, env plus
secret_env) run as one playbook with -vvv against a real local stack; the database password, the
secret config value and the secret_env value must appear nowhere in the output, the release
history, the rollout reports or the Pulumi state, while plain values (artifact, group names) are
not masked. The secret_env value does reach the instances (their 0600 env file)."""
import os
import pathlib
import stat
import subprocess

import pytest

from fixtures_rollout import V1

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_SECRET = "cfg-S3cret-4f1b9d"
ENV_SECRET = "api-K3y-9c2e71"

PLAYBOOK = """
- name: Documented examples with secrets
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Read the local stack
      phoenix.deploy.pulumi_stack:
        project_path: {proj}
        stack: {stack}
        show_secrets: true
      register: stack

    - name: Preview a production change (check mode)
      phoenix.deploy.pulumi_stack:
        project_path: {proj}
        stack: {stack}
        config:
          db_password:
            value: "{config_secret}"
            secret: true
      check_mode: true
      diff: true

    - name: Release info from the registered outputs
      phoenix.deploy.release_info:
        artifact: catalog
        environment: {env}
        infra: "{{{{ stack.outputs }}}}"
        store: {store}
        image_store: {images}

    - name: Rolling deploy of catalog with a secret env value
      phoenix.deploy.rollout:
        artifact: catalog
        environment: {env}
        version: "{version}"
        size: 1
        strategy: rolling
        infra: "{{{{ stack.outputs }}}}"
        store: {store}
        image_store: {images}
        env:
          GREETING: hello
        secret_env:
          API_KEY: "{env_secret}"
      register: deployed

    - name: Show the result
      ansible.builtin.debug:
        var: deployed
"""


def files_under(path):
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            p = pathlib.Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


def test_documented_examples_at_vvv_leak_no_secret(rollout_env, tmp_path):
    stack = rollout_env.stack
    password = stack.infra["database"]["password"]
    assert password and len(password) >= 8
    book = tmp_path / "secrets.yml"
    book.write_text(PLAYBOOK.format(proj=stack.proj, stack=stack.name, env=rollout_env.environment,
                                    store=rollout_env.store_dir, images=rollout_env.images["store"],
                                    version=V1, config_secret=CONFIG_SECRET, env_secret=ENV_SECRET))
    env = dict(os.environ, **stack.env)
    proc = subprocess.run(["ansible-playbook", "-vvv", str(book)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    for name, secret in (("database password", password), ("secret config value", CONFIG_SECRET),
                         ("secret_env value", ENV_SECRET)):
        assert secret not in output, "the %s leaked into the -vvv output" % name
    # only secrets are masked: names in the infra outputs still read as themselves
    group = "catalog-%s-v001" % rollout_env.environment
    assert group in output and "********-%s" % rollout_env.environment not in output
    assert "API_KEY" in output or "secret_env" in output

    # nothing on disk outside the instances' private env file holds a secret
    store = pathlib.Path(rollout_env.store_dir)
    assert list(store.rglob("history.json")), "no release history written"
    for path in list(files_under(store)) + list(files_under(stack.tmp / "backend")) + [
            stack.proj / ("Pulumi.%s.yaml" % stack.name)]:
        data = path.read_bytes()
        for secret in (password, CONFIG_SECRET, ENV_SECRET):
            assert secret.encode() not in data, "%s holds a secret" % path

    # the secret_env value reaches the instances, through a 0600 file only
    holders = [p for p in files_under(stack.state_dir) if ENV_SECRET.encode() in p.read_bytes()]
    assert holders, "secret_env was not injected"
    for p in holders:
        assert p.name == "env" and stat.S_IMODE(p.stat().st_mode) == 0o600, p
        text = p.read_text()
        assert "API_KEY=" in text and "GREETING=" in text
