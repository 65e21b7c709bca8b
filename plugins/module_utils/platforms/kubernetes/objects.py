# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Kubernetes objects of one release and of one (artifact, environment),
as plain dicts (no API calls here, so unit tests check them):

* ``deployment``: one Deployment per release, named by ``base.group_name``,
  whose selector (immutable) holds the release and group labels;
* ``service``: a Service per release, same name, selecting that release's
  pods (the gateway's backend for the group);
* ``route`` / ``edit_backends`` / ``route_verdict``: the Gateway API
  HTTPRoute ``<artifact>-<environment>`` whose ``rules[0].backendRefs``
  weights are the traffic shares, and how its status is judged.

Every object carries the ownership labels ``OWNED`` plus the artifact,
environment and release labels, so ``list_groups`` and ``destroy`` only ever
touch what this driver made.
"""

from __future__ import annotations

import re

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    PlatformError, dns_label, is_oci_ref)

MANAGED_BY = "app.kubernetes.io/managed-by"
OWNED = {MANAGED_BY: "phoenix.deploy"}
ARTIFACT, ENVIRONMENT, RELEASE, GROUP = ("phoenix.deploy/artifact", "phoenix.deploy/environment",
                                         "phoenix.deploy/release", "phoenix.deploy/group")
OWNER, IMAGE = "phoenix.deploy/owner", "phoenix.deploy/image"
#: container waiting reasons that never clear by waiting: the group fails at once
FAIL_REASONS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def label_value(value, param: str) -> str:
    """``value`` if it is a valid label value (<= 63, ``[A-Za-z0-9._-]``,
    alphanumeric at both ends); else ``PlatformError`` naming ``param``."""
    text = str(value)
    if not _LABEL_VALUE.match(text):
        raise PlatformError("%s: %r cannot be a Kubernetes label value; use at most 63 letters, digits, "
                            "'-', '_' or '.', starting and ending with a letter or digit" % (param, value),
                            param=param)
    return text


def route_name(artifact: str, environment: str) -> str:
    """The HTTPRoute of one (artifact, environment): ``<artifact>-<env>`` as a DNS label."""
    return dns_label(artifact, environment)


def stack_route(routes, artifact: str, environment: str) -> str:
    """The HTTPRoute of (artifact, environment) given the stack outputs'
    ``kubernetes.gateway.routes`` (``{artifact: name}``): the stack's name when
    it names one for ``artifact`` (both stacks create or serve exactly
    ``route_name``), else ``route_name``.  A stack route of another name is one
    this driver does not manage: ``PlatformError`` naming the output."""
    name = route_name(artifact, environment)
    theirs = (routes or {}).get(artifact) if isinstance(routes, dict) else None
    if theirs in (None, "", name):
        return name
    raise PlatformError(
        "infra: kubernetes.gateway.routes.%s is HTTPRoute %r, but the kubernetes driver manages HTTPRoute %r for "
        "artifact %s in environment %s (<artifact>-<environment>): the stack's gateway serves another environment "
        "(or the stack predates that naming); deploy to the stack's environment, or set the stack's "
        "phoenix-infra:environment to %s and run pulumi up"
        % (artifact, theirs, name, artifact, environment, environment), param="infra")


def check_image(ref) -> str:
    """An OCI reference pinned by digest (``registry/repo@sha256:<64 hex>``); tags are refused."""
    if is_oci_ref(ref):
        return ref
    hint = ""
    if isinstance(ref, str) and "@" not in ref:
        hint = " (a tag can move; pin the digest the bake or the registry reported)"
    raise PlatformError("image: %r is not an OCI image reference pinned by digest; the kubernetes platform "
                        "runs registry/repository@sha256:<64 hex digits>%s" % (ref, hint), param="image")


def selector(artifact, environment, release_id, group) -> dict:
    return {ARTIFACT: label_value(artifact, "artifact"),
            ENVIRONMENT: label_value(environment, "environment"),
            RELEASE: label_value(release_id, "release_id"), GROUP: group}


def group_labels(artifact, environment, release_id, group) -> dict:
    return dict(OWNED, **selector(artifact, environment, release_id, group))


def env_list(env: dict) -> list:
    bad = sorted(k for k in env if not _ENV_NAME.match(str(k)))
    if bad:
        raise PlatformError("env: invalid variable name(s) %s; use letters, digits and '_'" % ", ".join(bad),
                            param="env")
    return [{"name": str(k), "value": str(v)} for k, v in sorted(env.items())]


def deployment(namespace, artifact, environment, release_id, group, image, size, env, port, health_path,
               owner=None, prestop_seconds=3, drain_seconds=10, secret_env=None) -> dict:
    """One release's Deployment: ``size`` pods of ``image`` (by digest), the
    environment injected, readiness on ``health_path``, drained on stop
    (``preStop`` sleep while the gateway takes the pod out, then the app's
    own drain within ``terminationGracePeriodSeconds``)."""
    labels = group_labels(artifact, environment, release_id, group)
    annotations = {IMAGE: image}
    if owner:
        annotations[OWNER] = str(owner)
    container = {
        "name": dns_label(artifact),
        "image": check_image(image),
        "imagePullPolicy": "IfNotPresent",
        "env": env_list(env) + [  # {VAR: (Secret name, key)}: the kubelet reads it, the deployer never
            {"name": str(k), "valueFrom": {"secretKeyRef": {"name": v[0], "key": v[1]}}}
            for k, v in sorted((secret_env or {}).items())],
        "ports": [{"name": "http", "containerPort": int(port), "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": health_path, "port": int(port)}, "periodSeconds": 1,
                           "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 2},
        "lifecycle": {"preStop": {"sleep": {"seconds": int(prestop_seconds)}}},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": group, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": int(size),
            "selector": {"matchLabels": selector(artifact, environment, release_id, group)},
            "revisionHistoryLimit": 1,
            "template": {
                "metadata": {"labels": labels, "annotations": {IMAGE: image}},
                "spec": {"containers": [container],
                         "terminationGracePeriodSeconds": int(prestop_seconds + drain_seconds + 2),
                         "automountServiceAccountToken": False, "enableServiceLinks": False},
            },
        },
    }


def service(namespace, artifact, environment, release_id, group, port, target_port, image, owner=None) -> dict:
    """The release's Service (the gateway's backend of the group)."""
    annotations = {IMAGE: image}
    if owner:
        annotations[OWNER] = str(owner)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": group, "namespace": namespace,
                     "labels": group_labels(artifact, environment, release_id, group),
                     "annotations": annotations},
        "spec": {"selector": selector(artifact, environment, release_id, group),
                 "ports": [{"name": "http", "port": int(port), "targetPort": int(target_port),
                            "protocol": "TCP"}]},
    }


def route(namespace, artifact, environment, gateway) -> dict:
    """The (artifact, environment)'s HTTPRoute, without backends yet."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": route_name(artifact, environment), "namespace": namespace,
                     "labels": dict(OWNED, **{ARTIFACT: label_value(artifact, "artifact"),
                                              ENVIRONMENT: label_value(environment, "environment")})},
        "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": []}]},
    }


