"""Database: Cloud SQL for PostgreSQL reachable on a private IP only.

Private services access: a global address range reserved in the VPC for
Google services, peered through a Service Networking connection; the
instance has no public IPv4 and accepts encrypted connections only.
Automated backups and point-in-time recovery are always on; deletion
protection (Pulumi's and the API's) and regional HA are on for prod stacks.
The user's password comes from secret stack config (see settings.py)."""
import ipaddress

import pulumi
import pulumi_gcp as gcp

POSTGRES_PORT = 5432


class Database(pulumi.ComponentResource):
    def __init__(self, name, settings, network, opts=None):
        super().__init__("phoenix:gcp:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        reserved = ipaddress.ip_network(settings.db_private_range)
        self.private_range = str(reserved)

        self.range = gcp.compute.GlobalAddress(
            f"{name}-private-range",
            network=network.vpc.id,
            purpose="VPC_PEERING",
            address_type="INTERNAL",
            address=str(reserved.network_address),
            prefix_length=reserved.prefixlen,
            opts=child)
        self.peering = gcp.servicenetworking.Connection(
            f"{name}-peering",
            network=network.vpc.id,
            service="servicenetworking.googleapis.com",
            reserved_peering_ranges=[self.range.name],
            opts=child)
        self.instance = gcp.sql.DatabaseInstance(
            f"{name}-instance",
            database_version=settings.db_version,
            region=settings.region,
            deletion_protection=settings.prod,
            settings={
                "tier": settings.db_tier,
                "edition": "ENTERPRISE",
                "availability_type": "REGIONAL" if settings.prod else "ZONAL",
                "deletion_protection_enabled": settings.prod,
                "ip_configuration": {
                    "ipv4_enabled": False,
                    "private_network": network.vpc.id,
                    "ssl_mode": "ENCRYPTED_ONLY",
                },
                "backup_configuration": {
                    "enabled": True,
                    "point_in_time_recovery_enabled": True,
                    "start_time": "03:00",
                    "transaction_log_retention_days": 7,
                    "backup_retention_settings": {"retained_backups": settings.backup_retention},
                },
                "database_flags": [{"name": "log_min_duration_statement", "value": "1000"}],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.peering]))
        self.database = gcp.sql.Database(
            f"{name}-db", name=settings.db_name, instance=self.instance.name, opts=child)
        self.user = gcp.sql.User(
            f"{name}-user",
            name=settings.db_user,
            instance=self.instance.name,
            password=settings.db_password,
            opts=child)

        self.outputs = {
            "host": self.instance.private_ip_address,
            "port": POSTGRES_PORT,
            "name": self.database.name,
            "user": self.user.name,
            "password": pulumi.Output.secret(settings.db_password),
        }
        self.register_outputs(self.outputs)
