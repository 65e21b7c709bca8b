# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A release store in a Cloud Storage bucket (``store: gs://<bucket>[/<prefix>]``).

One object per artifact and environment holds the history
(``<prefix>/releases/<artifact>/<environment>.json``); every write carries
``ifGenerationMatch`` (0 to create), so of two controllers that read the same
generation only one write lands and the other gets ``ConflictError``.  The
lock is an object of its own (``.../<environment>.lock``) created with
``ifGenerationMatch=0``; a lock whose holder provably died (same host, process
gone — ``LockHolder.is_stale``) is taken over by a compare-and-swap on its
generation, so two recoverers cannot both win either.  ``<prefix>/store-id``
is written once (first writer wins), like ``FileReleaseStore``'s.

The client is googleapiclient's ``storage`` v1 (the discovery document
bundled with google-api-python-client); credentials are Application Default
Credentials.  HTTP 429/5xx and transport errors raise a *transient*
``StoreError`` (the engine retries those); the store itself does not retry.
Reports and timelines stay on the controller's disk (``directory``).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, History, Lock, LockHeld, LockHolder, ReleaseStore, StoreError,
    check_history_data, check_lock_data, check_name)

try:
    import httplib2
    from googleapiclient import discovery as _discovery
    from googleapiclient import errors as _gerrors
    from googleapiclient.http import MediaInMemoryUpload
    HAS_GOOGLEAPICLIENT = True
    IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - checked by missing_dependencies
    HAS_GOOGLEAPICLIENT = False
    IMPORT_ERROR = _exc

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9_.=+@-]+$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_gcs_location(value) -> bool:
    """True for anything meant as a GCS store (``gs:`` ...), valid or not."""
    return isinstance(value, str) and value.startswith("gs:")


def is_url(value) -> bool:
    return isinstance(value, str) and bool(_URL.match(value))


