"""Platform ``gce``: VPC, private Cloud SQL, global external ALB, the
instance service account, the database password in Secret Manager and the dev
and prod Artifact Registry repositories (``registries.py``). Server groups
(instance templates + MIGs + per-release backend services) are not declared
here; the rollout engine creates one per release from the ``gce`` outputs:
network tag, subnetwork, service account, backend services (templates), health
check, URL map and the route of each artifact in it, the password's secret.

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

__all__ = ["build", "ArtifactRegistries", "Database", "DatabasePasswordSecret", "InstanceServiceAccount", "LoadBalancer", "Network"]

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


class DatabasePasswordSecret(pulumi.ComponentResource):
    """The database password in Secret Manager, readable by the instances'
    service account only: instance templates carry its version name
    (``DB_PASSWORD_SECRET``), never the password."""

    def __init__(self, name, settings, reader_email, opts=None):
        super().__init__("phoenix:gcp:DatabasePasswordSecret", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.secret = gcp.secretmanager.Secret(
            name, secret_id=name, project=settings.project,
            replication={"auto": {}}, opts=child)
        self.version = gcp.secretmanager.SecretVersion(
            f"{name}-v", secret=self.secret.id, secret_data=settings.db_password, opts=child)
        self.reader = gcp.secretmanager.SecretIamMember(
            f"{name}-reader", project=settings.project, secret_id=self.secret.secret_id,
            role="roles/secretmanager.secretAccessor",
            member=reader_email.apply(lambda email: f"serviceAccount:{email}"), opts=child)
        self.register_outputs({"version": self.version.name})


def build(cfg) -> dict:
    settings = settings_mod.read(cfg)
    prefix = settings.prefix
    network = Network(prefix, settings)
    database = Database(prefix, settings, network)
    lb = LoadBalancer(prefix, settings, cfg.artifacts)
    account = InstanceServiceAccount(f"{prefix}-instances", settings)
    secret = DatabasePasswordSecret(f"{prefix}-db-password", settings, account.email)
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
            "db_password_secret": secret.version.name,
            **lb.engine,
        },
    }
