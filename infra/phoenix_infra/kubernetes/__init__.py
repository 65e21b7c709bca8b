"""Platform ``kubernetes`` (GKE): the GCP Network and Database components,
a private Autopilot cluster in that network, and the in-cluster pieces the
rollout engine drives (namespace, Services, Gateway/HTTPRoutes, egress
NetworkPolicy, deployer RBAC), and the dev and prod Artifact Registry
repositories the nodes pull from. Deployments (one per release) are the
engine's, not declared here.

Config: everything the ``gce`` platform reads (see ``phoenix_infra.gcp``),
plus optional ``namespace``, ``gateway_class``, ``pods_cidr``,
``services_cidr``, ``master_cidr`` and ``environment`` (the environment the
rollouts of this cluster deploy to, default the stack name as a DNS label;
its HTTPRoutes are ``<artifact>-<environment>``, as on the local cluster)."""
import base64
import re

import pulumi

from ..gcp import ArtifactRegistries, Database, Network
from ..gcp import settings as gcp_settings
from .app import AppPlatform
from .cluster import Cluster

__all__ = ["build", "AppPlatform", "Cluster"]


def environment(cfg) -> str:
    """``phoenix-infra:environment``, default the stack name as a DNS label (as k8s-local)."""
    value = cfg.get("environment", re.sub(r"[^a-z0-9-]+", "-", cfg.stack.lower()).strip("-"))
    if not re.fullmatch(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", value):
        raise pulumi.RunError(f"config 'phoenix-infra:environment' is {value!r}; use lowercase letters, digits "
                              "and '-' (a DNS label of at most 32 characters, e.g. dev)")
    return value


def build(cfg) -> dict:
    env = environment(cfg)
    settings = gcp_settings.read(cfg)
    prefix = settings.prefix
    namespace = cfg.get("namespace", prefix)
    gateway_class = cfg.get("gateway_class", "gke-l7-global-external-managed")
    secondary = {"pods": cfg.get("pods_cidr", "10.20.0.0/16"),
                 "services": cfg.get("services_cidr", "10.24.0.0/20")}
    master_cidr = cfg.get("master_cidr", "172.16.0.32/28")
    labels = {"app.kubernetes.io/part-of": "phoenix-deploy", "phoenix.deploy/stack": cfg.stack}

    network = Network(prefix, settings, secondary_ranges=secondary)
    database = Database(prefix, settings, network)
    cluster = Cluster(prefix, settings, network, master_cidr)
    registries = ArtifactRegistries(prefix, settings,
                                    reader=cluster.nodes.email.apply(lambda email: f"serviceAccount:{email}"))
    app = AppPlatform(
        prefix,
        namespace=namespace,
        environment=env,
        artifacts=cfg.artifacts,
        labels=labels,
        port=settings.port,
        db_range=database.private_range,
        db_port=database.outputs["port"],
        gateway_class=gateway_class,
        opts=pulumi.ResourceOptions(providers={"kubernetes": cluster.provider}))
    return {
        "platform": "kubernetes",
        "registries": registries.urls,
        "network": {"name": network.vpc.name, "cidr": network.subnet.ip_cidr_range},
        "database": database.outputs,
        "load_balancer": {
            "address": app.address.address,
            "url": app.address.address.apply(lambda ip: f"http://{ip}/"),
            "backends": app.outputs["service_names"],
        },
        "kubernetes": {
            "api_server": cluster.cluster.endpoint.apply(lambda e: f"https://{e}"),
            "ca_cert": cluster.cluster.master_auth.cluster_ca_certificate.apply(
                lambda ca: base64.b64decode(ca).decode() if ca else None),
            "token": None, "kubeconfig": None,  # gke-gcloud-auth-plugin gives the credentials
            **app.outputs,
            "gateway": app.gateway_outputs,
        },
    }
