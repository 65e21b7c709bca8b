"""The catalog service binds without a DNS lookup: HTTPServer's server_bind
asks the resolver for the address's name (socket.getfqdn), and 100
instances started at once sent 100 lookups at once; a resolver that drops
part of such a burst kept half of them from listening for 5 s."""
import pathlib
import socket
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "examples" / "catalog"))

import catalog  # noqa: E402  pylint: disable=wrong-import-position


class _App:
    inflight_cv = None
    inflight = 0


def test_the_server_binds_without_asking_the_resolver(monkeypatch):
    def no_dns(*_args):
        raise AssertionError("socket.getfqdn called while binding")
    monkeypatch.setattr(socket, "getfqdn", no_dns)
    server = catalog.Server(_App(), ("127.0.0.1", 0), catalog.BaseHTTPRequestHandler)
    try:
        host, port = server.server_address[:2]
        assert (server.server_name, server.server_port) == (host, port) and port > 0
    finally:
        server.server_close()
