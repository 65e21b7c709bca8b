"""The stack outputs contract shared by every platform.

The rollout engine reads these keys (and nothing else) from a stack. Keys a
platform does not have are exported as ``None``.

- platform:          "local" | "gce" | "kubernetes"
- network:           {name, cidr, [address, port_range: [first, last] for instances,
                      ports: {infra port name: port}] (local)}
- database:          {host, port, name, user, password (Pulumi secret)}
- load_balancer:     {address, url, backends: {artifact: backend name},
                      [stats_url, runtime_api (unix socket path), server_record (the
                      engine's runtime servers, restored when HAProxy restarts)] (local)}
- instance_manager:  local: {kind: "supervisord", endpoint: "unix://...", include_dir}
- gce:               {project, region, zone?, network, subnetwork, service_account,
                      network_tags, backend_services: {artifact: name}, health_check}
- kubernetes:        {api_server (https URL), namespace, deployer_service_account,
                      ca_cert (PEM, not secret), token (secret; None on GKE: credentials
                      come from gke-gcloud-auth-plugin), kubeconfig (secret: path of a
                      0600 kubeconfig of the deployer; None on GKE),
                      service_names: {artifact: name}, labels,
                      gateway: {name, class, url: {artifact: url}, routes: {artifact: HTTPRoute
                      name, route_name(artifact, environment): the one route the rollout driver
                      edits}, haproxy_socket (local: the gateway HAProxy's runtime API; None on
                      GKE)}}: KUBERNETES_KEYS, the same on GKE and on the local cluster
                      (cluster: local)
- registries:        {dev: url, prod: url}: container registries; bakes push to dev,
                      promotion copies by digest to prod. local: http://<address>:<port>
                      (docker-registry, storage.delete off in prod); gce / kubernetes:
                      <location>-docker.pkg.dev/<project>/<repository> (Artifact Registry)
- state_dir:         local: the stack's runtime directory (data, configs, sockets)
"""
import hashlib
import re

KEYS = ("platform", "network", "database", "load_balancer", "instance_manager",
        "gce", "kubernetes", "registries", "state_dir")
KUBERNETES_KEYS = ("api_server", "namespace", "deployer_service_account", "ca_cert", "token", "kubeconfig",
                   "service_names", "labels", "gateway")
GATEWAY_KEYS = ("name", "class", "url", "routes", "haproxy_socket")


def complete(outputs: dict) -> dict:
    """Return outputs with every contract key present (missing ones as None);
    reject keys outside the contract so drift is caught in unit tests."""
    unknown = set(outputs) - set(KEYS)
    if unknown:
        raise ValueError(f"outputs outside the contract: {sorted(unknown)}")
    return {key: outputs.get(key) for key in KEYS}


_NOT_DNS = re.compile(r"[^a-z0-9]+")


def route_name(artifact: str, environment: str) -> str:
    """The HTTPRoute of one (artifact, environment), ``<artifact>-<environment>``
    as a DNS-1123 label starting with a letter: the name the Kubernetes rollout
    driver edits (``plugins/module_utils/platforms/kubernetes/objects.route_name``,
    i.e. ``platforms.base.dns_label``; a unit test keeps the two equal). Both
    Kubernetes stacks export it as ``kubernetes.gateway.routes[artifact]``."""
    raw = f"{artifact}-{environment}"
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    if not name[:1].isalpha():
        name = "g-" + name
    if len(name) > 63:
        name = "%s-%s" % (name[:54].rstrip("-"), hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8])
    return name
