"""The driver conformance suite (tests/unit/plugins/module_utils/platform_contract.py)
against the Kubernetes driver on a real k8s-local cluster (module-scoped), with
traffic through the stack's gateway (HAProxy fed from EndpointSlices).

Run under ``flock /tmp/phoenix-k8s.lock`` (one cluster at a time)."""
import contextlib
import http.client
import pathlib
import sys
import urllib.parse

import pytest

from fixtures_k8s_rollout import gateway_url, k8s_platform, served_environment

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Clock
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import Kube

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils"))
from platform_contract import PlatformContract, Subject  # noqa: E402  pylint: disable=wrong-import-position


class _Flaky:
    """The driver's API client whose next ``count`` calls go to a broken one."""

    def __init__(self, real, broken, count):
        self.real, self.broken, self.left = real, broken, count

    def call(self, what, fn, *args, **kwargs):
        if self.left > 0:
            self.left -= 1
            api = getattr(self.broken, fn.__self__.__class__.__name__ == "AppsV1Api" and "apps" or
                          fn.__self__.__class__.__name__ == "CoreV1Api" and "core" or "custom")
            return self.broken.call(what, getattr(api, fn.__name__), *args, **kwargs)
        return self.real.call(what, fn, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


class K8sSubject(Subject):
    timeout = 120.0
    platform_owned_deletion = True  # the garbage collector removes the pods after preStop + grace

    def __init__(self, platform, environment, image, infra):
        super().__init__(platform, Clock(), "catalog", environment, image)
        self.infra = infra

    def send(self, n):
        parsed = urllib.parse.urlparse(gateway_url(self.infra))
        for _request in range(n):
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
            try:
                conn.request("GET", "/healthz", headers={"Host": "catalog"})
                assert conn.getresponse().status == 200
            finally:
                conn.close()

    @contextlib.contextmanager
    def fault(self, op, transient, count=1):
        assert op == "health"  # a health poll reads the Deployment and its pods
        kube = dict(self.infra["kubernetes"])
        if transient:  # nothing listens on port 1 of loopback: connection refused
            kube["api_server"] = "https://127.0.0.1:1"
        else:  # a token the API server does not know: 401
            kube["token"] = "phoenix-invalid-token"
        driver = self.platform.driver
        real = driver.kube
        driver.kube = _Flaky(real, Kube(kube), count)
        try:
            yield
        finally:
            driver.kube = real


@pytest.fixture
def subject(k8s_rollout_stack):
    platform = k8s_platform(k8s_rollout_stack)
    environment = served_environment(k8s_rollout_stack.infra)  # the one the gateway serves
    subj = K8sSubject(platform, environment, k8s_rollout_stack.images["hello"], k8s_rollout_stack.infra)
    yield subj
    subj.cleanup()


class TestKubernetesContract(PlatformContract):
    pass
