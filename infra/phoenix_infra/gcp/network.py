"""Network: custom-mode VPC, one regional subnet, Cloud NAT for egress and a
firewall that admits only Google's load-balancer/health-check ranges (to the
serving port) and IAP TCP forwarding (to SSH), and only to instances carrying
the stack's network tag. Nothing is opened to 0.0.0.0/0; instances get no
external IP and reach the internet through NAT."""
import pulumi
import pulumi_gcp as gcp

from .settings import GOOGLE_HEALTH_CHECK_RANGES, IAP_TCP_FORWARDING_RANGE


class Network(pulumi.ComponentResource):
    def __init__(self, name, settings, secondary_ranges=None, opts=None):
        super().__init__("phoenix:gcp:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.tag = settings.prefix

        self.vpc = gcp.compute.Network(
            f"{name}-vpc", auto_create_subnetworks=False, routing_mode="REGIONAL", opts=child)
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            network=self.vpc.id,
            region=settings.region,
            ip_cidr_range=settings.subnet_cidr,
            private_ip_google_access=True,
            secondary_ip_ranges=[
                {"range_name": range_name, "ip_cidr_range": cidr}
                for range_name, cidr in (secondary_ranges or {}).items()
            ] or None,
            opts=child)
        self.router = gcp.compute.Router(
            f"{name}-router", network=self.vpc.id, region=settings.region, opts=child)
        self.nat = gcp.compute.RouterNat(
            f"{name}-nat",
            router=self.router.name,
            region=settings.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[{"name": self.subnet.id, "source_ip_ranges_to_nats": ["ALL_IP_RANGES"]}],
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
            opts=child)
        self.allow_health_checks = gcp.compute.Firewall(
            f"{name}-allow-lb-health-checks",
            network=self.vpc.id,
            direction="INGRESS",
            source_ranges=list(GOOGLE_HEALTH_CHECK_RANGES),
            target_tags=[self.tag],
            allows=[{"protocol": "tcp", "ports": [str(settings.port)]}],
            description="Google front ends and health checkers to the serving port",
            opts=child)
        self.allow_iap_ssh = gcp.compute.Firewall(
            f"{name}-allow-iap-ssh",
            network=self.vpc.id,
            direction="INGRESS",
            source_ranges=[IAP_TCP_FORWARDING_RANGE],
            target_tags=[self.tag],
            allows=[{"protocol": "tcp", "ports": ["22"]}],
            description="SSH through Identity-Aware Proxy TCP forwarding only",
            opts=child)

        self.register_outputs({
            "network": self.vpc.name,
            "subnetwork": self.subnet.name,
            "cidr": self.subnet.ip_cidr_range,
            "tag": self.tag,
        })
