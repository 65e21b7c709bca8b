"""LoadBalancer: global external Application Load Balancer (HTTP).

One backend service per artifact with no backends: the template the rollout
engine copies (health check, draining timeout, protocol) for the backend
service of each release, and the placeholder of the artifact's route while no
release has traffic. Every artifact has one route in the path matcher
``artifacts``: the first is the matcher's default route, every other one is
served under ``/<artifact>``. Each route is a ``weightedBackendServices``
list: the engine adds one backend service per release (its managed instance
group, named port ``http``) and moves traffic by editing the weights (not
capacity scalers, which are not traffic shares). Those lists belong to the
engine: ``ignore_changes`` keeps ``pulumi up`` from undoing a rollout."""
import pulumi
import pulumi_gcp as gcp

SCHEME = "EXTERNAL_MANAGED"
PATH_MATCHER = "artifacts"
DRAINING_TIMEOUT_SEC = 30
#: the parts of the URL map the rollout engine owns (route weights, per-release backends)
ENGINE_OWNED = [
    "pathMatchers[*].defaultRouteAction.weightedBackendServices",
    "pathMatchers[*].pathRules[*].routeAction.weightedBackendServices",
]


class LoadBalancer(pulumi.ComponentResource):
    def __init__(self, name, settings, artifacts, opts=None):
        super().__init__("phoenix:gcp:LoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.health_check = gcp.compute.HealthCheck(
            f"{name}-health",
            check_interval_sec=5,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=3,
            http_health_check={"port": settings.port, "request_path": settings.health_path},
            log_config={"enable": True},
            opts=child)
        self.backends = {
            artifact: gcp.compute.BackendService(
                f"{name}-{artifact}",
                load_balancing_scheme=SCHEME,
                protocol="HTTP",
                port_name="http",
                health_checks=self.health_check.id,
                timeout_sec=30,
                connection_draining_timeout_sec=DRAINING_TIMEOUT_SEC,
                log_config={"enable": True, "sample_rate": 1.0},
                opts=child)
            for artifact in artifacts
        }
        default, *others = artifacts

        def weighted(artifact):
            return {"weighted_backend_services": [
                {"backend_service": self.backends[artifact].id, "weight": 100}]}
        self.routes = {a: {"path_matcher": PATH_MATCHER,
                           "paths": None if a == default else [f"/{a}", f"/{a}/*"]} for a in artifacts}
        self.url_map = gcp.compute.URLMap(
            f"{name}-urls",
            default_service=self.backends[default].id,
            host_rules=[{"hosts": ["*"], "path_matcher": PATH_MATCHER}],
            path_matchers=[{
                "name": PATH_MATCHER,
                "default_route_action": weighted(default),
                "path_rules": [
                    {"paths": self.routes[a]["paths"], "route_action": weighted(a)} for a in others
                ] or None,
            }],
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=ENGINE_OWNED))
        self.proxy = gcp.compute.TargetHttpProxy(f"{name}-proxy", url_map=self.url_map.id, opts=child)
        self.address = gcp.compute.GlobalAddress(f"{name}-address", ip_version="IPV4", opts=child)
        self.forwarding_rule = gcp.compute.GlobalForwardingRule(
            f"{name}-http",
            target=self.proxy.id,
            ip_address=self.address.id,
            ip_protocol="TCP",
            port_range="80",
            load_balancing_scheme=SCHEME,
            opts=child)

        self.outputs = {
            "address": self.address.address,
            "url": self.address.address.apply(lambda ip: f"http://{ip}/"),
            "backends": {a: b.name for a, b in self.backends.items()},
        }
        #: what the GCE driver needs besides the backends (the gce outputs)
        self.engine = {
            "url_map": self.url_map.name,
            "path_matcher": PATH_MATCHER,
            "routes": self.routes,
            "named_port": "http",
            "port": settings.port,
            "backend_template": {"load_balancing_scheme": SCHEME, "protocol": "HTTP", "port_name": "http",
                                 "timeout_sec": 30, "draining_timeout_sec": DRAINING_TIMEOUT_SEC},
        }
        self.register_outputs(self.outputs)
