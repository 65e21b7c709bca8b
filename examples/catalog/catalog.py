"""catalog: the sample service phoenix.deploy bakes and deploys.

A small, real HTTP service (stdlib http.server + psycopg 3):

  GET  /healthz      200 once started and connected to PostgreSQL, 503 while
                     starting or draining
  GET  /version      artifact, version, image name and digests (from the image)
  GET  /items        list items (newest first, at most 100)
  POST /items        create an item: {"name": "...", "price_cents": 123}
  GET  /items/<id>   one item

Configuration comes only from the environment, at deploy time:
  PORT (required), BIND (default 127.0.0.1), DB_HOST, DB_PORT (5432), DB_NAME,
  DB_USER, DB_PASSWORD, IMAGE_DIR (the image bundle holding image.json),
  DRAIN_TIMEOUT (seconds, default 20), DB_WAIT (seconds to wait for the
  database at start-up, default 30).

Baked into the image (never from the environment): release.json (artifact,
version) and fault.json next to this file. A fault makes a version misbehave
on purpose, for tests of analysis and rollback:
  {"error_rate": 0.5}       every other /items request answers 500
  {"latency_ms": 800}       /items requests take 800 ms longer
  {"crash_at_start": true}  the process exits with status 3 at start-up

SIGTERM: /healthz turns 503, the listener closes (no new connections),
in-flight requests finish (up to DRAIN_TIMEOUT), then the process exits 0.
"""
import json
import os
import pathlib
import signal
import sys
import threading
import time
import queue
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

HERE = pathlib.Path(__file__).resolve().parent
MIGRATIONS = HERE / "migrations"


def write_log(line):
    """Logging never fails a request: when the supervisor that reads our
    output died (a closed pipe), the line is dropped and serving goes on."""
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def log(msg, **fields):
    extra = " ".join("%s=%s" % (k, json.dumps(v)) for k, v in fields.items())
    write_log("catalog: %s %s\n" % (msg, extra))


def read_json(path, default=None):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        return default


def find_image_json():
    """IMAGE_DIR/image.json, else the nearest image.json above this file (a local bundle)."""
    image_dir = os.environ.get("IMAGE_DIR")
    if image_dir:
        return pathlib.Path(image_dir) / "image.json"
    for parent in HERE.parents:
        if (parent / "image.json").is_file():
            return parent / "image.json"
    return None


class Fault(object):
    def __init__(self, spec):
        spec = spec or {}
        self.error_rate = float(spec.get("error_rate", 0) or 0)
        self.latency_ms = int(spec.get("latency_ms", 0) or 0)
        self.crash_at_start = bool(spec.get("crash_at_start", False))
        self._n = 0
        self._lock = threading.Lock()

    def should_fail(self):
        """Deterministic share: exactly error_rate of the requests fail (evenly spread)."""
        if self.error_rate <= 0:
            return False
        with self._lock:
            n = self._n
            self._n += 1
        return int((n + 1) * self.error_rate) > int(n * self.error_rate)

    def as_dict(self):
        return {"error_rate": self.error_rate, "latency_ms": self.latency_ms, "crash_at_start": self.crash_at_start}


