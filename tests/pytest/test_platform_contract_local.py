"""The driver conformance suite (tests/unit/plugins/module_utils/platform_contract.py)
against the local driver on a real supervisord + HAProxy stack."""
import contextlib
import http.client
import os
import pathlib
import socket
import sys

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Clock
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.haproxy import RuntimeAPI

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils"))
from platform_contract import PlatformContract, Subject  # noqa: E402  pylint: disable=wrong-import-position


class _BrokenAPI(RuntimeAPI):
    """The driver's HAProxy client, whose next ``count`` requests go to a
    socket that refuses connections (transient) or does not exist (permanent)."""

    def __init__(self, real, path, count):
        super().__init__(path, real.timeout)
        self.real, self.left = real, count

    def _send(self, line):
        if self.left > 0:
            self.left -= 1
            return RuntimeAPI._send(self, line)
        return self.real._send(line)  # pylint: disable=protected-access


class LocalSubject(Subject):
    timeout = 60.0
    #: destroy marks the group deleting and a finisher process removes it (driver docstring)
    platform_owned_deletion = True

    def __init__(self, platform, environment, image, url, tmp):
        super().__init__(platform, Clock(), "catalog", environment, image)
        self.url, self.tmp = url, tmp

    def send(self, n):
        host, port = self.url.split("//")[1].rstrip("/").split(":")
        for _request in range(n):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", "/healthz", headers={"Host": "catalog"})
                assert conn.getresponse().status == 200
            finally:
                conn.close()

    @contextlib.contextmanager
    def fault(self, op, transient, count=1):
        assert op == "health"  # a health poll reads HAProxy's stats
        path = str(self.tmp / ("refused.sock" if transient else "missing.sock"))
        if transient and not os.path.exists(path):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(path)
            server.close()  # the file stays; connecting is refused
        driver = self.platform.driver
        real = driver.api
        driver.api = _BrokenAPI(real, path, count)
        try:
            yield
        finally:
            driver.api = real


@pytest.fixture
def subject(rollout_stack, rollout_images, tmp_path, request):
    platform = LocalPlatform(rollout_stack.infra, image_store=rollout_images["store"],
                             drain_timeout=2)
    environment = "k%d" % (abs(hash(request.node.name)) % 10 ** 6)
    subj = LocalSubject(platform, environment, rollout_images["v1"]["ref"],
                        rollout_stack.infra["load_balancer"]["url"], tmp_path)
    yield subj
    subj.cleanup()


class TestLocalContract(PlatformContract):
    pass