def backends(obj) -> list:
    """``rules[0].backendRefs`` of a route (a list, maybe empty)."""
    rules = (obj.get("spec") or {}).get("rules") or []
    return (rules[0].get("backendRefs") or []) if rules else []


def weights_of(obj) -> dict:
    """``{service: weight}`` of the route's backends (Gateway API default weight 1)."""
    return {b["name"]: int(b.get("weight", 1)) for b in backends(obj)}


def edit_backends(obj, weights: dict, ports: dict, attach_zero=False, remove=()) -> bool:
    """Set ``weights`` (``{service: weight}``) on the route in place; a group
    with weight above 0 (or any, with ``attach_zero``) that is not a backend
    is added (``ports[service]``); ``remove`` drops backends.  True when the
    spec changed."""
    spec = obj.setdefault("spec", {})
    rules = spec.setdefault("rules", [])
    if not rules:
        rules.append({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": []})
    refs = rules[0].setdefault("backendRefs", [])
    before = [dict(r) for r in refs]
    refs[:] = [r for r in refs if r.get("name") not in set(remove)]
    present = {r["name"]: r for r in refs}
    for name, weight in sorted(weights.items()):
        if name in present:
            present[name]["weight"] = int(weight)
        elif weight > 0 or attach_zero:
            refs.append({"group": "", "kind": "Service", "name": name, "port": int(ports[name]),
                         "weight": int(weight)})
    return refs != before


def route_verdict(obj, wanted: dict, gateway: str):
    """(verdict, detail) of a route for ``wanted`` weights: True when the
    spec has the wanted weights (a weight-0 group may be absent) and the
    gateway's status for the current generation has Accepted=True and
    ResolvedRefs=True; False while not yet (status for an older
    generation, refs not resolved yet); ``"refused"`` when the gateway
    refused the route (Accepted=False) - ``detail`` says why."""
    have = weights_of(obj)
    for name, weight in wanted.items():
        if have.get(name, 0 if weight == 0 else None) != weight:
            return False, "the route's weights are %s" % (have,)
    generation = (obj.get("metadata") or {}).get("generation")
    parents = [p for p in ((obj.get("status") or {}).get("parents") or [])
               if (p.get("parentRef") or {}).get("name") == gateway]
    if not parents:
        return False, "gateway %s has not reported on the route yet" % gateway
    for parent in parents:
        conds = {c.get("type"): c for c in parent.get("conditions") or []}
        accepted, resolved = conds.get("Accepted"), conds.get("ResolvedRefs")
        if accepted is None or accepted.get("observedGeneration") != generation:
            return False, "gateway %s reported on generation %s, the route is at %s" % (
                gateway, (accepted or {}).get("observedGeneration"), generation)
        if accepted.get("status") == "False":
            return "refused", "gateway %s did not accept the route: %s: %s" % (
                gateway, accepted.get("reason"), accepted.get("message"))
        if accepted.get("status") != "True":
            return False, "Accepted is %s" % accepted.get("status")
        if resolved is None or resolved.get("observedGeneration") != generation or \
                resolved.get("status") != "True":
            return False, "backend references not resolved: %s: %s" % (
                (resolved or {}).get("reason"), (resolved or {}).get("message"))
    return True, "accepted at generation %s" % generation
