# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release records, history and locks per (artifact, environment).

The store is the only state the engine trusts after a crash.  ``ReleaseStore``
is the interface; ``FileReleaseStore`` keeps one directory per (artifact,
environment) with ``history.json`` (written atomically: temp + fsync + rename
+ fsync dir, mode 0600) and a ``lock`` file naming its holder.  Cloud-side
backends (a GCS object with generation preconditions, a ConfigMap with
resourceVersion) map onto the same interface: ``History.revision`` is the
compare-and-swap token and a lock is an object created only if absent.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import getpass
import json
import os
import re
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import InvalidName, PhoenixError

# release status (lifecycle) and outcome (result)
IN_PROGRESS = "in_progress"
PAUSED = "paused"
LIVE = "live"
RETIRED = "retired"
ACTIVE = (IN_PROGRESS, PAUSED)

SUCCEEDED = "succeeded"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"
INTERRUPTED = "interrupted"
FAILED = "failed"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class StoreError(PhoenixError):
    """The release store is unreadable or was changed concurrently."""


class ConflictError(StoreError):
    """The history changed since it was read (lost compare-and-swap)."""


class LockHeld(StoreError):
    """Another rollout holds the lock; the message names the holder."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


def iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + (
        ".%03dZ" % int(round((ts % 1) * 1000) % 1000))


def check_name(value: str, option: str) -> str:
    """``value`` if it is a valid store name, else ``InvalidName`` (also a
    ``ValueError``) with ``param`` = ``option``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName("%s: %r is not a valid name; use letters, digits, "
                          "'.', '_' or '-' (max 63, starting with a letter or "
                          "digit)" % (option, value), param=option)
    return value


@dataclass
class Release:
    release_id: str
    artifact: str
    environment: str
    version: str
    image: str
    strategy: str
    track: str = "stable"
    kind: str = "deploy"  # deploy | rollback
    status: str = IN_PROGRESS
    outcome: Optional[str] = None
    reason: Optional[str] = None
    started: Optional[float] = None
    finished: Optional[float] = None
    group: Optional[str] = None
    size: int = 0
    settings: dict = field(default_factory=dict)
    analysis: Optional[dict] = None
    # what analysis said: pass | fail | inconclusive | none (deployed with
    # analysis: none) | None (no analysis configured); counts in analysis_state
    analysed: Optional[str] = None
    analysis_state: Optional[dict] = None
    position: int = 0
    plan: list = field(default_factory=list)
    old_group: Optional[str] = None
    weight: int = 0
    previous_release_id: Optional[str] = None
    warm_until: Optional[float] = None
    ci_build_url: Optional[str] = None
    #: sha256 of the config the instances run with (env + what the platform injects)
    config_digest: Optional[str] = None
    events: list = field(default_factory=list)

    def event(self, at: float, message: str, **data) -> dict:
        entry = {"at": at, "time": iso(at), "message": message}
        entry.update(data)
        self.events.append(entry)
        return entry

    def as_dict(self) -> dict:
        data = asdict(self)
        data["started_iso"] = iso(self.started)
        data["finished_iso"] = iso(self.finished)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Release":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class History:
    artifact: str
    environment: str
    releases: list = field(default_factory=list)
    live: Optional[str] = None
    next_seq: int = 1
    revision: int = 0

    def get(self, release_id: Optional[str]) -> Optional[Release]:
        for rel in self.releases:
            if rel.release_id == release_id:
                return rel
        return None

    def live_release(self) -> Optional[Release]:
        return self.get(self.live)

    def active(self) -> list:
        return [r for r in self.releases if r.status in ACTIVE]

    def new_release_id(self) -> str:
        rid = "v%03d" % self.next_seq
        self.next_seq += 1
        return rid

    def add(self, release: Release) -> Release:
        self.releases.append(release)
        return release

    def trim(self, keep: int) -> None:
        """Drop the oldest retired records beyond ``keep`` (never live,
        active or warm ones)."""
        excess = len(self.releases) - keep
        if excess <= 0:
            return
        kept = []
        for rel in self.releases:
            droppable = (rel.status == RETIRED and rel.release_id != self.live
                         and rel.warm_until is None)
            if excess > 0 and droppable:
                excess -= 1
                continue
            kept.append(rel)
        self.releases = kept

    def as_dict(self) -> dict:
        return {"artifact": self.artifact, "environment": self.environment,
                "live": self.live, "next_seq": self.next_seq,
                "revision": self.revision,
                "releases": [r.as_dict() for r in self.releases]}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(artifact=data["artifact"], environment=data["environment"],
                   live=data.get("live"), next_seq=data.get("next_seq", 1),
                   revision=data.get("revision", 0),
                   releases=[Release.from_dict(r) for r in data.get("releases", [])])


