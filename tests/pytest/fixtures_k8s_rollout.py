"""Fixtures for the Kubernetes driver tests: one real ``k8s-local`` cluster
per test module (``k8s_rollout_stack``), the hello image pushed by digest into
the stack's dev registry, a crash-looping image, and a
``KubernetesPlatform`` on the deployer's credentials.

Run these modules under ``flock /tmp/phoenix-k8s.lock`` (one cluster at a time
on this machine).  Traffic goes only to the stack's loopback address and to pod
IPs on the stack's own bridge."""
import os
import pathlib
import subprocess
import time
import urllib.parse

import pytest

from fixtures_k8s_local import TempK8sStack, build_hello_image, push

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import KubernetesPlatform

CRASH_C = r"""
#include <stdio.h>
int main(void) { fprintf(stderr, "phoenix crash image: exiting with 3\n"); return 3; }
"""


def build_crash_image(work):
    """A static binary that exits 3 at once (a crash loop under a Deployment): ``<work>/oci:v1``."""
    work = pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "crash.c").write_text(CRASH_C)

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    run("gcc", "-static", "-Os", "-s", "-o", str(work / "crash"), str(work / "crash.c"))
    layout, bundle = f"{work}/oci", f"{work}/bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v1")
    run("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    subprocess.run(["cp", str(work / "crash"), f"{bundle}/rootfs/crash"], check=True)
    run("umoci", "repack", "--image", f"{layout}:v1", bundle)
    run("umoci", "config", "--image", f"{layout}:v1", "--config.entrypoint", "/crash",
        "--config.user", "65534:65534")
    return f"oci:{layout}:v1"


def admin_client(stack):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(stack.state_dir / "pki" / "admin.kubeconfig"),
                            client_configuration=cfg)
    return client.ApiClient(cfg)


#: the one cluster of the consecutive test modules that use ``k8s_rollout_stack``
#: (``conftest.pytest_collection_modifyitems`` keeps their tests together)
_SHARED = {}


def _start_cluster():
    stack = TempK8sStack()
    try:
        t0 = time.monotonic()
        stack.up()
        stack.infra = stack.outputs()
        print("\nk8s-local cluster up in %.1f s" % (time.monotonic() - t0))
        dev = stack.infra["registries"]["dev"]
        stack.images = {
            "hello": push(build_hello_image(stack.tmp / "img-hello"), dev, "phoenix-it/hello"),
            "crash": push(build_crash_image(stack.tmp / "img-crash"), dev, "phoenix-it/crash"),
        }
    except BaseException:
        stack.cleanup()
        raise
    return stack


@pytest.fixture(scope="module")
def k8s_rollout_stack():
    """A real k8s-local cluster with the hello image and a crash image in its
    dev registry (``stack.images``) and the outputs (``stack.infra``).  The
    modules that use it run one after the other and share it (a cluster
    costs about 30 s to make and remove); it is removed after the last test
    that needs it (``pytest_runtest_teardown`` below), before any other
    module can start a cluster of its own."""
    if os.geteuid() != 0:
        pytest.fail("the kubernetes driver tests need root (kubelet and containerd run as root)")
    if "stack" not in _SHARED:
        _SHARED["stack"] = _start_cluster()
    yield _SHARED["stack"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test's own teardown (its module's fixtures included): remove the
    shared cluster when the next test does not use it."""
    yield
    if "stack" in _SHARED and (nextitem is None or "k8s_rollout_stack" not in nextitem.fixturenames):
        _SHARED.pop("stack").cleanup()


def k8s_platform(stack, **kw):
    kw.setdefault("drain_timeout", 1)
    kw.setdefault("prestop_seconds", 1)
    kw.setdefault("verify_timeout", 30)
    return KubernetesPlatform(stack.infra, **kw)


def gateway_url(infra, artifact="catalog"):
    """``http://<address>:<port>/`` of the gateway listener of ``artifact`` (loopback)."""
    gateway = (infra.get("kubernetes") or {}).get("gateway") or {}
    url = (gateway.get("url") or {}).get(artifact)
    if not url:
        pytest.fail("the stack exports no gateway url for %s (kubernetes.gateway: %r)" % (artifact, gateway))
    assert urllib.parse.urlparse(url).hostname.startswith("127."), url
    return url


def served_environment(infra, artifact="catalog"):
    """The environment whose route ``<artifact>-<environment>`` the stack's gateway serves."""
    route = ((infra["kubernetes"].get("gateway") or {}).get("routes") or {}).get(artifact)
    if not route or not route.startswith(artifact + "-"):
        pytest.fail("the stack exports no gateway route for %s: %r" % (artifact, infra["kubernetes"].get("gateway")))
    return route[len(artifact) + 1:]
