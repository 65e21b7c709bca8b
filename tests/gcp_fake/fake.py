"""The stateful fake behind ``googleapiclient`` (see the package docstring)."""

import base64
import collections
import copy
import datetime
import email.parser
import email.policy
import hashlib
import json
import random
import re
import threading
import urllib.parse

import httplib2
from googleapiclient import discovery as gdiscovery

from .discovery import Api, Invalid

COMPUTE_LINK = "https://www.googleapis.com/compute/v1/"
_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_LINK = re.compile(r"^(?:https://(?:www|compute)\.googleapis\.com/compute/v1/)?(?:projects/(?P<project>[^/]+)/)?"
                   r"(?:global|regions/(?P<region>[^/]+)|zones/(?P<zone>[^/]+))/(?P<collection>[A-Za-z]+)/(?P<name>[^/]+)$")

#: method resource -> (collection, schema, scope)
COMPUTE = {
    "instanceTemplates": ("instanceTemplates", "InstanceTemplate", "global"),
    "regionInstanceGroupManagers": ("instanceGroupManagers", "InstanceGroupManager", "region"),
    "regionInstanceGroups": ("instanceGroups", "InstanceGroup", "region"),
    "backendServices": ("backendServices", "BackendService", "global"),
    "urlMaps": ("urlMaps", "UrlMap", "global"),
    "healthChecks": ("healthChecks", "HealthCheck", "global"),
    "images": ("images", "Image", "global"),
}

#: the same, by collection name too (``instanceGroupManagers``)
RESOURCES = dict(COMPUTE, **{v[0]: v for v in COMPUTE.values()})

_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
           412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
_REASON = {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists", 412: "conditionNotMet",
           429: "rateLimitExceeded", 500: "internalError", 503: "backendError"}


class ApiError(Exception):
    """An error answer (HTTP status, Google reason, message)."""

    def __init__(self, status, message, reason=None):
        super().__init__(message)
        self.status, self.reason = status, reason or _REASON.get(status, "error")


