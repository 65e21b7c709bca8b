"""`make demo`'s main job (scripts/demo.sh): provisions the local stack, bakes
and deploys catalog 1.0.0, rolls 1.1.0 out as a canary under traffic with 0
errors, sees a faulty 1.2.0 rolled back, prints where things are; `--destroy`
removes it all. Runs in a private state dir
so it never touches the user's own demo."""
import json
import os
import re
import shutil
import tempfile
import urllib.request

import pytest


@pytest.fixture
def private_state(repo_root):
    """A private state dir, and a private project file pointing at infra/ so the
    stack settings file (with its encryption salt) is written there, not into infra/."""
    state = tempfile.mkdtemp(prefix="phx-demo-")  # short: unix socket paths are limited
    project = os.path.join(state, "project")
    os.mkdir(project)
    with open(os.path.join(project, "Pulumi.yaml"), "w", encoding="utf-8") as handle:
        handle.write("name: phoenix-infra\nmain: %s\nruntime:\n  name: python\n  options:\n"
                     "    virtualenv: %s\n" % (repo_root / "infra", repo_root / ".venv"))
    shutil.copy(repo_root / "infra" / "Pulumi.local.yaml", project)
    yield state
    shutil.rmtree(state, ignore_errors=True)


def test_demo_provisions_and_destroys(private_state, run, repo_root):
    env = dict(os.environ, PHOENIX_STATE_DIR=private_state,
               PULUMI_BACKEND_URL=f"file://{private_state}/pulumi-backend",
               PULUMI_HOME=f"{private_state}/pulumi-home", PHOENIX_INFRA_DIR=f"{private_state}/project")
    env.pop("PULUMI_CONFIG_PASSPHRASE", None)  # the local stack's documented default applies
    try:
        infra_dir = ["-e", f"phoenix_infra_dir={private_state}/project"]
        check = run(["ansible-playbook", "playbooks/infra.yml", "--check", *infra_dir], cwd=repo_root, env=env).stdout
        assert "changed=1" in check and not os.path.exists(f"{private_state}/stacks/local")
        out = run(["bash", "scripts/demo.sh"], cwd=repo_root, env=env).stdout
        stats = re.search(r"HAProxy stats:\s+(http://127\.[0-9.]+:\d+/stats)", out)
        lb = re.search(r"load balancer:\s+(http://127\.[0-9.]+:\d+/)", out)
        assert stats and lb, out
        assert re.search(r"database:\s+\w+@127\.[0-9.]+:\d+/\w+ \(password: secret\)", out)
        assert f"state dir:         {private_state}/stacks/local" in out
        with urllib.request.urlopen(stats.group(1), timeout=5) as resp:
            assert resp.status == 200
        assert "1.2.0 was rolled back automatically" in out
        assert re.search(r"live release:\s+1\.1\.0\+demo\.b2", out), out[-3000:]
        assert re.search(r"traffic during the canary: \d+ requests, 0 errors", out), out[-3000:]
        # a second run starts from a provisioned stack: infra is unchanged (the whole
        # demo is not repeated here; its playbooks are idempotent, see test_playbooks)
        check_again = run(["ansible-playbook", "playbooks/infra.yml", "--check", "-vvv", *infra_dir], cwd=repo_root,
                          env=env).stdout
        again = run(["ansible-playbook", "playbooks/infra.yml", *infra_dir], cwd=repo_root, env=env).stdout
        assert "changed=0" in check_again and "changed=0" in again
        password = run(["pulumi", "stack", "output", "database", "--show-secrets", "--json", "-s", "local"],
                       cwd=f"{private_state}/project", env=dict(env, PULUMI_CONFIG_PASSPHRASE="phoenix-local")).stdout
        password = json.loads(password)["password"]
        assert len(password) >= 16
        for text in (check, out, check_again, again):
            assert password not in text
    finally:
        run(["bash", "scripts/demo.sh", "--destroy"], cwd=repo_root, env=env)
    assert not os.path.exists(f"{private_state}/stacks/local")
