"""The local HAProxy provider's config (retries) and its server record reader
(what a restarted HAProxy gets back), without running HAProxy."""
import json

import pytest

from phoenix_infra.local import procs
from phoenix_infra.local.providers import HAProxyProvider

PROPS = {"dir": "/x", "address": "127.0.0.1", "frontend_port": 25000, "stats_port": 25001,
         "backends": {"catalog": "be_catalog"}, "check_inter": "500ms"}


def test_config_retries_failed_safe_requests_on_another_server():
    text = HAProxyProvider.config(PROPS, "/x/haproxy.sock")
    assert "    option redispatch 1\n" in text
    assert "    retry-on conn-failure empty-response response-timeout 500 502 503 504\n" in text
    assert "    http-request disable-l7-retry if !METH_GET !METH_HEAD !METH_OPTIONS\n" in text


def test_config_checks_servers_that_are_up_every_check_up_inter():
    """The default-server line (and so every server the restore adds again)
    checks like the driver's ``add server``: up servers rarely, others fast."""
    text = HAProxyProvider.config(dict(PROPS, check_up_inter="2s"), "/x/haproxy.sock")
    assert ("    default-server check inter 2s fastinter 500ms downinter 500ms observe layer4 "
            "error-limit 1 on-error fastinter rise 1 fall 2\n") in text
    assert HAProxyProvider.server_options(dict(PROPS, check_up_inter="2s")) in text
    # a stack made before check_up_inter: every state every check_inter
    assert "default-server check inter 500ms fastinter 500ms" in HAProxyProvider.config(PROPS, "/x/s")


def conf(tmp_path, name, port, address="127.0.0.1"):
    path = tmp_path / (name + ".conf")
    meta = {"instance": name, "address": address, "port": port, "group": name.split(".")[0]}
    path.write_text("; comment\n; phoenix: %s\n[program:%s]\n" % (json.dumps(meta), name))
    return str(path)


def test_recorded_servers_keep_only_servers_whose_instance_conf_still_matches(tmp_path):
    record = {"version": 1, "backends": {"be_catalog": {
        "g-v1.001": {"address": "127.0.0.1", "port": 25020, "weight": 256, "admin": 0,
                     "conf": conf(tmp_path, "g-v1.001", 25020)},
        "g-v1.002": {"address": "127.0.0.1", "port": 25021, "weight": 64, "admin": 8,
                     "conf": conf(tmp_path, "g-v1.002", 25021)},
        # its port is now used by another instance: never restored
        "g-v0.001": {"address": "127.0.0.1", "port": 25022, "weight": 256, "admin": 0,
                     "conf": conf(tmp_path, "g-v2.001", 25022)},
        # its conf is gone (instance removed)
        "g-v0.002": {"address": "127.0.0.1", "port": 25023, "weight": 256, "admin": 0,
                     "conf": str(tmp_path / "gone.conf")},
    }}}
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(record))
    assert HAProxyProvider.recorded_servers(str(path)) == [
        ("be_catalog", "g-v1.001", "127.0.0.1", 25020, 256, 0),
        ("be_catalog", "g-v1.002", "127.0.0.1", 25021, 64, 8)]
    assert HAProxyProvider.recorded_servers(str(tmp_path / "missing.json")) == []


@pytest.mark.parametrize("text", ["{not json", "[]", '{"backends": {"be_catalog": {"s": {"port": 1}}}}'])
def test_unreadable_server_record_is_a_clear_error(tmp_path, text):
    path = tmp_path / "servers.json"
    path.write_text(text)
    with pytest.raises(procs.InfraError, match="server record .*servers.json"):
        HAProxyProvider.recorded_servers(str(path))


def test_the_infra_uses_the_local_drivers_haproxy_client_and_host_helpers():
    """One HAProxy runtime-API client and one set of file/port/health helpers:
    the infra loads the collection's modules by path instead of a copy."""
    import os
    driver = os.path.join("plugins", "module_utils", "platforms", "local")
    assert os.path.realpath(procs.haproxy.__file__).endswith(os.path.join(driver, "haproxy.py"))
    assert os.path.realpath(procs.host.__file__).endswith(os.path.join(driver, "host.py"))
    assert procs.haproxy_runtime is procs.haproxy.runtime
    assert procs.write_private is procs.host.write_private


def test_runtime_servers_parse_show_servers_state_with_the_drivers_parser():
    text = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
            "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
            "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
            "srv_fqdn srv_port srvrecord\n"
            "3 be_catalog 1 g-v1.001 127.0.0.1 2 8 256 256 10 6 3 4 6 0 0 0 - 25020 -\n")

    class Fake(HAProxyProvider):
        @staticmethod
        def runtime(sock, command):
            assert command == "show servers state be_catalog"
            return text
    assert Fake().runtime_servers("/x/haproxy.sock", ["be_catalog"]) == [
        ("be_catalog", "g-v1.001", "127.0.0.1", 25020, 256, 8)]
