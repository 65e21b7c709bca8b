# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Kubernetes API client of the driver: the official ``kubernetes``
Python client, configured from the infra outputs key ``kubernetes``
(``api_server``, ``ca_cert``, ``token``; else its ``kubeconfig``), and one
error mapping for every call (``Kube.call``):

* HTTP 429, 5xx, a refused / reset / timed-out connection: ``PlatformError``
  with ``transient=True`` (the engine retries with backoff until its deadline);
* 401, 403, a 404 naming the namespace, a TLS failure: permanent, with a
  message naming the cause and the fix;
* anything else: permanent, with the API server's own message.
"""

from __future__ import annotations

import json

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError

try:
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.client.exceptions import ApiException
    import urllib3
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - checked by targets.make_platform
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = _exc
    ApiException = urllib3 = k8s_client = k8s_config = None

#: seconds to connect, seconds to read, for every API call
TIMEOUT = (5, 30)
GATEWAY_GROUP, GATEWAY_VERSION = "gateway.networking.k8s.io", "v1"


class Conflict(PlatformError):
    """409: the object changed since it was read (resourceVersion) or exists."""


class NotFound(PlatformError):
    """404 of the object itself (the namespace exists)."""


def _status_message(exc) -> tuple:
    """(message, details) of an ApiException's Status body."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return (str(exc.reason or ""), {})
    return body.get("message") or str(exc.reason or ""), body.get("details") or {}


class Kube:
    """API objects (``core``, ``apps``, ``custom``) over one ``ApiClient``,
    and ``call`` with the error mapping of this module."""

    def __init__(self, kube: dict):
        if not HAS_KUBERNETES:
            raise PlatformError("the kubernetes platform needs the kubernetes Python package: %s"
                                % KUBERNETES_IMPORT_ERROR)
        self.server = kube.get("api_server")
        self.namespace = kube["namespace"]
        cfg = k8s_client.Configuration()
        if kube.get("token"):
            if not self.server or not kube.get("ca_cert"):
                raise PlatformError("infra: kubernetes.api_server and kubernetes.ca_cert are needed "
                                    "with kubernetes.token; pass the outputs of a kubernetes stack",
                                    param="infra")
            cfg.host = self.server
            cfg.api_key = {"authorization": "Bearer " + kube["token"]}
            # the PEM itself, never a file: a temp file outlived every controller that
            # ended without atexit (os._exit after the detach, a kill)
            cfg.ca_cert_data = kube["ca_cert"]
            cfg.verify_ssl = True
        else:  # GKE: the kubeconfig names its credential plugin; else the default kubeconfig
            try:
                k8s_config.load_kube_config(config_file=kube.get("kubeconfig"), client_configuration=cfg)
            except Exception as exc:  # ConfigException, OSError, YAML errors
                raise PlatformError("infra: no usable Kubernetes credentials (kubernetes.token is empty "
                                    "and the kubeconfig %s cannot be loaded: %s); pass the outputs of "
                                    "the kubernetes stack with show_secrets: true"
                                    % (kube.get("kubeconfig") or "(default)", exc), param="infra")
            self.server = cfg.host
        cfg.retries = False  # the engine retries transient errors, with its deadline
        self.api_client = k8s_client.ApiClient(cfg)
        self.core = k8s_client.CoreV1Api(self.api_client)
        self.apps = k8s_client.AppsV1Api(self.api_client)
        self.custom = k8s_client.CustomObjectsApi(self.api_client)

    def call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the module's error mapping; ``what``
        names the operation in messages (e.g. ``create Deployment x``)."""
        kwargs.setdefault("_request_timeout", TIMEOUT)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if isinstance(exc.__context__, urllib3.exceptions.SSLError):  # the client re-raises it as status 0
                raise self.connection_error(what, exc.__context__)
            raise self.error(what, exc)
        except urllib3.exceptions.HTTPError as exc:
            raise self.connection_error(what, exc)
        except OSError as exc:  # ConnectionResetError and friends raised outside urllib3
            raise PlatformError("%s: Kubernetes API server %s unreachable: %s"
                                % (what, self.server, exc), transient=True)

    def connection_error(self, what, exc) -> PlatformError:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib3.exceptions.SSLError) or isinstance(reason, urllib3.exceptions.SSLError):
            return PlatformError("%s: TLS with the Kubernetes API server %s failed (%s); kubernetes.ca_cert "
                                 "of the infra outputs is not the cluster's CA: pass the outputs of the "
                                 "stack that made this cluster" % (what, self.server, reason), param="infra")
        return PlatformError("%s: Kubernetes API server %s unreachable (%s); retrying"
                             % (what, self.server, reason), transient=True)

    def error(self, what, exc) -> PlatformError:
        status = int(exc.status or 0)
        message, details = _status_message(exc)
        if status == 409:
            return Conflict("%s: %s" % (what, message))
        if status == 401:
            return PlatformError(
                "%s: the Kubernetes API server %s rejected the deployer's credentials (401 Unauthorized): "
                "kubernetes.token of the infra outputs is expired or invalid; run pulumi up of the stack "
                "(it mints the deployer token again) and pass its outputs with show_secrets: true"
                % (what, self.server), param="infra")
        if status == 403:
            return PlatformError(
                "%s: RBAC denied it (403 Forbidden: %s); grant the verb to the deployer ServiceAccount "
                "in namespace %s (the Role phoenix-deployer of the stack; see the driver's RBAC notes)"
                % (what, message, self.namespace), param="infra")
        if status == 404:
            if details.get("kind") == "namespaces":
                namespace = details.get("name") or self.namespace
                return PlatformError(
                    "%s: namespace %s does not exist on %s; create it with the stack (pulumi up) or fix "
                    "kubernetes.namespace in the infra outputs" % (what, namespace, self.server), param="infra")
            return NotFound("%s: %s" % (what, message))
        if status == 429 or status >= 500 or status == 0:
            return PlatformError("%s: Kubernetes API answered %s %s; retrying"
                                 % (what, status or "no status", message), transient=True)
        return PlatformError("%s: Kubernetes API answered %d: %s" % (what, status, message))