def parse_location(value: str, option: str = "store"):
    """``(bucket, prefix)`` of ``gs://<bucket>[/<prefix>]`` or ``PhoenixError``
    naming ``option``."""
    allowed = ("use gs://<bucket>[/<prefix>]: a bucket name of 3-63 lowercase letters, digits, "
               "'-', '_' or '.' (starting and ending with a letter or digit) and an optional "
               "prefix of '/'-separated parts of letters, digits and _ . = + @ -")
    if not isinstance(value, str) or not value.startswith("gs://"):
        raise PhoenixError("%s: %r is not a Cloud Storage location; %s" % (option, value, allowed), param=option)
    bucket, _sep, prefix = value[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/")
    if not _BUCKET.match(bucket) or ".." in bucket or "/" + "/" in prefix or any(
            not _PREFIX_PART.match(part) or part in (".", "..") for part in (prefix.split("/") if prefix else [])):
        raise PhoenixError("%s: %r is not a valid Cloud Storage location; %s" % (option, value, allowed), param=option)
    return bucket, prefix


class _Precondition(Exception):
    """HTTP 412: the generation we expected is not the current one."""


class _NotFound(Exception):
    """HTTP 404."""


class GCSReleaseStore(ReleaseStore):
    """History and locks in ``gs://<bucket>/<prefix>`` (see the module docstring)."""

    def __init__(self, bucket: str, prefix: str = "", client=None, keep: int = 100,
                 local_root: Optional[str] = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.root = "gs://%s%s" % (bucket, "/" + self.prefix if self.prefix else "")
        self.keep = keep
        self.local_root = local_root
        self._api = client
        self._objects = None
        self._seen = {}  # (artifact, environment) -> (revision, generation) last read or written
        self._store_id = None

    # -- client and calls ------------------------------------------------------
    def _client(self):
        if self._objects is None:
            if self._api is None:
                self._api = self._build()
            self._objects = self._api.objects()
        return self._objects

    def _build(self):
        if not HAS_GOOGLEAPICLIENT:
            raise StoreError("store: the release store %s needs the Python package google-api-python-client "
                             "on the controller (pip install google-api-python-client): %s"
                             % (self.root, IMPORT_ERROR), param="store")
        try:
            return _discovery.build("storage", "v1", static_discovery=True, cache_discovery=False)
        except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
            if type(exc).__name__ != "DefaultCredentialsError":
                raise
            raise StoreError("store: the release store %s needs Google credentials and found none: set "
                             "GOOGLE_APPLICATION_CREDENTIALS to a service account key file (0600), or run "
                             "'gcloud auth application-default login', or run on a VM whose service account "
                             "may use the bucket (roles/storage.objectUser on %s)" % (self.root, self.bucket),
                             param="store")

    def _name(self, *parts) -> str:
        return "/".join(([self.prefix] if self.prefix else []) + list(parts))

    def _where(self, name) -> str:
        return "gs://%s/%s" % (self.bucket, name)

    def _execute(self, request, what: str, name: str):
        try:
            return request.execute(num_retries=0)
        except _gerrors.HttpError as exc:
            status = exc.resp.status
            if status == 412:
                raise _Precondition() from None
            if status == 404 and "bucket does not exist" not in str(getattr(exc, "reason", "") or ""):
                raise _NotFound() from None
            detail = getattr(exc, "reason", None) or str(exc)
            if status == 429 or status >= 500:
                raise StoreError("release store: %s of %s failed with HTTP %d (%s); transient, retry"
                                 % (what, self._where(name), status, detail), param="store", transient=True) from None
            hint = {401: "the credentials were refused",
                    403: "the deployer's service account needs roles/storage.objectUser on bucket %s" % self.bucket,
                    404: "bucket %s does not exist" % self.bucket}.get(status, "")
            raise StoreError("release store: %s of %s failed with HTTP %d (%s)%s"
                             % (what, self._where(name), status, detail, "; " + hint if hint else ""),
                             param="store") from None
        except (OSError, httplib2.HttpLib2Error) as exc:  # refused, reset, DNS, timeouts
            raise StoreError("release store: %s of %s failed: %s; transient, retry"
                             % (what, self._where(name), exc), param="store", transient=True) from None

    def _read(self, name: str):
        """``(parsed JSON or None, generation or 0)`` of object ``name``."""
        for _attempt in range(3):
            try:
                meta = self._execute(self._client().get(bucket=self.bucket, object=name), "read", name)
                raw = self._execute(self._client().get_media(bucket=self.bucket, object=name,
                                                             generation=meta["generation"]), "read", name)
            except _NotFound:
                try:  # deleted between the two calls, or not there at all
                    self._execute(self._client().get(bucket=self.bucket, object=name), "read", name)
                except _NotFound:
                    return None, 0
                continue
            try:
                return json.loads(raw.decode("utf-8")), int(meta["generation"])
            except ValueError as exc:
                raise StoreError("%s is not valid JSON (%s); phoenix.deploy only ever replaces it whole, "
                                 "so it was edited by hand" % (self._where(name), exc))
        raise StoreError("%s kept changing while it was read" % self._where(name), transient=True)

    def _write(self, name: str, data: bytes, generation: int):
        """Write ``data`` only if ``name`` is at ``generation`` (0: absent);
        the new generation, or ``_Precondition``."""
        media = MediaInMemoryUpload(data, mimetype="application/json", resumable=False)
        meta = self._execute(self._client().insert(bucket=self.bucket, name=name, media_body=media,
                                                   ifGenerationMatch=generation), "write", name)
        return int(meta["generation"])

    # -- store id and local directory -------------------------------------------
    @property
    def store_id(self) -> str:
        if self._store_id is None:
            name = self._name("store-id")
            value = "store-" + uuid.uuid4().hex[:16]
            try:
                self._write(name, json.dumps(value).encode(), 0)
            except _Precondition:
                value, _generation = self._read(name)
            if not isinstance(value, str) or not re.fullmatch(r"store-[0-9a-f]{16}", value):
                raise StoreError("release store id %s reads %r; it is written once by phoenix.deploy "
                                 "(store-<16 hex>): restore it or delete it to start a new store"
                                 % (self._where(name), value))
            self._store_id = value
        return self._store_id

    def directory(self, artifact: str, environment: str, create: bool = True) -> str:
        """A local directory for this artifact/environment's reports."""
        if not self.local_root:
            raise StoreError("the release store %s keeps no local files: give report_dir for reports"
                             % self.root, param="report_dir")
        path = os.path.join(self.local_root, check_name(artifact, "artifact"), check_name(environment, "environment"))
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # -- history -------------------------------------------------------------------
    def _history_name(self, artifact, environment):
        return self._name("releases", check_name(artifact, "artifact"), check_name(environment, "environment") + ".json")

    def load(self, artifact: str, environment: str) -> History:
        name = self._history_name(artifact, environment)
        data, generation = self._read(name)
        if data is None:
            self._seen[(artifact, environment)] = (0, 0)
            return History(artifact=artifact, environment=environment)
        check_history_data(data, self._where(name), artifact, environment)
        history = History.from_dict(data)
        self._seen[(artifact, environment)] = (history.revision, generation)
        return history

    def save(self, history: History) -> None:
        key = (history.artifact, history.environment)
        name = self._history_name(*key)
        seen = self._seen.get(key)
        if seen is not None and seen[0] == history.revision:
            generation = seen[1]
        else:
            data, generation = self._read(name)
            current = data.get("revision", 0) if isinstance(data, dict) else 0
            if current != history.revision:
                raise ConflictError("release history %s changed concurrently (revision %s stored, %s expected)"
                                    % (self._where(name), current, history.revision))
        history.trim(self.keep)
        history.revision += 1
        try:
            new = self._write(name, json.dumps(history.as_dict(), indent=1, sort_keys=True).encode("utf-8"),
                              generation)
        except _Precondition:
            history.revision -= 1
            raise ConflictError("release history %s changed concurrently (generation %s expected, another "
                                "controller wrote it first)" % (self._where(name), generation or "none")) from None
        except BaseException:
            history.revision -= 1
            raise
        self._seen[key] = (history.revision, new)

    # -- locks -----------------------------------------------------------------------
    def _lock_name(self, artifact, environment):
        return self._name("releases", check_name(artifact, "artifact"), check_name(environment, "environment") + ".lock")

    def _read_lock(self, artifact, environment):
        name = self._lock_name(artifact, environment)
        data, generation = self._read(name)
        if data is None:
            return None, 0
        check_lock_data(data, self._where(name))
        return LockHolder.from_dict(data), generation

    def lock_holder(self, artifact: str, environment: str) -> Optional[LockHolder]:
        return self._read_lock(artifact, environment)[0]

    def acquire(self, artifact: str, environment: str, holder: LockHolder) -> Lock:
        name = self._lock_name(artifact, environment)
        data = json.dumps(asdict(holder), sort_keys=True).encode("utf-8")
        for _attempt in range(3):
            try:
                self._write(name, data, 0)
                return Lock(artifact, environment, holder)
            except _Precondition:
                pass
            other, generation = self._read_lock(artifact, environment)
            if other is None:
                continue  # released meanwhile: try to create it again
            if not other.is_stale():
                raise LockHeld("%s/%s is locked by %s; if that controller is gone for good, delete %s"
                               % (artifact, environment, other.describe(), self._where(name)), other)
            try:  # the holder died: take its lock over unless someone else did first
                self._write(name, data, generation)
                return Lock(artifact, environment, holder, other)
            except _Precondition:
                continue
        raise StoreError("could not take lock %s: it kept changing (another controller is racing for it)"
                         % self._where(name), transient=True)

    def update_lock(self, lock: Lock, **changes) -> None:
        for key, value in changes.items():
            setattr(lock.holder, key, value)
        name = self._lock_name(lock.artifact, lock.environment)
        current, generation = self._read_lock(lock.artifact, lock.environment)
        if current is None or current.token != lock.holder.token:
            raise StoreError("lock of %s/%s is no longer ours" % (lock.artifact, lock.environment))
        try:
            self._write(name, json.dumps(asdict(lock.holder), sort_keys=True).encode("utf-8"), generation)
        except _Precondition:
            raise StoreError("lock of %s/%s is no longer ours (changed while updating)"
                             % (lock.artifact, lock.environment)) from None

    def release(self, lock: Lock) -> None:
        name = self._lock_name(lock.artifact, lock.environment)
        current, generation = self._read_lock(lock.artifact, lock.environment)
        if current is None or current.token != lock.holder.token:
            return
        try:
            self._execute(self._client().delete(bucket=self.bucket, object=name, ifGenerationMatch=generation),
                          "release", name)
        except (_Precondition, _NotFound):
            pass  # taken over or gone meanwhile: not ours any more
