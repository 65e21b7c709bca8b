"""The playbooks exactly as the README shows them: the one-line deploy in two
environments, promotion, the prod guard, rollback, a DB backup before a
migration, chaos, destroy — and bad input failing at the first task with
nothing changed.

Everything runs in a private state dir (stacks, images, releases) and a
private Pulumi project file that points at infra/, so the user's own demo
and the repository's stack files are never touched."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
V1 = "1.0.0+t.b1"
V2 = "1.1.0+t.b2"


class Env:
    def __init__(self):
        self.state = pathlib.Path(tempfile.mkdtemp(prefix="phx-pb-"))  # short: unix sockets
        self.project = self.state / "project"
        self.project.mkdir()
        (self.project / "Pulumi.yaml").write_text(
            "name: phoenix-infra\nmain: %s\nruntime:\n  name: python\n  options:\n    virtualenv: %s\n"
            % (ROOT / "infra", ROOT / ".venv"))
        self.env = dict(os.environ, PHOENIX_STATE_DIR=str(self.state),
                        PULUMI_BACKEND_URL=f"file://{self.state}/pulumi-backend",
                        PULUMI_HOME=str(self.state / "pulumi-home"),
                        PULUMI_CONFIG_PASSPHRASE="playbook-tests")

    def play(self, playbook, *extra, check=True):
        cmd = ["ansible-playbook", f"playbooks/{playbook}", "-e", f"phoenix_infra_dir={self.project}", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=900, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}")
        return proc

    def outputs(self, stack):
        out = subprocess.run(["pulumi", "stack", "output", "--json", "-s", stack], cwd=self.project,
                             env=self.env, capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def stacks(self):
        return sorted(p.name for p in (self.state / "stacks").glob("*")) if (self.state / "stacks").exists() else []


@pytest.fixture(scope="module")
def pb():
    env = Env()
    yield env
    for stack in ("ci", "prod"):
        if (env.state / "stacks" / stack).exists():
            env.play("destroy.yml", "-e", f"environment={'ci' if stack == 'ci' else 'prod'}", "-e", "confirm=prod",
                     check=False)
    shutil.rmtree(env.state, ignore_errors=True)


def get(url, host, path):
    req = urllib.request.Request(url.rstrip("/") + path, headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def failed_task(stdout):
    """Name of the task that failed the play."""
    head = stdout[:stdout.index("fatal:")] if "fatal:" in stdout else ""
    tasks = re.findall(r"^TASK \[([^\]]+)\]", head, re.M)
    return tasks[-1] if tasks else None


def task_status(stdout, prefix):
    match = re.search(r"^TASK \[%s[^\]]*\][^\n]*\n(ok|changed|skipping|fatal)" % re.escape(prefix), stdout, re.M)
    return match.group(1) if match else None


@pytest.mark.parametrize("args,fragment", [
    ([], "environment=(missing)"),
    (["-e", "environment=staging", "-e", "artifact=catalog", "-e", f"version={V1}"], "environment=staging"),
    (["-e", "environment=ci", "-e", f"version={V1}"], "artifact=(missing)"),
    (["-e", "environment=ci", "-e", "artifact=billing", "-e", f"version={V1}"], "artifact=billing"),
    (["-e", "environment=ci", "-e", "artifact=catalog"], "version=(missing)"),
    (["-e", "environment=ci", "-e", "artifact=catalog", "-e", "version=latest"], "mutable tags"),
    (["-e", "environment=ci", "-e", "artifact=catalog", "-e", "version=9.9.9+never.baked"], "is not baked"),
    (["-e", "environment=ci", "-e", "artifact=catalog", "-e", f"version={V1}", "-e", "strategy=yolo"],
     "strategy=yolo"),
])
def test_bad_input_fails_before_anything_changes(pb, args, fragment):
    proc = pb.play("deploy.yml", *args, check=False)
    assert proc.returncode != 0
    assert fragment in proc.stdout, proc.stdout[-3000:]
    assert (failed_task(proc.stdout) or "").startswith(("Check the", "Refuse")), proc.stdout[-3000:]
    assert "TASK [Infrastructure of" not in proc.stdout and "TASK [Roll out" not in proc.stdout
    assert pb.stacks() == []


def test_deploy_one_liner_in_ci(pb):
    pb.play("bake.yml", "-e", "artifact=catalog", "-e", f"version={V1}")
    out = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=ci", "-e", f"version={V1}").stdout
    assert f"catalog in ci: live: {V1}" in out
    lb = pb.outputs("ci")["load_balancer"]["url"]
    status, doc = get(lb, "catalog", "/version")
    assert status == 200 and doc["version"] == V1
    again = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=ci", "-e", f"version={V1}").stdout
    assert task_status(again, "Roll out") == "ok", "redeploying the live version is not a change"


def test_prod_refuses_an_unpromoted_image(pb):
    proc = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=prod", "-e", f"version={V1}",
                   check=False)
    assert proc.returncode != 0
    assert "was not promoted" in proc.stdout and "playbooks/promote.yml" in proc.stdout
    assert "prod" not in pb.stacks()


def test_promote_then_deploy_to_prod(pb):
    first = pb.play("promote.yml", "-e", "artifact=catalog", "-e", f"version={V1}").stdout
    assert "promoted (qualified by ci release" in first
    second = pb.play("promote.yml", "-e", "artifact=catalog", "-e", f"version={V1}").stdout
    assert "changed=0" in second
    out = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=prod", "-e", f"version={V1}").stdout
    assert f"catalog in prod: live: {V1}" in out
    status, doc = get(pb.outputs("prod")["load_balancer"]["url"], "catalog", "/version")
    assert status == 200 and doc["version"] == V1


def test_prod_refuses_a_digest_mismatch(pb):
    """A prod copy whose files differ from what was tested is refused."""
    tested = next(p for p in (pb.state / "images" / "local" / "catalog").glob("*/image.json")
                  if json.loads(p.read_text())["version"] == V1)
    doc = json.loads(tested.read_text())
    original = tested.read_text()
    os.chmod(tested, 0o600)
    tested.write_text(json.dumps(dict(doc, content_digest="sha256:" + "0" * 64)))
    try:
        proc = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=prod", "-e", f"version={V1}",
                       check=False)
        assert proc.returncode != 0 and "digest mismatch" in proc.stdout, proc.stdout[-3000:]
        assert failed_task(proc.stdout).startswith("Refuse an image that was not promoted")
    finally:
        tested.write_text(original)
        os.chmod(tested, 0o444)


def test_migration_backup_then_rollback(pb):
    out = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=ci", "-e", f"version={V2}",
                  "-e", "bake=true", "-e", "db_migration=true", "-e", "strategy=blue_green").stdout
    assert f"catalog in ci: live: {V2}" in out
    dumps = list((pb.state / "releases" / "catalog" / "ci" / "backups").glob("*.dump"))
    assert len(dumps) == 1 and oct(dumps[0].stat().st_mode & 0o777) == "0o600"
    assert dumps[0].read_bytes()[:5] == b"PGDMP"
    back = pb.play("rollback.yml", "-e", "artifact=catalog", "-e", "environment=ci").stdout
    assert f"is back on {V1}" in back
    status, doc = get(pb.outputs("ci")["load_balancer"]["url"], "catalog", "/version")
    assert doc["version"] == V1


def test_killed_ansible_playbook_mid_rollout_converges_on_rerun(pb):
    """SIGKILL the whole ansible-playbook process group while the rollout holds
    its lock, then run the same one-liner again: it converges and finishes."""
    cmd = ["ansible-playbook", "playbooks/deploy.yml", "-e", f"phoenix_infra_dir={pb.project}",
           "-e", "artifact=catalog", "-e", "environment=ci", "-e", f"version={V2}", "-e", "strategy=rolling"]
    lock = pb.state / "releases" / "catalog" / "ci" / "lock"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=pb.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def rollout_holds_lock():  # deploy.yml's infra step holds it first, as "infra"
            try:
                return json.loads(lock.read_text()).get("action") not in (None, "infra")
            except (OSError, ValueError):
                return False
        deadline = time.monotonic() + 120
        while not rollout_holds_lock() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rollout_holds_lock(), "the rollout never took its lock"
        time.sleep(1.5)  # mid-rollout: the new group is being created / checked
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    out = pb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=ci", "-e", f"version={V2}",
                  "-e", "strategy=rolling").stdout
    assert f"catalog in ci: live: {V2}" in out
    status, doc = get(pb.outputs("ci")["load_balancer"]["url"], "catalog", "/version")
    assert status == 200 and doc["version"] == V2
    groups = {p.name.split(".")[0] for p in (pb.state / "stacks" / "ci" / "supervisor" / "programs").glob("*.conf")}
    # the live group, plus at most the previous one kept warm for an instant rollback
    assert 1 <= len(groups) <= 2, f"orphan server groups left behind: {groups}"


def test_chaos_heals_with_zero_errors(pb):
    out = pb.play("chaos.yml", "-e", "artifact=catalog", "-e", "environment=ci").stdout
    report = re.search(r"traffic: (\d+)\s+requests,\s+(\d+)\s+errors", out)
    assert report, out[-3000:]
    assert int(report.group(1)) > 100 and int(report.group(2)) == 0


def test_destroy_removes_the_environment(pb):
    ci_state = pb.state / "stacks" / "ci"
    pids = [p.read_text().split()[0] for p in ci_state.rglob("*.pid")]
    assert pids
    pb.play("destroy.yml", "-e", "environment=ci")
    assert not ci_state.exists()
    # the history is gone; the database dumps of the migration test are kept (purge_backups=true removes them)
    kept = pb.state / "releases" / "catalog" / "ci"
    assert not kept.exists() or [p.name for p in kept.iterdir()] == ["backups"]
    for pid in pids:
        assert not pathlib.Path(f"/proc/{pid}").exists() or \
            pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
