# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Group traffic shares <-> HAProxy server weights (pure functions)."""

from __future__ import annotations

MAX_WEIGHT = 256  # HAProxy's per-server maximum
# HAProxy admin state bits (show servers state)
ADMIN_MAINT = 0x01 | 0x02 | 0x04 | 0x20
ADMIN_DRAIN = 0x08 | 0x10 | 0x40


def serving(srv) -> bool:
    """A server neither in maintenance nor draining."""
    return not srv["admin"] & (ADMIN_MAINT | ADMIN_DRAIN)


def group_weights(servers: dict, instances: dict) -> dict:
    """Traffic share (0..100) of every group of ``servers`` (one backend's
    ``show servers state``), derived from the weights of its attached (not
    maint, not draining) servers; ``instances`` maps server -> instance meta."""
    sums = {}
    for name, srv in servers.items():
        meta = instances.get(name)
        if meta is None:
            continue
        sums[meta["group"]] = sums.get(meta["group"], 0) + (srv["weight"] if serving(srv) else 0)
    total = float(sum(sums.values()))
    return {g: (int(round(100.0 * s / total)) if total else 0) for g, s in sums.items()}


def weight_commands(backend: str, servers: dict, instances: dict, wanted: dict) -> list:
    """``set server ... weight`` commands giving the groups of ``wanted``
    (``{group: share}``) their shares, the other groups keeping theirs;
    raises first, lowers after, so there is never a moment where every
    weight is 0."""
    current = group_weights(servers, instances)
    shares, counts = {}, {}
    for name in servers:
        meta = instances.get(name)
        if meta is not None:
            shares.setdefault(meta["group"], current.get(meta["group"], 0))
            counts[meta["group"]] = counts.get(meta["group"], 0) + 1
    shares.update(wanted)
    per_server = {g: (shares[g] / float(counts[g])) for g in counts if shares.get(g)}
    top = max(per_server.values()) if per_server else 0
    raises, lowers = [], []
    for name, srv in servers.items():
        meta = instances.get(name)
        if meta is None:
            continue
        value = 0
        if per_server.get(meta["group"]):
            value = max(1, int(round(MAX_WEIGHT * per_server[meta["group"]] / top)))
        if value == srv["weight"]:
            continue
        cmd = ("set", "server", "%s/%s" % (backend, name), "weight", str(value))
        (raises if value > srv["weight"] else lowers).append(cmd)
    return raises + lowers
