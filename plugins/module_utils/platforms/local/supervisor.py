# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local driver's supervisord client (XML-RPC over its unix socket)."""

from __future__ import annotations

import http.client
import threading
import xmlrpc.client

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError

try:
    from supervisor.xmlrpc import SupervisorTransport
    HAS_SUPERVISOR = True
    SUPERVISOR_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - guarded for ansible-test sanity
    SupervisorTransport = object
    HAS_SUPERVISOR = False
    SUPERVISOR_IMPORT_ERROR = _exc

#: supervisord states
RUNNING, STARTING, BACKOFF, STOPPING = "RUNNING", "STARTING", "BACKOFF", "STOPPING"
STOPPED = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")
BAD_NAME = 10  #: supervisord's fault code for an unknown process name
NOT_RUNNING = 70  #: ... for stopping a process that is not running


class _Transport(SupervisorTransport):
    """supervisord's transport keeps its connection alive; after supervisord
    was restarted (the infra restore after a crash) that connection is dead.
    Retry once on a new one, as ``xmlrpc.client.Transport`` does."""

    def request(self, host, handler, request_body, verbose=0):
        try:
            return SupervisorTransport.request(self, host, handler, request_body, verbose)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                http.client.RemoteDisconnected):
            self.close()
            return SupervisorTransport.request(self, host, handler, request_body, verbose)


class Supervisor:
    """supervisord at ``endpoint`` (``unix://...``).  One XML-RPC connection
    per thread: the report sampler runs beside the engine, and an
    http.client connection serves one request at a time.  A refused or
    dropped connection is a transient ``PlatformError``."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self._local = threading.local()

    @property
    def rpc(self):
        if getattr(self._local, "rpc", None) is None:
            transport = _Transport(None, None, self.endpoint)
            self._local.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._local.rpc

    def call(self, what, fn, *args):
        try:
            return fn(*args)
        except xmlrpc.client.Fault as exc:
            raise PlatformError("supervisord %s: %s" % (what, exc.faultString))
        except (OSError, xmlrpc.client.ProtocolError) as exc:
            self._local.rpc = None
            raise PlatformError("supervisord at %s unreachable (%s): %s"
                                % (self.endpoint, what, exc),
                                transient=isinstance(exc, ConnectionError))

    def processes(self) -> dict:
        """The process table by program name."""
        return {p["name"]: p for p in self.call("getAllProcessInfo",
                                                self.rpc.supervisor.getAllProcessInfo)}

    def info(self, names) -> dict:
        """The process table rows of ``names`` (one multicall; a name
        supervisord does not know is left out).  Cheaper than ``processes``
        when the table holds other groups too."""
        out = {}
        for name, answer in zip(names, self.multicall("getProcessInfo", "supervisor.getProcessInfo",
                                                      [[n] for n in names])):
            if isinstance(answer, dict) and "faultCode" in answer:
                if answer["faultCode"] == BAD_NAME:
                    continue
                raise PlatformError("supervisord getProcessInfo %s: %s" % (name, answer.get("faultString")))
            out[name] = answer
        return out

    def multicall(self, what, method, params_list) -> list:
        calls = [{"methodName": method, "params": list(params)} for params in params_list]
        if not calls:
            return []
        return self.call(what, self.rpc.system.multicall, calls)

    def reload_config(self):
        return self.call("reloadConfig", self.rpc.supervisor.reloadConfig)