def proc_stat(pid: int) -> Optional[dict]:
    """``/proc/<pid>/stat`` fields this collection uses (name, state, parent,
    session, start time in clock ticks), or None when ``pid`` is gone."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            data = handle.read()
    except OSError:
        return None
    rest = data.rsplit(")", 1)[1].split()
    return {"comm": data[data.index("(") + 1:data.rindex(")")], "state": rest[0],
            "ppid": int(rest[1]), "sid": int(rest[3]), "start": rest[19]}


def _proc_start(pid: int) -> Optional[str]:
    """Start time of ``pid`` (to detect pid reuse), or None."""
    info = proc_stat(pid)
    return info["start"] if info else None


def pid_alive(pid: int, proc_start: Optional[str] = None) -> bool:
    """True when ``pid`` runs on this host (and is the same process)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    info = proc_stat(pid)  # None without /proc: kill(0) is all we know
    if info is not None and (info["state"] == "Z" or
                             proc_start is not None and info["start"] != proc_start):
        return False
    return True


@dataclass
class LockHolder:
    pid: int
    host: str
    user: str
    started: float
    action: str = ""
    release_id: Optional[str] = None
    proc_start: Optional[str] = None
    token: str = ""
    #: digest of the request the holder runs (see controller.request_digest):
    #: a rerun of the same request waits for the holder instead of failing
    request: Optional[str] = None

    @classmethod
    def current(cls, action: str = "", release_id: Optional[str] = None,
                pid: Optional[int] = None, request: Optional[str] = None) -> "LockHolder":
        pid = os.getpid() if pid is None else pid
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid())
        return cls(pid=pid, host=socket.gethostname(), user=user,
                   started=time.time(), action=action, release_id=release_id,
                   proc_start=_proc_start(pid), token=uuid.uuid4().hex,
                   request=request)

    def describe(self) -> str:
        what = self.action or "rollout"
        if self.release_id:
            what += " of release %s" % self.release_id
        return "%s by pid %d on host %s (user %s) since %s" % (
            what, self.pid, self.host, self.user, iso(self.started))

    def is_stale(self) -> bool:
        """Only provable on the same host: the holder's process is gone."""
        return self.host == socket.gethostname() and not pid_alive(
            self.pid, self.proc_start)

    @classmethod
    def from_dict(cls, data: dict) -> "LockHolder":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Lock:
    artifact: str
    environment: str
    holder: LockHolder
    recovered_from: Optional[LockHolder] = None


class ReleaseStore(abc.ABC):
    """History and locks of one (artifact, environment)."""

    @abc.abstractmethod
    def load(self, artifact: str, environment: str) -> History:
        """The history (an empty one when nothing was deployed yet)."""

    @abc.abstractmethod
    def save(self, history: History) -> None:
        """Write ``history`` if its ``revision`` is still current, then bump
        it; raise ``ConflictError`` otherwise."""

    @abc.abstractmethod
    def acquire(self, artifact: str, environment: str, holder: LockHolder) -> Lock:
        """Take the lock or raise ``LockHeld`` naming the holder; a lock
        whose holder provably died is recovered."""

    @abc.abstractmethod
    def release(self, lock: Lock) -> None:
        """Give the lock back (only if it is still ours)."""

    @abc.abstractmethod
    def lock_holder(self, artifact: str, environment: str) -> Optional[LockHolder]:
        """Who holds the lock, or None."""

    @abc.abstractmethod
    def update_lock(self, lock: Lock, **changes) -> None:
        """Rewrite the holder info of a lock we hold (e.g. its release id)."""


# --------------------------------------------------------------------------
# validation of what is read back (a hand-edited or damaged file must give a
# clear error naming the file and the field, never a traceback later on)
# --------------------------------------------------------------------------
_TYPES = {"str": ((str,), "a string"), "int": ((int,), "an integer"),
          "float": ((int, float), "a number"), "dict": ((dict,), "a mapping"),
          "list": ((list,), "a list"), "bool": ((bool,), "true or false")}


def _field_types(cls) -> dict:
    """``{field: (types, what, optional)}`` from the dataclass annotations
    (``str``, ``int``, ``Optional[float]`` ...); other annotations are not
    checked."""
    out = {}
    for item in fields(cls):
        text = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
        optional = text.startswith("Optional[") and text.endswith("]")
        base = text[len("Optional["):-1] if optional else text
        if base in _TYPES:
            out[item.name] = _TYPES[base] + (optional,)
    return out


def _required(cls) -> list:
    from dataclasses import MISSING
    return [f.name for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING]


def _bad(path: str, kind: str, where: str, problem: str) -> StoreError:
    hint = ("restore it or correct that field" if kind != "lock" else
            "remove it if no rollout of this artifact and environment is running")
    return StoreError("%s %s: %s%s; phoenix.deploy only ever replaces this file "
                      "atomically, so it was edited by hand or is damaged: %s"
                      % (kind, path, where + " " if where else "", problem, hint))