class Pool(object):
    """A tiny connection pool: connections are created on demand, at most ``size``."""

    def __init__(self, conninfo, size=8):
        self.conninfo = conninfo
        self.size = size
        self._idle = queue.LifoQueue()
        self._sem = threading.Semaphore(size)

    def connect(self):
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def run(self, sql, params=None, fetch="all"):
        with self._sem:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self.connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    rows = cur.fetchall() if fetch == "all" else cur.fetchone() if fetch == "one" else None
            except psycopg.OperationalError:
                conn.close()
                raise
            self._idle.put(conn)
            return rows

    def close(self):
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def migrate(conn):
    """Apply migrations/*.sql in order, once, under an advisory lock (many instances may start at once)."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(74210001)")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                     "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            conn.execute(path.read_text())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
            applied.append(path.name)
    return applied


class App(object):
    def __init__(self, env):
        self.port = int(env["PORT"])
        self.bind = env.get("BIND", "127.0.0.1")
        self.drain_timeout = float(env.get("DRAIN_TIMEOUT", "20"))
        self.db_wait = float(env.get("DB_WAIT", "30"))
        self.conninfo = psycopg.conninfo.make_conninfo(
            host=env.get("DB_HOST", "127.0.0.1"), port=env.get("DB_PORT", "5432"),
            dbname=env.get("DB_NAME", "catalog"), user=env.get("DB_USER", "catalog"),
            password=env.get("DB_PASSWORD") or None, application_name="catalog")
        self.release = read_json(HERE / "release.json", {}) or {}
        self.fault = Fault(read_json(HERE / "fault.json", {}))
        image_json = find_image_json()
        self.image = (read_json(image_json, {}) if image_json else {}) or {}
        self.pool = Pool(self.conninfo)
        self.ready = threading.Event()
        self.draining = threading.Event()
        self.stop = threading.Event()
        self.inflight = 0
        self.inflight_cv = threading.Condition()
        self.exit_code = 0

    def version_doc(self):
        return {
            "artifact": self.release.get("artifact") or self.image.get("artifact"),
            "version": self.release.get("version") or self.image.get("version"),
            "git_hash": self.release.get("git_hash"),
            "build_id": self.release.get("build_id"),
            "image": self.image.get("name"),
            "image_digest": self.image.get("content_digest"),
            "input_digest": self.image.get("input_digest"),
            "fault": self.fault.as_dict(),
        }

    def connect_db(self):
        deadline = time.monotonic() + self.db_wait
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, connect_timeout=5) as conn:
                    applied = migrate(conn)
                log("database ready", migrations_applied=applied)
                self.ready.set()
                return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    log("database unreachable, giving up", error=str(exc).strip())
                    self.exit_code = 1
                    self.stop.set()
                    return
                time.sleep(0.5)


def make_handler(app):
    class Handler(BaseHTTPRequestHandler):
        server_version = "catalog"
        protocol_version = "HTTP/1.0"  # one request per connection: nothing to cut off when draining

        def log_message(self, fmt, *args):
            write_log("catalog: %s %s\n" % (self.address_string(), fmt % args))

        def send_json(self, status, doc):
            body = (json.dumps(doc) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                if app.draining.is_set():
                    return self.send_json(503, {"status": "draining"})
                if not app.ready.is_set():
                    return self.send_json(503, {"status": "starting"})
                return self.send_json(200, {"status": "ok"})
            if self.path == "/version":
                return self.send_json(200, app.version_doc())
            if self.path == "/items" or self.path.startswith("/items/"):
                return self.items("GET")
            return self.send_json(404, {"error": "not found", "path": self.path})

        def do_POST(self):
            if self.path == "/items":
                return self.items("POST")
            return self.send_json(404, {"error": "not found", "path": self.path})

        def items(self, method):
            if not app.ready.is_set():
                return self.send_json(503, {"error": "not ready"})
            if app.fault.latency_ms:
                time.sleep(app.fault.latency_ms / 1000.0)
            if app.fault.should_fail():
                return self.send_json(500, {"error": "injected fault", "fault": app.fault.as_dict()})
            try:
                if method == "POST":
                    return self.create_item()
                if self.path == "/items":
                    rows = app.pool.run("SELECT id, name, price_cents, created_at FROM items "
                                        "ORDER BY id DESC LIMIT 100")
                    return self.send_json(200, {"items": [self.item(r) for r in rows]})
                item_id = self.path[len("/items/"):]
                if not item_id.isdigit():
                    return self.send_json(400, {"error": "item id must be a number"})
                row = app.pool.run("SELECT id, name, price_cents, created_at FROM items WHERE id = %s",
                                   (int(item_id),), fetch="one")
                if row is None:
                    return self.send_json(404, {"error": "no such item", "id": int(item_id)})
                return self.send_json(200, self.item(row))
            except psycopg.Error as exc:
                log("database error", error=str(exc).strip())
                return self.send_json(503, {"error": "database unavailable"})

        def create_item(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                doc = json.loads(self.rfile.read(length) or b"{}")
                name = doc["name"]
                price = int(doc.get("price_cents", 0))
                if not isinstance(name, str) or not 1 <= len(name) <= 200 or price < 0:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return self.send_json(400, {"error": "body must be JSON {\"name\": 1-200 chars, "
                                                     "\"price_cents\": integer >= 0}"})
            row = app.pool.run("INSERT INTO items (name, price_cents) VALUES (%s, %s) "
                               "RETURNING id, name, price_cents, created_at", (name, price), fetch="one")
            return self.send_json(201, self.item(row))

        @staticmethod
        def item(row):
            return {"id": row[0], "name": row[1], "price_cents": row[2], "created_at": row[3].isoformat()}

    return Handler


class Server(ThreadingHTTPServer):
    """Counts connections from accept to close, so draining cannot miss one that is just starting."""

    daemon_threads = True

    def __init__(self, app, address, handler):
        self.app = app
        ThreadingHTTPServer.__init__(self, address, handler)

    def server_bind(self):
        """Bind without HTTPServer's reverse DNS lookup of the address
        (socket.getfqdn): 100 instances started at once sent 100 lookups at
        once, and a resolver that drops part of such a burst kept half of
        them from listening for its 5 s timeout."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        with self.app.inflight_cv:
            self.app.inflight += 1
        ThreadingHTTPServer.process_request(self, request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            ThreadingHTTPServer.process_request_thread(self, request, client_address)
        finally:
            with self.app.inflight_cv:
                self.app.inflight -= 1
                self.app.inflight_cv.notify_all()


def main(env=None):
    env = dict(os.environ if env is None else env)
    if "PORT" not in env:
        log("PORT is not set; set PORT (and BIND, DB_*) in the environment")
        return 2
    app = App(env)
    if app.fault.crash_at_start:
        log("crashing at start (fault baked into this image)", fault=app.fault.as_dict())
        return 3

    server = Server(app, (app.bind, app.port), make_handler(app))
    signal.signal(signal.SIGTERM, lambda *_: app.stop.set())
    signal.signal(signal.SIGINT, lambda *_: app.stop.set())
    serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="serve")
    serve.start()
    log("listening", bind=app.bind, port=app.port, version=app.version_doc()["version"])
    threading.Thread(target=app.connect_db, name="db", daemon=True).start()

    while not app.stop.wait(0.5):
        pass

    # Graceful shutdown: fail health checks, stop accepting, drain, exit.
    app.draining.set()
    server.shutdown()          # the accept loop ends
    server.socket.close()      # new connections are refused from here on
    deadline = time.monotonic() + app.drain_timeout
    with app.inflight_cv:
        while app.inflight and time.monotonic() < deadline:
            app.inflight_cv.wait(deadline - time.monotonic())
        left = app.inflight
    app.pool.close()
    log("stopped", drained=(left == 0), inflight_left=left)
    return app.exit_code


if __name__ == "__main__":
    sys.exit(main())
