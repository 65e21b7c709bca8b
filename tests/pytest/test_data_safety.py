"""Data safety (issue 9, items 16 and 4): playbooks/destroy.yml keeps database dumps unless asked
and refuses prod without a confirmation; playbooks/restore_db.yml restores only a dump that belongs
to the environment and matches the sha256 of its record; the PGPASSFILE lives in the environment's
0700 backups dir under a fixed name, and what a killed backup left is cleaned by the next run.

Real PostgreSQL from the infra program (TempLocalStack), ansible-playbook run as the README shows
it, with -vvv: the database password must not appear in any output."""
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess

import psycopg
import pytest

from fixtures_infra_local import TempLocalStack

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = TempLocalStack(artifacts=("catalog",))
    try:
        s.up()
        s.db = s.outputs()["database"]
        s.run_dir = tmp_path_factory.mktemp("safety")
        yield s
    finally:
        s.cleanup()


def env_for(stack):
    tmpdir = stack.run_dir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    return dict(os.environ, PULUMI_BACKEND_URL=f"file://{stack.tmp / 'backend'}",
                PULUMI_CONFIG_PASSPHRASE=os.environ.get("PULUMI_CONFIG_PASSPHRASE", "phoenix-local"),
                PHOENIX_STATE_DIR=str(stack.run_dir / "state"), TMPDIR=str(tmpdir))


def play(stack, path, *extra, check=True):
    cmd = ["ansible-playbook", path, "-vvv", "-e", "environment=ci", "-e", "artifact=catalog",
           "-e", f"phoenix_stack={stack.name}", "-e", f"phoenix_infra_dir={stack.tmp / 'proj'}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(stack), capture_output=True, text=True, timeout=600,
                          check=False)
    output = proc.stdout + proc.stderr
    assert stack.db["password"] not in output, f"the database password leaked into the -vvv output of {path}"
    if check and proc.returncode != 0:
        pytest.fail(f"{path} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")
    return proc


def rows(db):
    with psycopg.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                         password=db["password"], connect_timeout=10) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS safety (v text)")
        return [r[0] for r in conn.execute("SELECT v FROM safety ORDER BY v").fetchall()]


def write(db, value):
    with psycopg.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                         password=db["password"], connect_timeout=10) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS safety (v text)")
        conn.execute("INSERT INTO safety VALUES (%s)", (value,))


def backups(stack):
    return stack.run_dir / "state" / "releases" / "catalog" / "ci" / "backups"


def dump_path(proc):
    lines = [ln for ln in proc.stdout.splitlines() if "DB_BACKUP_PATH=" in ln and "msg" in ln]
    assert lines, proc.stdout[-3000:]
    return pathlib.Path(lines[-1].split("DB_BACKUP_PATH=", 1)[1].strip().strip("'\","))


# --- the PGPASSFILE and what a killed backup leaves ------------------------------------------

def test_backup_cleans_what_a_killed_run_left(stack):
    """A SIGKILLed backup cannot run its `always:`: it leaves the PGPASSFILE (today in /tmp, a
    random name nobody removes) and a .partial dump. The next run removes both and succeeds."""
    write(stack.db, "before-backup")
    bdir = backups(stack)
    bdir.mkdir(parents=True)
    bdir.chmod(0o700)
    (bdir / ".pgpass").write_text("127.0.0.1:5432:db:user:left-by-a-killed-run\n")
    (bdir / "catalog-ci-1.0.0-20260101T000000Z.dump.x1y2.partial").write_text("PGDMP half")
    (stack.run_dir / "tmp").mkdir(exist_ok=True)
    old_tmp = stack.run_dir / "tmp" / "phoenix-pgpass.k1ll3d"
    old_tmp.write_text("left in /tmp by an older version\n")
    proc = play(stack, "tests/playbooks/db_backup.yml", "-e", "version=1.4.0+s.b1")
    dump = dump_path(proc)
    assert dump.parent == bdir and dump.is_file()
    assert sorted(p.name for p in bdir.iterdir()) == sorted([dump.name, dump.with_suffix(".json").name])
    assert not old_tmp.exists()
    assert not list((stack.run_dir / "tmp").glob("phoenix-pgpass.*"))
    assert stat.S_IMODE(bdir.stat().st_mode) == 0o700


def test_pgpassfile_lives_in_the_private_backups_dir(stack):
    """Where the PGPASSFILE goes while pg_dump runs: the -vvv output names its path."""
    proc = play(stack, "tests/playbooks/db_backup.yml", "-e", "version=1.4.0+s.b2")
    assert f"PGPASSFILE={backups(stack)}/.pgpass" in proc.stdout or \
        f'"PGPASSFILE": "{backups(stack)}/.pgpass"' in proc.stdout or \
        f"{backups(stack)}/.pgpass" in proc.stdout
    assert f"{stack.run_dir / 'tmp'}/phoenix-pgpass." not in proc.stdout  # nothing created in the temp dir
    assert not (backups(stack) / ".pgpass").exists()


