"""Fixtures for the registry tests: real Debian ``docker-registry`` (distribution 2.8)
processes on free loopback ports, each with its own config and storage dir, and tiny
OCI images made with ``umoci`` (no bake needed). A missing tool fails the test loudly.
Used by ``bench/registry.py`` too (``RegistryProcess``, ``make_oci_image``)."""
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

TOOLS = ("docker-registry", "skopeo", "umoci")


def require_tools(*names):
    missing = [n for n in (names or TOOLS) if shutil.which(n) is None]
    if missing:
        pytest.fail("missing %s: run make setup (Debian packages %s)" % (", ".join(missing), " ".join(missing)))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryProcess:
    """One ``docker-registry serve`` in its own dir; ``url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self, base, delete=True, port=None):
        self.base = pathlib.Path(base)
        self.data = self.base / "data"
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.delete = delete
        self.port = port or _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config = self.base / "config.yml"
        self.config.write_text(json.dumps({  # YAML is a superset of JSON
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.data)}, "delete": {"enabled": delete},
                        "cache": {"blobdescriptor": ""}},
            "http": {"addr": "127.0.0.1:%d" % self.port},
        }))
        self.proc = None
        self.start()

    def start(self):
        log = open(self.base / "registry.log", "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited %s: %s" % (self.proc.returncode,
                                                                      (self.base / "registry.log").read_text()[-2000:]))
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer on %s within 15 s" % self.url)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def blob_path(self, digest):
        algo, hexd = digest.split(":", 1)
        return self.data / "docker" / "registry" / "v2" / "blobs" / algo / hexd[:2] / hexd / "data"


def make_oci_image(layout, tag, files, entrypoint=("/bin/app",)):
    """An OCI layout at ``layout`` with one image ``tag`` whose layer holds ``files`` ({path: text or bytes}).
    Returns the manifest digest."""
    layout = pathlib.Path(layout)

    def run(*cmd):
        return subprocess.run(cmd, check=True, capture_output=True, text=True)
    if not (layout / "index.json").exists():
        run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", "%s:%s" % (layout, tag))
    with tempfile.TemporaryDirectory(prefix="phx-oci-") as tmp:
        for path, text in sorted(files.items()):
            src = pathlib.Path(tmp) / path.strip("/").replace("/", "_")
            if isinstance(text, bytes):
                src.write_bytes(text)
            else:
                src.write_text(text)
            run("umoci", "insert", "--image", "%s:%s" % (layout, tag), str(src), path)
    run("umoci", "config", "--image", "%s:%s" % (layout, tag), "--config.entrypoint", entrypoint[0])
    for m in json.loads((layout / "index.json").read_text())["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"]
    raise RuntimeError("umoci left no image %s in %s" % (tag, layout))


@pytest.fixture
def registry_factory(tmp_path):
    require_tools()
    started = []

    def _start(name="reg", delete=True):
        reg = RegistryProcess(tmp_path / name, delete=delete)
        started.append(reg)
        return reg
    yield _start
    for reg in started:
        reg.stop()


@pytest.fixture
def dev_registry(registry_factory):
    return registry_factory("dev", delete=True)


@pytest.fixture
def prod_registry(registry_factory):
    return registry_factory("prod", delete=False)


@pytest.fixture
def oci_image(tmp_path):
    """factory(tag, text) -> (layout dir, digest) of a one-file image."""
    require_tools("umoci")

    def _make(tag="1.0.0", text="v1", layout=None):
        layout = layout or tmp_path / ("layout-%s" % tag)
        digest = make_oci_image(layout, tag, {"/app/VERSION": text + "\n"})
        return str(layout), digest
    return _make


def client(reg, **kw):
    from ansible_collections.phoenix.deploy.plugins.module_utils import registry
    return registry.Registry(reg.url, param=kw.pop("param", "registry"), **kw)


def storage(reg):
    """(path, size) of every file in a registry's storage: what 'nothing changed' compares."""
    out = []
    for top, dummy, files in os.walk(reg.data):
        out.extend((os.path.relpath(os.path.join(top, n), reg.data), os.path.getsize(os.path.join(top, n)))
                   for n in files)
    return sorted(out)


def tamper_first_layer(reg, digest, repository="catalog"):
    """Flip one byte of the first layer blob of ``repository@digest`` in ``reg``'s storage."""
    manifest = json.loads(client(reg).manifest(repository, digest=digest)[0])
    blob = reg.blob_path(manifest["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[-5] ^= 1
    blob.write_bytes(bytes(data))
