# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GCE platform: a server group is an instance template + a regional
managed instance group (MIG) + a backend service, all named after the group
(``catalog-ci-v007``); traffic is the weight of that backend service in the
artifact's route of the global external Application Load Balancer's URL map
(``routeAction.weightedBackendServices``).  Everything it needs comes from
the ``gce`` infra outputs (infra/phoenix_infra/gcp).

Where state lives (all of it observable after a controller restart):

* the ``description`` of the template, MIG and backend service: ``phoenix.deploy:``
  and a JSON object (artifact, environment, release, owner, image), the
  ownership marker ``list_groups`` and the foreign-resource check read;
* the MIG's target size and managed instances (health);
* the URL map: a group is attached while its backend service is in the
  artifact's ``weightedBackendServices``; its weight there is its share.

Every step of ``create_group`` is get-or-create and every delete treats 404
as done, so rerunning after a controller died at any call converges.  The
artifact's own backend service from the stack (no backends) stays in the
route as a placeholder: weight 100 while no group of the artifact has
weight, else 0 (a route needs one backend with weight to be valid).
"""

from __future__ import annotations

import json
import re
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DRAINING, FAILED, READY, STARTING, Clock, Health, InstanceHealth, PlatformError,
    ServerGroup, valid_name)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.api import (
    Api, Conflict, NotFound)

MARK = "phoenix.deploy: "
SCHEME = "EXTERNAL_MANAGED"
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
#: ``projects/<project>/global/images/<name>``, optionally as a full URL; never a family
IMAGE_LINK = re.compile(r"^(https://(www|compute)\.googleapis\.com/compute/v1/)?"
                        r"(?P<path>projects/(?P<project>[a-z][a-z0-9.:-]{4,60}[a-z0-9])/global/images/"
                        r"(?P<name>[a-z]([-a-z0-9]{0,61}[a-z0-9])?))$")
_LABEL = re.compile(r"[^a-z0-9_-]+")
#: how often an instance may be recreated by autohealing before it counts as a crash loop
MAX_RECREATIONS = 2
#: seconds an instance may stay in RECREATING before it counts as a crash loop
MAX_RECREATING = 300
#: seconds the load balancer needs until a URL map change is served (Google documents
#: "a few minutes" worst case; the engine waits this when it cannot verify)
SETTLE_TIME = 60.0
URL_MAP_ATTEMPTS = 5


def _path(link: Optional[str]) -> str:
    """``projects/...`` part of a self-link (relative and full URLs compare equal)."""
    if not link:
        return ""
    index = link.find("projects/")
    return link[index:] if index >= 0 else link


def _label(value) -> str:
    return _LABEL.sub("-", str(value).lower())[:63].strip("-") or "none"


def parse_image(ref) -> str:
    """The ``projects/<p>/global/images/<name>`` path of a GCE image self-link;
    anything else (a family, a local image, an OCI reference) is refused naming ``image``."""
    match = IMAGE_LINK.match(ref) if isinstance(ref, str) else None
    if not match:
        raise PlatformError("image: %r is not a GCE image self-link; the gce platform runs "
                            "exactly one baked image: projects/<project>/global/images/<name> "
                            "(image families, local images and OCI references are refused)"
                            % (ref,), param="image")
    return match.group("path")


class GceConfig:
    """The ``gce`` infra outputs, checked before any API call."""

    def __init__(self, infra: dict):
        if not isinstance(infra, dict) or infra.get("platform") not in ("gce", "gcp"):
            raise PlatformError("infra: platform is %r; the gce driver needs the outputs of a "
                                "gcp-* stack (platform gce)" % (infra or {}).get("platform"),
                                param="infra")
        gce = infra.get("gce")
        if not isinstance(gce, dict):
            raise PlatformError("infra.gce: missing; pass the outputs of a gcp-* stack "
                                "(phoenix.deploy.pulumi_stack)", param="infra.gce")
        self.project = self._match(gce, "project", _PROJECT,
                                   "6-30 characters [a-z0-9-], starting with a letter")
        self.region = self._match(gce, "region", _REGION, "a region such as europe-west1")
        for key in ("url_map", "health_check", "subnetwork", "service_account"):
            if not gce.get(key) or not isinstance(gce[key], str):
                raise PlatformError("infra.gce.%s: missing; the gcp stack exports it "
                                    "(pulumi up the stack again)" % key, param="infra.gce." + key)
        self.url_map = gce["url_map"]
        self.health_check = gce["health_check"]
        self.subnetwork = gce["subnetwork"]
        self.service_account = gce["service_account"]
        self.network_tags = list(gce.get("network_tags") or [])
        self.backend_services = dict(gce.get("backend_services") or {})
        self.routes = dict(gce.get("routes") or {})
        self.path_matcher = gce.get("path_matcher") or "artifacts"
        self.named_port = gce.get("named_port") or "http"
        self.port = int(gce.get("port") or 8080)
        self.machine_type = gce.get("machine_type") or "e2-small"
        self.initial_delay = int(gce.get("autohealing_initial_delay") or 120)
        self.settle_time = float(gce.get("settle_time") or SETTLE_TIME)
        database = dict(infra.get("database") or {})
        self.db_password_secret = database.get("password_secret") or gce.get("db_password_secret")
        self.database = {k: v for k, v in database.items() if k in ("host", "port", "name", "user")}

    @staticmethod
    def _match(gce, key, pattern, allowed):
        value = gce.get(key)
        if not value:
            raise PlatformError("infra.gce.%s: missing; allowed %s" % (key, allowed),
                                param="infra.gce." + key)
        if not isinstance(value, str) or not pattern.match(value):
            raise PlatformError("infra.gce.%s: %r is malformed; allowed %s" % (key, value, allowed),
                                param="infra.gce." + key)
        return value

    def route(self, artifact: str) -> dict:
        """``{path_matcher, paths}`` of an artifact (paths None: the matcher's default route)."""
        if artifact in self.routes:
            return dict(self.routes[artifact])
        if artifact not in self.backend_services:
            raise PlatformError("artifact %s has no backend service in the infra (infra.gce."
                                "backend_services: %s); add it to the stack's artifacts config"
                                % (artifact, ", ".join(sorted(self.backend_services)) or "none"),
                                param="artifact")
        first = next(iter(self.backend_services))
        return {"path_matcher": self.path_matcher,
                "paths": None if artifact == first else ["/%s" % artifact, "/%s/*" % artifact]}


class GceDriver:
    """What the three GCE roles share: the config, the API client, the
    ownership marker and the URL map editing."""

    name = "gce"
    poll_interval = 10.0

    def __init__(self, infra: dict, http=None, credentials=None, clock: Optional[Clock] = None,
                 api: Optional[Api] = None, plan_only: bool = False):
        self.config = GceConfig(infra)
        #: check mode: without credentials ``list_groups`` answers [] (``unobserved`` says why)
        self.plan_only = plan_only
        self.unobserved = None
        self.clock = clock or Clock()
        self.api = api or Api(self.config.project, self.config.region, http=http,
                              credentials=credentials, clock=self.clock)
        self._artifact_of = {}
        self._recreations = {}

    # ------------------------------------------------------------------ links
    @property
    def compute(self):
        return self.api.compute

    def _global(self, kind: str, name: str) -> str:
        return "projects/%s/global/%s/%s" % (self.config.project, kind, name)

    def _regional(self, kind: str, name: str) -> str:
        return "projects/%s/regions/%s/%s/%s" % (self.config.project, self.config.region, kind, name)

    def _template_bs(self, artifact: str) -> str:
        try:
            return self.config.backend_services[artifact]
        except KeyError:
            raise PlatformError("artifact %s has no backend service in the infra (infra.gce."
                                "backend_services: %s); add it to the stack's artifacts config"
                                % (artifact, ", ".join(sorted(self.config.backend_services)) or "none"),
                                param="artifact")

    # ------------------------------------------------------------- ownership
    @staticmethod
    def _meta(resource: Optional[dict]) -> Optional[dict]:
        text = (resource or {}).get("description") or ""
        if not text.startswith(MARK):
            return None
        try:
            meta = json.loads(text[len(MARK):])
        except ValueError:
            return None
        return meta if isinstance(meta, dict) else None

    def _check_ours(self, kind: str, resource: Optional[dict], meta: dict) -> None:
        """Refuse a resource of the group's name that another deployer made."""
        if resource is None:
            return
        found = self._meta(resource)
        mine = found is not None and all(found.get(k) == meta[k]
                                         for k in ("artifact", "environment", "release"))
        if mine and meta.get("owner") and found.get("owner") not in (None, meta["owner"]):
            mine = False  # the same release id of another release store
        if not mine:
            owner = found and found.get("owner") or (resource.get("description") or "no description")
            raise PlatformError(
                "%s %s exists and belongs to someone else (%s): it is not %s %s release %s of "
                "phoenix.deploy; remove it or deploy under another environment name"
                % (kind, resource.get("name"), owner, meta["artifact"], meta["environment"],
                   meta["release"]), param="environment")

    # -------------------------------------------------------------- checks
    def resolve_image(self, ref, artifact=None) -> str:
        return parse_image(ref)

    def check_scheme(self, artifact: str) -> dict:
        """The artifact's backend service from the stack, checked to be behind
        an ``EXTERNAL_MANAGED`` load balancer (reads only)."""
        name = self._template_bs(artifact)
        template = self.api.get("backendServices.get", self.compute.backendServices().get(
            project=self.config.project, backendService=name))
        if template is None:
            raise PlatformError("infra.gce.backend_services.%s: backend service %s does not exist "
                                "in project %s; pulumi up the gcp stack"
                                % (artifact, name, self.config.project),
                                param="infra.gce.backend_services")
        scheme = template.get("loadBalancingScheme")
        if scheme != SCHEME:
            raise PlatformError("infra.gce.url_map: the URL map %s routes %s to backend service %s "
                                "with loadBalancingScheme %s; weighted routing needs the global "
                                "external Application Load Balancer (%s)"
                                % (self.config.url_map, artifact, name, scheme, SCHEME),
                                param="infra.gce.url_map")
        return template

    # -------------------------------------------------------------- create
    def create_group(self, artifact, environment, release_id, image, size, env,
                     name=None, owner=None) -> ServerGroup:
        name = name or _group_name(artifact, environment, release_id)
        if not valid_name(name) or len(name) > 63:
            raise PlatformError("name: %r; a GCE resource name is a lowercase label "
                                "[a-z]([-a-z0-9]*[a-z0-9])? of at most 63 characters" % (name,),
                                param="name")
        image_path = parse_image(image)
        if not isinstance(size, int) or size < 0 or size > 1000:
            raise PlatformError("size: %r; allowed 0..1000 instances" % (size,), param="size")
        route = self.config.route(artifact)
        meta = {"artifact": artifact, "environment": environment, "release": release_id,
                "owner": owner, "image": image_path}
        description = MARK + json.dumps(meta, sort_keys=True)
        # reads first: nothing is changed when one of them refuses
        template_bs = self.check_scheme(artifact)
        existing = {
            "instance template": self.api.get("instanceTemplates.get", self.compute.instanceTemplates().get(
                project=self.config.project, instanceTemplate=name)),
            "managed instance group": self.api.get(
                "regionInstanceGroupManagers.get", self.compute.regionInstanceGroupManagers().get(
                    project=self.config.project, region=self.config.region, instanceGroupManager=name)),
            "backend service": self.api.get("backendServices.get", self.compute.backendServices().get(
                project=self.config.project, backendService=name)),
        }
        for kind, resource in existing.items():
            self._check_ours(kind, resource, meta)
        self._find_route(self._get_url_map(), route)  # the route exists
        self._artifact_of[name] = artifact
        if existing["instance template"] is None:
            self._insert("instanceTemplates.insert", self.compute.instanceTemplates().insert(
                project=self.config.project,
                body=self._template_body(name, artifact, environment, release_id, owner,
                                         image_path, env, description)))
        mig = existing["managed instance group"]
        if mig is None:
            self._insert("regionInstanceGroupManagers.insert",
                         self.compute.regionInstanceGroupManagers().insert(
                             project=self.config.project, region=self.config.region,
                             body=self._mig_body(name, size, description)))
            mig = self.api.call("regionInstanceGroupManagers.get",
                                self.compute.regionInstanceGroupManagers().get(
                                    project=self.config.project, region=self.config.region,
                                    instanceGroupManager=name))
        self._named_port(name)
        group_link = mig.get("instanceGroup") or self._regional("instanceGroups", name)
        if existing["backend service"] is None:
            self._insert("backendServices.insert", self.compute.backendServices().insert(
                project=self.config.project,
                body=self._backend_body(name, template_bs, group_link, description)))
        self._edit_route(lambda entries: self._attach(entries, name, 0, artifact), route)
        return ServerGroup(name=name, artifact=artifact, environment=environment,
                           release_id=release_id, image=image_path, size=size, weight=0,
                           attached=True, owner=owner)

    def _insert(self, what, request):
        try:
            self.api.run(what, request)
        except Conflict:  # made by the call a dead controller (or a retry) sent
            pass

    def _env(self, env: dict) -> dict:
        out = {"PORT": str(self.config.port)}
        for key, value in self.config.database.items():
            out["DB_" + key.upper()] = str(value)
        if self.config.db_password_secret:
            out["DB_PASSWORD_SECRET"] = self.config.db_password_secret
        out.update({k: str(v) for k, v in (env or {}).items()})
        return out

    def config_inputs(self) -> dict:
        """What every instance gets besides ``env`` (the DB password only as
        its Secret Manager reference, never a value)."""
        return self._env({})

    def _template_body(self, name, artifact, environment, release_id, owner, image_path,
                       env, description) -> dict:
        labels = {"phoenix-artifact": _label(artifact), "phoenix-environment": _label(environment),
                  "phoenix-release": _label(release_id), "phoenix-owner": _label(owner or "none")}
        return {
            "name": name,
            "description": description,
            "properties": {
                "machineType": self.config.machine_type,
                "labels": labels,
                "tags": {"items": self.config.network_tags},
                "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
                           "initializeParams": {"sourceImage": image_path}}],
                "networkInterfaces": [{"subnetwork": self._subnetwork()}],
                "serviceAccounts": [{"email": self.config.service_account,
                                     "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
                "metadata": {"items": [
                    {"key": "phoenix-env", "value": json.dumps(self._env(env), sort_keys=True)},
                    {"key": "phoenix-group", "value": name},
                ]},
            },
        }

    def _subnetwork(self) -> str:
        sub = self.config.subnetwork
        return sub if "/" in sub else self._regional("subnetworks", sub)

    def _mig_body(self, name, size, description) -> dict:
        return {
            "name": name,
            "description": description,
            "baseInstanceName": name[:54].rstrip("-"),
            "instanceTemplate": self._global("instanceTemplates", name),
            "targetSize": size,
            "autoHealingPolicies": [{"healthCheck": self._global("healthChecks", self.config.health_check),
                                     "initialDelaySec": self.config.initial_delay}],
            "updatePolicy": {"type": "OPPORTUNISTIC"},
        }

    def _named_port(self, name: str) -> None:
        group = self.api.call("regionInstanceGroups.get", self.compute.regionInstanceGroups().get(
            project=self.config.project, region=self.config.region, instanceGroup=name))
        wanted = {"name": self.config.named_port, "port": self.config.port}
        if wanted in (group.get("namedPorts") or []):
            return
        body = {"namedPorts": [wanted]}
        if group.get("fingerprint"):
            body["fingerprint"] = group["fingerprint"]
        self.api.run("regionInstanceGroups.setNamedPorts",
                     self.compute.regionInstanceGroups().setNamedPorts(
                         project=self.config.project, region=self.config.region,
                         instanceGroup=name, body=body))

    def _backend_body(self, name, template, group_link, description) -> dict:
        body = {"name": name, "description": description,
                "backends": [{"group": group_link, "balancingMode": "UTILIZATION",
                              "capacityScaler": 1.0}]}
        for key in ("loadBalancingScheme", "protocol", "portName", "timeoutSec", "healthChecks",
                    "connectionDraining", "logConfig", "sessionAffinity", "localityLbPolicy"):
            if key in template:
                body[key] = template[key]
        body.setdefault("healthChecks", [self._global("healthChecks", self.config.health_check)])
        body.setdefault("portName", self.config.named_port)
        return body

    # ------------------------------------------------------------- URL map
    def _get_url_map(self) -> dict:
        found = self.api.get("urlMaps.get", self.compute.urlMaps().get(
            project=self.config.project, urlMap=self.config.url_map))
        if found is None:
            raise PlatformError("infra.gce.url_map: URL map %s does not exist in project %s; "
                                "pulumi up the gcp stack" % (self.config.url_map, self.config.project),
                                param="infra.gce.url_map")
        return found

    def _find_route(self, url_map: dict, route: dict) -> dict:
        """The route action (created from a plain ``service`` if needed) of one route."""
        matcher = next((m for m in url_map.get("pathMatchers") or []
                        if m.get("name") == route["path_matcher"]), None)
        if matcher is None:
            raise PlatformError("infra.gce.routes: URL map %s has no path matcher %s"
                                % (self.config.url_map, route["path_matcher"]),
                                param="infra.gce.routes")
        if not route.get("paths"):
            holder, action_key, service_key = matcher, "defaultRouteAction", "defaultService"
        else:
            wanted = sorted(route["paths"])
            holder = next((r for r in matcher.get("pathRules") or []
                           if sorted(r.get("paths") or []) == wanted), None)
            if holder is None:
                raise PlatformError("infra.gce.routes: path matcher %s of URL map %s has no path "
                                    "rule for %s" % (route["path_matcher"], self.config.url_map,
                                                     ", ".join(wanted)), param="infra.gce.routes")
            action_key, service_key = "routeAction", "service"
        action = holder.setdefault(action_key, {})
        entries = action.setdefault("weightedBackendServices", [])
        if holder.get(service_key):
            entries.insert(0, {"backendService": holder.pop(service_key), "weight": 100})
        return action

    def _all_entries(self, url_map: dict) -> list:
        out = []
        for matcher in url_map.get("pathMatchers") or []:
            actions = [matcher.get("defaultRouteAction")] + [
                r.get("routeAction") for r in matcher.get("pathRules") or []]
            for action in actions:
                if action and action.get("weightedBackendServices") is not None:
                    out.append(action["weightedBackendServices"])
        return out

    def _edit(self, edit) -> dict:
        """get -> ``edit(url_map)`` (in place; unchanged: no call) -> validate -> patch
        with the fingerprint; a 412 (someone else patched in between) re-reads."""
        last = None
        for _attempt in range(URL_MAP_ATTEMPTS):
            url_map = self._get_url_map()
            before = json.dumps(url_map, sort_keys=True)
            edit(url_map)
            if json.dumps(url_map, sort_keys=True) == before:
                return url_map
            self._validate(url_map)
            body = {"pathMatchers": url_map.get("pathMatchers") or [],
                    "fingerprint": url_map.get("fingerprint")}
            try:
                self.api.run("urlMaps.patch", self.compute.urlMaps().patch(
                    project=self.config.project, urlMap=self.config.url_map, body=body))
                return url_map
            except PlatformError as exc:
                if exc.details.get("status") != 412:
                    raise
                last = exc
        raise PlatformError("urlMaps.patch: URL map %s changed under us %d times in a row "
                            "(HTTP 412): %s" % (self.config.url_map, URL_MAP_ATTEMPTS,
                                                last.msg if last else ""), transient=True)

    def _validate(self, url_map: dict) -> None:
        resource = {k: v for k, v in url_map.items()
                    if k not in ("id", "creationTimestamp", "selfLink", "kind", "fingerprint")}
        answer = self.api.call("urlMaps.validate", self.compute.urlMaps().validate(
            project=self.config.project, urlMap=self.config.url_map,
            body={"resource": resource, "loadBalancingSchemes": [SCHEME]}))
        result = answer.get("result") or {}
        if not result.get("loadSucceeded", False):
            raise PlatformError("urlMaps.validate: the edited URL map %s does not load: %s"
                                % (self.config.url_map, "; ".join(result.get("loadErrors") or ["?"])),
                                param="infra.gce.url_map")

    def _edit_route(self, change, route) -> dict:
        def edit(url_map):
            action = self._find_route(url_map, route)
            change(action["weightedBackendServices"])
            self._placeholder(action["weightedBackendServices"])
        return self._edit(edit)

    def _placeholder(self, entries: list) -> None:
        """The stack's backend service: weight 100 while no group has weight, else 0."""
        ours = {_path(self._global("backendServices", n)) for n in self.config.backend_services.values()}
        others = sum(int(e.get("weight") or 0) for e in entries if _path(e["backendService"]) not in ours)
        for entry in entries:
            if _path(entry["backendService"]) in ours:
                entry["weight"] = 0 if others else 100

    def _attach(self, entries: list, name: str, weight: int, artifact: str) -> None:
        link = self._global("backendServices", name)
        for entry in entries:
            if _path(entry["backendService"]) == link:
                entry["weight"] = weight
                return
        entries.append({"backendService": link, "weight": weight})
        if not any(_path(e["backendService"]) == self._global("backendServices", self._template_bs(artifact))
                   for e in entries):
            entries.insert(0, {"backendService": self._global("backendServices",
                                                              self._template_bs(artifact)), "weight": 0})

    def _observed_weights(self, url_map: dict) -> dict:
        """``{group name: weight}`` of every backend service in a route (attached)."""
        out = {}
        for entries in self._all_entries(url_map):
            for entry in entries:
                name = _path(entry["backendService"]).rsplit("/", 1)[-1]
                out[name] = out.get(name, 0) + int(entry.get("weight") or 0)
        return out

    def _artifact(self, name: str) -> str:
        if name not in self._artifact_of:
            service = self.api.get("backendServices.get", self.compute.backendServices().get(
                project=self.config.project, backendService=name))
            meta = self._meta(service)
            if meta is None:
                raise PlatformError("no server group %r (no backend service of phoenix.deploy)" % name)
            self._artifact_of[name] = meta["artifact"]
        return self._artifact_of[name]

    # ------------------------------------------------------------ traffic
    def set_weights(self, weights: dict) -> None:
        for name, weight in weights.items():
            if not isinstance(weight, int) or not 0 <= weight <= 100:
                raise PlatformError("weights.%s: %r; allowed 0..100" % (name, weight), param="weights")
        by_artifact = {}
        for name, weight in weights.items():
            by_artifact.setdefault(self._artifact(name), {})[name] = weight
        for artifact, part in sorted(by_artifact.items()):
            def change(entries, part=part, artifact=artifact):
                present = {_path(e["backendService"]).rsplit("/", 1)[-1] for e in entries}
                for name, weight in sorted(part.items()):
                    if name in present or weight > 0:
                        self._attach(entries, name, weight, artifact)
            self._edit_route(change, self.config.route(artifact))

    def verify_weights(self, weights: dict) -> Optional[bool]:
        """False when the URL map reads other weights; else None: the load
        balancer applies a URL map change eventually and cannot be asked."""
        observed = self._observed_weights(self._get_url_map())
        for name, weight in weights.items():
            if observed.get(name, 0) != weight or (weight > 0 and name not in observed):
                return False
        return None

    def _detach_edit(self, name: str, weight_only: bool):
        """An edit that sets the group's weight to 0 (``weight_only``) or removes
        its entry from every route of the URL map."""
        link = self._global("backendServices", name)

        def edit(url_map):
            for entries in self._all_entries(url_map):
                if not any(_path(e["backendService"]) == link for e in entries):
                    continue
                if weight_only:
                    for entry in entries:
                        if _path(entry["backendService"]) == link:
                            entry["weight"] = 0
                else:
                    entries[:] = [e for e in entries if _path(e["backendService"]) != link]
                self._placeholder(entries)
        return edit

    def drain_and_detach(self, group: str) -> None:
        """Weight 0, wait the backend service's connection draining timeout
        (plus the settle time when it had traffic), then out of the URL map."""
        before = self._observed_weights(self._get_url_map()).get(group, 0)
        self._edit(self._detach_edit(group, weight_only=True))
        if before > 0:
            service = self.api.get("backendServices.get", self.compute.backendServices().get(
                project=self.config.project, backendService=group)) or {}
            draining = int((service.get("connectionDraining") or {}).get("drainingTimeoutSec") or 0)
            self.clock.sleep(self.config.settle_time + draining)
        self._edit(self._detach_edit(group, weight_only=False))

    # ------------------------------------------------------------- groups
    def resize(self, group: str, size: int) -> None:
        if not isinstance(size, int) or size < 0 or size > 1000:
            raise PlatformError("size: %r; allowed 0..1000 instances" % (size,), param="size")
        try:
            self.api.run("regionInstanceGroupManagers.resize",
                         self.compute.regionInstanceGroupManagers().resize(
                             project=self.config.project, region=self.config.region,
                             instanceGroupManager=group, size=size))
        except NotFound:
            raise PlatformError("no server group %r" % group)

    def health(self, group: str) -> Health:
        mig = self.api.get("regionInstanceGroupManagers.get",
                           self.compute.regionInstanceGroupManagers().get(
                               project=self.config.project, region=self.config.region,
                               instanceGroupManager=group))
        if mig is None:
            raise PlatformError("no server group %r" % group)
        managed, token = [], None
        for _page in range(10):  # 500 a page; a group has at most 1000 instances
            kwargs = {"pageToken": token} if token else {}
            page = self.api.call("regionInstanceGroupManagers.listManagedInstances",
                                 self.compute.regionInstanceGroupManagers().listManagedInstances(
                                     project=self.config.project, region=self.config.region,
                                     instanceGroupManager=group, **kwargs))
            managed.extend(page.get("managedInstances") or [])
            token = page.get("nextPageToken")
            if not token:
                break
        lb = {}
        if managed:
            try:
                answer = self.api.call("backendServices.getHealth", self.compute.backendServices().getHealth(
                    project=self.config.project, backendService=group,
                    body={"group": mig.get("instanceGroup") or self._regional("instanceGroups", group)}))
                for status in answer.get("healthStatus") or []:
                    lb[_path(status.get("instance"))] = status.get("healthState")
            except NotFound:
                lb = {}
        instances = [self._instance(group, item, lb) for item in managed]
        ready = sum(1 for i in instances if i.state == READY)
        return Health(ready=ready, total=int(mig.get("targetSize") or 0), instances=instances)

    def _instance(self, group: str, item: dict, lb: dict) -> InstanceHealth:
        name = item.get("name") or _path(item.get("instance")).rsplit("/", 1)[-1]
        action = item.get("currentAction") or "NONE"
        status = item.get("instanceStatus") or "PROVISIONING"
        key = (group, name)
        seen = self._recreations.setdefault(key, {"count": 0, "last": None, "since": None})
        if action == "RECREATING" and seen["last"] != "RECREATING":
            seen["count"] += 1
            seen["since"] = self.clock.now()
        elif action != "RECREATING":
            seen["since"] = None
        seen["last"] = action
        errors = ((item.get("lastAttempt") or {}).get("errors") or {}).get("errors") or []
        if errors:
            detail = "; ".join("%s: %s" % (e.get("code", "?"), e.get("message", "")) for e in errors)
            return InstanceHealth(name, FAILED, "last attempt failed: " + detail, seen["count"])
        if seen["count"] >= MAX_RECREATIONS:
            return InstanceHealth(name, FAILED, "recreated %d times by autohealing (health check %s "
                                  "failing)" % (seen["count"], self.config.health_check), seen["count"])
        if seen["since"] is not None and self.clock.now() - seen["since"] >= MAX_RECREATING:
            return InstanceHealth(name, FAILED, "being recreated by autohealing for %ds (health check %s "
                                  "failing)" % (self.clock.now() - seen["since"], self.config.health_check),
                                  seen["count"])
        check = ",".join(h.get("detailedHealthState", "") for h in item.get("instanceHealth") or [])
        lb_state = lb.get(_path(item.get("instance")))
        detail = "%s/%s, autohealing %s, load balancer %s" % (status, action, check or "-", lb_state or "-")
        if action in ("DELETING", "ABANDONING") or status == "STOPPING":
            return InstanceHealth(name, DRAINING, detail, seen["count"])
        if action == "NONE" and status == "RUNNING" and lb_state == "HEALTHY":
            return InstanceHealth(name, READY, detail, seen["count"])
        return InstanceHealth(name, STARTING, detail, seen["count"])

    def destroy(self, group: str) -> None:
        """URL-map entry, backend service, MIG, template, in that order; 404 = done."""
        self._edit(self._detach_edit(group, weight_only=False))
        for what, request in (
                ("backendServices.delete", lambda: self.compute.backendServices().delete(
                    project=self.config.project, backendService=group)),
                ("regionInstanceGroupManagers.delete", lambda: self.compute.regionInstanceGroupManagers().delete(
                    project=self.config.project, region=self.config.region, instanceGroupManager=group)),
                ("instanceTemplates.delete", lambda: self.compute.instanceTemplates().delete(
                    project=self.config.project, instanceTemplate=group))):
            try:
                self.api.run(what, request())
            except NotFound:
                pass
        self._artifact_of.pop(group, None)
        for key in [k for k in self._recreations if k[0] == group]:
            del self._recreations[key]

    def list_groups(self, artifact: str, environment: str) -> list:
        try:
            return self.api.retried(lambda: self._list_groups(artifact, environment))
        except PlatformError as exc:
            if not (self.plan_only and exc.param == "credentials"):
                raise
            self.unobserved = exc.msg
            return []

    def _list_groups(self, artifact: str, environment: str) -> list:
        prefix = _group_name(artifact, environment, "x")[:-1]
        if len(prefix) > 40:
            prefix = prefix[:40]
        flt = 'name eq "%s.*"' % re.escape(prefix)
        migs = {m["name"]: m for m in self.api.items(
            "regionInstanceGroupManagers.list", self.compute.regionInstanceGroupManagers().list,
            project=self.config.project, region=self.config.region, filter=flt)}
        services = {s["name"]: s for s in self.api.items(
            "backendServices.list", self.compute.backendServices().list,
            project=self.config.project, filter=flt)}
        templates = {t["name"]: t for t in self.api.items(
            "instanceTemplates.list", self.compute.instanceTemplates().list,
            project=self.config.project, filter=flt)}
        weights = self._observed_weights(self._get_url_map())
        out = []
        for name in sorted(set(migs) | set(services) | set(templates)):
            metas = [self._meta(r.get(name)) for r in (migs, services, templates)]
            meta = next((m for m in metas if m), None)
            if meta is None or meta.get("artifact") != artifact or meta.get("environment") != environment:
                continue
            self._artifact_of[name] = artifact
            service = services.get(name)
            complete = service is not None and bool(service.get("backends")) and name in migs
            out.append(ServerGroup(
                name=name, artifact=artifact, environment=environment,
                # a group a dead controller left half made has no release id yet:
                # the engine's create retry then runs the get-or-create steps again
                release_id=meta.get("release", "") if complete else "",
                image=meta.get("image", ""), size=int((migs.get(name) or {}).get("targetSize") or 0),
                weight=weights.get(name, 0), attached=name in weights, owner=meta.get("owner")))
        return out


def _group_name(artifact, environment, release_id):
    from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import group_name
    return group_name(artifact, environment, release_id)


#: the API calls of each engine step, in order (``GcePlatform.api_plan``; check mode)
_WAIT_G, _WAIT_R = "compute.globalOperations.wait (until DONE)", "compute.regionOperations.wait (until DONE)"
_EDIT = ["compute.urlMaps.get", "compute.urlMaps.validate", "compute.urlMaps.patch (fingerprint; 412: get again)", _WAIT_G]
_HEALTH = ["compute.regionInstanceGroupManagers.get", "compute.regionInstanceGroupManagers.listManagedInstances",
           "compute.backendServices.getHealth"]
_METRICS = ["monitoring.projects.timeSeries.list (https/request_count by response_code_class)",
            "monitoring.projects.timeSeries.list (https/backend_latencies)"]


def api_calls(step: dict, poll_interval: float, settle_time: float) -> list:
    """The ordered Google API calls the engine makes for one plan step."""
    kind = step.get("kind")
    if kind == "create":
        return (["compute.backendServices.get (the artifact's: EXTERNAL_MANAGED?)",
                 "compute.instanceTemplates.get", "compute.regionInstanceGroupManagers.get",
                 "compute.backendServices.get (owner check)", "compute.urlMaps.get (route exists)",
                 "compute.instanceTemplates.insert (image, labels, tags, subnetwork, service account, "
                 "env in metadata)", _WAIT_G,
                 "compute.regionInstanceGroupManagers.insert (%s instance(s), autohealing, OPPORTUNISTIC)"
                 % step.get("size"), _WAIT_R, "compute.regionInstanceGroupManagers.get",
                 "compute.regionInstanceGroups.get", "compute.regionInstanceGroups.setNamedPorts", _WAIT_R,
                 "compute.backendServices.insert (copy of the artifact's)", _WAIT_G] + _EDIT[:2] +
                ["compute.urlMaps.patch (attach at weight 0)", _WAIT_G])
    if kind == "resize":
        return ["compute.regionInstanceGroupManagers.resize (to %s)" % step.get("size"), _WAIT_R]
    if kind in ("wait_healthy", "verify"):
        return ["every %gs: %s" % (poll_interval, ", ".join(_HEALTH))]
    if kind == "set_weights":
        return _EDIT + ["compute.urlMaps.get (read back), then wait %gs: the load balancer applies it "
                        "eventually" % settle_time]
    if kind == "pause":
        if step.get("duration") is None:
            return ["none until action: promote"]
        calls = ["every %gs: %s" % (poll_interval, ", ".join(_HEALTH))]
        return calls + (["per analysis window: " + ", ".join(_METRICS)] if step.get("analyze") else [])
    if kind == "analyze":
        return _METRICS
    if kind == "drain":
        return (["compute.urlMaps.get"] + _EDIT + ["compute.backendServices.get (connectionDraining), wait "
                                                   "%gs + the draining timeout" % settle_time] + _EDIT)
    if kind == "destroy":
        return _EDIT[:2] + ["compute.urlMaps.patch (detach)", _WAIT_G, "compute.backendServices.delete", _WAIT_G,
                            "compute.regionInstanceGroupManagers.delete", _WAIT_R,
                            "compute.instanceTemplates.delete", _WAIT_G]
    if kind == "keep_warm":
        return ["none now (warm: the MIG keeps running); destroy after %gs" % (step.get("duration") or 0)]
    if kind == "cancel_drain":
        return []
    return ["none (release store)"]
