"""The local driver's readiness and waits on a real supervisord + HAProxy
stack (the rollout stack): the servers it adds check like the backend's
default-server, an instance is ready on its first passed check, and the
drain wait runs on the injected clock."""
import pathlib
import socket
import sys
import time
import urllib.parse
import urllib.request

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import images, targets
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import READY
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalPlatform

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "plugins" / "module_utils"))
from platform_double import FakeClock  # noqa: E402  pylint: disable=wrong-import-position


TINY = r'''"""A tiny HTTP service: /healthz answers 200 as soon as it listens; /hits
says how many health checks it answered."""
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

HITS = [0]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/healthz":
            HITS[0] += 1
        body = ("%d" % HITS[0]).encode() if self.path == "/hits" else b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer((os.environ.get("BIND", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory):
    """A stdlib service baked as artifact catalog (the rollout stack's backend):
    it starts in a fraction of supervisord's 1s ``startsecs``."""
    tmp = tmp_path_factory.mktemp("tiny")
    (tmp / "src").mkdir()
    (tmp / "src" / "catalog.py").write_text(TINY)
    version = "9.0.0-tiny+5eed0f1.b1"
    images.bake(images.BakeRequest("catalog", version, str(tmp / "src"), store=str(tmp / "store"),
                                   project_dir=str(ROOT)))
    image = targets.resolve_image("catalog", version, None, str(tmp / "store"))
    return {"store": str(tmp / "store"), "v1": image}


def platform_of(stack, images, **kw):
    return LocalPlatform(stack.infra, image_store=images["store"], **kw)


def wait(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("%s not within %ss" % (what, seconds))


def test_servers_added_at_run_time_check_like_the_backend(rollout_stack, rollout_images):
    """``add server`` takes nothing from ``default-server`` (HAProxy would check
    every 2s, rise 2, fall 3): the driver passes the stack's settings."""
    assert rollout_stack.infra["load_balancer"]["check_inter"] == "500ms"
    platform = platform_of(rollout_stack, rollout_images)
    group = platform.groups.create_group("catalog", "rd1", "v001", rollout_images["v1"]["ref"], 2, {})
    try:
        rows = platform.driver._stat("be_catalog")  # pylint: disable=protected-access
        mine = [r for n, r in rows.items() if n.startswith(group.name + ".")]
        assert len(mine) == 2
        assert {(r["check_rise"], r["check_fall"]) for r in mine} == {("1", "2")}, mine

        def all_ready():
            health = platform.groups.health(group.name)
            return health if health.ready == 2 else None
        health = wait(all_ready, 60, "2 ready instances")
        assert [i.state for i in health.instances] == [READY, READY]
    finally:
        platform.groups.destroy(group.name)


def test_ready_on_the_first_passed_check_before_supervisord_says_running(rollout_stack, tiny_image):
    """supervisord says RUNNING only ``startsecs`` (1s) after the start, and
    only on its next loop; the driver counts an instance ready as soon as
    HAProxy's check passed.  (Tried up to 3 times: on a very busy machine the
    first check may come after the 1s.)"""
    platform = platform_of(rollout_stack, tiny_image)
    seen = []
    for attempt in range(3):
        group = platform.groups.create_group("catalog", "rd2", "v%03d" % (attempt + 1),
                                             tiny_image["v1"]["ref"], 1, {})
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                health = platform.groups.health(group.name)
                if health.ready:
                    seen.append(health.instances[0].detail)
                    break
                time.sleep(0.02)
        finally:
            platform.groups.destroy(group.name)
        if seen and seen[-1] == "up (starting)":
            break
    assert "up (starting)" in seen, seen


def test_a_server_that_is_up_is_checked_every_check_up_inter(rollout_stack, tiny_image):
    """100 idle Python instances checked every 200ms took half of a 2-core
    machine.  A new server is checked every ``check_inter`` (500ms) until it
    is up; once it passed its checks, every ``check_up_inter`` (2s): at most
    3 checks in 4 seconds (8 at 500ms)."""
    assert rollout_stack.infra["load_balancer"]["check_up_inter"] == "2s"
    platform = platform_of(rollout_stack, tiny_image)
    group = platform.groups.create_group("catalog", "rd4", "v001", tiny_image["v1"]["ref"], 1, {})
    try:
        wait(lambda: platform.groups.health(group.name).ready == 1, 60, "a ready instance")
        meta = platform.driver._members(group.name)[0]  # pylint: disable=protected-access

        def hits():
            with urllib.request.urlopen("http://%s:%d/hits" % (meta["address"], meta["port"]), timeout=10) as rsp:
                return int(rsp.read())
        time.sleep(1.0)  # the check after the first passed one: fully up
        before, start = hits(), time.monotonic()
        time.sleep(4.0)
        checks, seconds = hits() - before, time.monotonic() - start
        print("checks of an up server: %d in %.1fs" % (checks, seconds))
        assert 1 <= checks <= 3, (checks, seconds)
    finally:
        platform.groups.destroy(group.name)


def test_the_drain_wait_runs_on_the_injected_clock(rollout_stack, rollout_images):
    """A session that never ends keeps the drain waiting until drain_timeout
    (30s here) on the driver's clock: with a fake clock the call returns at
    once and the fake time moved by the timeout."""
    clock = FakeClock()
    platform = platform_of(rollout_stack, rollout_images, drain_timeout=30, clock=clock)
    group = platform.groups.create_group("catalog", "rd3", "v001", rollout_images["v1"]["ref"], 1, {})
    url = urllib.parse.urlparse(rollout_stack.infra["load_balancer"]["url"])
    held = None
    try:
        wait(lambda: platform.groups.health(group.name).ready == 1, 60, "a ready instance")
        platform.traffic.set_weights({group.name: 100})
        held = socket.create_connection((url.hostname, url.port), timeout=10)
        # a request whose body never comes: HAProxy holds a session on the server
        held.sendall(b"POST /items HTTP/1.1\r\nHost: catalog\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        server = group.name + ".001"
        wait(lambda: int(platform.driver._stat("be_catalog")[server]["scur"] or 0) >= 1,  # pylint: disable=protected-access
             30, "a session on %s" % server)
        start, fake_start = time.monotonic(), clock.now()
        platform.traffic.drain_and_detach(group.name)
        real = time.monotonic() - start
        assert clock.now() - fake_start >= 30
        assert real < 15, real
        assert server not in platform.driver._servers("be_catalog")  # pylint: disable=protected-access
    finally:
        if held is not None:
            held.close()
        platform_of(rollout_stack, rollout_images).groups.destroy(group.name)
