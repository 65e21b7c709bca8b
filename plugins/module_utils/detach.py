# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one double-fork primitive: a daemon process that outlives its caller
(the ``wait: false`` rollout controller, the local driver's deletion
finisher) and holds nothing the caller had open.

The daemon runs in a session of its own (``setsid``), is re-parented to
init (the intermediate child exits at once, the caller reaps it), has its
stdio on /dev/null, and every other inherited descriptor (>= 3) except
``keep`` is pointed at /dev/null too.  So it never keeps the caller's flock
(the release lock, the driver's allocation lock), Ansible's output pipe, or
a socket of the caller's open: those open file descriptions lose their
reference from the daemon.  The numbers stay taken (on /dev/null) rather
than closed, so a Python object of the caller that still wraps one (an
XML-RPC connection, a file) closes or writes /dev/null when touched, never
a file the daemon opened later under the same number."""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterable


def _inherited_fds() -> list:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: every possible number
        limit = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024
        names = range(min(int(limit) if limit and limit > 0 else 1024, 65536))
    return sorted(int(n) for n in names)


def release_inherited(keep: Iterable[int] = ()) -> None:
    """stdio -> /dev/null, every other open descriptor >= 3 but ``keep`` -> /dev/null."""
    keep = set(keep)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != devnull:
            os.dup2(devnull, fd)
    for fd in _inherited_fds():
        if fd < 3 or fd in keep or fd == devnull:
            continue
        try:
            os.fstat(fd)  # open (the listing's own descriptor is closed by now)
        except OSError:
            continue
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def spawn_daemon(work: Callable[[], None], keep: Iterable[int] = ()) -> int:
    """Run ``work()`` in a double-forked daemon (see the module docstring) and
    return its pid at once.  The daemon exits with 0 when ``work`` returned,
    1 when it raised; it never returns into the caller's code."""
    keep = list(keep)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child
        code = 0
        try:
            os.close(read_fd)
            os.setsid()
            child = os.fork()
            if child != 0:
                os.write(write_fd, struct.pack("=i", child))
                os._exit(0)
            os.close(write_fd)
            release_inherited(keep)
            work()
        except BaseException:  # a daemon has no one to raise to
            code = 1
        os._exit(code)
    os.close(write_fd)
    try:
        os.waitpid(pid, 0)
        data = b""
        while len(data) < 4:
            chunk = os.read(read_fd, 4 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    return struct.unpack("=i", data)[0] if len(data) == 4 else 0
