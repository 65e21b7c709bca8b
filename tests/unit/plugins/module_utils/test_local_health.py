"""How the local driver judges one instance from supervisord's process table
row and HAProxy's stats / servers-state rows (as those services answer), and
the check settings of the servers it adds.  No service is contacted: the
driver connects lazily, and these are its pure decisions."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    FAILED, READY, STARTING, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import LocalDriver
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.haproxy import (
    check_options, parse_stat)


def infra(tmp_path, **balancer):
    lb = {"backends": {"app": "be_app"}, "runtime_api": str(tmp_path / "haproxy.sock")}
    lb.update(balancer)
    return {"platform": "local", "state_dir": str(tmp_path),
            "instance_manager": {"include_dir": str(tmp_path / "conf.d"),
                                 "endpoint": "unix://%s" % (tmp_path / "supervisor.sock")},
            "load_balancer": lb,
            "network": {"address": "127.0.0.1", "port_range": [20000, 20100]}}


@pytest.fixture
def driver(tmp_path):
    return LocalDriver(infra(tmp_path, check_inter="200ms"))


META = {"instance": "app-ci-v001.001", "address": "127.0.0.1", "port": 20000}
UP = ({"status": "UP", "check_status": "L7OK"}, {"admin": 0, "weight": 0})
DOWN = ({"status": "DOWN", "check_status": "L4CON"}, {"admin": 0, "weight": 0})


def proc(state, pid=4242, stop=0):
    """A row of supervisord's getAllProcessInfo (the fields the driver reads)."""
    return {"name": META["instance"], "statename": state, "pid": pid, "stop": stop,
            "spawnerr": "", "description": "", "stdout_logfile": "/tmp/x.log"}


def judge(driver, row, checks):
    return driver._instance_health(META, row, *checks)  # pylint: disable=protected-access


def test_ready_on_the_first_passed_check_while_supervisord_still_says_starting(driver):
    assert judge(driver, proc("STARTING"), DOWN).state == STARTING
    health = judge(driver, proc("STARTING"), UP)
    assert health.state == READY, health
    assert judge(driver, proc("RUNNING"), UP).state == READY


def test_a_restarted_process_waits_for_running(driver):
    """After an exit HAProxy's last check may still be of the dead process."""
    assert judge(driver, proc("STARTING", stop=1795878746), UP).state == STARTING
    assert judge(driver, proc("RUNNING", stop=1795878746), UP).state == READY


@pytest.mark.parametrize("later", [proc("BACKOFF", pid=0, stop=1), proc("EXITED", pid=0, stop=1),
                                   proc("STARTING", pid=4343, stop=1)])
def test_dying_after_the_first_passed_check_before_running_is_a_crash(driver, later):
    assert judge(driver, proc("STARTING"), UP).state == READY
    health = judge(driver, later, UP)  # HAProxy has not noticed yet
    assert health.state == FAILED and health.restarts == 1, health
    assert "log /tmp/x.log" in health.detail


def test_a_stop_on_request_or_a_program_made_again_is_no_crash(driver):
    """Another controller may stop the group, or destroy it and make one of the same name."""
    assert judge(driver, proc("STARTING"), UP).state == READY
    assert judge(driver, proc("STOPPED", pid=0, stop=1), DOWN).state == STARTING
    assert judge(driver, proc("STARTING"), UP).state == READY
    assert judge(driver, proc("STARTING", pid=4343), UP).state == READY  # made again: never stopped
    assert judge(driver, proc("STARTING", pid=4444, stop=1), UP).state == FAILED


def test_once_running_an_exit_heals_as_before(driver):
    assert judge(driver, proc("STARTING"), UP).state == READY
    assert judge(driver, proc("RUNNING"), UP).state == READY
    assert judge(driver, proc("EXITED", pid=0, stop=1), DOWN).state == STARTING
    assert judge(driver, proc("STARTING", pid=4343, stop=1), UP).state == STARTING


def test_crash_loops_fail(driver):
    for state in ("BACKOFF", "FATAL"):
        assert judge(driver, proc(state, pid=0), DOWN).state == FAILED


def test_draining_is_not_ready(driver):
    assert judge(driver, proc("RUNNING"), (UP[0], {"admin": 0x08, "weight": 0})).state == "draining"


def test_added_servers_check_like_the_backends_default_server(tmp_path):
    """``add server`` takes nothing from ``default-server``: the driver passes the
    backend's settings itself (without them HAProxy checks every 2s, rise 2, fall 3)."""
    words = LocalDriver(infra(tmp_path, check_inter="200ms")).check_words
    assert words == check_options("200ms") == (
        "check", "inter", "200ms", "fastinter", "200ms", "downinter", "200ms",
        "observe", "layer4", "error-limit", "1", "on-error", "fastinter", "rise", "1", "fall", "2")
    assert LocalDriver(infra(tmp_path)).check_words == (
        "check", "observe", "layer4", "error-limit", "1", "on-error", "fastinter", "rise", "1", "fall", "2")


def test_servers_that_are_up_are_checked_rarely_and_coming_up_fast(tmp_path):
    """100 idle Python instances checked every 200ms took half of a 2-core
    machine: a server that passed its last checks is checked every
    ``check_up_inter``, one that is new, down or changing every
    ``check_inter``; a failed connection of live traffic brings the next
    check forward."""
    words = LocalDriver(infra(tmp_path, check_inter="200ms", check_up_inter="2s")).check_words
    assert words == check_options("200ms", "2s")
    text = " ".join(words)
    assert "inter 2s fastinter 200ms downinter 200ms" in text
    assert "observe layer4 error-limit 1 on-error fastinter" in text
    with pytest.raises(PlatformError, match="load_balancer.check_up_inter"):
        LocalDriver(infra(tmp_path, check_inter="200ms", check_up_inter="2 s"))


@pytest.mark.parametrize("bad", ["fast", "200 ms", "1s; del server x/y", ""])
def test_a_bad_check_interval_names_the_output(tmp_path, bad):
    with pytest.raises(PlatformError, match="load_balancer.check_inter"):
        LocalDriver(infra(tmp_path, check_inter=bad))


@pytest.mark.parametrize("check_status, state", [("L7OK", READY), ("* L7OK", READY), ("* L4CON", STARTING)])
def test_an_up_server_is_ready_while_its_next_check_runs(driver, check_status, state):
    """HAProxy's ``show stat`` prefixes ``check_status`` with ``* `` while a
    check is in progress (seen in a run as ``UP (check * L7OK)``): the status
    is still the last finished check's. An instance read at that moment
    counted as starting, and a whole group as not ready."""
    text = ("# pxname,svname,status,check_status,\n"
            "be_app,app-ci-v001.001,UP,%s,\n" % check_status)
    row = parse_stat(text, "be_app")["app-ci-v001.001"]
    assert row["check_status"] == check_status.replace("* ", "")
    assert row.get("check_running") == ("1" if check_status.startswith("* ") else None)
    assert judge(driver, proc("RUNNING"), (row, {"admin": 0, "weight": 0})).state == state
