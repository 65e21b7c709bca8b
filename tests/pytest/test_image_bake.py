"""Image baking with real Packer runs, and the catalog service started from baked images
against a real PostgreSQL (fixtures in fixtures_bake.py).

The Ansible integration target (tests/integration/targets/image_bake) is run by
test_integration_targets.py through tests/integration/run_target.yml."""
import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from fixtures_bake import CATALOG_SOURCE, GIT_HASH, ROOT, make_writable

from ansible_collections.phoenix.deploy.plugins.module_utils import images, packer_runner

TEMPLATE = ROOT / "packer" / "image.pkr.hcl"


def copy_image(result, store):
    """Copy a baked bundle into another store (as a deploy host would have it)."""
    src = pathlib.Path(result["image"]["path"])
    dst = pathlib.Path(images.ImageStore(str(store)).path("local", "catalog", src.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- baking ---------------------------------------------------------------------

def test_local_bake_produces_a_read_only_verified_bundle(catalog_image):
    result, seconds = catalog_image
    image = result["image"]
    assert result["packer_ran"] and result["changed"] and not result["cache_hit"]
    bundle = pathlib.Path(image["path"])
    doc = json.loads((bundle / "image.json").read_text())
    assert doc["name"] == image["name"] == "catalog-v1-0-0--%s-b1" % GIT_HASH
    assert (doc["artifact"], doc["version"], doc["git_hash"], doc["build_id"]) == (
        "catalog", "1.0.0+%s.b1" % GIT_HASH, GIT_HASH, "1")
    assert doc["input_digest"].startswith("sha256:") and doc["content_digest"] == doc["id"] == image["id"]
    assert doc["created_at"].endswith("Z") and doc["fault"] == {}
    # what Packer recorded (manifest post-processor), not its human output
    manifest = json.loads((bundle / "manifest.json").read_text())
    build = [b for b in manifest["builds"] if b["packer_run_uuid"] == manifest["last_run_uuid"]][0]
    assert build["builder_type"] == "null" and doc["packer"]["run_uuid"] == build["packer_run_uuid"]
    assert build["custom_data"]["input_digest"] == doc["input_digest"]
    # the roles installed the artifact, its launcher and its service definition
    rootfs = bundle / "rootfs"
    assert (rootfs / "opt/phoenix/catalog/app/catalog.py").read_bytes() == (CATALOG_SOURCE / "catalog.py").read_bytes()
    assert os.access(rootfs / "opt/phoenix/catalog/bin/run", os.X_OK)
    service = json.loads((rootfs / "etc/phoenix/catalog/service.json").read_text())
    assert service["command"] == ["opt/phoenix/catalog/bin/run"] and service["health_path"] == "/healthz"
    assert "ExecStart=/opt/phoenix/catalog/bin/run" in (rootfs / "etc/systemd/system/catalog.service").read_text()
    assert not list(rootfs.rglob("__pycache__"))
    # read-only, and it verifies
    for p in [bundle, bundle / "image.json", *rootfs.rglob("*")]:
        assert stat.S_IMODE(p.lstat().st_mode) & 0o222 == 0, p
    assert images.verify_image(str(bundle), expected_digest=image["id"])["name"] == image["name"]
    print("cold bake: %.1f s" % seconds)


def test_rebake_is_a_cache_hit_under_one_second(catalog_image, bake_store, bake):
    first, _unused = catalog_image
    t0 = time.monotonic()
    again = bake(bake_store, "1.0.0+%s.b1" % GIT_HASH)
    seconds = time.monotonic() - t0
    assert again["cache_hit"] and not again["changed"] and not again["packer_ran"]
    assert again["image"]["id"] == first["image"]["id"]
    assert seconds < 1.0, "cache hit took %.3f s" % seconds
    listing = sorted(p.name for p in (bake_store / "local" / "catalog").iterdir() if not p.name.startswith("."))
    assert first["image"]["name"] in listing and not [n for n in listing if "staging" in n]


def test_check_mode_bakes_nothing(bake_store, bake):
    result = bake(bake_store, "9.9.9+%s.b99" % GIT_HASH, check_mode=True)
    assert result["changed"] and not result["packer_ran"] and not result["cache_hit"]
    assert not (bake_store / "local" / "catalog" / result["image"]["name"]).exists()


def test_same_version_other_inputs_is_an_immutability_error(catalog_image, tmp_path, bake):
    result, _unused = catalog_image
    bundle = copy_image(result, tmp_path / "store")
    before = sorted(os.listdir(bundle.parent))
    with pytest.raises(images.ImmutabilityError, match="never points at other content") as err:
        bake(tmp_path / "store", "1.0.0+%s.b1" % GIT_HASH, fault={"error_rate": 0.5})
    assert err.value.option == "version" and "1.0.0+<git hash>.b<next build id>" in str(err.value)
    assert sorted(os.listdir(bundle.parent)) == before  # no Packer run, nothing written
    make_writable(tmp_path)


@pytest.mark.slow
def test_tampered_image_is_refused_and_force_rebuilds_it(catalog_image, tmp_path, bake):
    result, _unused = catalog_image
    bundle = copy_image(result, tmp_path / "store")
    assert images.verify_image(str(bundle))["id"] == result["image"]["id"]
    app = bundle / "rootfs/opt/phoenix/catalog/app/catalog.py"
    make_writable(bundle)
    app.write_text(app.read_text().replace('"status": "ok"', '"status": "pwned"'))
    with pytest.raises(images.TamperError, match="modified after baking"):
        images.verify_image(str(bundle))
    with pytest.raises(images.TamperError, match="force=true"):
        bake(tmp_path / "store", "1.0.0+%s.b1" % GIT_HASH)  # the cache never hands out a tampered image
    repaired = bake(tmp_path / "store", "1.0.0+%s.b1" % GIT_HASH, force=True)
    assert repaired["packer_ran"] and repaired["image"]["id"] == result["image"]["id"]  # reproducible bake
    assert images.verify_image(str(bundle))["id"] == result["image"]["id"]
    assert '"status": "pwned"' not in app.read_text()
    make_writable(tmp_path)


def test_retention_cleanup_keeps_newest_and_live(catalog_image, faulty_image, crash_image, tmp_path):
    store = tmp_path / "store"
    for r in (catalog_image[0], faulty_image, crash_image):
        copy_image(r, store)
    s = images.ImageStore(str(store))
    newest_first = [d["name"] for d in s.images("local", "catalog")]
    assert newest_first[-1] == catalog_image[0]["image"]["name"]
    removed = s.cleanup("local", "catalog", keep=1, live=[catalog_image[0]["image"]["id"]])
    assert [d["name"] for d in removed] == [newest_first[1]]
    assert sorted(d["name"] for d in s.images("local", "catalog")) == sorted([newest_first[0], newest_first[2]])
    make_writable(tmp_path)


def test_failed_packer_run_leaves_nothing_and_says_why(tmp_path, bake):
    store = tmp_path / "store"
    with pytest.raises(images.ImageError, match="packer build failed") as err:
        bake(store, "1.0.0+%s.b1" % GIT_HASH, python="/nonexistent/python3")
    assert "/nonexistent/python3" in str(err.value)  # the provisioner's own error, not just an exit code
    assert os.listdir(store / "local" / "catalog") == [".lock"]  # no image, no staging dir left


@pytest.mark.slow
def test_concurrent_bakes_of_one_version_run_packer_once(tmp_path):
    script = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "from ansible_collections.phoenix.deploy.plugins.module_utils import images\n"
        "req = images.BakeRequest('catalog', '2.0.0+%s.b9', %r, store=%r, project_dir=%r)\n"
        "print(json.dumps(images.bake(req)))\n"
    ) % (str(ROOT / ".tools" / "collections"), GIT_HASH, str(CATALOG_SOURCE), str(tmp_path / "store"), str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert sorted(o["packer_ran"] for o in outs) == [False, True]
    assert outs[0]["image"]["id"] == outs[1]["image"]["id"]
    make_writable(tmp_path)


def test_packer_validate_gce_source():
    runner = packer_runner.PackerRunner()
    fake = {"artifact": "catalog", "version": "1.0.0+5eed0f1.b1", "image_name": "catalog-v1-0-0--5eed0f1-b1",
            "source_dir": str(CATALOG_SOURCE), "project_id": "phoenix-fake-project", "zone": "europe-west1-b"}
    runner.validate(str(TEMPLATE), only="gce.googlecompute.gce", variables=fake)
    runner.validate(str(TEMPLATE), variables=fake)  # the whole template
    with pytest.raises(packer_runner.PackerError, match="packer validate failed"):
        runner.validate(str(TEMPLATE), variables=dict(fake, undeclared_variable="x"))
    assert set(packer_runner.template_variables(str(TEMPLATE))) >= images.RESERVED_VARS


def test_gce_request_needs_a_project_and_is_validated_before_packer(tmp_path):
    with pytest.raises(images.ImageError, match="project_id") as err:
        images.BakeRequest("catalog", "1.0.0+5eed0f1.b1", str(CATALOG_SOURCE), target="gce",
                           store=str(tmp_path / "s"), project_dir=str(ROOT))
    assert err.value.option == "vars" and not (tmp_path / "s").exists()


# --- the module, run as Ansible runs it (JSON args in, JSON out) ------------------

def run_module(args, tmp_path):
    argsfile = tmp_path / "args.json"
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".tools" / "collections"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.phoenix.deploy.plugins.modules.image_bake",
                           str(argsfile)], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0


@pytest.mark.parametrize("override, option, words", [
    ({"version": "latest"}, "version", "mutable tag"),
    ({"version": "1.2"}, "version", "not semver"),
    ({"artifact": "../etc"}, "artifact", "lowercase letters"),
    ({"artifact": "cat/alog"}, "artifact", "lowercase letters"),
    ({"artifact": "cat alog"}, "artifact", "lowercase letters"),
    ({"artifact": "cat;reboot"}, "artifact", "lowercase letters"),
    ({"target": "aws"}, None, "value of target must be one of: local, gce, oci"),
    ({"source": None}, None, "missing required arguments: source"),
    ({"source": "/nonexistent/catalog"}, "source", "not a directory"),
    ({"vars": {"image_root": "/"}}, "vars", "set by image_bake itself"),
    ({"vars": {"fault": {"error_rate": 7}}}, "vars", "error_rate must be a number from 0 to 1"),
])
def test_module_refuses_bad_input_without_running_packer(override, option, words, tmp_path):
    args = {"artifact": "catalog", "version": "1.0.0+5eed0f1.b1", "source": str(CATALOG_SOURCE),
            "store": str(tmp_path / "store"), "project_dir": str(ROOT)}
    args.update(override)
    args = {k: v for k, v in args.items() if v is not None}
    out, seconds = run_module(args, tmp_path)
    assert out.get("failed") and words in out["msg"], out
    if option:
        assert out["option"] == option
    assert not (tmp_path / "store").exists()  # nothing written, no Packer run
    assert seconds < 5


def test_module_cache_hit_and_check_mode(catalog_image, bake_store, tmp_path):
    result, _unused = catalog_image
    args = {"artifact": "catalog", "version": "1.0.0+%s.b1" % GIT_HASH, "source": str(CATALOG_SOURCE),
            "store": str(bake_store), "project_dir": str(ROOT)}
    out, seconds = run_module(args, tmp_path)
    assert not out.get("failed"), out
    assert out["changed"] is False and out["cache_hit"] is True and out["image"]["id"] == result["image"]["id"]
    assert out["duration"] < 1.0
    print("module cache hit: %.3f s in the module, %.3f s with interpreter start-up" % (out["duration"], seconds))
    out, _unused = run_module(dict(args, version="1.0.0+%s.b2" % GIT_HASH, _ansible_check_mode=True,
                                   _ansible_diff=True), tmp_path)
    assert out["changed"] is True and out["cache_hit"] is False and out["packer_ran"] is False
    assert out["diff"]["after"]["baked"] == "catalog-v1-0-0--%s-b2" % GIT_HASH
    before = out["diff"]["before"]["images"]  # other session bakes may be in the store too
    assert result["image"]["name"] in before
    assert out["diff"]["after"]["images"] == sorted(before + [out["diff"]["after"]["baked"]])
    out, _unused = run_module(dict(args, cleanup=True, retain=0, _ansible_check_mode=True, _ansible_diff=True), tmp_path)
    assert out["changed"] is False or out["removed"], out  # the image of the task itself is never removed
    assert result["image"]["name"] not in [r["name"] for r in out["removed"]]
    assert pathlib.Path(result["image"]["path"]).is_dir()


# --- the catalog service from baked images ----------------------------------------

def test_catalog_from_image_serves_version_and_items(catalog_image, bake_postgres, start_catalog):
    result, _unused = catalog_image
    app = start_catalog(result, bake_postgres)
    assert app.wait_healthy() == (200, {"status": "ok"})

    status, version = app.get("/version")
    assert status == 200
    assert version["artifact"] == "catalog" and version["version"] == "1.0.0+%s.b1" % GIT_HASH
    assert version["image"] == result["image"]["name"] and version["image_digest"] == result["image"]["id"]
    assert version["git_hash"] == GIT_HASH and version["build_id"] == "1"

    status, created = app.post("/items", {"name": "teapot", "price_cents": 1299})
    assert status == 201 and created["name"] == "teapot" and created["price_cents"] == 1299
    assert app.get("/items/%d" % created["id"]) == (200, created)
    status, listing = app.get("/items")
    assert status == 200 and created in listing["items"]
    assert app.post("/items", {"price_cents": -1})[0] == 400
    assert app.get("/items/999999")[0] == 404
    with bake_postgres.connect() as conn:
        assert conn.execute("SELECT name FROM schema_migrations").fetchall() == [("0001_items.sql",)]
        assert conn.execute("SELECT name FROM items WHERE id = %s", (created["id"],)).fetchone() == ("teapot",)


def test_catalog_is_not_ready_without_its_database(catalog_image, start_catalog):
    result, _unused = catalog_image
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]  # bound, never listening: connections are refused
    app = start_catalog(result, None, DB_HOST="127.0.0.1", DB_PORT=str(port), DB_WAIT="3")
    deadline, seen = time.monotonic() + 10, None
    while time.monotonic() < deadline and seen is None:
        try:
            seen = app.get("/healthz", timeout=2)
        except OSError:
            time.sleep(0.05)
    assert seen == (503, {"status": "starting"})
    assert app.get("/items")[0] == 503
    assert app.proc.wait(20) == 1  # gives up after DB_WAIT, exits non-zero
    assert "database unreachable" in app.output()
    closed_port.close()


