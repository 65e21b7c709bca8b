"""Role db_backup and playbooks/restore_db.yml against a real local stack:
PostgreSQL started by the infra program (TempLocalStack), ansible-playbook run
as the README shows it, rows checked in the database with psycopg.

The stack's password must never show in any ansible output."""
import json
import os
import pathlib
import stat

import psycopg
import pytest

from fixtures_infra_local import TempLocalStack

pytestmark = pytest.mark.slow
ROOT = pathlib.Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "examples/catalog/migrations/0001_items.sql"
ROWS = [("teapot", 1999), ("kettle", 4550), ("mug: large \\ blue", 799)]


@pytest.fixture(scope="module")
def db_stack(tmp_path_factory):
    """A local stack (PostgreSQL, HAProxy, supervisord) in a temp dir; destroyed at the end."""
    stack = TempLocalStack(artifacts=("catalog",))
    try:
        stack.up()
        stack.db = stack.outputs()["database"]
        stack.run_dir = tmp_path_factory.mktemp("dbb")
        yield stack
    finally:
        stack.cleanup()


def connect(db):
    return psycopg.connect(host=db["host"], port=db["port"], dbname=db["name"], user=db["user"],
                           password=db["password"], connect_timeout=10)


def items(db):
    with connect(db) as conn:
        return conn.execute("SELECT id, name, price_cents FROM items ORDER BY id").fetchall()


def ansible_env(stack):
    """The environment scripts/env.sh gives, pointed at the temp stack and a temp state dir."""
    tmpdir = stack.run_dir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(PULUMI_BACKEND_URL=f"file://{stack.tmp / 'backend'}",
               PULUMI_CONFIG_PASSPHRASE=os.environ.get("PULUMI_CONFIG_PASSPHRASE", "phoenix-local"),
               PHOENIX_STATE_DIR=str(stack.run_dir / "state"), TMPDIR=str(tmpdir))
    return env


def playbook(run, stack, path, *extra, check=True, verbose="-v"):
    cmd = ["ansible-playbook", path, *([verbose] if verbose else []),
           "-e", "environment=ci", "-e", "artifact=catalog",
           # the temp stack stands in for stack `ci` of inventories/ci
           "-e", f"phoenix_stack={stack.name}", "-e", f"phoenix_infra_dir={stack.tmp / 'proj'}", *extra]
    proc = run(cmd, check=check, cwd=ROOT, env=ansible_env(stack))
    output = proc.stdout + proc.stderr
    assert stack.db["password"] not in output, f"the database password leaked into the output of {path}"
    return proc


def backup_path(proc):
    lines = [ln for ln in proc.stdout.splitlines() if "DB_BACKUP_PATH=" in ln]
    assert lines, proc.stdout[-3000:]
    return lines[-1].split("DB_BACKUP_PATH=", 1)[1].strip().strip("'\"")