def _finite(value) -> bool:
    return not isinstance(value, float) or value - value == 0  # not NaN or +-inf


def _check_record(data, cls, path: str, kind: str, where: str) -> None:
    if not isinstance(data, dict):
        raise _bad(path, kind, where, "is %s, expected a mapping" % type(data).__name__)
    missing = [name for name in _required(cls) if name not in data]
    if missing:
        raise _bad(path, kind, where, "lacks %s" % ", ".join(missing))
    for name, (types, what, optional) in _field_types(cls).items():
        if name not in data or (optional and data[name] is None):
            continue
        value = data[name]
        if bool in types:
            ok = isinstance(value, bool)
        else:  # JSON true/false are no numbers here
            ok = isinstance(value, types) and not isinstance(value, bool) and _finite(value)
        if not ok:
            raise _bad(path, kind, "%s.%s" % (where, name) if where else name,
                       "is %r (%s), expected %s%s" % (value, type(value).__name__, what,
                                                      " or null" if optional else ""))


def check_history_data(data, path: str, artifact: str, environment: str) -> None:
    """Raise ``StoreError`` naming ``path`` and the field unless ``data``
    (parsed history.json) has the types ``History.from_dict`` relies on."""
    from ansible_collections.phoenix.deploy.plugins.module_utils.strategies import Step
    step_keys = [f.name for f in fields(Step)]
    kind = "release history"
    _check_record(data, History, path, kind, "")
    if (data["artifact"], data["environment"]) != (artifact, environment):
        raise _bad(path, kind, "", "belongs to %s/%s, not %s/%s" % (
            data["artifact"], data["environment"], artifact, environment))
    seen = set()
    for index, rel in enumerate(data.get("releases", [])):
        where = "releases[%d]" % index
        _check_record(rel, Release, path, kind, where)
        where = "releases[%d] (%s)" % (index, rel["release_id"])
        if rel["release_id"] in seen:
            raise _bad(path, kind, where, "repeats release id %s" % rel["release_id"])
        seen.add(rel["release_id"])
        for name in ("plan", "events"):
            for pos, entry in enumerate(rel.get(name) or []):
                if not isinstance(entry, dict):
                    raise _bad(path, kind, "%s.%s[%d]" % (where, name, pos),
                               "is %r, expected a mapping" % (entry,))
                if name == "plan" and (not isinstance(entry.get("kind"), str)
                                       or set(entry) - set(step_keys)):
                    raise _bad(path, kind, "%s.plan[%d]" % (where, pos),
                               "is %r, expected a step with kind and %s"
                               % (entry, ", ".join(k for k in step_keys if k != "kind")))
    if data.get("live") is not None and data["live"] not in seen:
        raise _bad(path, kind, "live", "names release %s, which is not in the history"
                   % data["live"])


def check_lock_data(data, path: str) -> None:
    _check_record(data, LockHolder, path, "lock", "")
    if data["pid"] <= 0:
        raise _bad(path, "lock", "pid", "is %d, expected a process id" % data["pid"])


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: str, name: str, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp",
                               dir=directory)  # mkstemp: mode 0600
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves
    either the old or the new content, never a partial file."""
    directory, name = os.path.split(os.path.abspath(path))
    tmp = _write_temp(directory, name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def _clean_temp_files(directory: str, keep: Optional[str] = None) -> list:
    """Remove ``.<name>.*.tmp`` files a killed writer left behind; only safe
    while holding the lock (the only writer of that directory)."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for fname in names:
        path = os.path.join(directory, fname)
        if fname.startswith(".") and fname.endswith(".tmp") and path != keep:
            try:
                os.unlink(path)
                removed.append(fname)
            except FileNotFoundError:
                pass
    return removed


