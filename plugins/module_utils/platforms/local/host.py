# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File and process helpers of the local platform, shared by the local
driver and the infra program (``phoenix_infra.local.procs`` loads this file
by path, so it imports nothing but the standard library)."""

from __future__ import annotations

import errno
import http.client
import os
import socket


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (fsync, rename)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def port_free(address: str, port: int) -> bool:
    """True if ``address:port`` can be bound right now (probe by binding, with
    SO_REUSEADDR like the servers, so TIME_WAIT leftovers do not count).
    Any other bind error is raised (``OSError``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def healthy(address: str, port: int, timeout: float = 1.0) -> bool:
    """``GET /healthz`` of an instance answers 200 (as HAProxy checks it)."""
    conn = http.client.HTTPConnection(address, int(port), timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
