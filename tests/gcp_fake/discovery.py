"""Google discovery documents (the ones bundled in google-api-python-client):
route a request to its method and check it against the document.

Every check raises ``Invalid`` with a message naming the method, the
parameter or the body field (``body.pathMatchers[0].routeRules[1].priority``)
and what the document allows.  The fake answers such a request with HTTP 400
in Google's error shape and records it as a violation."""

import base64
import json
import os
import re
import urllib.parse

import googleapiclient

DOCUMENTS = os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents")

#: "[Output Only]" / "Output only." at the start of a description marks an
#: output-only field in documents that predate the ``readOnly`` flag
_OUTPUT_ONLY = re.compile(r"^\s*(Output only\.\s*)?\[Output Only\]|^\s*Output only\.", re.I)


class Invalid(Exception):
    """A request the discovery document does not allow (or an unknown method)."""

    def __init__(self, message, status=400, reason="invalid"):
        super().__init__(message)
        self.status, self.reason = status, reason


def output_only(prop: dict) -> bool:
    return bool(prop.get("readOnly")) or bool(_OUTPUT_ONLY.match(prop.get("description", "")))


class Method:
    """One method of the document: id, verb, path template (as a regex)."""

    def __init__(self, api, method_id, spec, path, media=False):
        self.api, self.id, self.spec, self.media = api, method_id, spec, media
        self.verb = spec["httpMethod"]
        self.template = path
        names, regex, literal = [], "", 0
        for part in re.split(r"(\{[+]?[^}]+\})", path):
            if part.startswith("{"):
                name = part.strip("{}")
                reserved = name.startswith("+")
                names.append(name.lstrip("+"))
                regex += "(.+)" if reserved else "([^/]+)"
            else:
                regex += re.escape(part)
                literal += len(part)
        self.names, self.regex, self.literal = names, re.compile("^" + regex + "$"), literal

    @property
    def parameters(self) -> dict:
        return self.spec.get("parameters", {})

    def request_schema(self):
        return (self.spec.get("request") or {}).get("$ref")

    def response_schema(self):
        return (self.spec.get("response") or {}).get("$ref")


