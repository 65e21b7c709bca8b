"""Fixtures for image baking tests: real Packer bakes, a real PostgreSQL, catalog processes.

Everything listens on 127.0.0.1 only; every process started here is ended here, by its pid."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".tools" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

from ansible_collections.phoenix.deploy.plugins.module_utils import images  # noqa: E402

PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
CATALOG_SOURCE = ROOT / "examples" / "catalog"
GIT_HASH = "5eed0f1"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def http(method, url, body=None, timeout=10):
    """(status, parsed JSON body) of one request; connection errors propagate."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def make_writable(path):
    images._make_writable(str(path))


# --- bakes -------------------------------------------------------------------

@pytest.fixture(scope="session")
def bake_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("image-store")
    yield store
    make_writable(store)


def shared_store_dir(config, basetemp) -> pathlib.Path:
    """The image store shared by every xdist worker of one run (beside the
    workers' own temp dirs; the run's own temp dir without xdist)."""
    return (basetemp.parent if hasattr(config, "workerinput") else basetemp) / "shared-image-store"


@pytest.fixture(scope="session")
def shared_bake_store(request, tmp_path_factory):
    """An image store for images the tests only run (never inspect as a
    fresh bake, never change): every worker bakes into the same store, and
    the engine's per-image lock runs Packer once per version for the whole
    run (one worker bakes, the others wait and get the cache hit). Made
    writable again by the controller at the end (pytest_sessionfinish)."""
    store = shared_store_dir(request.config, tmp_path_factory.getbasetemp())
    store.mkdir(exist_ok=True)
    return store


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after every worker ended
        store = shared_store_dir(session.config, session.config._tmp_path_factory.getbasetemp())
        if store.exists():
            make_writable(store)


@pytest.fixture(scope="session")
def bake():
    """bake(store, version, **vars) -> engine result (a real Packer run unless cached;
    ``target="oci"``: an mmdebstrap + umoci bake)."""
    def _bake(store, version, force=False, check_mode=False, target="local", **variables):
        req = images.BakeRequest("catalog", version, str(CATALOG_SOURCE), target=target, store=str(store),
                                 project_dir=str(ROOT), variables=variables, force=force)
        return images.bake(req, check_mode=check_mode)
    return _bake


@pytest.fixture(scope="session")
def catalog_image(bake_store, bake):
    """A cold local bake of catalog 1.0.0 (no fault): (engine result, wall-clock seconds)."""
    t0 = time.monotonic()
    result = bake(bake_store, "1.0.0+%s.b1" % GIT_HASH)
    return result, time.monotonic() - t0


@pytest.fixture(scope="session")
def faulty_image(bake_store, bake):
    """catalog 1.0.1 baked with a fault: every other /items request fails, each takes 500 ms more."""
    return bake(bake_store, "1.0.1-faulty+%s.b2" % GIT_HASH, fault={"error_rate": 0.5, "latency_ms": 500})


@pytest.fixture(scope="session")
def crash_image(bake_store, bake):
    return bake(bake_store, "1.0.2-crash+%s.b3" % GIT_HASH, fault={"crash_at_start": True})


# --- PostgreSQL ----------------------------------------------------------------

class Postgres(object):
    def __init__(self, base, port, pid):
        self.base, self.host, self.port, self.pid = base, "127.0.0.1", port, pid
        self.dbname, self.user, self.password = "catalog", "catalog", "catalog-test-pw"

    def env(self):
        return {"DB_HOST": self.host, "DB_PORT": str(self.port), "DB_NAME": self.dbname, "DB_USER": self.user,
                "DB_PASSWORD": self.password}

    def connect(self):
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, dbname=self.dbname, user=self.user,
                               password=self.password, autocommit=True)


@pytest.fixture(scope="session")
def bake_postgres():
    """A PostgreSQL 15 of our own: initdb + pg_ctl as the postgres user in a temp dir, 127.0.0.1 only."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 binaries missing in %s: apt-get install postgresql (make setup does)" % PG_BIN)
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = pathlib.Path(tempfile.mkdtemp(prefix="phoenix-bake-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    pwfile = base / "pw"
    pwfile.write_text("postgres-test-pw\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    subprocess.run(as_pg + [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync",
                            "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", str(pwfile)],
                   check=True, capture_output=True)
    subprocess.run(as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60",
                            "-o", "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off" % (port, base), "start"],
                   check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    pg = Postgres(base, port, pid)
    try:
        import psycopg
        with psycopg.connect(host=str(base), port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute("CREATE ROLE catalog LOGIN PASSWORD 'catalog-test-pw'")
            c.execute("CREATE DATABASE catalog OWNER catalog")
        yield pg
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown of the postmaster we started
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


# --- catalog processes -----------------------------------------------------------

class Catalog(object):
    def __init__(self, proc, port, log):
        self.proc, self.port, self.log = proc, port, log
        self.url = "http://127.0.0.1:%d" % port

    def get(self, path, **kw):
        return http("GET", self.url + path, **kw)

    def post(self, path, body, **kw):
        return http("POST", self.url + path, body, **kw)

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("catalog exited %s before it was healthy:\n%s"
                                     % (self.proc.returncode, self.output()))
            try:
                last = self.get("/healthz", timeout=2)
                if last[0] == 200:
                    return last
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError("catalog not healthy after %ss (last: %r):\n%s" % (timeout, last, self.output()))

    def output(self):
        self.log.flush()
        return pathlib.Path(self.log.name).read_text()


@pytest.fixture
def start_catalog(tmp_path):
    """start_catalog(image_result, db, **env) -> Catalog, started from the image's launcher."""
    started = []

    def _start(image, db=None, **env):
        bundle = pathlib.Path(image["image"]["path"])
        images.verify_image(str(bundle))  # never run an image that fails verification
        port = free_port()
        full_env = {"PATH": "/usr/bin:/bin", "PORT": str(port), "BIND": "127.0.0.1", "IMAGE_DIR": str(bundle)}
        if db is not None:
            full_env.update(db.env())
        full_env.update(env)
        log = open(tmp_path / ("catalog-%d.log" % port), "w+")
        proc = subprocess.Popen([str(bundle / "rootfs" / "opt" / "phoenix" / "catalog" / "bin" / "run")],
                                env=full_env, stdout=log, stderr=subprocess.STDOUT)
        c = Catalog(proc, port, log)
        started.append(c)
        return c

    yield _start
    for c in started:
        if c.proc.poll() is None:
            os.kill(c.proc.pid, signal.SIGKILL)
            c.proc.wait(10)
        c.log.close()
