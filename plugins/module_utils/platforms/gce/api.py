# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Google API client of the GCE driver: ``googleapiclient`` built
from the discovery documents bundled with google-api-python-client
(``static_discovery=True``: no network to build a client), credentials from
Application Default Credentials (google-auth), or an injected ``http``
object (tests: the schema-checking fake, ``HttpMockSequence``).

``Api.call`` turns ``HttpError`` into ``PlatformError``: HTTP 429, 5xx, 412
(fingerprint conflict) and ``resourceNotReady`` are transient (the engine
retries them with backoff until its deadline); quota, permission and
invalid-argument errors are permanent and name the field Google names.
``Api.wait`` waits for a Compute operation with ``regionOperations.wait`` /
``globalOperations.wait`` in a bounded loop until it is ``DONE`` (``wait``
may return early, after about two minutes, with the operation still
running) and raises the operation's own errors the same way.
"""

from __future__ import annotations

import json
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    Clock, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.retries import RetryDeadline, retry_transient

try:
    from googleapiclient import discovery as _discovery
    from googleapiclient import discovery_cache as _discovery_cache
    from googleapiclient.errors import HttpError
    from googleapiclient.http import build_http as _build_http
    HAS_GOOGLEAPICLIENT = True
    GOOGLEAPICLIENT_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - checked by missing_dependencies
    _discovery = _discovery_cache = None
    HAS_GOOGLEAPICLIENT = False
    GOOGLEAPICLIENT_IMPORT_ERROR = _exc

    class HttpError(Exception):  # type: ignore[no-redef]
        """Stand-in so ``except HttpError`` works without the library."""

try:
    import google.auth as _google_auth
    from google.auth.exceptions import DefaultCredentialsError
    import google_auth_httplib2 as _google_auth_httplib2
    HAS_GOOGLE_AUTH = True
    GOOGLE_AUTH_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - checked by missing_dependencies
    _google_auth = None
    HAS_GOOGLE_AUTH = False
    GOOGLE_AUTH_IMPORT_ERROR = _exc

    class DefaultCredentialsError(Exception):  # type: ignore[no-redef]
        """Stand-in so ``except DefaultCredentialsError`` works without google-auth."""

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: operation error codes that clear by themselves
TRANSIENT_CODES = ("RESOURCE_NOT_READY", "RATE_LIMIT_EXCEEDED", "INTERNAL_ERROR",
                   "SERVICE_UNAVAILABLE", "BACKEND_ERROR", "UNAVAILABLE", "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE")
TRANSIENT_REASONS = ("resourceNotReady", "rateLimitExceeded", "userRateLimitExceeded",
                     "backendError", "internalError", "conditionNotMet", "RESOURCE_NOT_READY")
CREDENTIALS_HELP = ("no Google credentials (Application Default Credentials): set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run "
                    "`gcloud auth application-default login`, or run on a GCP VM with a "
                    "service account")


#: parsed discovery documents bundled with google-api-python-client, by (api, version):
#: parsing compute v1 takes ~80 ms, and every controller run builds its clients again
_DOCUMENTS = {}
#: discovery services by (api, version), built once per process and shared by
#: every ``Api``: building one makes each method with its docstring (~50 ms a
#: resource, most of a fake-backed rollout's CPU).  They hold no credentials:
#: every request is executed with the calling ``Api``'s own transport.
_SERVICES = {}


def _document(api: str, version: str):
    key = (api, version)
    if key not in _DOCUMENTS:
        text = _discovery_cache.get_static_doc(api, version)
        if text is None:
            raise PlatformError("google-api-python-client has no bundled discovery document for %s %s"
                                % (api, version))
        _DOCUMENTS[key] = json.loads(text)
    return _DOCUMENTS[key]


class _Cached:
    """A discovery ``Resource`` whose sub-resources (``compute.urlMaps()``) are
    built once: building one makes every method with its docstring (~15 ms)."""

    def __init__(self, resource):
        self._resource = resource
        self._children = {}

    def __getattr__(self, name):
        attr = getattr(self._resource, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if args or kwargs:
                return attr(*args, **kwargs)
            if name not in self._children:
                value = attr()
                if not isinstance(value, _discovery.Resource):
                    return value
                self._children[name] = _Cached(value)
            return self._children[name]
        return call


class NotFound(PlatformError):
    """HTTP 404: the resource does not exist (a delete of it is done)."""


class Conflict(PlatformError):
    """HTTP 409: the resource exists already (an insert raced a rerun)."""


def missing_dependencies() -> list:
    """``[(python package, import error)]`` the GCE driver lacks."""
    out = []
    if not HAS_GOOGLEAPICLIENT:
        out.append(("google-api-python-client", GOOGLEAPICLIENT_IMPORT_ERROR))
    if not HAS_GOOGLE_AUTH:
        out.append(("google-auth", GOOGLE_AUTH_IMPORT_ERROR))
    return out


def _error_details(exc) -> tuple:
    """(status, reason, location, message) of an ``HttpError``."""
    status = int(getattr(getattr(exc, "resp", None), "status", 0) or 0)
    reason = location = ""
    message = ""
    try:
        body = json.loads(exc.content.decode("utf-8") if isinstance(exc.content, bytes)
                          else exc.content)
        err = body.get("error", {}) if isinstance(body, dict) else {}
        message = err.get("message", "")
        errors = err.get("errors") or []
        if errors:
            reason = errors[0].get("reason", "") or ""
            location = errors[0].get("location", "") or ""
            message = message or errors[0].get("message", "")
        reason = reason or err.get("status", "")
    except (AttributeError, ValueError, TypeError):
        message = str(exc)
    return status, reason, location, message or str(exc)


def classify(what: str, exc) -> PlatformError:
    """A ``PlatformError`` for an ``HttpError`` of the call ``what``."""
    status, reason, location, message = _error_details(exc)
    field = (" (field %s)" % location) if location else ""
    text = "%s: HTTP %d %s%s: %s" % (what, status, reason or "error", field, message)
    if status == 404:
        return NotFound(text, param=location or None)
    if status == 409 and reason in ("alreadyExists", "ALREADY_EXISTS"):
        return Conflict(text, param=location or None)
    transient = (status in (412, 429) or status >= 500 or reason in TRANSIENT_REASONS)
    if status == 403 and ("quota" in reason.lower() or "rateLimit" in reason):
        transient = "rateLimit" in reason  # quota exhausted is permanent, rate limits clear
    return PlatformError(text, param=location or None, transient=transient,
                         status=status, reason=reason)


def operation_error(what: str, operation: dict) -> Optional[PlatformError]:
    """The ``PlatformError`` of a DONE operation that failed, else None."""
    errors = ((operation.get("error") or {}).get("errors")) or []
    if not errors:
        return None
    first = errors[0]
    code = first.get("code", "")
    location = first.get("location") or ""
    text = "%s: operation %s failed: %s%s: %s" % (
        what, operation.get("name", "?"), code,
        (" (field %s)" % location) if location else "",
        "; ".join(e.get("message", "") for e in errors))
    transient = code in TRANSIENT_CODES or int(operation.get("httpErrorStatusCode") or 0) in (429, 503)
    return PlatformError(text, param=location or None, transient=transient, code=code)


class Api:
    """Compute v1 and Monitoring v3 clients of one project, built lazily (a
    plan never builds them) and the call / operation helpers."""

    #: bound on ``*.wait`` calls for one operation (each waits up to ~2 min on Google's side)
    max_waits = 30
    #: seconds a read is retried on transient errors before the error goes to the engine
    read_retry = 30.0

    def __init__(self, project: str, region: str, http=None, credentials=None,
                 clock: Optional[Clock] = None, operation_timeout: float = 900.0):
        self.project, self.region = project, region
        self.http, self.credentials = http, credentials
        self.clock = clock or Clock()
        self.operation_timeout = float(operation_timeout)
        self._transport = None
        #: every API call made, ``resource.method`` (bench: calls per rollout)
        self.calls = []

    def _credentials(self):
        if self.credentials is not None:
            return self.credentials
        if not HAS_GOOGLE_AUTH:
            raise PlatformError("the GCE driver needs google-auth: %s" % GOOGLE_AUTH_IMPORT_ERROR)
        try:
            credentials, _project = _google_auth.default(scopes=list(SCOPES))
        except DefaultCredentialsError as exc:
            raise PlatformError("%s: %s" % (CREDENTIALS_HELP, exc), param="credentials")
        self.credentials = credentials
        return credentials

    def client(self, api: str, version: str):
        """The shared discovery service of ``api`` ``version`` (see ``_SERVICES``)."""
        if not HAS_GOOGLEAPICLIENT:
            raise PlatformError("the GCE driver needs google-api-python-client: %s"
                                % GOOGLEAPICLIENT_IMPORT_ERROR)
        key = (api, version)
        if key not in _SERVICES:
            # = discovery.build(api, version, static_discovery=True), the document parsed once;
            # the transport given here is never used (see ``call``)
            _SERVICES[key] = _Cached(_discovery.build_from_document(_document(api, version),
                                                                    http=_build_http()))
        return _SERVICES[key]

    def transport(self):
        """What this ``Api``'s requests go through: the ``http`` given, or an
        authorized transport of the credentials (Application Default
        Credentials), made on first use."""
        if self._transport is None:
            if self.http is not None:
                self._transport = self.http
            else:
                credentials = self._credentials()
                self._transport = _google_auth_httplib2.AuthorizedHttp(credentials, http=_build_http())
        return self._transport

    @property
    def compute(self):
        return self.client("compute", "v1")

    @property
    def monitoring(self):
        return self.client("monitoring", "v3")

    def call(self, what: str, request):
        """Execute ``request`` (no library retries: the engine retries
        transient errors with its own deadline)."""
        self.calls.append(what)
        try:
            return request.execute(http=self.transport(), num_retries=0)
        except HttpError as exc:
            raise classify(what, exc)

    def retried(self, fn):
        """``fn()`` (reads only), its transient errors retried here for up to
        ``read_retry`` seconds with jittered backoff: for the reads the engine
        makes outside a step (``list_groups`` before and after a rollout),
        which it does not retry itself.  The last error is raised as is
        (still transient) when the time is up."""
        try:
            return retry_transient(fn, self.clock.now() + self.read_retry, self.clock, base=0.5, cap=5.0)
        except RetryDeadline as exc:
            raise exc.last

    def wait(self, what: str, operation: dict) -> dict:
        """Wait until the Compute ``operation`` is DONE; raise its errors."""
        deadline = self.clock.now() + self.operation_timeout
        for _i in range(self.max_waits + 1):
            if operation.get("status") == "DONE":
                error = operation_error(what, operation)
                if error is not None:
                    raise error
                return operation
            if self.clock.now() >= deadline:
                break
            name = operation["name"]
            if operation.get("region") or operation.get("zone"):
                if operation.get("zone"):
                    zone = operation["zone"].rsplit("/", 1)[-1]
                    request = self.compute.zoneOperations().wait(
                        project=self.project, zone=zone, operation=name)
                else:
                    request = self.compute.regionOperations().wait(
                        project=self.project, region=self.region, operation=name)
                operation = self.call("regionOperations.wait", request)
            else:
                operation = self.call("globalOperations.wait", self.compute.globalOperations().wait(
                    project=self.project, operation=name))
        raise PlatformError("%s: operation %s still %s after %gs" % (
            what, operation.get("name"), operation.get("status"), self.operation_timeout),
            transient=True)

    def run(self, what: str, request) -> dict:
        """A mutating call and the wait for its operation."""
        return self.wait(what, self.call(what, request))

    def get(self, what: str, request) -> Optional[dict]:
        """A read that returns None for a 404."""
        try:
            return self.call(what, request)
        except NotFound:
            return None

    def items(self, what: str, method, **kwargs) -> list:
        """Every item of a paged ``list`` call (bounded pages)."""
        out, token = [], None
        for _i in range(100):
            if token:
                kwargs["pageToken"] = token
            page = self.call(what, method(**kwargs))
            out.extend(page.get("items") or [])
            token = page.get("nextPageToken")
            if not token:
                return out
        raise PlatformError("%s: more than 100 pages" % what)