class FileReleaseStore(ReleaseStore):
    """``<root>/<artifact>/<environment>/{history.json,lock}`` plus
    ``<root>/store-id``: a random id stamped on every group the engine
    creates, so a different (or empty) store never mistakes them for its own."""

    HISTORY = "history.json"
    LOCK = "lock"
    STORE_ID = "store-id"

    def __init__(self, root: str, keep: int = 100):
        if isinstance(root, str) and re.match(r"^[a-z][a-z0-9+.-]*:/", root):
            raise StoreError("release store %r is a URL, not a directory: gs://<bucket>[/<prefix>] is "
                             "understood by the store option of rollout and release_info only; give "
                             "a directory here" % root)
        self.root = os.path.abspath(root)
        self.keep = keep
        self._store_id = None

    @property
    def store_id(self) -> str:
        """Created once (atomically, first writer wins) and never changed."""
        if self._store_id is None:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            path = os.path.join(self.root, self.STORE_ID)
            if not os.path.exists(path):
                tmp = _write_temp(self.root, self.STORE_ID,
                                  ("store-" + uuid.uuid4().hex[:16]).encode())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
            with open(path) as handle:
                value = handle.read().strip()
            if not re.fullmatch(r"store-[0-9a-f]{16}", value):
                raise StoreError("release store id %s reads %r; it is written once "
                                 "by phoenix.deploy (store-<16 hex>): restore it or "
                                 "remove the file to start a new store" % (path, value))
            self._store_id = value
        return self._store_id

    def directory(self, artifact: str, environment: str, create: bool = True) -> str:
        path = os.path.join(self.root, check_name(artifact, "artifact"),
                            check_name(environment, "environment"))
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # -- history -----------------------------------------------------------
    def _read(self, path: str) -> Optional[dict]:
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise StoreError("release history %s is not valid JSON (%s); it "
                             "is only ever replaced atomically, so it was "
                             "edited by hand or the disk is damaged" % (path, exc))

    def load(self, artifact: str, environment: str) -> History:
        path = os.path.join(self.directory(artifact, environment), self.HISTORY)
        data = self._read(path)
        if data is None:
            return History(artifact=artifact, environment=environment)
        check_history_data(data, path, artifact, environment)
        return History.from_dict(data)

    def save(self, history: History) -> None:
        directory = self.directory(history.artifact, history.environment)
        path = os.path.join(directory, self.HISTORY)
        current = self._read(path)
        on_disk = current.get("revision", 0) if current else 0
        if on_disk != history.revision:
            raise ConflictError("release history %s changed concurrently "
                                "(revision %s on disk, %s expected)"
                                % (path, on_disk, history.revision))
        history.trim(self.keep)
        history.revision += 1
        data = json.dumps(history.as_dict(), indent=1, sort_keys=True)
        try:
            atomic_write(path, data.encode("utf-8"))
        except BaseException:
            history.revision -= 1
            raise

    # -- locks -------------------------------------------------------------
    @contextmanager
    def _guard(self, directory: str):
        """Serialises lock check/break/create between processes of a host."""
        fd = os.open(os.path.join(directory, ".guard"),
                     os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _lock_path(self, artifact, environment) -> str:
        return os.path.join(self.directory(artifact, environment), self.LOCK)

    def lock_holder(self, artifact: str, environment: str) -> Optional[LockHolder]:
        path = self._lock_path(artifact, environment)
        data = self._read(path)
        if data is None:
            return None
        check_lock_data(data, path)
        return LockHolder.from_dict(data)

    def acquire(self, artifact: str, environment: str, holder: LockHolder) -> Lock:
        directory = self.directory(artifact, environment)
        path = os.path.join(directory, self.LOCK)
        recovered = None
        with self._guard(directory):
            data = json.dumps(asdict(holder), sort_keys=True).encode("utf-8")
            tmp = _write_temp(directory, self.LOCK, data)
            try:
                for _attempt in range(2):
                    try:
                        os.link(tmp, path)  # atomic create-if-absent, full content
                        break
                    except OSError as exc:
                        if exc.errno != errno.EEXIST:
                            raise
                    other = self.lock_holder(artifact, environment)
                    if other is None:
                        continue
                    if not other.is_stale():
                        hint = ("" if other.host == socket.gethostname() else
                                "; if that controller is gone for good, remove %s"
                                % path)
                        raise LockHeld("%s/%s is locked by %s%s"
                                       % (artifact, environment, other.describe(),
                                          hint), other)
                    os.unlink(path)  # holder died: safe under the guard
                    recovered = other
                else:
                    raise StoreError("could not create lock %s" % path)
            finally:
                os.unlink(tmp)
            # we are the only writer now: temp files are a killed writer's debris
            _clean_temp_files(directory)
            fsync_dir(directory)
        return Lock(artifact, environment, holder, recovered)

    def update_lock(self, lock: Lock, **changes) -> None:
        """Rewrite our lock's holder info (e.g. once the release id is known)."""
        for key, value in changes.items():
            setattr(lock.holder, key, value)
        directory = self.directory(lock.artifact, lock.environment)
        with self._guard(directory):
            current = self.lock_holder(lock.artifact, lock.environment)
            if current is None or current.token != lock.holder.token:
                raise StoreError("lock of %s/%s is no longer ours"
                                 % (lock.artifact, lock.environment))
            atomic_write(os.path.join(directory, self.LOCK),
                         json.dumps(asdict(lock.holder), sort_keys=True).encode())

    def release(self, lock: Lock) -> None:
        directory = self.directory(lock.artifact, lock.environment)
        with self._guard(directory):
            current = self.lock_holder(lock.artifact, lock.environment)
            if current is not None and current.token == lock.holder.token:
                os.unlink(os.path.join(directory, self.LOCK))
                fsync_dir(directory)
