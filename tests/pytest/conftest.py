"""Shared pytest setup for the integration suite (real processes, loopback only).

Fixture modules live beside this file as ``fixtures_<area>.py`` and are loaded
automatically, so each area owns its fixtures without editing this file.

With pytest-xdist (``make test`` runs ``-n 4``) every test file goes to one
worker as a whole (its module-scoped stacks are set up once), and the files
that use FIXED loopback blocks (``FIXED_BLOCK_FILES``) form one unit, so they
never run at the same time.  Stacks of the other files lease a free block
(``fixtures_infra_local.lease_block``), so workers cannot collide."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytest_plugins = sorted(
    f"fixtures_{p.stem[len('fixtures_'):]}" for p in pathlib.Path(__file__).parent.glob("fixtures_*.py")
)


# files whose stacks use fixed loopback blocks and ports (the inventories' and
# the demo's): they must never run concurrently, in one run or across runs
FIXED_BLOCK_FILES = ("test_demo.py", "test_jenkins.py", "test_playbooks.py")
FIXED_BLOCK_UNIT = "fixed loopback blocks"
# files that start a k8s-local cluster: kubelet and CNI use fixed host paths
# (/var/lib/kubelet, /var/lib/cni), so one cluster at a time, on one worker
K8S_CLUSTER_UNIT = "one k8s-local cluster at a time"


def _k8s_cluster_file(name):
    return name.startswith("test_k8s_") or (name.startswith("test_") and "kubernetes" in name)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n N`` (default ``--dist load``): schedule whole files, the
    fixed-block files as one unit; any explicit other ``--dist`` is kept."""
    if config.getvalue("dist") not in ("load", "loadfile"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            name = os.path.basename(path)
            if name in FIXED_BLOCK_FILES:
                return FIXED_BLOCK_UNIT
            return K8S_CLUSTER_UNIT if "unit" not in path.split("/") and _k8s_cluster_file(name) else path

        def _assign_work_unit(self, node):
            if not getattr(self, "_ordered", False):  # the first hand-out: the queue is complete
                self._ordered = True
                units = sorted(self.workqueue.items(), key=_unit_rank)
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return FileScheduling(config, log)


def _unit_rank(unit):
    """The order units (scope, tests) are handed out: the k8s-local
    cluster's files (the longest chain: one cluster at a time, on one
    worker), then the fixed-block files, then the other integration files,
    most tests first, and the short unit-test files last, to fill the
    workers that end early. xdist's own order (most tests first) put
    one-test files that take a minute at the end of the run."""
    scope, tests = unit
    first = {K8S_CLUSTER_UNIT: 0, FIXED_BLOCK_UNIT: 1}.get(scope)
    if first is None:
        first = 3 if "unit" in scope.split("/") else 2
    return (first, -len(tests))


def pytest_collection_modifyitems(session, config, items):
    """The tests that share one k8s-local cluster (fixture ``k8s_rollout_stack``,
    see fixtures_k8s_rollout) run one after the other, where the first of them
    was: the cluster is removed after the last, before another cluster starts."""
    shared = [i for i in items if "k8s_rollout_stack" in getattr(i, "fixturenames", ())]
    if not shared:
        return
    first = items.index(shared[0])
    ids = {id(i) for i in shared}
    rest = [i for i in items if id(i) not in ids]
    items[:] = rest[:first] + shared + rest[first:]


def pytest_configure(config):
    missing = [v for v in ("PULUMI_HOME", "PULUMI_BACKEND_URL", "PHOENIX_STATE_DIR") if v not in os.environ]
    if missing:
        raise pytest.UsageError(
            f"environment not set up ({', '.join(missing)} missing): run the suite with `make test`, "
            "or `source scripts/env.sh` first"
        )


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture
def run():
    """Run a command, return CompletedProcess; fail the test with its output on error."""
    def _run(cmd, check=True, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(cmd, check=False, **kw)
        if check and proc.returncode != 0:
            pytest.fail(f"{cmd!r} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc
    return _run