def test_baked_fault_is_a_property_of_the_image(faulty_image, bake_postgres, start_catalog):
    app = start_catalog(faulty_image, bake_postgres)
    app.wait_healthy()
    assert app.get("/version")[1]["fault"] == {"error_rate": 0.5, "latency_ms": 500, "crash_at_start": False}
    t0 = time.monotonic()
    statuses = [app.get("/items")[0] for _i in range(6)]
    elapsed = time.monotonic() - t0
    assert statuses == [200, 500, 200, 500, 200, 500]
    assert elapsed >= 6 * 0.5
    assert app.get("/healthz")[0] == 200  # health checks pass: only analysis can catch this version


def test_crash_at_start_image_exits(crash_image, bake_postgres, start_catalog):
    app = start_catalog(crash_image, bake_postgres)
    assert app.proc.wait(15) == 3
    assert "crashing at start" in app.output()


def test_sigterm_drains_in_flight_requests(faulty_image, bake_postgres, start_catalog):
    app = start_catalog(faulty_image, bake_postgres)
    app.wait_healthy()
    box = {}

    def slow_request():
        t0 = time.monotonic()
        box["response"] = app.get("/items")  # first /items request: 200 after the baked 500 ms
        box["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.2)  # the request is in flight
    os.kill(app.proc.pid, signal.SIGTERM)
    deadline, refused, draining = time.monotonic() + 2, False, False
    while time.monotonic() < deadline and not refused:
        try:
            reply = app.get("/healthz", timeout=1)
        except OSError:
            refused = True  # stopped accepting: new connections are refused
            continue
        if reply == (200, {"status": "ok"}) and not draining:
            continue  # served before the app's SIGTERM handler ran (a loaded machine)
        assert reply == (503, {"status": "draining"}), reply  # and never "ok" again
        draining = True  # (the app closes its listener at most 0.1 s later: rarely seen)
    assert refused
    assert t.is_alive() or box["seconds"] >= 0.5
    t.join(10)
    assert box["response"][0] == 200 and "items" in box["response"][1]
    assert box["seconds"] >= 0.5
    assert app.proc.wait(10) == 0
    assert "stopped drained=true" in app.output()


def test_filters_match_the_engine(catalog_image, run):
    result, _unused = catalog_image
    version = result["image"]["version"]
    msg = ("{{ v | phoenix.deploy.image_name('catalog') }} {{ '1.0.0' | phoenix.deploy.semver_build('%s0123abc', 1) }}"
           " {{ v | phoenix.deploy.oci_tag }} {{ (v | phoenix.deploy.semver).git_hash }}" % GIT_HASH)
    proc = run(["ansible", "localhost", "-c", "local", "-m", "ansible.builtin.debug", "-e", "v=%s" % version,
                "-a", json.dumps({"msg": msg})], cwd=ROOT)
    assert "msg: %s %s %s %s" % (result["image"]["name"], version, version.replace("+", "_"), GIT_HASH) in proc.stdout
    proc = run(["ansible", "localhost", "-c", "local", "-m", "ansible.builtin.debug",
                "-a", json.dumps({"msg": "{{ 'latest' | phoenix.deploy.image_name('catalog') }}"})],
               check=False, cwd=ROOT)
    assert proc.returncode != 0 and "mutable tag" in proc.stdout + proc.stderr
