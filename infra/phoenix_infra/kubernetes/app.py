"""AppPlatform: what the rollout engine needs inside the cluster.

- a Namespace (pod security ``baseline`` enforced, ``restricted`` warned);
- one ClusterIP Service per artifact selecting ``labels`` + ``app=<artifact>``
  (the engine's Deployments carry those plus ``track`` and ``release``);
- a Gateway on a reserved global address and one HTTPRoute per artifact
  (first artifact at ``/``, others at ``/<artifact>``) named
  ``contract.route_name(artifact, environment)``: exactly the route the
  Kubernetes rollout driver edits (exported as ``gateway.routes``). Its
  ``rules[*].backendRefs`` (one per release Service, with the traffic
  weights) are the engine's: created empty, then ``ignore_changes``
  (``ENGINE_OWNED``), so ``pulumi up`` never undoes a rollout;
- a NetworkPolicy: pods may only talk to the database range (TCP 5432) and
  cluster DNS;
- a deployer ServiceAccount bound to a Role with the verbs the engine uses.
"""
import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from ..contract import route_name

GATEWAY_API = "gateway.networking.k8s.io/v1"

DEPLOYER_RULES = (
    {"api_groups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"api_groups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {"api_groups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"api_groups": [""], "resources": ["services"], "verbs": ["get", "list", "create", "patch", "delete"]},
    {"api_groups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
     "verbs": ["get", "list", "create", "update", "patch"]},
    # the release store (history ConfigMap written with resourceVersion CAS, lock Lease) and chaos.yml
    {"api_groups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
    {"api_groups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "delete"]},
    {"api_groups": [""], "resources": ["pods"], "verbs": ["delete"]},
)
#: the parts of each HTTPRoute the rollout engine owns (the backends and their weights)
ENGINE_OWNED = ["spec.rules[*].backendRefs"]


class AppPlatform(pulumi.ComponentResource):
    def __init__(self, name, *, namespace, environment, artifacts, labels, port, db_range, db_port,
                 gateway_class, opts=None):
        super().__init__("phoenix:kubernetes:AppPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta = {"namespace": namespace, "labels": labels}

        self.namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": namespace, "labels": {
                **labels,
                "pod-security.kubernetes.io/enforce": "baseline",
                "pod-security.kubernetes.io/warn": "restricted",
            }},
            opts=child)
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])

        self.services = {
            artifact: k8s.core.v1.Service(
                f"{name}-{artifact}",
                metadata={**meta, "name": artifact.replace("_", "-")},
                spec={
                    "type": "ClusterIP",
                    "selector": {**labels, "app": artifact},
                    "ports": [{"name": "http", "port": 80, "target_port": port, "protocol": "TCP"}],
                },
                opts=in_ns)
            for artifact in artifacts
        }

        self.address = gcp.compute.GlobalAddress(f"{name}-gateway-address", ip_version="IPV4", opts=child)
        self.gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version=GATEWAY_API,
            kind="Gateway",
            metadata={**meta, "name": "phoenix"},
            spec={
                "gatewayClassName": gateway_class,
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                               "allowedRoutes": {"namespaces": {"from": "Same"}}}],
                "addresses": [{"type": "NamedAddress", "value": self.address.name}],
            },
            opts=in_ns)
        self.routes = {
            artifact: k8s.apiextensions.CustomResource(
                f"{name}-{artifact}-route",
                api_version=GATEWAY_API,
                kind="HTTPRoute",
                metadata={**meta, "name": route_name(artifact, environment),
                          "labels": {**labels, "phoenix.deploy/artifact": artifact,
                                     "phoenix.deploy/environment": environment}},
                spec={
                    "parentRefs": [{"name": "phoenix"}],
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix",
                                              "value": "/" if i == 0 else f"/{artifact}"}}],
                        "backendRefs": [],  # the engine's: one per release, with its weight
                    }],
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.namespace, self.gateway],
                                            ignore_changes=ENGINE_OWNED))
            for i, artifact in enumerate(artifacts)
        }

        self.egress = k8s.networking.v1.NetworkPolicy(
            f"{name}-egress",
            metadata={**meta, "name": "phoenix-egress"},
            spec={
                "pod_selector": {"match_labels": labels},
                "policy_types": ["Egress"],
                "egress": [
                    {"to": [{"ip_block": {"cidr": db_range}}],
                     "ports": [{"protocol": "TCP", "port": db_port}]},
                    {"to": [{"namespace_selector": {"match_labels": {"kubernetes.io/metadata.name": "kube-system"}},
                             "pod_selector": {"match_labels": {"k8s-app": "kube-dns"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                ],
            },
            opts=in_ns)

        self.deployer = k8s.core.v1.ServiceAccount(
            f"{name}-deployer", metadata={**meta, "name": "phoenix-deployer"}, opts=in_ns)
        self.role = k8s.rbac.v1.Role(
            f"{name}-deployer", metadata={**meta, "name": "phoenix-deployer"},
            rules=[dict(rule) for rule in DEPLOYER_RULES], opts=in_ns)
        self.binding = k8s.rbac.v1.RoleBinding(
            f"{name}-deployer",
            metadata={**meta, "name": "phoenix-deployer"},
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": self.role.metadata["name"]},
            subjects=[{"kind": "ServiceAccount", "name": self.deployer.metadata["name"], "namespace": namespace}],
            opts=in_ns)

        self.gateway_outputs = {
            "name": self.gateway.metadata["name"], "class": gateway_class,
            "url": {artifact: self.address.address.apply(
                lambda ip, i=i, a=artifact: f"http://{ip}/" if i == 0 else f"http://{ip}/{a}")
                for i, artifact in enumerate(artifacts)},
            "routes": {a: r.metadata["name"] for a, r in self.routes.items()},
            "haproxy_socket": None,  # the local cluster's gateway only
        }
        self.outputs = {
            "namespace": self.namespace.metadata["name"],
            "service_names": {a: s.metadata["name"] for a, s in self.services.items()},
            "deployer_service_account": self.deployer.metadata["name"],
            "labels": labels,
        }
        self.register_outputs(self.outputs)
