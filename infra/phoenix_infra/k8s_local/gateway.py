"""The local cluster's gateway: the Gateway API standard CRDs, GatewayClass
``phoenix-haproxy``, Gateway ``phoenix`` with one HTTP listener per artifact
on a loopback port of the stack's block, an HAProxy (the local platform's
provider with its own config) serving those ports, and the gateway controller
(``gateway_controller.py``) that implements HTTPRoute on that HAProxy.

Frontend routing: one listener (and HAProxy frontend) per artifact, each on
its own port, serving the one route ``<artifact>-<environment>``, whose
HAProxy backend is ``be_<namespace>_<route>``; no Host or path routing.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys

import pulumi
from pulumi import dynamic
from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from phoenix_infra.contract import route_name
from phoenix_infra.k8s_local import providers
from phoenix_infra.local import procs
from phoenix_infra.local.providers import HAProxyProvider, _Provider

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GATEWAY_CLASS = "phoenix-haproxy"
CONTROLLER_NAME = "phoenix.deploy/haproxy-gateway"
GATEWAY = "phoenix"
CONTROLLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gateway_controller.py")


def crd_dir():
    """The Gateway API standard CRDs (fetched once per user by
    ``scripts/install-gateway-api.sh``, which ``make setup`` runs)."""
    script = os.path.join(ROOT, "scripts", "install-gateway-api.sh")
    found = subprocess.run([script, "--which"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        installed = subprocess.run([script], capture_output=True, text=True, check=False)
        found = subprocess.run([script, "--which"], capture_output=True, text=True, check=False)
        if found.returncode != 0:
            raise pulumi.RunError("the Gateway API CRDs are missing and could not be fetched: "
                                  f"{(installed.stdout + installed.stderr).strip()[-500:]}; run `make setup`")
    return found.stdout.strip()


def crd_files(directory):
    """``{file name: sha256}`` of the CRD manifests in ``directory``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path, "rb") as fh:
            out[os.path.basename(path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def backend_name(namespace, route):
    return procs.haproxy.gateway_backend(namespace, route)


class CrdsProvider(_Provider):
    """Every CustomResourceDefinition in ``dir`` (``files``: name -> sha256),
    created or replaced through the official client and waited for until
    Established; deleted (with every object of theirs) on delete."""
    KEYS = ("dir", "files")
    REPLACE = ("kubeconfig",)

    @staticmethod
    def _api(props):
        from kubernetes import client
        return client.ApiextensionsV1Api(providers.api_client(props["kubeconfig"]))

    @staticmethod
    def _manifests(props):
        import yaml
        docs = []
        for name in sorted(props["files"]):
            with open(os.path.join(props["dir"], name)) as fh:
                docs += [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == "CustomResourceDefinition"]
        return docs

    def _apply(self, props):
        from kubernetes.client.exceptions import ApiException
        api = self._api(props)
        names = []
        for doc in self._manifests(props):
            name = doc["metadata"]["name"]
            try:
                api.create_custom_resource_definition(doc, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise providers._api_error(exc, f"creating CRD {name}") from None
                current = json.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
                doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
                try:
                    api.replace_custom_resource_definition(name, doc, _preload_content=False)
                except ApiException as exc2:
                    raise providers._api_error(exc2, f"replacing CRD {name}") from None
            names.append(name)

        def established():
            for name in names:
                crd = json.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
                conds = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
                if conds.get("Established") != "True":
                    return False
            return True
        if not procs.wait_until(established, 60, 0.2):
            raise procs.InfraError(f"the Gateway API CRDs were not Established within 60 s: {', '.join(names)}")
        return {**props, "names": names}

    def create(self, props):
        out = self._apply(props)
        return CreateResult("gateway-api-crds", out)

    def update(self, _id, olds, news):
        out = self._apply(news)
        gone = set(olds.get("names") or []) - set(out["names"])
        self._delete(news, gone)
        return UpdateResult(out)

    def read(self, id_, props):
        from kubernetes.client.exceptions import ApiException
        api = self._api(props)
        for name in props.get("names") or []:
            try:
                api.read_custom_resource_definition(name, _preload_content=False)
            except ApiException as exc:
                if exc.status == 404:
                    return ReadResult(None, {})  # `up` installs them again
                raise
        return ReadResult(id_, props)

    def _delete(self, props, names):
        from kubernetes.client.exceptions import ApiException
        api = self._api(props)
        for name in names:
            try:
                api.delete_custom_resource_definition(name, _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:
                    raise

        def gone():
            for name in names:
                try:
                    api.read_custom_resource_definition(name, _preload_content=False)
                    return False
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            return True
        procs.wait_until(gone, 60, 0.3)

    def delete(self, _id, props):
        self._delete(props, props.get("names") or [])


class GatewayHAProxyProvider(HAProxyProvider):
    """The local platform's HAProxy provider with the gateway's config: one
    frontend per listener (``listeners``: artifact -> {listener, port, route,
    backend}), one backend per route (servers come from the controller at
    run time, without health checks: EndpointSlice readiness decides), a
    stats listener."""
    KEYS = ("dir", "address", "listeners", "stats_port")
    REPLACE = ("dir",)

    @staticmethod
    def config(props, sock):
        addr = props["address"]
        lines = ["# written by phoenix.deploy (k8s-local gateway); servers come from the gateway controller",
                 *HAProxyProvider.common(sock)]
        listeners = sorted(props["listeners"].values(), key=lambda x: x["listener"])
        for lst in listeners:
            lines += [f"frontend fe_{lst['listener']}", f"    bind {addr}:{int(lst['port'])}",
                      f"    default_backend {lst['backend']}", ""]
        for lst in listeners:
            lines += [f"backend {lst['backend']}", "    balance roundrobin",
                      "    http-request disable-l7-retry if !METH_GET !METH_HEAD !METH_OPTIONS", ""]
        lines += ["listen stats", f"    bind {addr}:{int(props['stats_port'])}",
                  "    stats enable", "    stats uri /stats", "    stats refresh 5s", ""]
        return "\n".join(lines)

    @staticmethod
    def ports(props):
        return [(int(lst["port"]), f"gateway listener {lst['listener']}") for lst in props["listeners"].values()] + \
            [(int(props["stats_port"]), "gateway stats")]

    @staticmethod
    def server_options(props):
        return ""

    def _apply(self, props, old=None):
        props = {**props, "backends": {a: lst["backend"] for a, lst in props["listeners"].items()}}
        if old is not None:
            old = {**old, "backends": {a: lst["backend"] for a, lst in old["listeners"].items()}}
        super()._apply(props, old)

    @staticmethod
    def recorded_servers(path):
        return []  # after a restart the controller adds them again from the EndpointSlices


class GatewayControllerProvider(providers.DaemonProvider):
    """The gateway controller process; ready once it has listed the routes,
    Services and EndpointSlices and reached HAProxy (it writes ``ready``)."""

    @staticmethod
    def _ready_file(props):
        return os.path.join(props["dir"], "ready")

    def prepare(self, props):
        try:
            os.unlink(self._ready_file(props))
        except FileNotFoundError:
            pass

    def ready(self, props):
        return os.path.exists(self._ready_file(props))


class _Crds(dynamic.Resource, module="phoenix-k8s-local", name="GatewayApiCrds"):
    def __init__(self, name, props, opts):
        super().__init__(CrdsProvider(), name, {**props, "names": None}, opts)


class _GatewayHAProxy(dynamic.Resource, module="phoenix-k8s-local", name="GatewayHAProxy"):
    def __init__(self, name, props, opts):
        super().__init__(GatewayHAProxyProvider(), name,
                         {**props, **{n: None for n in ("runtime_api", "config", "server_record", "running")}}, opts)


class _Controller(dynamic.Resource, module="phoenix-k8s-local", name="GatewayController"):
    def __init__(self, name, props, opts):
        super().__init__(GatewayControllerProvider(), name, {**props, "running": None, "log": None}, opts)


class Gateway(pulumi.ComponentResource):
    """CRDs, GatewayClass, Gateway, HAProxy and the controller (see module doc)."""

    def __init__(self, name, *, cluster, network, namespace, namespace_obj, artifacts, environment, labels,
                 state_dir, opts=None):
        super().__init__("phoenix:k8s-local:Gateway", name, None, opts)
        directory = crd_dir()
        crds = _Crds(f"{name}-crds", {"kubeconfig": cluster.admin_kubeconfig, "dir": directory,
                                      "files": crd_files(directory)},
                     pulumi.ResourceOptions(parent=self, depends_on=[cluster.kubelet]))
        self.listeners = {}
        for artifact in artifacts:
            listener = artifact.replace("_", "-").lower()
            route = route_name(artifact, environment)  # the route the rollout driver edits
            self.listeners[artifact] = {"listener": listener, "route": route,
                                        "backend": backend_name(namespace, route),
                                        "port": network.port(f"gateway_{artifact}")}
        cls = cluster.obj(f"{name}-class", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS, "labels": labels},
            "spec": {"controllerName": CONTROLLER_NAME,
                     "description": "phoenix.deploy: the k8s-local stack's HAProxy on loopback"}}, [crds], self)
        gw = cluster.obj(f"{name}-gateway", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": namespace, "labels": labels},
            "spec": {"gatewayClassName": GATEWAY_CLASS,
                     "addresses": [{"type": "IPAddress", "value": network.address}],
                     "listeners": [{"name": lst["listener"], "port": lst["port"], "protocol": "HTTP",
                                    "allowedRoutes": {"namespaces": {"from": "Same"}, "kinds": [
                                        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]}}
                                   for lst in self.listeners.values()]}}, [crds, cls, namespace_obj], self)
        proxy = _GatewayHAProxy(f"{name}-haproxy", {
            "dir": os.path.join(state_dir, "gateway-haproxy"), "address": network.address,
            "listeners": self.listeners, "stats_port": network.port("gateway_stats"),
        }, pulumi.ResourceOptions(parent=self, depends_on=[network]))
        cdir = os.path.join(state_dir, "gateway-controller")
        config = pulumi.Output.all(proxy.runtime_api, cluster.admin_kubeconfig, proxy.listeners).apply(
            lambda a: json.dumps({
                "kubeconfig": a[1], "namespace": namespace, "gateway": GATEWAY, "gateway_class": GATEWAY_CLASS,
                "controller_name": CONTROLLER_NAME, "socket": a[0], "address": network.address,
                "listeners": {k: {**v, "port": int(v["port"])} for k, v in a[2].items()},
                "ready_file": os.path.join(cdir, "ready"), "tick": 1.0}, indent=1, sort_keys=True) + "\n")
        controller = _Controller(f"{name}-controller", {
            "name": "gateway-controller", "dir": cdir,
            "argv": [sys.executable, CONTROLLER, os.path.join(cdir, "config.json")],
            "ready": {"file": os.path.join(cdir, "ready")}, "files": config.apply(lambda c: {"config.json": c}),
            "timeout": 60,
        }, pulumi.ResourceOptions(parent=self, depends_on=[proxy, gw, crds]))
        self.controller = controller
        self.outputs = {
            "name": GATEWAY, "class": GATEWAY_CLASS,
            "url": {a: pulumi.Output.concat("http://", network.address, ":",
                                            lst["port"].apply(lambda p: str(int(p))), "/")
                    for a, lst in self.listeners.items()},
            "routes": {a: lst["route"] for a, lst in self.listeners.items()},
            "haproxy_socket": proxy.runtime_api,
        }
        self.register_outputs({"name": GATEWAY, "haproxy_socket": proxy.runtime_api})