# --- restore only what belongs here -----------------------------------------------------------

def latest_dump(stack):
    return sorted(backups(stack).glob("*.dump"), key=lambda p: p.stat().st_mtime)[-1]


def copy_dump(stack, src, name, record_changes=None, data_suffix=b""):
    dst = src.with_name(name + ".dump")
    shutil.copyfile(src, dst)
    if data_suffix:
        with open(dst, "ab") as handle:
            handle.write(data_suffix)
    record = json.loads(src.with_suffix(".json").read_text())
    record["dump"] = dst.name
    record.update(record_changes or {})
    dst.with_suffix(".json").write_text(json.dumps(record))
    return dst, record


@pytest.mark.parametrize("case, fragment", [
    ("other_environment", "says it is a dump of catalog in integrated_qa"),
    ("other_artifact", "says it is a dump of search in ci"),
    ("changed_bytes", "but its record"),
    ("no_record", "has no record"),
])
def test_restore_refuses_a_dump_that_is_not_this_environments(stack, case, fragment):
    src = latest_dump(stack)
    changes = {"other_environment": {"environment": "integrated_qa"}, "other_artifact": {"artifact": "search"}}
    dst, record = copy_dump(stack, src, "catalog-ci-x-" + case, changes.get(case),
                            data_suffix=b"\0tampered" if case == "changed_bytes" else b"")
    if case == "no_record":
        dst.with_suffix(".json").unlink()
    write(stack.db, "after-backup-" + case)
    before = rows(stack.db)
    proc = play(stack, "playbooks/restore_db.yml", "-e", f"dump={dst}", check=False)
    assert proc.returncode != 0
    assert fragment in proc.stdout, proc.stdout[-4000:]
    assert str(dst) in proc.stdout
    if case == "changed_bytes":
        actual = hashlib.sha256(dst.read_bytes()).hexdigest()
        assert actual in proc.stdout and record["sha256"] in proc.stdout
    assert "pg_restore into" not in proc.stdout.split("fatal:")[0]
    assert rows(stack.db) == before  # nothing restored
    for p in (dst, dst.with_suffix(".json")):
        if p.exists():
            p.unlink()


def test_restore_of_a_good_dump_still_works(stack):
    before = rows(stack.db)
    assert "after-backup-other_environment" in before
    proc = play(stack, "playbooks/restore_db.yml", "-e", f"dump={latest_dump(stack)}")
    assert "failed=0" in proc.stdout
    assert "before-backup" in rows(stack.db)
    assert "after-backup-other_environment" not in rows(stack.db)  # the dump's table contents are back
    assert not (backups(stack) / ".pgpass").exists()


# --- destroy ---------------------------------------------------------------------------------

def test_destroy_refuses_prod_without_confirmation(tmp_path):
    state = tmp_path / "state"
    history = state / "releases" / "catalog" / "prod" / "history.json"
    history.parent.mkdir(parents=True)
    history.write_text("{}")
    env = dict(os.environ, PHOENIX_STATE_DIR=str(state))
    proc = subprocess.run(["ansible-playbook", "playbooks/destroy.yml", "-e", "environment=prod"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "environment=prod is production" in proc.stdout and "-e confirm=prod" in proc.stdout
    assert "Nothing was changed" in proc.stdout
    assert "TASK [Destroy stack" not in proc.stdout
    assert history.exists()
    proc = subprocess.run(["ansible-playbook", "playbooks/destroy.yml", "-e", "environment=prod",
                           "-e", "confirm=ci"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode != 0 and "TASK [Destroy stack" not in proc.stdout and history.exists()


def test_destroy_keeps_backups_unless_purged(stack):
    bdir = backups(stack)
    dumps = sorted(p.name for p in bdir.iterdir())
    assert any(n.endswith(".dump") for n in dumps)
    releases = bdir.parent
    (releases / "history.json").write_text("{}")  # what a rollout leaves beside the backups
    proc = play(stack, "playbooks/destroy.yml")
    assert "kept %d database dump(s)" % len([n for n in dumps if n.endswith(".dump")]) in proc.stdout
    assert sorted(p.name for p in bdir.iterdir()) == dumps
    assert [p.name for p in releases.iterdir()] == ["backups"]
    stack.destroyed = True
    proc = play(stack, "playbooks/destroy.yml", "-e", "purge_backups=true")
    assert not releases.exists()
