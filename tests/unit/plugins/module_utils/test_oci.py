"""module_utils.oci without processes: the reproducible app layer tar, layout verification, base keys."""
import hashlib
import json
import os
import tarfile

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import oci


def make_upper(root, stamp):
    (root / "opt" / "phoenix" / "app").mkdir(parents=True)
    (root / "opt" / "phoenix" / "app" / "b.py").write_text("print('b')\n")
    (root / "opt" / "phoenix" / "app" / "a.py").write_text("print('a')\n")
    os.link(root / "opt" / "phoenix" / "app" / "a.py", root / "opt" / "phoenix" / "app" / "a2.py")
    (root / "opt" / "phoenix" / "run").write_text("#!/bin/sh\n")
    os.chmod(root / "opt" / "phoenix" / "run", 0o755)
    os.symlink("app/a.py", root / "opt" / "phoenix" / "link")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (stamp, stamp), follow_symlinks=False)


def test_layer_tar_is_reproducible_sorted_and_normalised(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_upper(a, 1_600_000_000)
    make_upper(b, 1_700_000_000)  # other mtimes, other inode order: same layer
    oci.write_layer(str(a), str(tmp_path / "a.tar"), 0)
    oci.write_layer(str(b), str(tmp_path / "b.tar"), 0)
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.tar", "b.tar")]
    assert digest[0] == digest[1]
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {m.mtime for m in members} == {0} and {(m.uname, m.gname) for m in members} == {("", "")}
    byname = {m.name: m for m in members}
    assert byname["opt/phoenix/app/a2.py"].isreg()  # hard links are stored as files
    assert byname["opt/phoenix/run"].mode & 0o777 == 0o755
    assert byname["opt/phoenix/link"].issym() and byname["opt/phoenix/link"].linkname == "app/a.py"


def test_overlay_whiteouts_become_oci_whiteouts(tmp_path):
    """(Creating the 0/0 character device overlayfs uses as a whiteout needs root, like target oci.)"""
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "issue.net", 0o600 | 0o020000, os.makedev(0, 0))
    oci.write_layer(str(upper), str(tmp_path / "l.tar"), 0)
    with tarfile.open(tmp_path / "l.tar") as tar:
        names = tar.getnames()
    assert names == ["etc", "etc/.wh.issue.net"]


def write_blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def small_layout(tmp_path):
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layer = dict(write_blob(layout, b"layer"), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    config = dict(write_blob(layout, json.dumps({"rootfs": {"diff_ids": []}}).encode()),
                  mediaType="application/vnd.oci.image.config.v1+json")
    manifest = write_blob(layout, json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [dict(
        manifest, annotations={"org.opencontainers.image.ref.name": oci.REF_TAG})]}))
    return layout, manifest["digest"], layer["digest"]


def test_verify_layout_checks_every_blob(tmp_path):
    layout, digest, layer = small_layout(tmp_path)
    assert oci.verify_layout(str(layout), oci.REF_TAG)[0] == digest
    (layout / "blobs" / "sha256" / layer.split(":")[1]).write_bytes(b"LAYER")
    with pytest.raises(oci.OciError, match="does not match its digest"):
        oci.verify_layout(str(layout), oci.REF_TAG)
    with pytest.raises(oci.OciError, match="has 0 images tagged 'other'"):
        oci.verify_layout(str(layout), "other")


def test_base_key_follows_the_inputs():
    key = oci.BaseSpec(["python3", "ca-certificates"]).key()
    assert key == oci.BaseSpec(["ca-certificates", "python3", "python3"]).key()
    assert key != oci.BaseSpec(["python3"]).key()
    assert key != oci.BaseSpec(["python3", "ca-certificates"], epoch=1).key()
    assert key != oci.BaseSpec(["python3", "ca-certificates"], uid=10002).key()
    cmd = oci.BaseSpec(["python3"]).command("/tmp/x.tar")
    assert cmd[0] == "mmdebstrap" and "--skip=output/dev" in cmd and cmd[-2:] == ["bookworm", "/tmp/x.tar"]


def test_rfc3339():
    assert oci.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert oci.rfc3339(1700000000) == "2023-11-14T22:13:20Z"
