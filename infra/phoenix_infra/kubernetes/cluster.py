"""Cluster: a private GKE Autopilot cluster inside the stack's VPC (so pods
reach Cloud SQL's private IP), Gateway API enabled, Dataplane V2 enforcing
NetworkPolicy, nodes running as a dedicated least-privilege service account;
plus the Kubernetes provider that talks to it (gke-gcloud-auth-plugin)."""
import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from ..gcp import InstanceServiceAccount

NODE_ROLES = ("roles/container.defaultNodeServiceAccount",)

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: https://{endpoint}
    certificate-authority-data: {ca}
contexts:
- name: {name}
  context: {{cluster: {name}, user: {name}}}
current-context: {name}
users:
- name: {name}
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      provideClusterInfo: true
      installHint: Install gke-gcloud-auth-plugin (gcloud components install gke-gcloud-auth-plugin)
"""


class Cluster(pulumi.ComponentResource):
    def __init__(self, name, settings, network, master_cidr, opts=None):
        super().__init__("phoenix:gcp:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.nodes = InstanceServiceAccount(
            f"{name}-nodes", settings, roles=NODE_ROLES, opts=child)
        self.cluster = gcp.container.Cluster(
            f"{name}-gke",
            location=settings.region,
            enable_autopilot=True,
            network=network.vpc.id,
            subnetwork=network.subnet.id,
            ip_allocation_policy={
                "cluster_secondary_range_name": "pods",
                "services_secondary_range_name": "services",
            },
            private_cluster_config={
                "enable_private_nodes": True,
                "enable_private_endpoint": False,
                "master_ipv4_cidr_block": master_cidr,
            },
            release_channel={"channel": "REGULAR"},
            gateway_api_config={"channel": "CHANNEL_STANDARD"},
            cluster_autoscaling={"auto_provisioning_defaults": {"service_account": self.nodes.email}},
            deletion_protection=settings.prod,
            opts=child)
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            self.cluster.name, self.cluster.endpoint, self.cluster.master_auth.cluster_ca_certificate,
        ).apply(lambda v: KUBECONFIG.format(name=v[0], endpoint=v[1], ca=v[2])))
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, opts=child)
        self.register_outputs({"name": self.cluster.name, "endpoint": self.cluster.endpoint})
