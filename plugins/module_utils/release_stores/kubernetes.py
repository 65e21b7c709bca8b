# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release store of a Kubernetes cluster: the history of one (artifact,
environment) in a ConfigMap, its lock in a ``coordination.k8s.io/v1`` Lease,
both in the deployer's namespace, so controllers on different machines share
one history and one lock (as Helm keeps its releases in the cluster).

* History: ConfigMap ``phoenix-releases-<artifact>-<environment>-<hash>``
  (DNS-1123; the hash of the exact names keeps ``a-b``/``c`` and ``a``/``b-c``
  apart), labelled ``app.kubernetes.io/managed-by=phoenix.deploy``, key
  ``history.json`` = the JSON of ``releases.History``.  Every write is a
  compare-and-swap on ``metadata.resourceVersion`` (create when there was
  none): a concurrent writer's HTTP 409 is ``ConflictError``.
* Lock: a Lease of the same name.  ``acquire`` creates it, or replaces (again
  with ``resourceVersion``) one that is free (no ``holderIdentity``), expired
  (``renewTime`` + ``leaseDurationSeconds`` passed) or whose holder provably
  died (same host, process gone); otherwise ``LockHeld`` names the holder
  (``releases.LockHolder`` JSON in the ``phoenix.deploy/holder`` annotation).
  While held, a thread renews ``renewTime`` every ``lease_seconds / 5``; a
  holder that could not renew for 2/3 of the lease considers it lost and
  writes nothing more (``save`` refuses), before anyone may take it over.
  ``release`` deletes the Lease with a resourceVersion precondition.
  Expiry compares the holder's ``renewTime`` with this host's clock, so the
  controllers' clocks must agree to well within the lease (NTP).
* ``store_id`` lives in the ConfigMap ``phoenix-release-store`` (created once).

The deployer's Role needs exactly: configmaps get, create, update; leases
(``coordination.k8s.io``) get, create, update, delete.  Every API error
becomes a ``StoreError`` naming the cause and the fix; unreachable API
servers, HTTP 429 and 5xx are ``transient`` and retried for ``retry_seconds``;
an API server that gave no answer at all (refused, timed out, no route) is
also marked ``details["unreachable"]`` (``pulumi_stack.EnvironmentLocks``
proceeds without the locks then: no rollout can run against it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Clock
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, History, Lock, LockHeld, LockHolder, ReleaseStore, StoreError,
    check_history_data, check_lock_data, check_name, iso)
from ansible_collections.phoenix.deploy.plugins.module_utils.retries import (
    RetryDeadline, retry_transient)

try:
    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes.client.exceptions import ApiException
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None
except ImportError as _exc:  # guarded: the module reports missing_required_lib
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = _exc

    class ApiException(Exception):  # type: ignore[no-redef]
        """Stand-in so ``except ApiException`` compiles without the client."""
        status = 0

MANAGED_BY = "app.kubernetes.io/managed-by"
ARTIFACT = "phoenix.deploy/artifact"
ENVIRONMENT = "phoenix.deploy/environment"
HOLDER = "phoenix.deploy/holder"
HISTORY_KEY = "history.json"
STORE_ID_NAME = "phoenix-release-store"
#: a ConfigMap holds at most 1 MiB with its metadata
MAX_HISTORY_BYTES = 900 * 1024
#: verbs the store uses, by resource (the deployer Role grants exactly these)
VERBS = {"configmaps": ("get", "create", "update"),
         "leases.coordination.k8s.io": ("get", "create", "update", "delete")}


def _verbs() -> str:
    return "; ".join("%s on %s" % (", ".join(v), r) for r, v in VERBS.items())


def missing_dependencies() -> list:
    """``[(python package, import error)]`` this store lacks."""
    return [] if HAS_KUBERNETES else [("kubernetes", KUBERNETES_IMPORT_ERROR)]