class Api:
    """One discovery document (``compute`` v1, ``monitoring`` v3, ``storage`` v1)."""

    def __init__(self, name, version):
        with open(os.path.join(DOCUMENTS, "%s.%s.json" % (name, version)), encoding="utf-8") as handle:
            self.doc = json.load(handle)
        self.name = name
        root = urllib.parse.urlsplit(self.doc["rootUrl"])
        self.host = root.netloc
        self.base = root.path + self.doc["servicePath"]  # "/compute/v1/"
        self.schemas = self.doc["schemas"]
        self.methods = []
        self._walk(self.doc.get("resources", {}))

    def _walk(self, resources):
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                # googleapiclient expands ``path`` (``{+name}``), never ``flatPath``
                self.methods.append(Method(self, spec["id"], spec, self.base + spec["path"]))
                simple = ((spec.get("mediaUpload") or {}).get("protocols") or {}).get("simple")
                if simple:
                    self.methods.append(Method(self, spec["id"], spec, simple["path"], media=True))
            self._walk(resource.get("resources", {}))

    def by_id(self, method_id):
        for method in self.methods:
            if method.id == method_id:
                return method
        raise KeyError(method_id)

    def route(self, verb, path):
        """``(method, {param: value})`` for ``verb path`` (path still %-encoded)."""
        matches, verbs = [], set()
        for method in self.methods:
            found = method.regex.match(path)
            if found:
                if method.verb == verb:
                    matches.append((method, found))
                else:
                    verbs.add(method.verb)
        if not matches:
            known = (" (this path knows %s)" % ", ".join(sorted(verbs))) if verbs else ""
            raise Invalid("%s API has no method %s %s%s" % (self.name, verb, path, known), status=404, reason="notFound")
        candidates = []
        for method, found in matches:
            values = {name: urllib.parse.unquote(value) for name, value in zip(method.names, found.groups())}
            # ``{+name}`` paths of several resources (projects/, folders/...) differ only by the pattern
            fits = all(re.fullmatch(method.parameters.get(n, {}).get("pattern") or ".*", v) for n, v in values.items())
            candidates.append(((fits, method.literal), method, values))
        _key, method, values = max(candidates, key=lambda c: c[0])
        return method, values

    # -- parameters ------------------------------------------------------------
    def check_parameters(self, method, path_values, query):
        """Path and query parameters against ``method``; ``query`` is
        ``{name: [values]}``.  Returns ``{name: value or [values]}``."""
        params = method.parameters
        common = self.doc.get("parameters", {})
        out = dict(path_values)
        for name, value in path_values.items():
            self._check_value(method, name, params.get(name, {}), value)
        for name, values in query.items():
            spec = params.get(name) or common.get(name)
            if spec is None:
                raise Invalid("%s: unknown query parameter %r; allowed: %s"
                              % (method.id, name, ", ".join(sorted(n for n, p in params.items()
                                                                   if p.get("location") == "query"))))
            if spec.get("location") == "path":
                raise Invalid("%s: %r is a path parameter, given in the query" % (method.id, name))
            if len(values) > 1 and not spec.get("repeated"):
                raise Invalid("%s: query parameter %r given %d times, it is not repeated"
                              % (method.id, name, len(values)))
            for value in values:
                self._check_value(method, name, spec, value)
            out[name] = values if spec.get("repeated") else values[0]
        for name, spec in params.items():
            if spec.get("required") and name not in out:
                raise Invalid("%s: required %s parameter %r is missing" % (method.id, spec.get("location"), name))
        return out

    @staticmethod
    def _check_value(method, name, spec, value):
        kind = spec.get("type", "string")
        where = "%s: parameter %s=%r" % (method.id, name, value)
        if kind == "integer" or spec.get("format") in ("int64", "uint64", "int32", "uint32"):
            if not re.fullmatch(r"-?[0-9]+", value):
                raise Invalid("%s is not an integer" % where)
            number = int(value)
            if "minimum" in spec and number < int(spec["minimum"]) or "maximum" in spec and number > int(spec["maximum"]):
                raise Invalid("%s is out of range %s..%s" % (where, spec.get("minimum", ""), spec.get("maximum", "")))
            if spec.get("format", "").startswith("u") and number < 0:
                raise Invalid("%s must not be negative" % where)
        elif kind == "boolean" and value not in ("true", "false"):
            raise Invalid("%s is not true or false" % where)
        if "enum" in spec and value not in spec["enum"]:
            raise Invalid("%s is not one of %s" % (where, ", ".join(spec["enum"])))
        if spec.get("pattern") and not re.fullmatch(spec["pattern"], value):
            raise Invalid("%s does not match the pattern %s" % (where, spec["pattern"]))

    # -- bodies ---------------------------------------------------------------
    def check_body(self, method, body):
        """The JSON body of a request against the method's request schema
        (unknown fields, types, enums, output-only fields refused)."""
        ref = method.request_schema()
        if ref is None:
            if body not in (None, b"", ""):
                raise Invalid("%s takes no request body, got %d bytes" % (method.id, len(body)))
            return None
        if body in (None, b"", ""):
            raise Invalid("%s needs a %s request body, got none" % (method.id, ref))
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise Invalid("%s: request body is not JSON (%s)" % (method.id, exc))
        self.check_value(data, {"$ref": ref}, "%s: body" % method.id, request=True, method_id=method.id)
        return data

    def check_value(self, value, schema, where, request, method_id=None):  # pylint: disable=too-many-branches
        """``value`` against ``schema``; ``request`` refuses output-only fields;
        fields annotated as required for ``method_id`` must be there."""
        seen = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                break
            seen.add(ref)
            schema = dict(self.schemas[ref], **{k: v for k, v in schema.items() if k != "$ref"})
        kind = schema.get("type")
        if kind == "any" or kind is None and "properties" not in schema:
            return
        if kind == "object" or "properties" in schema:
            if not isinstance(value, dict):
                raise Invalid("%s is %s, expected an object (%s)" % (where, _typename(value), schema.get("id", "object")))
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, prop in (props or {}).items():
                if method_id in (prop.get("annotations") or {}).get("required", ()) and key not in value:
                    raise Invalid("%s: required field %r of %s is missing (required by %s)"
                                  % (where, key, schema.get("id", "this object"), method_id))
            for key, item in value.items():
                sub = "%s.%s" % (where, key)
                if props is not None and key in props:
                    if request and output_only(props[key]):
                        raise Invalid("%s is output only (set by the server); do not send it" % sub)
                    self.check_value(item, props[key], sub, request, method_id)
                elif extra is not None:
                    self.check_value(item, extra, "%s[%r]" % (where, key), request, method_id)
                elif props is not None:
                    raise Invalid("%s: unknown field %r of %s; known fields: %s"
                                  % (where, key, schema.get("id", "this object"), ", ".join(sorted(props))))
            return
        if kind == "array":
            if not isinstance(value, list):
                raise Invalid("%s is %s, expected an array" % (where, _typename(value)))
            items = schema.get("items", {})
            if schema.get("pattern") and "pattern" not in items:  # e.g. Tags.items: the pattern of each item
                items = dict(items, pattern=schema["pattern"])
            for index, item in enumerate(value):
                self.check_value(item, items, "%s[%d]" % (where, index), request, method_id)
            return
        if kind == "string":
            if not isinstance(value, str):
                raise Invalid("%s is %s %r, expected a string" % (where, _typename(value), value))
            fmt = schema.get("format")
            if fmt in ("int64", "uint64") and not re.fullmatch(r"-?[0-9]+", value):
                raise Invalid("%s is %r, expected a %s as a decimal string" % (where, value, fmt))
            if fmt == "byte":
                try:
                    base64.b64decode(value.encode(), altchars=b"-_" if ("-" in value or "_" in value) else None,
                                     validate=True)
                except ValueError:
                    raise Invalid("%s is %r, expected base64 bytes" % (where, value))
            if fmt in ("date-time", "google-datetime") and not re.fullmatch(
                    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})", value):
                raise Invalid("%s is %r, expected an RFC 3339 timestamp" % (where, value))
            if fmt == "google-duration" and not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?s", value):
                raise Invalid("%s is %r, expected a duration like '60s'" % (where, value))
            if "enum" in schema and value not in schema["enum"]:
                raise Invalid("%s is %r, expected one of %s" % (where, value, ", ".join(schema["enum"])))
            if request and schema.get("pattern") and not _matches(schema["pattern"], value):
                raise Invalid("%s is %r, which does not match the pattern %s" % (where, value, schema["pattern"]))
            return
        if kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                raise Invalid("%s is %s %r, expected an integer" % (where, _typename(value), value))
            fmt = schema.get("format", "int32")
            low, high = {"int32": (-2 ** 31, 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1)}.get(fmt, (None, None))
            if low is not None and not low <= value <= high:
                raise Invalid("%s is %d, out of the %s range" % (where, value, fmt))
            return
        if kind == "number":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise Invalid("%s is %s %r, expected a number" % (where, _typename(value), value))
            return
        if kind == "boolean":
            if not isinstance(value, bool):
                raise Invalid("%s is %s %r, expected true or false" % (where, _typename(value), value))
            return
        raise Invalid("%s: schema type %r not understood by the fake" % (where, kind))


def _matches(pattern, value):
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:  # a few documented patterns are not Python regexes: not checked
        return True


def _typename(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
