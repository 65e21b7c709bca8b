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
