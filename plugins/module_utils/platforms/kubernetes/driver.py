# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the three Kubernetes roles share: the API client (``api.Kube``), the
infra outputs, the (artifact, environment) of each group, the gateway's
HAProxy counters.

All state lives in the cluster (observable after a controller restart):
the Deployment and Service of each release (labels: ``objects.OWNED`` plus
artifact, environment, release, group; annotations: image, owner) and the
HTTPRoute of each (artifact, environment) whose backend weights are the
traffic shares.  The driver keeps nothing but caches and counter snapshots.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DRAINING, FAILED, READY, STARTING, Clock, Health, InstanceHealth, PlatformError, ServerGroup,
    WaitTimeout, wait_until)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms import counters as _counters
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import objects as o
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import (
    GATEWAY_GROUP, GATEWAY_VERSION, Conflict, Kube, NotFound)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.haproxy import (
    RuntimeAPI, RuntimeAPIError)
from ansible_collections.phoenix.deploy.plugins.module_utils import registry as _registry

DEFAULT_GATEWAY = "phoenix"
DEFAULT_HEALTH_PATH = "/healthz"
#: the OCI image label the bake writes with the service's health path (images._oci_config)
HEALTH_LABEL = "io.phoenix.deploy.health.http-path"


class KubernetesDriver:
    """The infra's cluster as one platform: groups are Deployments + Services,
    traffic is the HTTPRoute's backend weights, metrics the gateway's HAProxy
    counters (``kubernetes.gateway.haproxy_socket``; none: inconclusive)."""

    name = "kubernetes"
    poll_interval = 0.25

    def __init__(self, infra: dict, drain_timeout: float = 10.0, prestop_seconds: int = 3,
                 verify_timeout: float = 60.0, health_path: str = DEFAULT_HEALTH_PATH,
                 clock: Optional[Clock] = None):
        if infra.get("platform") != "kubernetes":
            raise PlatformError("infra: platform is %r; the kubernetes driver needs the outputs of a "
                                "kubernetes stack" % infra.get("platform"), param="infra")
        kube = infra.get("kubernetes")
        if not isinstance(kube, dict) or not kube.get("namespace"):
            raise PlatformError("infra: the stack outputs lack kubernetes.namespace; pass the outputs of a "
                                "kubernetes stack (phoenix.deploy.pulumi_stack, show_secrets: true)",
                                param="infra")
        self.infra = infra
        self.kube = Kube(kube)
        self.namespace = kube["namespace"]
        self.service_names = dict(kube.get("service_names") or {})
        gateway = kube.get("gateway") or {}
        self.gateway = gateway.get("name") or DEFAULT_GATEWAY
        self.routes = gateway.get("routes") or {}  # {artifact: HTTPRoute}: objects.stack_route
        socket = gateway.get("haproxy_socket")
        self.haproxy = RuntimeAPI(socket) if socket else None
        self.database = dict(infra.get("database") or {})
        self.drain_timeout = float(drain_timeout)
        self.prestop_seconds = int(prestop_seconds)
        self.verify_timeout = float(verify_timeout)
        self.health_path = health_path
        self.clock = clock or Clock()
        self.history = _counters.CounterHistory()
        self._where = {}  # group -> (artifact, environment)
        self._ports = {}  # artifact -> (service port, target port)
        self._health = {}  # image ref -> health path
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def call(self, what, fn, *args, **kwargs):
        return self.kube.call(what, fn, *args, **kwargs)

    def ports(self, artifact) -> tuple:
        """(port, targetPort) of the artifact's Service in the stack."""
        if artifact not in self._ports:
            name = self.service_names.get(artifact)
            if not name:
                raise PlatformError("artifact %s has no Service in the stack (service_names: %s); add it to "
                                    "the stack's artifacts config and run pulumi up"
                                    % (artifact, ", ".join(sorted(self.service_names)) or "none"),
                                    param="artifact")
            try:
                svc = self.call("read Service %s" % name, self.kube.core.read_namespaced_service,
                                name, self.namespace)
            except NotFound:
                raise PlatformError("artifact %s: the stack's Service %s is missing in namespace %s; run "
                                    "pulumi up of the stack" % (artifact, name, self.namespace),
                                    param="artifact")
            port = svc.spec.ports[0]
            target = port.target_port if isinstance(port.target_port, int) else port.port
            self._ports[artifact] = (int(port.port), int(target))
        return self._ports[artifact]

    def image_health_path(self, ref) -> str:
        """The health path of image ``ref``: its ``HEALTH_LABEL`` when the image
        is in one of the stack's registries (read from its config; a missing
        image is refused naming ``image``), else ``health_path``."""
        if ref in self._health:
            return self._health[ref]
        host, _sep, rest = ref.partition("/")
        repo, _sep, digest = rest.partition("@")
        url = next((u for u in (self.infra.get("registries") or {}).values()
                    if u and urllib.parse.urlsplit(u if "://" in u else "https://" + u).netloc == host), None)
        path = self.health_path
        if url is not None:
            reg = _registry.Registry(url, param="image")
            try:
                prefix = reg.prefix + "/" if reg.prefix else ""
                repo = repo[len(prefix):] if prefix and repo.startswith(prefix) else repo
                raw = reg.manifest(repo, digest=digest, param="image")[0]
                config = json.loads(raw).get("config") or {}
                if config.get("digest"):
                    status, _headers, body = reg._http(  # pylint: disable=protected-access
                        "GET", "/v2/%s/blobs/%s" % (reg.path(repo), config["digest"]), param="image")
                    if status == 200:
                        labels = (json.loads(body).get("config") or {}).get("Labels") or {}
                        path = labels.get(HEALTH_LABEL) or path
            except _registry.RegistryDown as exc:
                raise PlatformError(exc.msg, param="image", transient=True)
            except _registry.RegistryError as exc:
                raise PlatformError(exc.msg, param="image")
            except ValueError as exc:
                raise PlatformError("image %s: unreadable manifest or config: %s" % (ref, exc), param="image")
            finally:
                reg.close()
        if not isinstance(path, str) or not path.startswith("/"):
            raise PlatformError("image %s: health path %r is not an absolute HTTP path" % (ref, path), param="image")
        self._health[ref] = path
        return path

    def base_env(self, artifact) -> dict:
        env = {"BIND": "0.0.0.0", "PORT": str(self.ports(artifact)[1]),
               "DRAIN_TIMEOUT": "%g" % self.drain_timeout}
        for key, var in (("host", "DB_HOST"), ("port", "DB_PORT"), ("name", "DB_NAME"), ("user", "DB_USER")):
            if self.database.get(key) not in (None, ""):
                env[var] = str(self.database[key])
        return env

    def secret_env(self) -> dict:
        """DB_PASSWORD from the stack's Secret (``database.secret``), never as a value."""
        secret = self.database.get("secret")
        return {"DB_PASSWORD": (str(secret), "password")} if secret else {}

    def config_inputs(self) -> dict:
        return {"DRAIN_TIMEOUT": "%g" % self.drain_timeout, "namespace": self.namespace,
                "health_path": self.health_path}

    def _read_deployment(self, group):
        try:
            return self.call("read Deployment %s" % group, self.kube.apps.read_namespaced_deployment,
                             group, self.namespace)
        except NotFound:
            return None

    def _read_service(self, group):
        try:
            return self.call("read Service %s" % group, self.kube.core.read_namespaced_service,
                             group, self.namespace)
        except NotFound:
            return None

    @staticmethod
    def _ours(obj) -> bool:
        labels = (obj.metadata.labels or {}) if obj is not None else {}
        return labels.get(o.MANAGED_BY) == o.OWNED[o.MANAGED_BY]

    def where(self, group) -> tuple:
        """(artifact, environment) of ``group`` (from its labels)."""
        if group not in self._where:
            obj = self._read_deployment(group) or self._read_service(group)
            if obj is None or not self._ours(obj):
                raise PlatformError("no server group %r in namespace %s" % (group, self.namespace))
            labels = obj.metadata.labels
            self._where[group] = (labels[o.ARTIFACT], labels[o.ENVIRONMENT])
        return self._where[group]

    # ------------------------------------------------------------------ groups
    def create_group(self, artifact, environment, release_id, image, size, env, name, owner=None) -> ServerGroup:
        """Get-or-create the release's Service, Deployment and route backend
        (weight 0): a rerun after a crash converges; a same-named group of
        another release or image is refused."""
        o.check_image(image)
        self.route_name(artifact, environment)  # a stack route of another name: refused before anything is made
        port, target = self.ports(artifact)
        full_env = self.base_env(artifact)
        full_env.update({str(k): str(v) for k, v in (env or {}).items()})
        full_env["PORT"] = str(target)
        svc = o.service(self.namespace, artifact, environment, release_id, name, port, target, image, owner)
        dep = o.deployment(self.namespace, artifact, environment, release_id, name, image, size, full_env,
                           target, self.image_health_path(image), owner, self.prestop_seconds, self.drain_timeout,
                           secret_env=self.secret_env())
        self._get_or_create("Service", name, svc, self.kube.core.create_namespaced_service, self._read_service)
        self._get_or_create("Deployment", name, dep, self.kube.apps.create_namespaced_deployment,
                            self._read_deployment)
        self._where[name] = (artifact, environment)
        self.history.drop(name)
        self.edit_route(artifact, environment, {name: 0}, attach_zero=True)
        return ServerGroup(name, artifact, environment, release_id, image, size, 0, True, owner=owner)

    def _get_or_create(self, kind, name, body, create, read):
        try:
            self.call("create %s %s" % (kind, name), create, self.namespace, body)
            return
        except Conflict:
            pass
        have = read(name)
        if have is None:  # deleted in between: the next attempt creates it
            raise PlatformError("%s %s was being deleted; retrying" % (kind, name), transient=True)
        labels = have.metadata.labels or {}
        wanted = body["metadata"]["labels"]
        image = (have.metadata.annotations or {}).get(o.IMAGE)
        if have.metadata.deletion_timestamp or any(labels.get(k) != v for k, v in wanted.items()) or \
                image != body["metadata"]["annotations"][o.IMAGE]:
            raise PlatformError("server group %r already exists (%s %s of release %s, image %s)"
                                % (name, kind, name, labels.get(o.RELEASE), image))

    def _refuse_deleting(self, group, what):
        """A group whose deletion the API server accepted is never scaled or
        routed to again (the garbage collector owns it now)."""
        dep = self._read_deployment(group)
        if dep is None:
            raise PlatformError("no server group %r in namespace %s (its Deployment is gone); it cannot be %s"
                                % (group, self.namespace, what))
        if dep.metadata.deletion_timestamp:
            raise PlatformError("server group %s is being deleted (Deployment %s has a deletionTimestamp); "
                                "it cannot be %s; deploy or restore the release as a new group"
                                % (group, group, what))

    def resize(self, group, size) -> None:
        self.where(group)
        self._refuse_deleting(group, "scaled")
        self.call("scale Deployment %s" % group, self.kube.apps.patch_namespaced_deployment, group,
                  self.namespace, {"spec": {"replicas": int(size)}})

    def health(self, group) -> Health:
        dep = self._read_deployment(group)
        if dep is None or not self._ours(dep):
            raise PlatformError("no server group %r in namespace %s" % (group, self.namespace))
        match = ",".join("%s=%s" % item for item in sorted(dep.spec.selector.match_labels.items()))
        pods = self.call("list pods of %s" % group, self.kube.core.list_namespaced_pod, self.namespace,
                         label_selector=match).items
        out = [self._pod_health(pod) for pod in sorted(pods, key=lambda p: p.metadata.name)]
        if dep.metadata.deletion_timestamp:  # being deleted: no pod of it is capacity any more
            out = [InstanceHealth(i.name, DRAINING, "group being deleted", i.restarts) for i in out]
        for cond in (dep.status.conditions or []) if dep.status else []:
            # pods that cannot even be made (quota, admission) or a rollout past its deadline
            if (cond.type == "ReplicaFailure" and cond.status == "True") or \
                    (cond.type == "Progressing" and cond.status == "False"):
                out.append(InstanceHealth(group, FAILED, "Deployment %s: %s: %s" % (
                    cond.type, cond.reason, cond.message)))
        self._snapshot_quietly(group)
        return Health(sum(1 for i in out if i.state == READY), len(out), out)

    @staticmethod
    def _pod_health(pod) -> InstanceHealth:
        name = pod.metadata.name
        statuses = (pod.status.container_statuses or []) if pod.status else []
        restarts = sum(int(s.restart_count or 0) for s in statuses)
        if pod.metadata.deletion_timestamp:
            return InstanceHealth(name, DRAINING, "terminating", restarts)
        for status in statuses:
            waiting = status.state.waiting if status.state else None
            if waiting is not None and waiting.reason in o.FAIL_REASONS:
                detail = "%s: %s" % (waiting.reason, waiting.message or "")
                last = status.last_state.terminated if status.last_state else None
                if last is not None:
                    detail += " (last exit code %s%s)" % (last.exit_code, ", %s" % last.reason if last.reason
                                                          else "")
                return InstanceHealth(name, FAILED, detail.strip(), restarts)
        conditions = {c.type: c for c in (pod.status.conditions or [])} if pod.status else {}
        ready = conditions.get("Ready")
        if ready is not None and ready.status == "True":
            return InstanceHealth(name, READY, "ready", restarts)
        if pod.status is not None and pod.status.phase == "Failed":
            return InstanceHealth(name, FAILED, "pod failed: %s %s" % (pod.status.reason or "",
                                                                       pod.status.message or ""), restarts)
        scheduled = conditions.get("PodScheduled")
        if scheduled is not None and scheduled.status == "False":
            return InstanceHealth(name, STARTING, "not scheduled: %s" % (scheduled.message or scheduled.reason))
        detail = (pod.status.phase or "pending").lower() if pod.status else "pending"
        if ready is not None and ready.message:
            detail += ": " + ready.message
        return InstanceHealth(name, STARTING, detail, restarts)

    def destroy(self, group) -> None:
        """Remove the group from the route, then delete its Deployment (foreground:
        pods first) and Service; a gone group is done (404).  Returns once the
        API server accepted the deletes: the garbage collector removes the pods
        (each after its ``preStop`` and grace period) and ``list_groups``
        reports the group ``deleting`` until it is gone (base.destroy_done)."""
        dep, svc = self._read_deployment(group), self._read_service(group)
        for obj, kind in ((dep, "Deployment"), (svc, "Service")):
            if obj is not None and not self._ours(obj):
                raise PlatformError("%s %s in namespace %s is not managed by phoenix.deploy; not deleting it"
                                    % (kind, group, self.namespace))
        if dep is None and svc is None:
            return
        labels = (dep or svc).metadata.labels
        self._where[group] = (labels[o.ARTIFACT], labels[o.ENVIRONMENT])
        self.edit_route(labels[o.ARTIFACT], labels[o.ENVIRONMENT], {}, remove=[group], create=False)
        body = {"propagationPolicy": "Foreground"}
        for obj, kind, fn in ((dep, "Deployment", self.kube.apps.delete_namespaced_deployment),
                              (svc, "Service", self.kube.core.delete_namespaced_service)):
            if obj is None or obj.metadata.deletion_timestamp:
                continue
            try:
                self.call("delete %s %s" % (kind, group), fn, group, self.namespace, body=body)
            except NotFound:
                pass
        self.history.drop(group)

    def list_groups(self, artifact, environment) -> list:
        match = ",".join("%s=%s" % item for item in sorted(dict(
            o.OWNED, **{o.ARTIFACT: o.label_value(artifact, "artifact"),
                        o.ENVIRONMENT: o.label_value(environment, "environment")}).items()))
        deps = self.call("list Deployments", self.kube.apps.list_namespaced_deployment, self.namespace,
                         label_selector=match).items
        svcs = self.call("list Services", self.kube.core.list_namespaced_service, self.namespace,
                         label_selector=match).items
        route = self.read_route(artifact, environment)
        weights = o.weights_of(route) if route else {}
        found, alive = {}, set()
        for obj in list(svcs) + list(deps):  # a Deployment's view wins over its Service's
            found[obj.metadata.name] = obj
            if not obj.metadata.deletion_timestamp:
                alive.add(obj.metadata.name)
        out = []
        for name, obj in sorted(found.items()):
            labels, notes = obj.metadata.labels or {}, obj.metadata.annotations or {}
            # the API server accepted the deletion of all the group's objects: the
            # garbage collector finishes it, the group has no capacity left
            deleting = name not in alive
            size = 0 if deleting else int(getattr(obj.spec, "replicas", None) or 0)  # a Service alone: 0
            self._where[name] = (artifact, environment)
            out.append(ServerGroup(name, artifact, environment, labels.get(o.RELEASE), notes.get(o.IMAGE),
                                   size, weights.get(name, 0), name in weights, notes.get(o.OWNER),
                                   deleting=deleting))
        return out

    # ------------------------------------------------------------------ route
    def route_name(self, artifact, environment) -> str:
        """The stack's route (``kubernetes.gateway.routes``) when it names one, else ``objects.route_name``."""
        return o.stack_route(self.routes, artifact, environment)

    def read_route(self, artifact, environment) -> Optional[dict]:
        name = self.route_name(artifact, environment)
        try:
            return self.call("read HTTPRoute %s" % name,
                             self.kube.custom.get_namespaced_custom_object, GATEWAY_GROUP, GATEWAY_VERSION,
                             self.namespace, "httproutes", name)
        except NotFound as exc:
            if "the server could not find the requested resource" in str(exc):
                raise PlatformError("the cluster has no Gateway API HTTPRoute resource (%s); install the Gateway "
                                    "API CRDs (the stack's gateway does) or use another traffic router"
                                    % exc, param="infra")
            return None

    def edit_route(self, artifact, environment, weights, attach_zero=False, remove=(), create=True):
        """Read-edit-replace the route with its resourceVersion (409: read
        again and retry); create it (ours) when missing."""
        ports = {g: self.ports(artifact)[0] for g in weights}
        name = self.route_name(artifact, environment)
        for _attempt in range(10):
            current = self.read_route(artifact, environment)
            if current is None:
                if not create:
                    return
                body = o.route(self.namespace, artifact, environment, self.gateway)
                o.edit_backends(body, weights, ports, attach_zero, remove)
                try:
                    self.call("create HTTPRoute %s" % name, self.kube.custom.create_namespaced_custom_object,
                              GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, "httproutes", body)
                    return
                except Conflict:
                    continue
            if not o.edit_backends(current, weights, ports, attach_zero, remove):
                return
            current.pop("status", None)
            try:
                self.call("replace HTTPRoute %s" % name, self.kube.custom.replace_namespaced_custom_object,
                          GATEWAY_GROUP, GATEWAY_VERSION, self.namespace, "httproutes", name, current)
                return
            except Conflict:
                continue
        raise PlatformError("HTTPRoute %s kept changing under us (10 conflicts in a row); retrying" % name,
                            transient=True)

    def set_weights(self, weights) -> None:
        by_route = {}
        for group, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise PlatformError("weight %r of %s out of range 0..100" % (weight, group))
            by_route.setdefault(self.where(group), {})[group] = weight
            if weight > 0:
                self._refuse_deleting(group, "given traffic")
        for (artifact, environment), wanted in by_route.items():
            self.edit_route(artifact, environment, wanted)
        for group in weights:
            self._snapshot_quietly(group)

    def verify_weights(self, weights) -> bool:
        """True once the route has ``weights`` and the gateway accepted it at
        its current generation; False while not yet; a refused route raises
        (the gateway's reason and the fix)."""
        by_route = {}
        for group, weight in weights.items():
            try:
                by_route.setdefault(self.where(group), {})[group] = weight
            except PlatformError:
                return False
        for (artifact, environment), wanted in by_route.items():
            # the gateway reports a new generation within tens of milliseconds: while the
            # route has the wanted weights but no verdict on them yet, look again for up to
            # ``verify_patience`` seconds rather than answer False for a whole engine poll
            patience = self.clock.now() + self.verify_patience
            while True:
                route = self.read_route(artifact, environment)
                verdict, detail = o.route_verdict(route or {}, wanted, self.gateway)
                self.last_verdict = detail
                if verdict == "refused":
                    raise PlatformError("HTTPRoute %s: %s; check that the Gateway %s exists in namespace %s and "
                                        "its listeners allow this route" % (self.route_name(artifact, environment),
                                                                            detail, self.gateway, self.namespace))
                pending = route is not None and verdict is False and all(
                    o.weights_of(route).get(g, 0 if w == 0 else None) == w for g, w in wanted.items())
                if verdict is True or not pending or self.clock.now() >= patience:
                    break
                self.clock.sleep(0.03)
            if verdict is not True:
                return False
        for group in weights:
            self._snapshot_quietly(group)
        return True

    last_verdict = ""
    #: seconds ``verify_weights`` re-reads a route whose new generation the gateway has not judged yet
    verify_patience = 0.3

    def _drained(self, group) -> bool:
        """True when the gateway has no request open or queued on ``group``'s
        endpoints (HAProxy ``scur`` + ``qcur``); False while it has, or cannot say."""
        try:
            stats = self.stats(group)
        except PlatformError:  # the gateway cannot answer now: keep to the drain time
            return False
        return stats is not None and not any(
            int(row.get("scur") or 0) + int(row.get("qcur") or 0) for row in stats.values())

    def drain_and_detach(self, group) -> None:
        """Weight 0, wait until the gateway serves it, let in-flight requests
        finish, then remove the backend.  With the gateway's HAProxy socket the
        wait ends as soon as no request is open or queued on the group's
        endpoints (at most ``drain_timeout``; one still open after that is not
        cut: HAProxy keeps a removed server's sessions, and a destroyed pod
        still runs its ``preStop`` and grace period); without it, the whole
        ``drain_timeout``."""
        artifact, environment = self.where(group)
        route = self.read_route(artifact, environment)
        if route is None or group not in o.weights_of(route):
            return
        self.edit_route(artifact, environment, {group: 0})
        try:
            wait_until(lambda: self.verify_weights({group: 0}), self.clock.now() + self.verify_timeout,
                       self.poll_interval, lambda: "gateway %s to serve weight 0 for %s (%s)" % (
                           self.gateway, group, self.last_verdict), self.clock)
        except WaitTimeout as exc:
            raise PlatformError(str(exc), transient=True)
        if self.haproxy is None:
            self.clock.sleep(self.drain_timeout)
        else:
            try:
                wait_until(lambda: self._drained(group), self.clock.now() + self.drain_timeout, 0.05,
                           "requests in flight on %s" % group, self.clock)
            except WaitTimeout:
                pass  # not cut: HAProxy keeps a removed server's sessions, the pod runs its preStop
        self.edit_route(artifact, environment, {}, remove=[group], create=False)

    # ------------------------------------------------------------------ counters
    def backend(self, group) -> str:
        artifact, environment = self.where(group)
        return "be_%s_%s" % (self.namespace, self.route_name(artifact, environment))

    def stats(self, group) -> Optional[dict]:
        """The gateway's ``show stat`` rows of ``group`` (one server per endpoint of the
        group's Service, named ``<group>~<n>`` or ``<group>.<n>``); None without a gateway socket."""
        if self.haproxy is None:
            return None
        try:
            rows = self.haproxy.stat(self.backend(group))
        except RuntimeAPIError as exc:
            if "no such" in str(exc).lower() or "unknown" in str(exc).lower():
                rows = {}  # the gateway has not made the route's backend yet
            else:
                raise PlatformError("gateway HAProxy show stat: %s" % exc,
                                    transient=isinstance(exc.__context__, ConnectionError))
        return {k: v for k, v in rows.items() if k.startswith((group + "~", group + "."))}

    def snapshot(self, group) -> Optional[dict]:
        stats = self.stats(group)
        if stats is None:
            return None
        members = [{"instance": n} for n in sorted(stats)]
        try:
            epoch = self.haproxy.process_id()
        except RuntimeAPIError as exc:
            raise PlatformError("gateway HAProxy show info: %s" % exc, transient=True)
        with self._lock:
            self.history.add(group, self.clock.now(), _counters.counters(members, stats), epoch)
        return stats

    def _snapshot_quietly(self, group):
        """A counter snapshot at a health poll or weight change; a gateway that
        cannot answer now only costs this snapshot."""
        if self.haproxy is None:
            return
        try:
            self.snapshot(group)
        except PlatformError:
            pass
