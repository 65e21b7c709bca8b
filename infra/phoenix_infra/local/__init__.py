"""The local platform: real PostgreSQL, HAProxy, supervisord and two container
registries (dev, prod: docker-registry) on a loopback address block, under the
stack's state dir.

Optional stack config (namespace ``phoenix-infra``):

- ``state_dir``      default ``$PHOENIX_STATE_DIR/stacks/<stack>``
- ``address_block``  default ``127.20.0.0/24`` for stack ``local``, another
                     ``127.20.N.0/24`` (derived from the stack name) otherwise
- ``port_range``     ``"first-last"`` or ``[first, last]``, default 24000-24999;
                     the first 16 ports are for the infra, the rest for instances
- ``frontend_port`` / ``stats_port`` / ``db_port``  pin a port (else probed)
- ``db_name`` / ``db_user``   default ``phoenix``
- ``health_check_interval``   HAProxy check interval of servers that are not
                     up (new, down, or changing), default ``500ms``
- ``health_check_up_interval``  check interval of servers that are up, default
                     ``2s`` (a live-traffic connection failure checks at once)
"""
import ipaddress
import json
import os
import pathlib
import zlib

import pulumi

from phoenix_infra.local.components import Database, InstanceManager, LoadBalancer, Network, Registries

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEFAULT_PORT_RANGE = "24000-24999"


def default_block(stack):
    if stack == "local":
        return "127.20.0.0/24"
    return f"127.20.{1 + zlib.crc32(stack.encode()) % 254}.0/24"


def _port_range(value):
    """``"24000-24999"`` or ``[24000, 24999]`` (a JSON list) -> [first, last]."""
    try:
        value = json.loads(value) if value.lstrip().startswith("[") else value.split("-")
        first, last = (int(v) for v in value)
    except (TypeError, ValueError, AttributeError):
        raise pulumi.RunError(f"config 'phoenix-infra:port_range' is {value!r}; use \"24000-24999\"")
    return [first, last]


def _settings(cfg):
    state_root = os.environ.get("PHOENIX_STATE_DIR") or str(ROOT / ".state")
    state_dir = os.path.abspath(cfg.get("state_dir", os.path.join(state_root, "stacks", cfg.stack)))
    block = ipaddress.ip_network(cfg.get("address_block", default_block(cfg.stack)))
    return {
        "state_dir": state_dir,
        "cidr": str(block),
        "address": str(next(block.hosts())),
        "port_range": _port_range(cfg.get("port_range", DEFAULT_PORT_RANGE)),
        "pinned": {"frontend": cfg.get_int("frontend_port"), "stats": cfg.get_int("stats_port"),
                   "postgres": cfg.get_int("db_port")},
    }


def build(cfg) -> dict:
    s = _settings(cfg)
    net = Network("network", state_dir=s["state_dir"], cidr=s["cidr"], address=s["address"],
                  port_range=s["port_range"], pinned_ports=s["pinned"])
    db = Database("database", network=net, database=cfg.get("db_name", "phoenix"),
                  user=cfg.get("db_user", "phoenix"))
    check_inter = cfg.get("health_check_interval", "500ms")
    check_up_inter = cfg.get("health_check_up_interval", "2s")
    lb = LoadBalancer("load-balancer", network=net, artifacts=cfg.artifacts, check_inter=check_inter,
                      check_up_inter=check_up_inter)
    im = InstanceManager("instance-manager", network=net, load_balancer=lb)
    regs = Registries("registries", network=net)
    return {
        "platform": "local",
        "network": {"name": f"phoenix-{cfg.stack}", "cidr": net.cidr, "address": net.address,
                    "port_range": net.instance_port_range, "ports": net.ports},
        "database": {"host": db.host, "port": db.port, "name": db.database, "user": db.user,
                     "password": db.password},
        "load_balancer": {"address": lb.address, "url": lb.url, "backends": lb.backends,
                          "stats_url": lb.stats_url, "runtime_api": lb.runtime_api,
                          "server_record": lb.server_record, "check_inter": check_inter,
                          "check_up_inter": check_up_inter},
        "instance_manager": {"kind": "supervisord", "endpoint": im.endpoint,
                             "include_dir": im.include_dir},
        "registries": regs.urls,
        "state_dir": net.state_dir,
    }