def error_body(status, message, reason=None) -> bytes:
    """Google's JSON error shape (what googleapiclient's HttpError parses)."""
    reason = reason or _REASON.get(status, "error")
    return json.dumps({"error": {"code": status, "message": message,
                                 "errors": [{"message": message, "domain": "global", "reason": reason}],
                                 "status": _STATUS.get(status, "UNKNOWN")}}).encode()


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(when=None):
    return (when or _now()).isoformat(timespec="milliseconds")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (what GCE's PATCH methods use)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


_APIS = {}


def _api(name, version):
    """Parsed documents are shared by all fakes (read-only)."""
    if (name, version) not in _APIS:
        _APIS[(name, version)] = Api(name, version)
    return _APIS[(name, version)]


class FakeHttp:
    """What ``build(..., http=...)`` calls: ``request(uri, method, body, headers)``."""

    def __init__(self, fake):
        self.fake = fake

    def request(self, uri, method="GET", body=None, headers=None, redirections=5, connection_type=None):
        del redirections, connection_type
        return self.fake.handle(uri, method, body, headers or {})

    def close(self):
        """Nothing to close."""


class GoogleFake:  # pylint: disable=too-many-instance-attributes,too-many-public-methods
    """See the package docstring."""

    def __init__(self, project="phoenix-fake", region="europe-west1", zones=None, op_polls=2,
                 healthy_after=2, seed=0):
        self.project, self.region = project, region
        self.zones = list(zones or ["%s-%s" % (region, z) for z in "bcd"])
        self.op_polls, self.healthy_after = op_polls, healthy_after
        self.apis = {api.host: api for api in (_api("compute", "v1"), _api("monitoring", "v3"), _api("storage", "v1"))}
        self.http = FakeHttp(self)
        self.calls = collections.Counter()
        self.violations = []
        self.log = []
        #: ``hook(method_id, phase)`` is called for every valid request with
        #: phase "before" (no effect yet) and "after" (effect applied, answer
        #: not sent); raising there simulates a controller killed mid-call
        self.hook = None
        self._lock = threading.RLock()
        self._rand = random.Random(seed)
        self._ids = iter(range(10 ** 15, 10 ** 16))
        self._res = collections.defaultdict(dict)   # (collection, scope) -> {name: resource}
        self._ops = {}                                # (scope, name) -> op state
        self._migs = {}                               # (region, name) -> instance state
        self._injected = collections.defaultdict(list)
        self._series = []
        self._buckets = {}
        self._generation = 1_700_000_000_000_000

    # ---------------------------------------------------------------- public
    def request(self, uri, method="GET", body=None, headers=None, **_kw):
        """The fake is its own ``http`` too: ``build(..., http=fake)`` works."""
        return self.handle(uri, method, body, headers or {})

    def build(self, name, version):
        """``googleapiclient.discovery.build`` from the bundled document, on this fake."""
        return gdiscovery.build_from_document(_api(name, version).doc, http=self.http)

    def link(self, path, project=None):
        """Self-link of ``path`` (``global/urlMaps/x``, ``regions/r/...``)."""
        return "%sprojects/%s/%s" % (COMPUTE_LINK, project or self.project, path)

    def method_ids(self):
        return sorted({m.id for api in self.apis.values() for m in api.methods})

    def inject(self, method_id, status, times=1, reason=None, message=None):
        """The next ``times`` calls of ``method_id`` (e.g. ``compute.urlMaps.patch``)
        answer HTTP ``status`` in Google's error shape (after the request was
        checked against the schema, and without any effect)."""
        self._known(method_id)
        for _i in range(times):
            self._injected[method_id].append(("http", status, reason, message))

    def clear_injections(self, method_id=None):
        """Drop what ``inject`` / ``fail_operation`` left unused (of one method, or all)."""
        if method_id is None:
            self._injected.clear()
        else:
            self._injected.pop(method_id, None)

    def fail_operation(self, method_id, code="QUOTA_EXCEEDED", message=None, status=403, times=1):
        """The next ``times`` calls of ``method_id`` return an operation that
        ends DONE with ``error.errors[0].code == code`` and no effect."""
        self._known(method_id)
        method = self.apis["compute.googleapis.com"].by_id(method_id) if method_id.startswith("compute.") else None
        if method is None or method.response_schema() != "Operation":
            raise ValueError("fail_operation: %s does not return a compute operation" % method_id)
        for _i in range(times):
            self._injected[method_id].append(("operation", status, code, message))

    def crash_loop(self, mig, errors=True):
        """Instances of regional MIG ``mig`` keep being recreated (currentAction
        RECREATING, health UNHEALTHY, with ``lastAttempt.errors`` if ``errors``)."""
        self._mig_state(mig)["crash"] = "errors" if errors else "recreate"

    def heal(self, mig):
        state = self._mig_state(mig)
        state["crash"] = None
        for inst in state["instances"]:
            inst["born"] = state["polls"]

    def set_healthy_after(self, polls, mig=None):
        """Instances (of ``mig``, or of MIGs created from now on) are HEALTHY
        ``polls`` listManagedInstances/getHealth calls after they were created."""
        if mig is None:
            self.healthy_after = polls
        else:
            self._mig_state(mig)["healthy_after"] = polls

    def add(self, resource, body, region=None):
        """Create a compute resource directly (what the infra stack made):
        ``resource`` is the API resource name (``urlMaps``, ``backendServices``,
        ``healthChecks``, ``images``, ...); ``body`` is checked like an insert."""
        collection, schema, scope = RESOURCES[resource]
        api = self.apis["compute.googleapis.com"]
        try:
            api.check_value(body, {"$ref": schema}, "add(%s)" % resource, request=True)
        except Invalid as exc:
            raise ValueError(str(exc)) from None
        with self._lock:
            try:
                return copy.deepcopy(self._create(collection, schema, region or self.region if scope == "region"
                                                  else "global", body))
            except ApiError as exc:
                raise ValueError(str(exc)) from None

    def add_image(self, name, project=None, family=None):
        """A READY image ``projects/<project>/global/images/<name>``."""
        body = {"name": name, "family": family} if family else {"name": name}
        with self._lock:
            try:
                res = self._create("images", "Image", "global", body, project=project or self.project)
            except ApiError as exc:
                raise ValueError(str(exc)) from None
            res["status"] = "READY"
        return res["selfLink"]

    def get(self, resource, name, region=None):
        """A stored compute resource (a copy) or None."""
        collection, _schema, scope = RESOURCES[resource]
        got = self._res[(collection, region or self.region if scope == "region" else "global")].get(name)
        return copy.deepcopy(got)

    def names(self, resource, region=None):
        collection, _schema, scope = RESOURCES[resource]
        return sorted(self._res[(collection, region or self.region if scope == "region" else "global")])

    def add_bucket(self, name):
        self._buckets.setdefault(name, {})

    def add_time_series(self, series):
        """A Monitoring ``TimeSeries`` (checked against the schema) that
        ``projects.timeSeries.list`` returns when the filter matches its
        ``metric.type`` and labels and a point lies in the interval."""
        api = self.apis["monitoring.googleapis.com"]
        api.check_value(series, {"$ref": "TimeSeries"}, "add_time_series", request=False)
        key = json.dumps({k: v for k, v in series.items() if k != "points"}, sort_keys=True)
        with self._lock:
            for known in self._series:  # the same metric and labels: one series, more points
                if json.dumps({k: v for k, v in known.items() if k != "points"}, sort_keys=True) == key:
                    known.setdefault("points", []).extend(copy.deepcopy(series.get("points", [])))
                    return
            self._series.append(copy.deepcopy(series))

    def check(self):
        """Raise AssertionError listing every request the schema refused."""
        if self.violations:
            raise AssertionError("requests refused by the discovery documents:\n  " + "\n  ".join(self.violations))

    # --------------------------------------------------------------- routing
    def handle(self, uri, verb, body, headers):
        with self._lock:
            parts = urllib.parse.urlsplit(uri)
            api = self.apis.get(parts.netloc)
            label = "%s %s" % (verb, parts.path)
            try:
                if api is None:
                    raise Invalid("no Google API at host %r (known: %s)" % (parts.netloc, ", ".join(self.apis)), 404,
                                  "notFound")
                method, values = api.route(verb, parts.path)
                label = method.id
                self.calls[method.id] += 1
                query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
                params = api.check_parameters(method, values, query)
                data, media = self._body(api, method, params, body, headers)
            except Invalid as exc:
                self.violations.append(str(exc))
                self.log.append((label, exc.status))
                return self._answer(exc.status, error_body(exc.status, str(exc), exc.reason))
            if self.hook is not None:
                self.hook(method.id, "before")
            injected = self._injected.get(method.id)
            if injected and injected[0][0] == "http":
                _kind, status, reason, message = injected.pop(0)
                self.log.append((method.id, status))
                return self._answer(status, error_body(status, message or "injected %d for %s" % (status, method.id),
                                                       reason))
            try:
                if injected:
                    _kind, status, code, message = injected.pop(0)
                    result = self._failed_op(method, params, status, code, message)
                else:
                    handler = getattr(self, "_" + method.id.replace(".", "_"), None)
                    if handler is None:  # loud, never an HTTP 5xx a driver would retry
                        raise NotImplementedError("gcp_fake does not implement %s (the request itself was valid)"
                                                  % method.id)
                    result = handler(params, data, media) if media is not None else handler(params, data)
            except ApiError as exc:
                self.log.append((method.id, exc.status))
                return self._answer(exc.status, error_body(exc.status, str(exc), exc.reason))
            if self.hook is not None:
                self.hook(method.id, "after")
            if result is None:
                self.log.append((method.id, 204))
                return self._answer(204, b"")
            self.log.append((method.id, 200))
            if isinstance(result, bytes):  # media download
                return self._answer(200, result, "application/octet-stream")
            ref = method.response_schema()
            if ref:
                api.check_value(result, {"$ref": ref}, "fake response of %s" % method.id, request=False)
            return self._answer(200, json.dumps(result).encode())

    @staticmethod
    def _answer(status, content, ctype="application/json; charset=UTF-8"):
        return httplib2.Response({"status": str(status), "content-type": ctype}), content

    def _known(self, method_id):
        if method_id not in self.method_ids():
            raise ValueError("unknown method id %r (e.g. compute.urlMaps.patch, storage.objects.insert)" % method_id)

    @staticmethod
    def _body(api, method, params, body, headers):
        """``(json body or None, media bytes or None)``."""
        if isinstance(body, str):
            body = body.encode()
        if not method.media:
            return api.check_body(method, body), None
        upload = params.get("uploadType")
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if upload == "media":
            if not params.get("name"):
                raise Invalid("%s: uploadType=media needs the name query parameter" % method.id)
            return {}, body or b""
        if upload == "multipart":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + (body or b""))
            parts = list(msg.iter_parts()) if msg.is_multipart() else []
            if len(parts) != 2:
                raise Invalid("%s: multipart upload needs 2 parts (metadata, media), got %d" % (method.id, len(parts)))
            meta = parts[0].get_payload(decode=True)
            data = api.check_body(method, meta)
            return data, parts[1].get_payload(decode=True) or b""
        raise Invalid("%s: uploadType %r is not supported by the fake (media, multipart)" % (method.id, upload))

    # ------------------------------------------------------------- resources
    def _scope(self, params):
        if params.get("project") not in (None, self.project):
            raise ApiError(404, "The resource 'projects/%s' was not found" % params["project"])
        region = params.get("region")
        if region is not None and region != self.region:
            raise ApiError(404, "The resource 'projects/%s/regions/%s' was not found (the fake serves %s)"
                           % (self.project, region, self.region))
        return region or "global"

    @staticmethod
    def _path(collection, scope, name, project):
        where = "global" if scope == "global" else "regions/%s" % scope
        return "projects/%s/%s/%s/%s" % (project, where, collection, name)

    def _fingerprint(self, res):
        plain = {k: v for k, v in res.items() if k not in ("fingerprint", "id", "creationTimestamp", "selfLink")}
        return base64.b64encode(hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).digest()[:8]).decode()

    def _create(self, collection, schema, scope, body, project=None):
        project = project or self.project
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ApiError(400, "Invalid value for field 'resource.name': %r. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'" % (name,))
        key = (collection, scope if project == self.project else project)
        if name in self._res[key]:
            raise ApiError(409, "The resource '%s' already exists" % self._path(collection, scope, name, project))
        res = copy.deepcopy(body)
        props = self.apis["compute.googleapis.com"].schemas[schema]["properties"]
        res.update(id=str(next(self._ids)), creationTimestamp=_stamp(),
                   selfLink=COMPUTE_LINK + self._path(collection, scope, name, project))
        if "kind" in props:
            res["kind"] = props["kind"].get("default", "compute#" + schema[0].lower() + schema[1:])
        if scope != "global" and "region" in props:
            res["region"] = COMPUTE_LINK + "projects/%s/regions/%s" % (project, scope)
        if "fingerprint" in props:
            res["fingerprint"] = self._fingerprint(res)
        self._res[key][name] = res
        return res

    def _find(self, collection, scope, name):
        res = self._res[(collection, scope)].get(name)
        if res is None:
            raise ApiError(404, "The resource '%s' was not found" % self._path(collection, scope, name, self.project))
        return res

    def _resolve(self, link, collection, field):
        """The stored resource a reference (URL or partial path) names."""
        found = _LINK.match(link or "")
        if not found or found.group("collection") != collection:
            raise ApiError(400, "Invalid value for field '%s': %r. Expected a %s URL" % (field, link, collection))
        project = found.group("project") or self.project
        scope = found.group("region") or "global"
        key = (collection, scope if project == self.project else project)
        res = self._res[key].get(found.group("name"))
        if res is None:
            raise ApiError(404, "The resource '%s' was not found (%s)" % (
                self._path(collection, scope, found.group("name"), project), field))
        return res

    def _operation(self, method, params, target=None, error=None):
        scope = params.get("region") or "global"
        name = "operation-%d-%s" % (int(_now().timestamp() * 1000), "%012x" % self._rand.getrandbits(48))
        where = "global" if scope == "global" else "regions/%s" % scope
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name,
              "operationType": method.id.rsplit(".", 1)[1], "status": "PENDING", "progress": 0,
              "insertTime": _stamp(), "user": "deployer@%s.iam.gserviceaccount.com" % self.project,
              "selfLink": COMPUTE_LINK + "projects/%s/%s/operations/%s" % (self.project, where, name)}
        if scope != "global":
            op["region"] = COMPUTE_LINK + "projects/%s/regions/%s" % (self.project, scope)
        if target is not None:
            op["targetLink"], op["targetId"] = target["selfLink"], target["id"]
        self._ops[(scope, name)] = {"op": op, "left": self.op_polls, "error": error}
        if self.op_polls <= 0:
            self._finish(self._ops[(scope, name)])
        return copy.deepcopy(op)

    def _finish(self, state):
        op = state["op"]
        op.update(status="DONE", progress=100, endTime=_stamp())
        op.setdefault("startTime", op["insertTime"])
        if state["error"]:
            status, code, message = state["error"]
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"], op["httpErrorMessage"] = status, _STATUS.get(status, "ERROR")

    def _failed_op(self, method, params, status, code, message):
        self._scope(params)
        return self._operation(method, params, error=(status, code, message or "injected %s" % code))

    def _poll_op(self, params, scope):
        state = self._ops.get((scope, params["operation"]))
        if state is None:
            raise ApiError(404, "The resource '%s' was not found" % self._path(
                "operations", scope, params["operation"], self.project))
        if state["op"]["status"] != "DONE":
            state["left"] -= 1
            if state["left"] <= 0:
                self._finish(state)
            else:
                state["op"].update(status="RUNNING", progress=50, startTime=state["op"].get("startTime") or _stamp())
        return copy.deepcopy(state["op"])

    def _compute_globalOperations_get(self, params, _data):
        return self._poll_op(params, self._scope(params))

    _compute_globalOperations_wait = _compute_globalOperations_get
    _compute_regionOperations_get = _compute_globalOperations_get
    _compute_regionOperations_wait = _compute_globalOperations_get

    # generic CRUD ------------------------------------------------------------
    @staticmethod
    def _resource_of(method):
        return COMPUTE[method.id.split(".")[1]]

    def _generic_get(self, method, params):
        collection, _schema, _scope = self._resource_of(method)
        name = params[method.spec["parameterOrder"][-1]]
        if collection == "images" and params["project"] != self.project:  # public images (add_image(project=))
            res = self._res[("images", params["project"])].get(name)
            if res is None:
                raise ApiError(404, "The resource 'projects/%s/global/images/%s' was not found"
                               % (params["project"], name))
            return copy.deepcopy(res)
        scope = self._scope(params)
        res = self._find(collection, scope, name)
        if collection == "instanceGroupManagers":
            return self._mig_view(res)
        return copy.deepcopy(res)

    def _generic_list(self, method, params):
        collection, _schema, _scope = self._resource_of(method)
        items = list(self._res[(collection, self._scope(params))].values())
        flt = params.get("filter")
        if flt:
            found = re.fullmatch(r'\s*name\s+(eq|ne)\s+"?([^"]*)"?\s*', flt)
            if not found:
                raise ApiError(400, "filter %r: the fake understands only 'name eq <regex>' / 'name ne <regex>'" % flt)
            want = found.group(1) == "eq"
            try:
                items = [i for i in items if bool(re.fullmatch(found.group(2), i["name"])) == want]
            except re.error as exc:
                raise ApiError(400, "Invalid value for field 'filter': %r (%s)" % (flt, exc)) from None
        items.sort(key=lambda i: i["name"])
        start = int(params.get("pageToken") or 0)
        size = int(params.get("maxResults") or 500)
        page = items[start:start + size]
        if collection == "instanceGroupManagers":
            page = [self._mig_view(i) for i in page]
        out = {"kind": "compute#%sList" % method.response_schema()[0].lower(), "items": copy.deepcopy(page),
               "id": "projects/%s" % self.project, "selfLink": COMPUTE_LINK + "projects/%s" % self.project}
        out["kind"] = self.apis["compute.googleapis.com"].schemas[method.response_schema()]["properties"].get(
            "kind", {}).get("default", out["kind"])
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def _generic_insert(self, method, params, data):
        collection, schema, _scope = self._resource_of(method)
        scope = self._scope(params)
        check = getattr(self, "_check_" + collection, None)
        if check:
            check(data, scope)
        res = self._create(collection, schema, scope, data)
        created = getattr(self, "_created_" + collection, None)
        if created:
            created(res, scope)
        return self._operation(method, params, res)

    def _generic_patch(self, method, params, data):
        collection, _schema, _scope = self._resource_of(method)
        scope = self._scope(params)
        name = params[method.spec["parameterOrder"][-1]]
        res = self._find(collection, scope, name)
        if "fingerprint" in res:
            if "fingerprint" not in data:
                raise ApiError(412, "fingerprint missing: send the fingerprint of the %s you read "
                               "(%s.get) to update it" % (collection, collection), "conditionNotMet")
            if data["fingerprint"] != res["fingerprint"]:
                raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.",
                               "conditionNotMet")
        if data.get("name", name) != name:
            raise ApiError(400, "Invalid value for field 'resource.name': %r. Cannot be changed" % data["name"])
        merged = merge_patch(res, {k: v for k, v in data.items() if k != "fingerprint"})
        check = getattr(self, "_check_" + collection, None)
        if check:
            check(merged, scope)
        if "fingerprint" in res:
            merged["fingerprint"] = self._fingerprint(merged)
        self._res[(collection, scope)][name] = merged
        return self._operation(method, params, merged)

    def _generic_delete(self, method, params):
        collection, _schema, _scope = self._resource_of(method)
        scope = self._scope(params)
        name = params[method.spec["parameterOrder"][-1]]
        res = self._find(collection, scope, name)
        for user in self._users_of(res, collection, scope):
            raise ApiError(400, "The resource '%s' is already being used by '%s'" % (
                res["selfLink"].split("/compute/v1/", 1)[1], user.split("/compute/v1/", 1)[1]),
                "resourceInUseByAnotherResource")
        del self._res[(collection, scope)][name]
        if collection == "instanceGroupManagers":
            self._res[("instanceGroups", scope)].pop(name, None)
            self._migs.pop((scope, name), None)
        return self._operation(method, params, res)

    def _users_of(self, res, collection, scope):
        """Self-links of resources that reference ``res`` (a MIG: its instance group)."""
        where = "global" if scope == "global" else "regions/%s" % scope
        coll = "instanceGroups" if collection == "instanceGroupManagers" else collection
        pattern = re.compile(r'"(?:[^"]*/)?' + re.escape("%s/%s/%s" % (where, coll, res["name"])) + '"')
        for items in list(self._res.values()):
            for other in items.values():
                if other is res or other["selfLink"].endswith("/%s/%s" % (coll, res["name"])):
                    continue
                body = {k: v for k, v in other.items() if k not in ("selfLink", "instanceGroup")}
                if pattern.search(json.dumps(body)):
                    yield other["selfLink"]

    # checks of what resources reference ---------------------------------------
    def _check_instanceTemplates(self, data, _scope):
        props = data.get("properties")
        if not props or not props.get("machineType"):
            raise ApiError(400, "Invalid value for field 'resource.properties.machineType': ''. Must be set")
        disks = props.get("disks") or []
        if not any(d.get("boot") for d in disks):
            raise ApiError(400, "Invalid value for field 'resource.properties.disks': no boot disk")
        for index, disk in enumerate(disks):
            image = (disk.get("initializeParams") or {}).get("sourceImage")
            if image:
                self._resolve(image, "images", "resource.properties.disks[%d].initializeParams.sourceImage" % index)
        for index, item in enumerate((props.get("metadata") or {}).get("items") or []):
            if not re.fullmatch(r"[a-zA-Z0-9-_]{1,128}", item.get("key", "")):
                raise ApiError(400, "Invalid value for field 'resource.properties.metadata.items[%d].key': %r"
                               % (index, item.get("key")))

    def _check_instanceGroupManagers(self, data, _scope):
        for field in ("baseInstanceName",):
            if not data.get(field):
                raise ApiError(400, "Invalid value for field 'resource.%s': ''. Must be set" % field)
        if "targetSize" not in data:
            raise ApiError(400, "Invalid value for field 'resource.targetSize': must be set")
        templates = [data.get("instanceTemplate")] if data.get("instanceTemplate") else []
        templates += [v.get("instanceTemplate") for v in data.get("versions") or []]
        if not templates:
            raise ApiError(400, "Invalid value for field 'resource.instanceTemplate': must be set (or versions)")
        for link in templates:
            self._resolve(link, "instanceTemplates", "resource.instanceTemplate")
        for index, pol in enumerate(data.get("autoHealingPolicies") or []):
            self._resolve(pol.get("healthCheck"), "healthChecks", "resource.autoHealingPolicies[%d].healthCheck" % index)

    def _check_backendServices(self, data, _scope):
        for index, link in enumerate(data.get("healthChecks") or []):
            self._resolve(link, "healthChecks", "resource.healthChecks[%d]" % index)
        for index, backend in enumerate(data.get("backends") or []):
            group = backend.get("group", "")
            if "/instanceGroupManagers/" in group:
                raise ApiError(400, "Invalid value for field 'resource.backends[%d].group': %r. A backend is an "
                               "instance group (regions/<r>/instanceGroups/<name>), not its manager" % (index, group))
            self._resolve(group, "instanceGroups", "resource.backends[%d].group" % index)

    def _check_urlMaps(self, data, _scope, field="resource"):
        matchers = [m.get("name") for m in data.get("pathMatchers") or []]
        for index, rule in enumerate(data.get("hostRules") or []):
            if rule.get("pathMatcher") not in matchers:
                raise ApiError(400, "Invalid value for field '%s.hostRules[%d].pathMatcher': %r. No such pathMatcher"
                               % (field, index, rule.get("pathMatcher")))
        schemes = set()

        def walk(node, where):
            if isinstance(node, dict):
                if "weightedBackendServices" in node:
                    for index, wbs in enumerate(node["weightedBackendServices"]):
                        if not 0 <= wbs.get("weight", -1) <= 1000:
                            raise ApiError(400, "Invalid value for field '%s.weightedBackendServices[%d].weight': %r. "
                                           "Must be in [0, 1000]" % (where, index, wbs.get("weight")))
                        svc = self._resolve(wbs.get("backendService"), "backendServices",
                                            "%s.weightedBackendServices[%d].backendService" % (where, index))
                        if svc.get("loadBalancingScheme") != "EXTERNAL_MANAGED":
                            raise ApiError(400, "Invalid value for field '%s.weightedBackendServices[%d]': weighted "
                                           "backend services need loadBalancingScheme EXTERNAL_MANAGED, %s is %s"
                                           % (where, index, svc["name"], svc.get("loadBalancingScheme", "EXTERNAL")))
                for key, value in node.items():
                    if key in ("service", "defaultService", "backendService") and isinstance(value, str):
                        svc = self._resolve(value, "backendServices", "%s.%s" % (where, key))
                        schemes.add(svc.get("loadBalancingScheme", "EXTERNAL"))
                    elif key != "weightedBackendServices":
                        walk(value, "%s.%s" % (where, key))
                    else:
                        for wbs in value:
                            svc = self._resolve(wbs.get("backendService"), "backendServices", where)
                            schemes.add(svc.get("loadBalancingScheme", "EXTERNAL"))
            elif isinstance(node, list):
                for index, item in enumerate(node):
                    walk(item, "%s[%d]" % (where, index))

        walk({k: v for k, v in data.items() if k not in ("selfLink", "id", "kind", "fingerprint")}, field)
        if len(schemes) > 1:
            raise ApiError(400, "%s references backend services of different load balancing schemes: %s"
                           % (field, ", ".join(sorted(schemes))))

    # managed instance groups ------------------------------------------------------
    def _mig_state(self, mig, region=None):
        key = (region or self.region, mig)
        if key not in self._migs:
            raise ValueError("no managed instance group %r in %s (known: %s)"
                             % (mig, key[0], ", ".join(sorted(n for _r, n in self._migs)) or "none"))
        return self._migs[key]

    def _created_instanceGroupManagers(self, mig, scope):
        group = self._create("instanceGroups", "InstanceGroup", scope, {"name": mig["name"]})
        group.update(size=0, namedPorts=[])
        group["fingerprint"] = self._fingerprint(group)
        mig["instanceGroup"] = group["selfLink"]
        self._migs[(scope, mig["name"])] = {"polls": 0, "instances": [], "crash": None,
                                            "healthy_after": self.healthy_after}
        self._scale(mig, scope)

    def _scale(self, mig, scope):
        state = self._migs[(scope, mig["name"])]
        want = mig.get("targetSize", 0)
        while len(state["instances"]) > want:
            state["instances"].pop()
        zones = ((mig.get("distributionPolicy") or {}).get("zones") or [])
        zones = [z["zone"].rsplit("/", 1)[-1] for z in zones if z.get("zone")] or self.zones
        while len(state["instances"]) < want:
            suffix = "".join(self._rand.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _i in range(4))
            name = "%s-%s" % (mig["baseInstanceName"], suffix)
            zone = zones[len(state["instances"]) % len(zones)]
            state["instances"].append({
                "name": name, "id": str(next(self._ids)), "born": state["polls"], "zone": zone,
                "ip": "10.%d.%d.%d" % (self._rand.randrange(256), self._rand.randrange(256), self._rand.randrange(2, 254)),
                "link": COMPUTE_LINK + "projects/%s/zones/%s/instances/%s" % (self.project, zone, name)})
        self._res[("instanceGroups", scope)][mig["name"]]["size"] = want

    def _instance_view(self, mig, state, inst):
        """``(ManagedInstance, healthy)`` at the MIG's current poll count."""
        age = state["polls"] - inst["born"]
        template = mig.get("instanceTemplate") or (mig.get("versions") or [{}])[0].get("instanceTemplate")
        view = {"instance": inst["link"], "id": inst["id"], "name": inst["name"], "targetStatus": "RUNNING",
                "version": {"instanceTemplate": template}}
        if state["crash"]:
            view.update(currentAction="RECREATING", instanceStatus=("STAGING", "STOPPING")[age % 2])
            if state["crash"] == "errors":
                view["lastAttempt"] = {"errors": {"errors": [{
                    "code": "CONDITION_NOT_MET",
                    "message": "Instance %s was recreated by autohealing: the health check failed %d times "
                               "(the application does not start)" % (inst["name"], age + 1)}]}}
            health, healthy = "UNHEALTHY", False
        elif age < state["healthy_after"]:
            first = age * 2 <= state["healthy_after"]
            view.update(currentAction="CREATING" if first else "VERIFYING",
                        instanceStatus="PROVISIONING" if first else "RUNNING")
            health, healthy = ("UNKNOWN" if first else "UNHEALTHY"), False
        else:
            view.update(currentAction="NONE", instanceStatus="RUNNING")
            health, healthy = "HEALTHY", True
        policies = mig.get("autoHealingPolicies") or []
        if policies:
            view["instanceHealth"] = [{"healthCheck": p["healthCheck"], "detailedHealthState": health} for p in policies]
        return view, healthy

    def _mig_view(self, mig):
        out = copy.deepcopy(mig)
        scope = mig["region"].rsplit("/", 1)[1]
        state = self._migs[(scope, mig["name"])]
        actions = collections.Counter(self._instance_view(mig, state, i)[0]["currentAction"] for i in state["instances"])
        out["currentActions"] = {k.lower(): actions.get(k, 0) for k in (
            "ABANDONING", "CREATING", "CREATING_WITHOUT_RETRIES", "DELETING", "NONE", "RECREATING",
            "REFRESHING", "RESTARTING", "RESUMING", "STARTING", "STOPPING", "SUSPENDING", "VERIFYING")}
        out["currentActions"]["creatingWithoutRetries"] = out["currentActions"].pop("creating_without_retries")
        stable = set(actions) <= {"NONE"}
        out["status"] = {"isStable": stable, "versionTarget": {"isReached": True}}
        group = self._res[("instanceGroups", scope)][mig["name"]]
        if group.get("namedPorts"):
            out["namedPorts"] = copy.deepcopy(group["namedPorts"])
        return out

    def _compute_regionInstanceGroupManagers_resize(self, params, _data):
        method = self.apis["compute.googleapis.com"].by_id("compute.regionInstanceGroupManagers.resize")
        scope = self._scope(params)
        mig = self._find("instanceGroupManagers", scope, params["instanceGroupManager"])
        mig["targetSize"] = int(params["size"])
        mig["fingerprint"] = self._fingerprint(mig)
        self._scale(mig, scope)
        return self._operation(method, params, mig)

    def _compute_regionInstanceGroupManagers_listManagedInstances(self, params, _data):
        scope = self._scope(params)
        mig = self._find("instanceGroupManagers", scope, params["instanceGroupManager"])
        state = self._migs[(scope, mig["name"])]
        state["polls"] += 1
        views = [self._instance_view(mig, state, i)[0] for i in state["instances"]]
        start = int(params.get("pageToken") or 0)
        size = int(params.get("maxResults") or 500)
        out = {"managedInstances": views[start:start + size]}
        if start + size < len(views):
            out["nextPageToken"] = str(start + size)
        return out

    def _compute_regionInstanceGroups_setNamedPorts(self, params, data):
        method = self.apis["compute.googleapis.com"].by_id("compute.regionInstanceGroups.setNamedPorts")
        scope = self._scope(params)
        group = self._find("instanceGroups", scope, params["instanceGroup"])
        if "fingerprint" in data and data["fingerprint"] != group["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current named ports fingerprint.",
                           "conditionNotMet")
        group["namedPorts"] = copy.deepcopy(data.get("namedPorts") or [])
        group["fingerprint"] = self._fingerprint(group)
        return self._operation(method, params, group)

    def _compute_backendServices_getHealth(self, params, data):
        self._scope(params)
        svc = self._find("backendServices", "global", params["backendService"])
        group = self._resolve(data.get("group"), "instanceGroups", "resource.group")
        if not any(b.get("group", "").endswith(group["selfLink"].split("/compute/v1/", 1)[1])
                   for b in svc.get("backends") or []):
            raise ApiError(400, "Invalid value for field 'resource.group': %r. It is not a backend of %s"
                           % (data.get("group"), svc["name"]))
        scope = group["region"].rsplit("/", 1)[1]
        mig = self._res[("instanceGroupManagers", scope)].get(group["name"])
        statuses = []
        if mig is not None:
            state = self._migs[(scope, mig["name"])]
            state["polls"] += 1
            port = 80
            for named in group.get("namedPorts") or []:
                if named.get("name") == svc.get("portName", "http"):
                    port = named["port"]
            for inst in state["instances"]:
                healthy = self._instance_view(mig, state, inst)[1]
                statuses.append({"instance": inst["link"], "ipAddress": inst["ip"], "port": port,
                                 "healthState": "HEALTHY" if healthy else "UNHEALTHY"})
        out = {"kind": "compute#backendServiceGroupHealth"}
        if statuses:
            out["healthStatus"] = statuses
        return out

    def _compute_urlMaps_validate(self, params, data):
        self._scope(params)
        self._find("urlMaps", "global", params["urlMap"])
        resource = data.get("resource") or {}
        try:
            self._check_urlMaps(resource, "global", field="resource")
        except ApiError as exc:
            return {"result": {"loadSucceeded": False, "loadErrors": [str(exc)]}}
        return {"result": {"loadSucceeded": True, "testPassed": True}}

    # storage ---------------------------------------------------------------------
    def _bucket(self, params):
        bucket = self._buckets.get(params["bucket"])
        if bucket is None:
            raise ApiError(404, "The specified bucket does not exist.")
        return bucket

    @staticmethod
    def _preconditions(params, current):
        generation = int(current["generation"]) if current else 0
        metageneration = int(current["metageneration"]) if current else 0
        checks = (("ifGenerationMatch", generation, True), ("ifGenerationNotMatch", generation, False),
                  ("ifMetagenerationMatch", metageneration, True), ("ifMetagenerationNotMatch", metageneration, False))
        for name, value, equal in checks:
            if params.get(name) is not None and (int(params[name]) == value) != equal:
                raise ApiError(412, "At least one of the pre-conditions you specified did not hold.",
                               "conditionNotMet")

    def _object_view(self, bucket, obj):
        meta = {k: v for k, v in obj.items() if k != "data"}
        meta.update(kind="storage#object", bucket=bucket, size=str(len(obj["data"])),
                    id="%s/%s/%s" % (bucket, obj["name"], obj["generation"]),
                    md5Hash=base64.b64encode(hashlib.md5(obj["data"]).digest()).decode(),
                    etag=base64.b64encode(("%s/%s" % (obj["generation"], obj["metageneration"])).encode()).decode(),
                    selfLink="https://www.googleapis.com/storage/v1/b/%s/o/%s" % (
                        bucket, urllib.parse.quote(obj["name"], safe="")),
                    mediaLink="https://storage.googleapis.com/download/storage/v1/b/%s/o/%s?generation=%s&alt=media"
                    % (bucket, urllib.parse.quote(obj["name"], safe=""), obj["generation"]))
        return meta

    def _storage_objects_get(self, params, _data):
        objects = self._bucket(params)
        obj = objects.get(params["object"])
        if obj is None or params.get("generation") not in (None, obj["generation"]):
            raise ApiError(404, "No such object: %s/%s" % (params["bucket"], params["object"]))
        self._preconditions(params, obj)
        if params.get("alt") == "media":
            return bytes(obj["data"])
        return self._object_view(params["bucket"], obj)

    def _storage_objects_insert(self, params, data, media=None):
        if media is None:
            raise ApiError(400, "storage.objects.insert needs the object data (a media or multipart upload)")
        objects = self._bucket(params)
        name = params.get("name") or (data or {}).get("name")
        if not name:
            raise ApiError(400, "Required object name (the name parameter or metadata.name) is missing", "required")
        self._preconditions(params, objects.get(name))
        self._generation += self._rand.randrange(1, 1000)
        now = _stamp()
        obj = {"name": name, "generation": str(self._generation), "metageneration": "1", "data": bytes(media),
               "contentType": (data or {}).get("contentType") or "application/octet-stream",
               "timeCreated": now, "updated": now, "storageClass": "STANDARD"}
        if (data or {}).get("metadata"):
            obj["metadata"] = dict(data["metadata"])
        objects[name] = obj
        return self._object_view(params["bucket"], obj)

    def _storage_objects_delete(self, params, _data):
        objects = self._bucket(params)
        obj = objects.get(params["object"])
        if obj is None or params.get("generation") not in (None, obj["generation"]):
            raise ApiError(404, "No such object: %s/%s" % (params["bucket"], params["object"]))
        self._preconditions(params, obj)
        del objects[params["object"]]
        return None

    def _storage_objects_list(self, params, _data):
        objects = self._bucket(params)
        names = sorted(n for n in objects if n.startswith(params.get("prefix") or ""))
        start = int(params.get("pageToken") or 0)
        size = int(params.get("maxResults") or 1000)
        out = {"kind": "storage#objects",
               "items": [self._object_view(params["bucket"], objects[n]) for n in names[start:start + size]]}
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def object_data(self, bucket, name):
        """Content of a stored object (bytes) or None."""
        obj = self._buckets.get(bucket, {}).get(name)
        return None if obj is None else bytes(obj["data"])

    # monitoring ------------------------------------------------------------------
    _CLAUSE = re.compile(r'\s*(metric\.type|resource\.type|(?:metric|resource)\.labels?\.[A-Za-z0-9_]+)\s*=\s*"([^"]*)"\s*')

    def _monitoring_projects_timeSeries_list(self, params, _data):
        if params["name"] != "projects/%s" % self.project:
            raise ApiError(404, "Project %r not found (the fake serves projects/%s)" % (params["name"], self.project))
        flt = params.get("filter")
        if not flt:
            raise ApiError(400, "Field filter had an invalid value: a filter is required")
        if not params.get("interval.endTime"):
            raise ApiError(400, "Field interval.endTime had an invalid value: an end time is required")
        wanted = {}
        for clause in flt.split(" AND "):
            found = self._CLAUSE.fullmatch(clause)
            if not found:
                raise ApiError(400, "filter clause %r: the fake understands only an AND of key = \"value\" clauses "
                               "on metric.type, resource.type, metric.labels.*, resource.labels.*" % clause)
            key = re.sub(r"\.label\.", ".labels.", found.group(1))
            wanted[key] = found.group(2)
        end = _parse_time(params["interval.endTime"], "interval.endTime")
        start = _parse_time(params.get("interval.startTime") or params["interval.endTime"], "interval.startTime")
        if start > end:
            raise ApiError(400, "Field interval.startTime had an invalid value: after interval.endTime")
        out = []
        for series in self._series:
            values = {"metric.type": series.get("metric", {}).get("type"),
                      "resource.type": series.get("resource", {}).get("type")}
            for kind in ("metric", "resource"):
                for label, value in (series.get(kind, {}).get("labels") or {}).items():
                    values["%s.labels.%s" % (kind, label)] = value
            if any(values.get(k) != v for k, v in wanted.items()):
                continue
            points = [pt for pt in series.get("points", [])
                      if start <= _parse_time(pt["interval"]["endTime"], "point") <= end]
            if not points:
                continue
            points.sort(key=lambda pt: _parse_time(pt["interval"]["endTime"], "point"), reverse=True)
            item = copy.deepcopy(dict(series, points=points))
            if params.get("view") == "HEADERS":
                item.pop("points")
            out.append(item)
        start_at = int(params.get("pageToken") or 0)
        size = int(params.get("pageSize") or 100000)
        result = {"timeSeries": out[start_at:start_at + size]} if out else {}
        if start_at + size < len(out):
            result["nextPageToken"] = str(start_at + size)
        return result


