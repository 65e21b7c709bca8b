"""A gcp-* stack's infra, made in the schema-checking Google fake
(tests/gcp_fake): the resources the Pulumi program declares for the driver
(health check, one EXTERNAL_MANAGED backend service per artifact, the URL map
with a weighted route per artifact) and the ``gce`` outputs it exports, plus a
baked image.  Shared by the GCE driver tests."""
from gcp_fake import GoogleFake

PROJECT, REGION = "phoenix-fake", "europe-west1"


class FakeClock:
    """Engine clock whose ``sleep`` advances time (no test ever sleeps)."""

    def __init__(self, start=1_800_000_000.0):
        self.t = start

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(seconds, 0)


def make_stack(fake: GoogleFake, artifacts=("catalog",), scheme="EXTERNAL_MANAGED") -> dict:
    fake.add("healthChecks", {"name": "phoenix-health", "type": "HTTP", "checkIntervalSec": 5,
                              "httpHealthCheck": {"port": 8080, "requestPath": "/healthz"}})
    for artifact in artifacts:
        fake.add("backendServices", {
            "name": "phoenix-%s" % artifact, "loadBalancingScheme": scheme, "protocol": "HTTP",
            "portName": "http", "timeoutSec": 30,
            "healthChecks": [fake.link("global/healthChecks/phoenix-health")],
            "connectionDraining": {"drainingTimeoutSec": 30}})
    default, others = artifacts[0], artifacts[1:]

    def weighted(artifact):
        return {"weightedBackendServices": [
            {"backendService": fake.link("global/backendServices/phoenix-%s" % artifact), "weight": 100}]}
    if scheme == "EXTERNAL_MANAGED":
        matcher = {"name": "artifacts", "defaultRouteAction": weighted(default)}
        if others:
            matcher["pathRules"] = [{"paths": ["/%s" % a, "/%s/*" % a], "routeAction": weighted(a)}
                                    for a in others]
    else:  # a classic load balancer: no weighted routes
        matcher = {"name": "artifacts",
                   "defaultService": fake.link("global/backendServices/phoenix-%s" % default)}
    fake.add("urlMaps", {"name": "phoenix-urls",
                         "defaultService": fake.link("global/backendServices/phoenix-%s" % default),
                         "hostRules": [{"hosts": ["*"], "pathMatcher": "artifacts"}],
                         "pathMatchers": [matcher]})
    return {
        "platform": "gce",
        "database": {"host": "10.64.0.3", "port": 5432, "name": "phoenix", "user": "phoenix",
                     "password": "not-a-real-password"},
        "gce": {
            "project": fake.project, "region": fake.region, "network": "phoenix-net",
            "subnetwork": "phoenix-subnet",
            "service_account": "phoenix@%s.iam.gserviceaccount.com" % fake.project,
            "network_tags": ["phoenix-gcp-dev"],
            "backend_services": {a: "phoenix-%s" % a for a in artifacts},
            "health_check": "phoenix-health", "url_map": "phoenix-urls", "path_matcher": "artifacts",
            "routes": {a: {"path_matcher": "artifacts",
                           "paths": None if a == default else ["/%s" % a, "/%s/*" % a]} for a in artifacts},
            "named_port": "http", "port": 8080,
            "db_password_secret": "projects/%s/secrets/phoenix-db-password/versions/1" % fake.project,
        },
    }


def image(fake: GoogleFake, name="catalog-v1-4-0-abc1234-b7") -> str:
    """The ``projects/<p>/global/images/<name>`` path of a baked image in the fake."""
    link = fake.add_image(name)
    return link[link.index("projects/"):]
