"""LoadBalancer: global external Application Load Balancer (HTTP).

One backend service per artifact with no backends: the rollout engine
attaches each release's managed instance group (named port ``http``) and
moves traffic with capacity scalers. The first artifact is the default
route; every other artifact is served under ``/<artifact>``."""
import pulumi
import pulumi_gcp as gcp

SCHEME = "EXTERNAL_MANAGED"


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
                connection_draining_timeout_sec=30,
                log_config={"enable": True, "sample_rate": 1.0},
                opts=child)
            for artifact in artifacts
        }
        default, *others = artifacts
        self.url_map = gcp.compute.URLMap(
            f"{name}-urls",
            default_service=self.backends[default].id,
            host_rules=[{"hosts": ["*"], "path_matcher": "artifacts"}] if others else None,
            path_matchers=[{
                "name": "artifacts",
                "default_service": self.backends[default].id,
                "path_rules": [
                    {"paths": [f"/{a}", f"/{a}/*"], "service": self.backends[a].id} for a in others
                ],
            }] if others else None,
            opts=child)
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
        self.register_outputs(self.outputs)