def _parse_time(text, field):
    found = re.fullmatch(r"(.*T[0-9:]{8})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})", text or "")
    if not found:
        raise ApiError(400, "Field %s had an invalid value: %r is not an RFC 3339 time" % (field, text))
    frac = (found.group(2) or ".0")[:7]
    zone = "+00:00" if found.group(3) == "Z" else found.group(3)
    return datetime.datetime.fromisoformat(found.group(1) + frac + zone)


def _bind():
    """Generic handlers for the compute methods the fake keeps state for."""
    api_methods = {
        "instanceTemplates": ("insert", "get", "delete", "list"),
        "regionInstanceGroupManagers": ("insert", "get", "delete", "list"),
        "regionInstanceGroups": ("get", "list"),
        "backendServices": ("insert", "get", "delete", "list", "patch"),
        "urlMaps": ("insert", "get", "delete", "list", "patch"),
        "healthChecks": ("insert", "get", "delete", "list", "patch"),
        "images": ("get", "list"),
    }
    for resource, verbs in api_methods.items():
        for verb in verbs:
            method_id = "compute.%s.%s" % (resource, verb)

            def handler(self, params, data, _id=method_id, _verb=verb):
                method = self.apis["compute.googleapis.com"].by_id(_id)
                if _verb in ("insert", "patch"):
                    return getattr(self, "_generic_" + _verb)(method, params, data)
                return getattr(self, "_generic_" + _verb)(method, params)
            setattr(GoogleFake, "_" + method_id.replace(".", "_"), handler)


_bind()
