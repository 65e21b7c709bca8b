"""Components of the local platform: each wraps one dynamic resource whose
provider (``providers.py``) runs a real process under the stack's state dir."""
import os

import pulumi
from pulumi import dynamic

from phoenix_infra.local import providers, registries


def _with_outputs(props, *names):
    """Dynamic resources expose only the keys they were given: declare outputs as None."""
    return {**props, **{n: None for n in names}}


class _Ports(dynamic.Resource, module="phoenix-local", name="LoopbackPorts"):
    def __init__(self, name, props, opts):
        super().__init__(providers.NetworkProvider(), name,
                         _with_outputs(props, "ports", "instance_port_range", "created_dir"), opts)


class _Postgres(dynamic.Resource, module="phoenix-local", name="PostgresCluster"):
    def __init__(self, name, props, opts):
        super().__init__(providers.PostgresProvider(), name,
                         _with_outputs(props, "password", "running"), opts)


class _HAProxy(dynamic.Resource, module="phoenix-local", name="HAProxy"):
    def __init__(self, name, props, opts):
        super().__init__(providers.HAProxyProvider(), name,
                         _with_outputs(props, "runtime_api", "config", "server_record",
                                       "running"), opts)


class _Supervisord(dynamic.Resource, module="phoenix-local", name="Supervisord"):
    def __init__(self, name, props, opts):
        super().__init__(providers.SupervisordProvider(), name,
                         _with_outputs(props, "socket", "include_dir", "running"), opts)


class _DockerRegistry(dynamic.Resource, module="phoenix-local", name="DockerRegistry"):
    def __init__(self, name, props, opts):
        super().__init__(registries.RegistryProvider(), name,
                         _with_outputs(props, "url", "config", "running"), opts)


class Network(pulumi.ComponentResource):
    """An address of a loopback block, the stack's state dir (0700) and the
    infra ports, allocated once and kept across `up`s."""

    PORT_NAMES = ("postgres", "frontend", "stats", "registry_dev", "registry_prod")

    def __init__(self, name, *, state_dir, cidr, address, port_range, pinned_ports=None, extra_ports=(), opts=None):
        super().__init__("phoenix:local:Network", name, None, opts)
        ports = _Ports(f"{name}-ports", {
            "state_dir": state_dir, "cidr": cidr, "address": address,
            "port_range": list(port_range), "names": [*self.PORT_NAMES, *extra_ports],
            "pinned": {k: int(v) for k, v in (pinned_ports or {}).items() if v},
        }, pulumi.ResourceOptions(parent=self))
        self.cidr = cidr
        self.address = address
        self.state_dir = ports.state_dir  # an Output: components under it depend on the network
        self.ports = ports.ports
        self.instance_port_range = ports.instance_port_range
        self.register_outputs({"address": address, "cidr": cidr, "ports": self.ports,
                               "instance_port_range": self.instance_port_range})

    def subdir(self, leaf):
        return self.state_dir.apply(lambda d: os.path.join(d, leaf))

    def port(self, key):
        return self.ports.apply(lambda p: int(p[key]))


class Database(pulumi.ComponentResource):
    """A PostgreSQL cluster with one database and one role (generated password, a secret)."""

    def __init__(self, name, *, network, database, user, opts=None):
        super().__init__("phoenix:local:Database", name, None, opts)
        cluster = _Postgres(f"{name}-postgres", {
            "dir": network.subdir("postgres"), "address": network.address,
            "port": network.port("postgres"), "database": database, "user": user,
        }, pulumi.ResourceOptions(parent=self, additional_secret_outputs=["password"]))
        self.host = network.address
        self.port = cluster.port
        self.database = database
        self.user = user
        self.password = pulumi.Output.secret(cluster.password)
        self.register_outputs({"host": self.host, "port": self.port, "name": database, "user": user})


class LoadBalancer(pulumi.ComponentResource):
    """HAProxy: one frontend, one backend ``be_<artifact>`` per artifact, runtime
    API on a 0600 unix socket, stats page on loopback."""

    def __init__(self, name, *, network, artifacts, check_inter="500ms", check_up_inter="2s", opts=None):
        super().__init__("phoenix:local:LoadBalancer", name, None, opts)
        self.backends = {a: f"be_{a}" for a in artifacts}
        proxy = _HAProxy(f"{name}-haproxy", {
            "dir": network.subdir("haproxy"), "address": network.address,
            "frontend_port": network.port("frontend"), "stats_port": network.port("stats"),
            "backends": self.backends, "check_inter": check_inter, "check_up_inter": check_up_inter,
        }, pulumi.ResourceOptions(parent=self))
        self.address = network.address
        self.url = pulumi.Output.concat("http://", network.address, ":",
                                        proxy.frontend_port.apply(lambda p: str(int(p))), "/")
        self.stats_url = pulumi.Output.concat("http://", network.address, ":",
                                              proxy.stats_port.apply(lambda p: str(int(p))), "/stats")
        self.runtime_api = proxy.runtime_api
        self.server_record = proxy.server_record
        self.register_outputs({"url": self.url, "stats_url": self.stats_url,
                               "runtime_api": self.runtime_api, "server_record": self.server_record,
                               "backends": self.backends})


class InstanceManager(pulumi.ComponentResource):
    """supervisord; the rollout engine writes program files into ``include_dir``.
    With ``load_balancer``, a restore after a supervisord crash drains each
    instance it replaces in HAProxy first (and HAProxy is restored before it)."""

    def __init__(self, name, *, network, load_balancer=None, opts=None):
        super().__init__("phoenix:local:InstanceManager", name, None, opts)
        props = {"dir": network.subdir("supervisor")}
        if load_balancer is not None:
            props["load_balancer_api"] = load_balancer.runtime_api
        sup = _Supervisord(f"{name}-supervisord", props, pulumi.ResourceOptions(parent=self))
        self.endpoint = pulumi.Output.concat("unix://", sup.socket)
        self.include_dir = sup.include_dir
        self.register_outputs({"endpoint": self.endpoint, "include_dir": self.include_dir})


class Registries(pulumi.ComponentResource):
    """The ``dev`` registry (bakes push here; deletes allowed for retention) and the
    ``prod`` registry (promotion copies here by digest; ``storage.delete`` off), each
    its own docker-registry process with its own config and 0700 storage dir."""

    def __init__(self, name, *, network, opts=None):
        super().__init__("phoenix:local:Registries", name, None, opts)
        self.urls = {}
        for env, delete in (("dev", True), ("prod", False)):
            reg = _DockerRegistry(f"{name}-{env}", {
                "name": env, "dir": network.subdir(f"registry-{env}"), "address": network.address,
                "port": network.port(f"registry_{env}"), "delete": delete,
            }, pulumi.ResourceOptions(parent=self))
            self.urls[env] = reg.url
        self.register_outputs({"urls": self.urls})
