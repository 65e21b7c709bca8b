"""Platform ``gce``: VPC, private Cloud SQL, global external ALB, the
instance service account and the dev and prod Artifact Registry repositories
(``registries.py``). Server groups (instance templates + MIGs) are not
declared here; the rollout engine creates one per release from the ``gce``
outputs: network tag, subnetwork, service account, backend services.

Config (namespace ``phoenix-infra`` unless noted): ``gcp:project`` and
``gcp:region`` (required), ``db_password`` (required secret), and optional
``prod``, ``port``, ``health_path``, ``subnet_cidr``, ``db_private_range``,
``db_version``, ``db_tier``, ``db_name``, ``db_user``, ``backup_retention``
(see settings.py for defaults)."""
import pulumi
import pulumi_gcp as gcp

from . import settings as settings_mod
from .database import Database
from .load_balancer import LoadBalancer
from .network import Network
from .registries import ArtifactRegistries

__all__ = ["build", "ArtifactRegistries", "Database", "InstanceServiceAccount", "LoadBalancer", "Network"]

INSTANCE_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/cloudsql.client")


class InstanceServiceAccount(pulumi.ComponentResource):
    """A dedicated service account holding only ``roles`` on the project."""

    def __init__(self, name, settings, roles=INSTANCE_ROLES, opts=None):
        super().__init__("phoenix:gcp:InstanceServiceAccount", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = gcp.serviceaccount.Account(
            name,
            account_id=settings.prefix,
            display_name=f"phoenix.deploy instances ({settings.stack})",
            opts=child)
        member = self.account.email.apply(lambda email: f"serviceAccount:{email}")
        self.members = [
            gcp.projects.IAMMember(
                f"{name}-{role.rsplit('/', maxsplit=1)[-1].replace('.', '-')}",
                project=settings.project, role=role, member=member, opts=child)
            for role in roles
        ]
        self.email = self.account.email
        self.register_outputs({"email": self.email})


def build(cfg) -> dict:
    settings = settings_mod.read(cfg)
    prefix = settings.prefix
    network = Network(prefix, settings)
    database = Database(prefix, settings, network)
    lb = LoadBalancer(prefix, settings, cfg.artifacts)
    account = InstanceServiceAccount(f"{prefix}-instances", settings)
    registries = ArtifactRegistries(prefix, settings,
                                    reader=account.email.apply(lambda email: f"serviceAccount:{email}"))
    return {
        "platform": "gce",
        "registries": registries.urls,
        "network": {"name": network.vpc.name, "cidr": network.subnet.ip_cidr_range},
        "database": database.outputs,
        "load_balancer": lb.outputs,
        "gce": {
            "project": settings.project,
            "region": settings.region,
            "network": network.vpc.name,
            "subnetwork": network.subnet.name,
            "service_account": account.email,
            "network_tags": [network.tag],
            "backend_services": lb.outputs["backends"],
            "health_check": lb.health_check.name,
        },
    }