def _part(value: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", value.lower())).strip("-") or "x"


def object_name(artifact: str, environment: str) -> str:
    """The ConfigMap and Lease name of (artifact, environment): a valid
    DNS-1123 subdomain, readable, and different for every pair of names."""
    check_name(artifact, "artifact")
    check_name(environment, "environment")
    digest = hashlib.sha256(("%s\0%s" % (artifact, environment)).encode("utf-8")).hexdigest()[:10]
    return "phoenix-releases-%s-%s-%s" % (_part(artifact), _part(environment), digest)


def _micro(ts: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, 6 fraction digits, UTC)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return datetime.strptime(str(value).rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=timezone.utc).timestamp()


def api_client(kube: dict):
    """The official client's ``ApiClient`` for the infra outputs' ``kubernetes``
    entry, made as the Kubernetes driver makes its own (``platforms.kubernetes.api.Kube``:
    ``api_server`` + ``ca_cert`` + ``token``, else the ``kubeconfig``, as on GKE)."""
    if not HAS_KUBERNETES:
        raise StoreError("the kubernetes release store needs the Python package kubernetes on the "
                         "host that runs the module (pip install kubernetes): %s"
                         % KUBERNETES_IMPORT_ERROR, param="store_backend")
    if not isinstance(kube, dict):
        raise StoreError("infra.kubernetes is missing: the kubernetes release store needs the "
                         "outputs of a platform kubernetes stack (api_server, ca_cert, token, "
                         "namespace)", param="infra")
    missing = [k for k in ("namespace",) if not kube.get(k)]
    if not kube.get("token") and not kube.get("kubeconfig"):
        missing.insert(0, "token (or kubeconfig)")
    if missing:
        raise StoreError("infra.kubernetes lacks %s: give the outputs of a platform kubernetes stack "
                         "(phoenix.deploy.pulumi_stack with show_secrets: true)"
                         % ", ".join(missing), param="infra")
    from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import api
    try:
        return api.Kube(kube).api_client
    except PhoenixError as exc:
        raise StoreError(exc.msg, param="infra")


@dataclass
class LeaseHolder(LockHolder):
    """A ``LockHolder`` read from a Lease, with its renewal state."""

    renewed: Optional[float] = None
    lease_seconds: Optional[int] = None
    expired: bool = False

    def is_stale(self) -> bool:
        return self.expired or super().is_stale()


class _Held:
    """A lease this store holds, renewed by ``thread`` until ``stop``."""

    def __init__(self, lock: Lock, name: str, lease):
        self.lock, self.name = lock, name
        self.rv = lease.metadata.resource_version
        self.acquired = _epoch(lease.spec.acquire_time) or time.time()
        self.transitions = lease.spec.lease_transitions or 0
        self.renewed = time.time()
        self.lost: Optional[str] = None
        self.stop = threading.Event()
        self.mutex = threading.Lock()
        self.thread: Optional[threading.Thread] = None


class ConfigMapReleaseStore(ReleaseStore):
    """History in ConfigMaps, locks in Leases, in ``namespace`` of the
    cluster of ``kube`` (the infra outputs' ``kubernetes`` entry).
    ``local_root`` keeps what stays on the controller (rollout reports)."""

    def __init__(self, kube: dict, local_root: str, keep: int = 100,
                 lease_seconds: int = 30, retry_seconds: float = 15.0,
                 request_timeout=(5, 20), clock: Optional[Clock] = None):
        self.kube = kube if isinstance(kube, dict) else {}
        self.namespace = self.kube.get("namespace")
        self.api_server = self.kube.get("api_server")
        self.local_root = os.path.abspath(local_root)
        self.keep = keep
        self.lease_seconds = max(1, int(lease_seconds))
        self.retry_seconds = retry_seconds
        self.request_timeout = request_timeout
        self.clock = clock or Clock()
        self.root = "configmaps and leases in namespace %s at %s" % (self.namespace, self.api_server)
        self._client = api_client(kube)  # validates the outputs and the client library now
        self._pid = os.getpid()
        self._core = self._coord = None
        self._seen = {}   # (artifact, environment) -> (history revision, resourceVersion)
        self._held = {}   # (artifact, environment) -> _Held
        self._store_id = None

    # -- API access ----------------------------------------------------------
    def _apis(self):
        if self._core is None or self._pid != os.getpid():  # no pooled sockets across fork
            if self._pid != os.getpid():
                self._client = api_client(self.kube)
            self._core = k8s_client.CoreV1Api(self._client)
            self._coord = k8s_client.CoordinationV1Api(self._client)
            self._pid = os.getpid()
        return self._core, self._coord

    @staticmethod
    def _api_message(exc) -> str:
        try:
            return json.loads(exc.body).get("message") or exc.reason
        except (TypeError, ValueError, AttributeError):
            return str(exc.reason)

    def _error(self, exc, what: str) -> StoreError:
        where = "%s (namespace %s, API server %s)" % (what, self.namespace, self.api_server)
        if isinstance(exc, ApiException) and not exc.status and "SSL" in str(exc.reason):
            return StoreError("%s: TLS verification of the API server failed (%s): "
                              "infra.kubernetes.ca_cert is not the cluster's CA"
                              % (where, str(exc.reason).replace("\n", " ")), param="infra")
        if isinstance(exc, ApiException) and exc.status:
            status, message = exc.status, self._api_message(exc)
            if status == 401:
                return StoreError("%s: the API server refused the credentials (HTTP 401: %s): "
                                  "infra.kubernetes.token is invalid or expired; run pulumi up of "
                                  "the cluster's stack and pass its current outputs"
                                  % (where, message), param="infra")
            if status == 403:
                return StoreError("%s: forbidden by RBAC (HTTP 403: %s); the token's service account "
                                  "needs %s in namespace %s (the deployer Role of the infra stack "
                                  "grants them: run pulumi up of that stack, or use its deployer "
                                  "token and namespace)"
                                  % (where, message, _verbs(), self.namespace), param="infra")
            if status == 404:
                return StoreError("%s: HTTP 404: %s; check that namespace %s exists "
                                  "(infra.kubernetes.namespace)" % (where, message, self.namespace),
                                  param="infra")
            if status == 429 or status >= 500:
                return StoreError("%s: HTTP %d: %s" % (where, status, message), transient=True)
            return StoreError("%s: HTTP %d: %s" % (where, status, message))
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, urllib3.exceptions.SSLError) or isinstance(exc, urllib3.exceptions.SSLError):
            return StoreError("%s: TLS verification of the API server failed (%s): "
                              "infra.kubernetes.ca_cert is not the cluster's CA" % (where, reason),
                              param="infra")
        return StoreError("%s: cannot reach the Kubernetes API server (%s: %s); check that the "
                          "cluster runs (pulumi up of its stack) and infra.kubernetes.api_server"
                          % (where, type(reason).__name__, reason), transient=True, unreachable=True)

    def _call(self, what: str, fn, *args, expect=(), retry=True, **kwargs):
        """``fn(*args)``; an ``ApiException`` whose status is in ``expect``
        propagates, every other failure becomes a ``StoreError`` (transient
        ones are retried for ``retry_seconds``)."""
        kwargs.setdefault("_request_timeout", self.request_timeout)

        def once():
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status in expect:
                    raise
                raise self._error(exc, what) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._error(exc, what) from None
        if not retry:
            return once()
        started = self.clock.now()
        try:
            return retry_transient(once, started + self.retry_seconds, self.clock, base=0.2, cap=2.0)
        except RetryDeadline as exc:
            raise StoreError("%s (still failing after %d attempt(s) in %.0fs)"
                             % (exc.last.msg, exc.attempts, self.clock.now() - started),
                             param=exc.last.param, transient=True, **exc.last.details) from None

    def _meta(self, name: str, artifact: str, environment: str, component: str,
              rv: Optional[str] = None, holder: Optional[LockHolder] = None) -> dict:
        meta = {"name": name, "namespace": self.namespace,
                "labels": {MANAGED_BY: "phoenix.deploy", "app.kubernetes.io/component": component,
                           ARTIFACT: _part(artifact)[:63].strip("-"),
                           ENVIRONMENT: _part(environment)[:63].strip("-")},
                "annotations": {ARTIFACT: artifact, ENVIRONMENT: environment}}
        if holder is not None:
            meta["annotations"][HOLDER] = json.dumps(asdict(holder), sort_keys=True)
        if rv is not None:
            meta["resourceVersion"] = rv
        return meta

    # -- store id ------------------------------------------------------------
    @property
    def store_id(self) -> str:
        """Created once per namespace (first writer wins) and never changed."""
        if self._store_id is None:
            core = self._apis()[0]
            what = "read the release store id (configmap %s)" % STORE_ID_NAME
            try:
                cm = self._call(what, core.read_namespaced_config_map, STORE_ID_NAME,
                                self.namespace, expect=(404,))
            except ApiException:
                body = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": STORE_ID_NAME, "namespace": self.namespace,
                                     "labels": {MANAGED_BY: "phoenix.deploy",
                                                "app.kubernetes.io/component": "release-store"}},
                        "data": {"store-id": "store-" + uuid.uuid4().hex[:16]}}
                try:
                    self._call("create the release store id (configmap %s)" % STORE_ID_NAME,
                               core.create_namespaced_config_map, self.namespace, body, expect=(409,))
                except ApiException:
                    pass  # another controller created it first
                cm = self._call(what, core.read_namespaced_config_map, STORE_ID_NAME, self.namespace)
            value = (cm.data or {}).get("store-id", "")
            if not re.fullmatch(r"store-[0-9a-f]{16}", value):
                raise StoreError("release store id in configmap %s/%s reads %r; it is written once by "
                                 "phoenix.deploy (store-<16 hex>): restore it, or delete the configmap "
                                 "to start a new store" % (self.namespace, STORE_ID_NAME, value))
            self._store_id = value
        return self._store_id

    def directory(self, artifact: str, environment: str, create: bool = True) -> str:
        """Local directory for what stays on the controller (reports)."""
        path = os.path.join(self.local_root, check_name(artifact, "artifact"),
                            check_name(environment, "environment"))
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # -- history -------------------------------------------------------------
    def _read_history(self, artifact: str, environment: str):
        """``(data or None, resourceVersion or None, where)``."""
        name = object_name(artifact, environment)
        where = "configmap %s/%s" % (self.namespace, name)
        core = self._apis()[0]
        try:
            cm = self._call("read the release history of %s/%s" % (artifact, environment),
                            core.read_namespaced_config_map, name, self.namespace, expect=(404,))
        except ApiException:
            return None, None, where
        raw = (cm.data or {}).get(HISTORY_KEY)
        if raw is None:
            raise StoreError("release history %s has no %s key; phoenix.deploy only ever replaces it "
                             "whole, so it was edited by hand: restore it, or delete the configmap to "
                             "forget the history" % (where, HISTORY_KEY))
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError("release history %s is not valid JSON (%s); phoenix.deploy only ever "
                             "replaces it whole, so it was edited by hand: restore it" % (where, exc))
        return data, cm.metadata.resource_version, where

    def load(self, artifact: str, environment: str) -> History:
        data, rv, where = self._read_history(artifact, environment)
        if data is None:
            self._seen[(artifact, environment)] = (0, None)
            return History(artifact=artifact, environment=environment)
        check_history_data(data, where, artifact, environment)
        history = History.from_dict(data)
        self._seen[(artifact, environment)] = (history.revision, rv)
        return history

    def _encode(self, history: History) -> str:
        """The JSON of ``history``, trimmed further (oldest retired first)
        until it fits a ConfigMap."""
        history.trim(self.keep)
        while True:
            text = json.dumps(history.as_dict(), indent=1, sort_keys=True)
            if len(text.encode("utf-8")) <= MAX_HISTORY_BYTES:
                return text
            count = len(history.releases)
            history.trim(count - 1)
            if len(history.releases) == count:
                raise StoreError("release history of %s/%s is %d bytes with only its live, active and "
                                 "warm releases; a ConfigMap holds at most 1 MiB"
                                 % (history.artifact, history.environment, len(text)))

    def save(self, history: History) -> None:
        key = (history.artifact, history.environment)
        name = object_name(*key)
        where = "configmap %s/%s" % (self.namespace, name)
        self._check_held(key)
        seen = self._seen.get(key)
        if seen is None or seen[0] != history.revision:
            data, rv, where = self._read_history(*key)
            in_cluster = data.get("revision", 0) if isinstance(data, dict) else 0
            if in_cluster != history.revision:
                raise ConflictError("release history %s changed concurrently (revision %s in the "
                                    "cluster, %s expected)" % (where, in_cluster, history.revision))
        else:
            rv = seen[1]
        core = self._apis()[0]
        history.revision += 1
        try:
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": self._meta(name, history.artifact, history.environment,
                                           "release-history", rv),
                    "data": {HISTORY_KEY: self._encode(history)}}
            what = "write the release history of %s/%s" % key
            try:
                if rv is None:
                    done = self._call(what, core.create_namespaced_config_map, self.namespace, body,
                                      expect=(409,))
                else:
                    done = self._call(what, core.replace_namespaced_config_map, name, self.namespace,
                                      body, expect=(404, 409))
            except ApiException as exc:
                raise ConflictError("release history %s changed concurrently (%s while writing "
                                    "revision %d)" % (where, "it was deleted" if exc.status == 404
                                                      else "resourceVersion %s is no longer current"
                                                      % (rv or "(none: created meanwhile)"),
                                                      history.revision)) from None
        except BaseException:
            history.revision -= 1
            raise
        self._seen[key] = (history.revision, done.metadata.resource_version)

    # -- locks ---------------------------------------------------------------
    def _read_lease(self, artifact: str, environment: str, retry: bool = True):
        coord = self._apis()[1]
        try:
            return self._call("read the lock (lease) of %s/%s" % (artifact, environment),
                              coord.read_namespaced_lease, object_name(artifact, environment),
                              self.namespace, expect=(404,), retry=retry)
        except ApiException:
            return None

    def _lease_holder(self, lease) -> Optional[LeaseHolder]:
        spec = lease.spec
        if spec is None or not spec.holder_identity:
            return None
        where = "lease %s/%s" % (self.namespace, lease.metadata.name)
        raw = (lease.metadata.annotations or {}).get(HOLDER)
        try:
            data = json.loads(raw) if raw is not None else None
        except ValueError as exc:
            data = exc
        if not isinstance(data, dict):
            raise StoreError("lock %s: annotation %s is %s; phoenix.deploy only ever writes it whole, "
                             "so it was edited by hand: delete the lease if no rollout of this "
                             "artifact and environment is running"
                             % (where, HOLDER, "missing" if raw is None else "not valid JSON"))
        check_lock_data(data, where)
        holder = LeaseHolder.from_dict(data)
        holder.renewed = _epoch(spec.renew_time or spec.acquire_time)
        holder.lease_seconds = spec.lease_duration_seconds or self.lease_seconds
        holder.expired = (holder.renewed is None
                          or holder.renewed + holder.lease_seconds < time.time())
        return holder

    def _lease_body(self, artifact, environment, holder, acquired, transitions, rv=None) -> dict:
        name = object_name(artifact, environment)
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": self._meta(name, artifact, environment, "release-lock", rv, holder),
                "spec": {"holderIdentity": "%s/%d/%s" % (holder.host, holder.pid, holder.token),
                         "leaseDurationSeconds": self.lease_seconds,
                         "acquireTime": _micro(acquired), "renewTime": _micro(time.time()),
                         "leaseTransitions": transitions}}

    def _held_message(self, artifact, environment, other: LeaseHolder) -> str:
        left = (other.renewed or 0) + (other.lease_seconds or 0) - time.time()
        hint = ""
        if not other.is_stale() and other.host != socket.gethostname():
            hint = ("; if that controller is gone, its lease expires %.0fs after its last renewal "
                    "and the next rollout takes the lock over" % (other.lease_seconds or 0))
        return "%s/%s is locked by %s (lease %s/%s, renewed %s, expires in %.0fs unless renewed)%s" % (
            artifact, environment, other.describe(), self.namespace,
            object_name(artifact, environment), iso(other.renewed), max(0.0, left), hint)

    def lock_holder(self, artifact: str, environment: str) -> Optional[LockHolder]:
        lease = self._read_lease(artifact, environment)
        return None if lease is None else self._lease_holder(lease)

    def acquire(self, artifact: str, environment: str, holder: LockHolder) -> Lock:
        name = object_name(artifact, environment)
        coord = self._apis()[1]
        what = "take the lock (lease) of %s/%s" % (artifact, environment)
        for _attempt in range(5):
            lease = self._read_lease(artifact, environment)
            if lease is None:
                body = self._lease_body(artifact, environment, holder, time.time(), 0)
                try:
                    made = self._call(what, coord.create_namespaced_lease, self.namespace, body,
                                      expect=(409,))
                except ApiException:
                    continue  # created meanwhile: read who holds it
                return self._hold(Lock(artifact, environment, holder), name, made)
            other = self._lease_holder(lease)
            if other is not None and not other.is_stale():
                raise LockHeld(self._held_message(artifact, environment, other), other)
            body = self._lease_body(artifact, environment, holder, time.time(),
                                    (lease.spec.lease_transitions or 0) + 1,
                                    rv=lease.metadata.resource_version)
            try:
                made = self._call(what, coord.replace_namespaced_lease, name, self.namespace, body,
                                  expect=(404, 409))
            except ApiException:
                continue  # taken or released meanwhile: look again
            return self._hold(Lock(artifact, environment, holder, other), name, made)
        raise StoreError("%s: lease %s/%s changed 5 times while trying; run again"
                         % (what, self.namespace, name), transient=True)

    def _hold(self, lock: Lock, name: str, lease) -> Lock:
        held = _Held(lock, name, lease)
        self._held[(lock.artifact, lock.environment)] = held
        held.thread = threading.Thread(target=self._renew_loop, args=(held,), daemon=True,
                                       name="phoenix-lease-%s" % name)
        held.thread.start()
        return lock

    def _mine(self, held: _Held) -> Optional[LeaseHolder]:
        """Re-read the lease; our holder, else mark ``held`` lost."""
        lease = self._read_lease(held.lock.artifact, held.lock.environment, retry=False)
        current = None if lease is None else self._lease_holder(lease)
        if current is None or current.token != held.lock.holder.token:
            held.lost = ("the lease was %s" % ("deleted" if lease is None else
                                               "taken over by " + current.describe() if current
                                               else "released"))
            return None
        held.rv = lease.metadata.resource_version
        return current

    def _write_lease(self, held: _Held, retry: bool = True) -> None:
        lock = held.lock
        coord = self._apis()[1]
        body = self._lease_body(lock.artifact, lock.environment, lock.holder, held.acquired,
                                held.transitions, rv=held.rv)
        for _attempt in range(2):
            try:
                done = self._call("renew the lock (lease) of %s/%s" % (lock.artifact, lock.environment),
                                  coord.replace_namespaced_lease, held.name, self.namespace, body,
                                  expect=(404, 409), retry=retry)
            except ApiException:
                if self._mine(held) is None:
                    raise StoreError("lock of %s/%s is no longer ours: %s"
                                     % (lock.artifact, lock.environment, held.lost))
                body["metadata"]["resourceVersion"] = held.rv
                continue
            held.rv = done.metadata.resource_version
            held.renewed = time.time()
            return
        raise StoreError("lock of %s/%s: lease %s/%s keeps changing under its holder"
                         % (lock.artifact, lock.environment, self.namespace, held.name))

    def _renew_loop(self, held: _Held) -> None:
        interval = max(0.2, self.lease_seconds / 5.0)
        while not held.stop.wait(interval):
            with held.mutex:
                if held.stop.is_set() or held.lost:
                    return
                try:
                    self._write_lease(held, retry=False)
                except PhoenixError as exc:
                    if held.lost:
                        return
                    if time.time() - held.renewed > self.lease_seconds * 2.0 / 3.0:
                        held.lost = "not renewed since %s: %s" % (iso(held.renewed), exc.msg)
                        return

    def _check_held(self, key) -> None:
        held = self._held.get(key)
        if held is not None and held.lost:
            raise StoreError("the lock of %s/%s was lost (%s): another controller may be rolling out, "
                             "so nothing more is written; run again once the lock is free"
                             % (key[0], key[1], held.lost))

    def update_lock(self, lock: Lock, **changes) -> None:
        key = (lock.artifact, lock.environment)
        held = self._held.get(key)
        if held is None or held.lock.holder.token != lock.holder.token:
            raise StoreError("lock of %s/%s is not held by this store" % key)
        with held.mutex:
            self._check_held(key)
            for field, value in changes.items():
                setattr(lock.holder, field, value)
            self._write_lease(held)

    def release(self, lock: Lock) -> None:
        key = (lock.artifact, lock.environment)
        held = self._held.get(key)
        if held is not None and held.lock.holder.token == lock.holder.token:
            del self._held[key]
            held.stop.set()
            with held.mutex:
                pass
            held.thread.join(5)
        coord = self._apis()[1]
        for _attempt in range(3):
            lease = self._read_lease(*key)
            current = None if lease is None else self._lease_holder(lease)
            if current is None or current.token != lock.holder.token:
                return  # not ours (any more): no effect
            body = {"preconditions": {"resourceVersion": lease.metadata.resource_version,
                                      "uid": lease.metadata.uid}}
            try:
                self._call("release the lock (lease) of %s/%s" % key, coord.delete_namespaced_lease,
                           lease.metadata.name, self.namespace, body=body, expect=(404, 409))
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
