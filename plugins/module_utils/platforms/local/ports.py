# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loopback ports for local instances."""

from __future__ import annotations

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local import host


def port_free(address: str, port: int) -> bool:
    """Whether ``address:port`` can be bound now (``host.port_free``)."""
    try:
        return host.port_free(address, port)
    except OSError as exc:
        raise PlatformError("cannot bind %s:%d: %s" % (address, port, exc))


def free_ports(address: str, port_range, count: int, taken: set) -> list:
    """``count`` free ports of ``port_range`` (first, last) not in ``taken``."""
    first, last = port_range
    ports = []
    for port in range(first, last + 1):
        if len(ports) == count:
            break
        if port not in taken and port_free(address, port):
            ports.append(port)
    if len(ports) < count:
        raise PlatformError("network.port_range %d-%d has only %d free port(s) on %s, "
                            "%d needed" % (first, last, len(ports), address, count))
    return ports
