"""The one-liner on GCE, exactly as a user types it, against environment
`gcp-dev` (inventories/gcp-dev) — offline, without Google credentials:

* ``--check`` prints the ordered Compute API plan and exits 0, writing nothing;
* a real run fails at its first step naming the missing credential
  (GOOGLE_APPLICATION_CREDENTIALS / Application Default Credentials), nothing changed;
* a malformed version is refused naming the parameter.

No cloud here, so no ``pulumi up``: the stack outputs come from a file shaped
exactly like what ``pulumi stack output --json --show-secrets -s gcp-dev``
prints — the gcp-dev program itself run under the schema-checking Pulumi mocks
(tests/unit/infra/pulumi_harness.py). Nothing may reach Google: HTTP(S)_PROXY
point at a loopback socket of this test and the test fails if anything
connected to it; HOME is an empty directory (no ADC file), the metadata-server
probe goes to a closed loopback port (GCE_METADATA_HOST/IP).
"""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSION = "1.4.0+34e57f0.b456"

OUTPUTS_PROGRAM = """
import json, sys
sys.path[:0] = [sys.argv[1] + "/infra", sys.argv[1] + "/tests/unit/infra"]
import pulumi
from pulumi_harness import SchemaMocks, run_stack
pulumi.runtime.set_mocks(SchemaMocks(), project="phoenix-infra", stack="gcp-dev", preview=False)
print(json.dumps(run_stack("gcp-dev").outputs))
"""


@pytest.fixture(scope="module")
def outputs():
    """The gcp-dev stack outputs as the contract (infra/phoenix_infra/contract.py) shapes them."""
    proc = subprocess.run([sys.executable, "-c", OUTPUTS_PROGRAM, ROOT], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["platform"] == "gce" and out["gce"]["project"] == "phoenix-deploy-dev", out
    return out


@pytest.fixture
def gcp(tmp_path, outputs):
    """An environment without Google credentials whose only way out is a trap proxy."""
    state, home = tmp_path / "state", tmp_path / "home"
    (state / "stacks").mkdir(parents=True)
    home.mkdir()
    path = state / "stacks" / "gcp-dev.outputs.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(outputs, handle)
    trap = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    proxy = "http://127.0.0.1:%d" % trap.getsockname()[1]
    # google-auth probes the GCE metadata server (169.254.169.254) for credentials and ignores
    # NO_GCE_CHECK: point it at a loopback port that refuses connections (bound, not listening)
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    metadata = "127.0.0.1:%d" % closed.getsockname()[1]
    dropped = ("no_proxy", "http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_")) and k.lower() not in dropped}
    env.update(HOME=str(home), PHOENIX_STATE_DIR=str(state), NO_GCE_CHECK="True", HTTPS_PROXY=proxy,
               HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
               GCE_METADATA_HOST=metadata, GCE_METADATA_IP=metadata, ANSIBLE_FORCE_COLOR="0")

    def play(*args):
        cmd = ["ansible-playbook", "playbooks/deploy.yml", "-e", "artifact=catalog", "-e", "environment=gcp-dev",
               *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)

    play.state = state
    play.outputs_file = path
    yield play
    trap.setblocking(False)
    try:
        conn, peer = trap.accept()
        conn.close()
        pytest.fail("something tried to reach the network through the proxy (from %s)" % (peer,))
    except BlockingIOError:
        pass
    finally:
        trap.close()
        closed.close()


def task_status(out, name):
    """The first status word (ok, changed, skipping, fatal) of the task whose title starts with ``name``."""
    block = out[out.index("TASK [" + name):]
    block = block[block.index("\n") + 1:]
    return block.split(":", 1)[0].strip()


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _dirs, names in os.walk(root) for f in names)


def test_check_prints_the_ordered_api_plan_without_credentials(gcp, outputs):
    before = files(gcp.state)
    proc = gcp("-e", "version=" + VERSION, "--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and outputs["database"]["password"] not in out
    plan = out[out.index("TASK [Plan (check mode)]"):]
    calls = ["instanceTemplates.insert", "regionInstanceGroupManagers.insert", "backendServices.insert",
             "urlMaps.validate", "urlMaps.patch"]
    positions = [plan.index("compute." + c) for c in calls]
    assert positions == sorted(positions), plan
    # the image is the self-link of the version's bake in the stack's project
    assert "planned: would deploy " + VERSION in out
    assert "not observed (no Google credentials" in out and "GOOGLE_APPLICATION_CREDENTIALS" in out
    # nothing local was baked or checked, nothing written
    for task in ("Is the version baked?", "Infrastructure of gcp-dev", "Bake catalog"):
        assert task_status(out, task) == "skipping", out
    assert files(gcp.state) == before == ["stacks/gcp-dev.outputs.json"]


def test_real_run_without_credentials_fails_naming_them_and_changes_nothing(gcp, outputs):
    proc = gcp("-e", "version=" + VERSION)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out and outputs["database"]["password"] not in out
    assert "GOOGLE_APPLICATION_CREDENTIALS" in out and "Application Default Credentials" in out
    assert "changed=0" in out
    assert files(gcp.state) == ["stacks/gcp-dev.outputs.json"]


@pytest.mark.parametrize("version", ["latest", "1.4", "v1.4.0"])
def test_malformed_version_is_refused_naming_it(gcp, version):
    proc = gcp("-e", "version=" + version, "--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "version=%s: give -e version=MAJOR.MINOR.PATCH" % version in out, out
    assert "Traceback" not in out
    assert files(gcp.state) == ["stacks/gcp-dev.outputs.json"]


def test_missing_or_open_outputs_file_is_refused_naming_it(gcp):
    os.chmod(gcp.outputs_file, 0o644)
    proc = gcp("-e", "version=" + VERSION, "--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "infra_file:" in out and "chmod 0600" in out, out
    os.unlink(gcp.outputs_file)
    proc = gcp("-e", "version=" + VERSION, "--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "infra_file:" in out and "pulumi stack output --json --show-secrets" in out, out
    assert "Traceback" not in out