def test_backup_change_restore(db_stack, run):
    db = db_stack.db
    with connect(db) as conn:
        conn.execute(MIGRATION.read_text())
        for name, price in ROWS:
            conn.execute("INSERT INTO items (name, price_cents) VALUES (%s, %s)", (name, price))
    before = items(db)
    assert [(n, p) for _key, n, p in before] == ROWS

    proc = playbook(run, db_stack, "tests/playbooks/db_backup.yml", "-e", "version=1.4.0+34e57f0.b456")
    dump = pathlib.Path(backup_path(proc))
    backups = db_stack.run_dir / "state/releases/catalog/ci/backups"
    assert dump.parent == backups
    assert dump.name.startswith("catalog-ci-1.4.0+34e57f0.b456-") and dump.suffix == ".dump"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert dump.read_bytes()[:5] == b"PGDMP"  # custom format
    record = json.loads(dump.with_suffix(".json").read_text())
    assert stat.S_IMODE(dump.with_suffix(".json").stat().st_mode) == 0o600
    assert record["version"] == "1.4.0+34e57f0.b456" and record["environment"] == "ci"
    assert int(record["size"]) == dump.stat().st_size
    assert sorted(p.name for p in backups.iterdir()) == sorted([dump.name, dump.with_suffix(".json").name])
    # the PGPASSFILE is gone
    assert not list((db_stack.run_dir / "tmp").glob("phoenix-pgpass.*"))

    # the release's migration and new writes change the data ...
    with connect(db) as conn:
        conn.execute("DELETE FROM items WHERE name = 'teapot'")
        conn.execute("UPDATE items SET price_cents = 1 WHERE name = 'kettle'")
        conn.execute("INSERT INTO items (name) VALUES ('after-backup')")
        conn.execute("CREATE TABLE added_by_migration (id int PRIMARY KEY)")
        conn.execute("INSERT INTO added_by_migration VALUES (7)")
    assert items(db) != before

    # ... and the restore brings the rows back
    proc = playbook(run, db_stack, "playbooks/restore_db.yml", "-e", f"dump={dump}")
    assert "failed=0" in proc.stdout
    assert items(db) == before
    with connect(db) as conn:  # objects the dump does not hold are kept, never dropped
        assert conn.execute("SELECT id FROM added_by_migration").fetchall() == [(7,)]
    assert not list((db_stack.run_dir / "tmp").glob("phoenix-pgpass.*"))


def test_restore_latest(db_stack, run):
    with connect(db_stack.db) as conn:
        conn.execute("DELETE FROM items")
    proc = playbook(run, db_stack, "playbooks/restore_db.yml", "-e", "dump=latest", verbose="")
    assert "failed=0" in proc.stdout
    assert [(n, p) for _key, n, p in items(db_stack.db)] == ROWS


def test_no_migration_no_dump(db_stack, run):
    backups = db_stack.run_dir / "state/releases/catalog/ci/backups"
    before = sorted(backups.iterdir())
    proc = playbook(run, db_stack, "tests/playbooks/db_backup.yml", "-e", "version=1.4.1", "-e", "migration=false")
    assert backup_path(proc) == ""
    assert "carries no DB migration" in proc.stdout
    proc = playbook(run, db_stack, "tests/playbooks/db_backup.yml", "--check", "-e", "version=1.4.2")
    assert backup_path(proc) == ""
    assert "would dump" in proc.stdout
    assert sorted(backups.iterdir()) == before


def test_backup_failure_stops_the_release(db_stack, run):
    """A dump that cannot be taken fails the play, leaves no partial file and no password."""
    proc = playbook(run, db_stack, "tests/playbooks/db_backup.yml", "-e", "version=1.5.0",
                    "-e", "db_backup_pg_bindir=/nonexistent", check=False)
    assert proc.returncode != 0
    assert "must not run without a backup" in proc.stdout
    backups = db_stack.run_dir / "state/releases/catalog/ci/backups"
    assert not [p for p in backups.iterdir() if "1.5.0" in p.name]


@pytest.mark.parametrize("args, wanted", [
    ([], "environment=(missing)"),
    (["-e", "environment=staging", "-e", "artifact=catalog", "-e", "dump=x.dump"], "environment=staging"),
    (["-e", "environment=ci", "-e", "dump=x.dump"], "artifact=(missing)"),
    (["-e", "environment=ci", "-e", "artifact=catalog"], "dump=(missing)"),
])
def test_restore_bad_input(args, wanted, run):
    """Refused at the first task with the allowed values; nothing else runs."""
    proc = run(["ansible-playbook", "playbooks/restore_db.yml", *args], check=False, cwd=ROOT)
    assert proc.returncode != 0
    assert "usage: -e environment=<ci|gcp-dev|integrated_qa|k8s|local|prod>" in proc.stdout
    assert wanted in proc.stdout
    assert "ok=1 " in proc.stdout and "failed=1" in proc.stdout  # only the read-only lookup of inventories ran
