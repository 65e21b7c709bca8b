# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tiny client for HAProxy's runtime API (stats socket, ``level admin``).

The PyPI clients were checked first: ``haproxyadmin`` (last release 2021)
predates dynamic servers (no ``add server`` / ``del server``), so this is a
small line-protocol client instead.  Several commands can go over one
connection separated by ``;`` (HAProxy runs them in order), which keeps a
100-server weight change to one round trip.

This module is the one HAProxy runtime-API client and stats parser of the
tree: the local driver, the infra program (``phoenix_infra.local.procs``
loads this file by path, so it imports nothing but the standard library)
and the tests use it.
"""

from __future__ import annotations

import re
import socket

_SAFE = re.compile(r"^[A-Za-z0-9_.:/@-]+$")


def gateway_backend(namespace: str, route: str) -> str:
    """The backend of HTTPRoute ``route`` in ``namespace`` in the local
    cluster's gateway (``phoenix_infra.k8s_local.gateway``)."""
    return "be_%s_%s" % (namespace, route)


def gateway_server(service: str, slot: int) -> str:
    """Gateway server ``<service>.<slot>``: one per endpoint of a backendRef
    Service (HAProxy refuses ``~`` in server names; a Service name, a
    DNS-1035 label, never holds a dot, so the last dot splits the name)."""
    return "%s.%d" % (service, slot)


class RuntimeAPIError(Exception):
    """HAProxy refused a command or the socket is unreachable."""


def runtime(path: str, command: str, timeout: float = 10.0) -> str:
    """One raw command line on the runtime API socket ``path``; its answer.
    ``OSError`` when the socket cannot be reached (callers decide)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(command.encode("ascii") + b"\n")
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_stat(text: str, backend=None) -> dict:
    """``show stat`` CSV -> rows by server name (``backend`` only, without
    its FRONTEND/BACKEND rows, when given; else keyed ``(pxname, svname)``)."""
    header, rows = None, {}
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
        elif line and header:
            row = dict(zip(header, line.split(",")))
            if row.get("check_status", "").startswith("* "):
                # "* L7OK": a check is running now; the status is still the last finished
                # check's (HAProxy prefixes it while one is in progress)
                row["check_status"], row["check_running"] = row["check_status"][2:], "1"
            if backend is None:
                rows[(row.get("pxname"), row.get("svname"))] = row
            elif row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
    if header is None and text.strip():
        raise RuntimeAPIError("show stat %s: %s" % (backend or "", text.strip()))
    return rows


def parse_servers_state(text: str, strict: bool = True) -> dict:
    """``show servers state`` -> ``{server: {backend, address, op_state,
    admin, weight, port}}``; with ``strict`` an error line raises."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 18 and not line.startswith("#"):
            out[fields[3]] = {"backend": fields[1], "address": fields[4],
                              "op_state": int(fields[5]), "admin": int(fields[6]),
                              "weight": int(fields[7]), "port": int(fields[18])}
        elif strict and line.strip() and not line.startswith("#") and \
                not line.strip().isdigit() and len(fields) <= 18:
            raise RuntimeAPIError("show servers state: %s" % line.strip())
    return out


class RuntimeAPI:
    def __init__(self, path: str, timeout: float = 10.0):
        self.path = path
        self.timeout = timeout

    def _send(self, line: str) -> str:
        try:
            return runtime(self.path, line, self.timeout)
        except OSError as exc:
            raise RuntimeAPIError("HAProxy runtime API %s: %s" % (self.path, exc))

    def command(self, *words) -> str:
        for word in words:
            if not _SAFE.match(str(word)):
                raise RuntimeAPIError("unsafe word %r in a runtime API command" % (word,))
        return self._send(" ".join(str(w) for w in words))

    def batch(self, commands: list) -> str:
        """Run ``[(word, ...), ...]`` in order over one connection; raise on
        any answer HAProxy gives for a refused command."""
        if not commands:
            return ""
        lines = []
        for words in commands:
            for word in words:
                if not _SAFE.match(str(word)):
                    raise RuntimeAPIError("unsafe word %r in a runtime API command" % (word,))
            lines.append(" ".join(str(w) for w in words))
        out = ""
        for start in range(0, len(lines), 200):  # keep each request line bounded
            out += self._send("; ".join(lines[start:start + 200]))
        check(out)
        return out

    # -- queries ---------------------------------------------------------------
    def stat(self, backend: str) -> dict:
        """``show stat`` rows of the servers of ``backend``, by server name."""
        return parse_stat(self.command("show", "stat", backend, "4", "-1"), backend)

    def process_id(self) -> str:
        """``Pid`` of ``show info``: it changes when HAProxy restarts or
        reloads, which resets every counter."""
        text = self.command("show", "info")
        for line in text.splitlines():
            key, _sep, value = line.partition(":")
            if key.strip() == "Pid":
                return value.strip()
        raise RuntimeAPIError("show info: no Pid in %r" % text.strip()[:200])

    def servers_state(self, backend: str) -> dict:
        """``show servers state``: admin state bits and user weight by server."""
        try:
            return parse_servers_state(self.command("show", "servers", "state", backend))
        except RuntimeAPIError as exc:
            if exc.__context__ is None and str(exc).startswith("show servers state:"):
                raise RuntimeAPIError("show servers state %s: %s"
                                      % (backend, str(exc).split(": ", 1)[1]))
            raise


_TIME = re.compile(r"^[0-9]+(us|ms|s|m|h|d)?$")


def check_options(inter=None, up_inter=None) -> tuple:
    """The health-check words of a backend's servers.  A server that is not
    fully up (new, down, or one check from either) is checked every
    ``inter`` (HAProxy time, e.g. ``500ms``); a server that passed its last
    checks every ``up_inter`` (default ``inter``), so a backend of idle
    instances does not spend the machine on checks.  Up after one passed
    check, down after two failed ones.  A failed connection of live traffic
    brings the next check forward to ``inter`` (``observe layer4``, on-error
    ``fastinter``; never a mark-down by itself, so a busy but healthy server
    whose connect timed out stays up): a dead server with traffic is down
    within 2 x ``inter`` of its first failed request, an idle one within
    ``up_inter`` + ``inter``.  The infra's ``default-server`` line and every
    ``add server`` use them: a server added at run time takes nothing from
    ``default-server`` (it would check every 2s, rise 2, fall 3)."""
    words = ("check",)
    if inter is not None:
        words += ("inter", str(up_inter or inter), "fastinter", str(inter), "downinter", str(inter))
    return words + ("observe", "layer4", "error-limit", "1", "on-error", "fastinter",
                    "rise", "1", "fall", "2")


def is_time(text) -> bool:
    """``text`` is an HAProxy time: a number with an optional unit (us, ms, s, m, h, d)."""
    return bool(_TIME.match(str(text)))


_OK = ("", "New server registered.", "Server deleted.")


def check(output: str) -> None:
    """HAProxy answers a successful admin command with an empty line (or a
    short confirmation); anything else is an error message."""
    for line in output.splitlines():
        text = line.strip()
        if text in _OK:
            continue
        raise RuntimeAPIError(text)
