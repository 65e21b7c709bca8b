"""Stack configuration for the phoenix.deploy infrastructure program.

Every key lives in the ``phoenix-infra`` namespace. ``platform`` picks the
driver (``local``, ``gce``, ``kubernetes``); it and ``artifacts`` are
required everywhere, the rest depends on the platform. Unknown platforms and
missing keys fail here, before any resource is declared.
"""
from dataclasses import dataclass, field

import pulumi

PLATFORMS = ("local", "gce", "kubernetes")


@dataclass(frozen=True)
class StackConfig:
    platform: str
    stack: str
    artifacts: list
    raw: pulumi.Config = field(repr=False)

    def get(self, key, default=None):
        value = self.raw.get(key)
        return default if value is None else value

    def get_int(self, key, default=None):
        value = self.raw.get_int(key)
        return default if value is None else value

    def get_bool(self, key, default=None):
        value = self.raw.get_bool(key)
        return default if value is None else value

    def get_object(self, key, default=None):
        value = self.raw.get_object(key)
        return default if value is None else value

    def require(self, key):
        value = self.raw.get(key)
        if value in (None, ""):
            raise pulumi.RunError(
                f"stack '{self.stack}' (platform {self.platform}) needs config "
                f"'phoenix-infra:{key}': set it with `pulumi config set {key} <value> -s {self.stack}`"
            )
        return value


def load() -> StackConfig:
    raw = pulumi.Config("phoenix-infra")
    stack = pulumi.get_stack()
    platform = raw.get("platform")
    if platform not in PLATFORMS:
        raise pulumi.RunError(
            f"config 'phoenix-infra:platform' is {platform!r}; allowed: {', '.join(PLATFORMS)} "
            f"(set it with `pulumi config set platform local -s {stack}`)"
        )
    artifacts = raw.get_object("artifacts") or []
    if not artifacts or not all(isinstance(a, str) and a.isidentifier() for a in artifacts):
        raise pulumi.RunError(
            "config 'phoenix-infra:artifacts' must be a non-empty list of artifact names "
            "(letters, digits, underscores), e.g. [catalog]: "
            f"`pulumi config set --path 'artifacts[0]' catalog -s {stack}`"
        )
    cluster = raw.get("cluster")
    if platform == "kubernetes" and cluster not in (None, "gke", "local"):
        raise pulumi.RunError(
            f"config 'phoenix-infra:cluster' is {cluster!r}; allowed: gke (default), local "
            f"(set it with `pulumi config set cluster local -s {stack}`)"
        )
    return StackConfig(platform=platform, stack=stack, artifacts=list(artifacts), raw=raw)
