"""Platform ``kubernetes`` with ``cluster: local``: a single-node cluster on
this machine (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
containerd, kubelet as real processes under the stack's state dir; run as
root), plus the namespace, Services and deployer ServiceAccount/RBAC inside
it. The binaries come from ``scripts/install-kubernetes.sh`` (``make setup``).

Optional stack config (namespace ``phoenix-infra``):

- ``state_dir``      default ``$PHOENIX_STATE_DIR/stacks/<stack>``
- ``address_block``  loopback block; the node and every component serve on its
                     first address (default ``127.30.0.0/24`` for stack
                     ``k8s-local``, ``127.30.N.0/24`` otherwise)
- ``pod_cidr``       the CNI bridge's subnet (default ``10.213.0.0/24``)
- ``service_cidr``   (default ``10.214.0.0/24``; no kube-proxy runs)
- ``namespace``      default ``phoenix``; ``port`` the artifacts' port (8080)
- ``environment``    the environment this cluster's namespace serves; the
                     gateway serves HTTPRoute ``<artifact>-<environment>`` on
                     the listener of each artifact (default: the stack name)
- ``port_range``     ports on that address for the dev and prod registries
                     (as for platform local; default 24000-24999)

The dev and prod registries are the local platform's (``docker-registry`` on
the same address); containerd pulls from them over plain HTTP (loopback).

The gateway (``gateway.py``): the Gateway API CRDs, GatewayClass
``phoenix-haproxy``, Gateway ``phoenix`` with one HTTP listener per artifact
on a port of the block, HAProxy serving them and the controller feeding it.
"""
import ipaddress
import os
import re
import pathlib
import zlib

import pulumi

from phoenix_infra.k8s_local.components import AppPlatform, Cluster, PodDatabase
from phoenix_infra.k8s_local.gateway import Gateway
from phoenix_infra.local import _port_range
from phoenix_infra.local.components import Network, Registries

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = ROOT / ".tools" / "kubernetes" / "bin"
PORTS = {"etcd": 2379, "etcd_peer": 2380, "apiserver": 6443, "controller_manager": 10257,
         "scheduler": 10259, "kubelet": 10250, "kubelet_healthz": 10248}


def default_block(stack):
    if stack == "k8s-local":
        return "127.30.0.0/24"
    return f"127.30.{1 + zlib.crc32(stack.encode()) % 254}.0/24"


def _network(cfg, key, default):
    value = cfg.get(key, default)
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise pulumi.RunError(f"config 'phoenix-infra:{key}' is {value!r}; use a CIDR such as {default}")
    if net.version != 4 or net.num_addresses < 16 or net.is_loopback != (key == "address_block"):
        raise pulumi.RunError(f"config 'phoenix-infra:{key}' {value} must be an IPv4 /28 or larger"
                              + (" inside 127.0.0.0/8" if key == "address_block" else ", not loopback"))
    return net


def settings(cfg):
    if os.geteuid() != 0:
        raise pulumi.RunError("stack platform kubernetes with cluster local runs kubelet and containerd, "
                              "which need root: run pulumi as root")
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
               if not os.access(BIN / b, os.X_OK)]
    if missing:
        raise pulumi.RunError(f"Kubernetes binaries missing in {BIN}: {', '.join(missing)}; run `make setup` "
                              "(scripts/install-kubernetes.sh)")
    state_root = os.environ.get("PHOENIX_STATE_DIR") or str(ROOT / ".state")
    d = os.path.abspath(cfg.get("state_dir", os.path.join(state_root, "stacks", cfg.stack)))
    block = _network(cfg, "address_block", default_block(cfg.stack))
    pods = _network(cfg, "pod_cidr", "10.213.0.0/24")
    services = _network(cfg, "service_cidr", "10.214.0.0/24")
    tag = f"{zlib.crc32(d.encode()):08x}"[:6]
    return {
        "dir": d, "cidr": str(block), "address": str(next(block.hosts())),
        "port_range": _port_range(cfg.get("port_range", "24000-24999")), "ports": dict(PORTS), "bin": str(BIN),
        "pod_cidr": str(pods), "service_cidr": str(services), "service_ip": str(next(services.hosts())),
        "node_name": f"phoenix-{cfg.stack}".lower(), "sock": os.path.join(d, "containerd", "containerd.sock"),
        "bridge": f"phx{tag}", "network": f"phoenix-{tag}",
    }


def environment(cfg):
    value = cfg.get("environment", re.sub(r"[^a-z0-9-]+", "-", cfg.stack.lower()).strip("-"))
    if not re.fullmatch(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", value):
        raise pulumi.RunError(f"config 'phoenix-infra:environment' is {value!r}; use lowercase letters, digits "
                              "and '-' (a DNS label of at most 32 characters, e.g. dev)")
    return value


def build(cfg) -> dict:
    s = settings(cfg)
    namespace = cfg.get("namespace", "phoenix")
    env = environment(cfg)
    labels = {"app.kubernetes.io/part-of": "phoenix-deploy", "phoenix.deploy/stack": cfg.stack}
    net = Network("network", state_dir=s["dir"], cidr=s["cidr"], address=s["address"], port_range=s["port_range"],
                  extra_ports=[*(f"gateway_{a}" for a in cfg.artifacts), "gateway_stats"])
    regs = Registries("registries", network=net)
    cluster = Cluster("cluster", s, network=net, registries=regs.urls)
    app = AppPlatform("app", cluster=cluster, namespace=namespace, artifacts=cfg.artifacts, labels=labels,
                      port=cfg.get_int("port", 8080), kubeconfig_path=os.path.join(s["dir"], "deployer.kubeconfig"))
    db = PodDatabase("database", cluster=cluster, network=net, settings=s, namespace=namespace,
                     namespace_obj=app.namespace, database=cfg.get("db_name", "phoenix"),
                     user=cfg.get("db_user", "phoenix"))
    gateway = Gateway("gateway", cluster=cluster, network=net, namespace=namespace, namespace_obj=app.namespace,
                      artifacts=cfg.artifacts, environment=env, labels=labels, state_dir=s["dir"])
    return {
        "platform": "kubernetes",
        "network": {"name": s["network"], "cidr": s["pod_cidr"], "address": s["address"]},
        "kubernetes": {**app.outputs, "gateway": gateway.outputs},
        "database": db.outputs,
        "registries": regs.urls,
        "state_dir": s["dir"],
    }
