# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout module's controller process: what it does when the playbook
that started it goes away, what a rerun of the same request does while it
still runs, and the detached controller of ``wait: false``.

* ansible-core's worker calls ``os.setsid()``, so the module runs in a session
  of its own and killing the playbook's process group does not reach it.
  ``PlaybookWatch`` notices instead: a process of the chain module -> shell ->
  worker -> ``ansible-playbook`` ended, or the module's stdout pipe lost its
  reader.  SIGTERM, SIGINT and SIGHUP to the module (the worker forwards a
  SIGTERM of the playbook to its process group) do the same.  Both cancel the
  rollout (``strategies.Cancel``): it rolls back to the live release at the
  next step or poll, recorded with the reason; a release already recorded
  live is finished instead.  A controller that is SIGKILLed itself is
  converged by the next run, as before.
* Every lock holder carries ``request_digest`` of its request.  A rerun of
  the same request waits (bounded by its ``timeout``) for a live holder and
  reports that release's outcome; a different request fails naming the
  holder.
* ``run_detached`` forks the ``wait: false`` controller (own session, stdio
  on /dev/null) and returns what it reports once it really holds the lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import stat
import threading
import time
from typing import Callable, Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.detach import spawn_daemon
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FAILED, IN_PROGRESS, INTERRUPTED, LIVE, PAUSED, ROLLED_BACK, SUCCEEDED, pid_alive,
    proc_stat)

PLAYBOOK_GONE = "the playbook that ran this rollout is gone"
SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


# --------------------------------------------------------------------------
# the request
# --------------------------------------------------------------------------
def request_digest(action: str, artifact: str, environment: str, **inputs) -> str:
    """sha256 of everything that makes a request: two runs with the same
    digest ask for the same thing (``env`` values only enter hashed)."""
    doc = dict(inputs, action=action, artifact=artifact, environment=environment)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# noticing that the playbook is gone
# --------------------------------------------------------------------------
def _looks_like_ansible(pid: int) -> bool:
    """``ansible-playbook`` or one of its forked workers (``python
    .../ansible-playbook ...``): argv[0] or argv[1] is named ``ansible*``."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")[:2]
    except OSError:
        return False
    return any(os.path.basename(arg).startswith(b"ansible") for arg in argv)


def playbook_chain(pid: Optional[int] = None, limit: int = 32) -> list:
    """``[(pid, start, name)]`` from the parent of ``pid`` (default: this
    process) up to the playbook: with ansible-core that is shell -> worker (a
    session leader: it called setsid) -> ``ansible-playbook``.  The chain
    ends at the parent of the first session leader that is an ansible
    process, else (no ansible ancestor, e.g. become with a pty) at the parent
    of the first session leader.  Without /proc it is empty (then only the
    output pipe and signals are watched)."""
    chain, cut = [], None
    current = proc_stat(os.getpid() if pid is None else pid)
    parent = current["ppid"] if current else 0
    while parent > 1 and len(chain) < limit:
        info = proc_stat(parent)
        if info is None:
            break
        chain.append((parent, info["start"], info["comm"]))
        if info["sid"] == parent:  # a session leader: one more, its parent
            top = proc_stat(info["ppid"]) if info["ppid"] > 1 else None
            end = len(chain) + (1 if top is not None else 0)
            if cut is None:
                cut = end
            if _looks_like_ansible(parent):
                cut = end
                if top is not None:
                    chain.append((info["ppid"], top["start"], top["comm"]))
                break
        parent = info["ppid"]
    return chain[:cut] if cut is not None else chain


def stdout_orphaned(fd: int = 1) -> bool:
    """True when ``fd`` is a pipe whose reader is gone."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR / POLLHUP are always reported
        return any(events & (select.POLLERR | select.POLLHUP)
                   for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


class PlaybookWatch:
    """A daemon thread calling ``on_gone(reason)`` once, when the playbook
    that started this process is gone; plus SIGTERM/SIGINT/SIGHUP handlers
    doing the same (installed by ``start`` from the main thread)."""

    def __init__(self, on_gone: Callable[[str], None], interval: float = 0.5,
                 chain: Optional[list] = None):
        self.on_gone = on_gone
        self.interval = interval
        self.chain = playbook_chain() if chain is None else chain
        self.reason = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="playbook-watch", daemon=True)
        self._previous = {}

    def check(self) -> Optional[str]:
        for pid, start, name in self.chain:
            if not pid_alive(pid, start):
                return "%s (pid %d, %s, ended)" % (PLAYBOOK_GONE, pid, name)
        if stdout_orphaned():
            return "%s (the module's output pipe has no reader)" % PLAYBOOK_GONE
        return None

    def _gone(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.on_gone(reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.check()
            if reason:
                self._gone(reason)
                return

    def _signal(self, signum, _frame) -> None:
        self._gone("%s (the controller received %s)"
                   % ("the playbook was stopped", signal.Signals(signum).name))

    def start(self) -> "PlaybookWatch":
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._signal)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


# --------------------------------------------------------------------------
# a rerun of the same request
# --------------------------------------------------------------------------
def await_holder(store, artifact: str, environment: str, holder, deadline: float,
                 cancel=None, poll: float = 0.5) -> float:
    """Wait until ``holder`` no longer holds the lock (it released it, died or
    someone else holds it now); return the seconds waited.  Past ``deadline``
    (epoch seconds) raise ``PhoenixError`` naming the holder."""
    started = time.time()
    while True:
        current = store.lock_holder(artifact, environment)
        if current is None or current.token != holder.token or current.is_stale():
            return time.time() - started
        if cancel is not None and cancel.is_set():
            raise PhoenixError("stopped waiting for %s: %s" % (holder.describe(), cancel.reason))
        if time.time() >= deadline:
            raise PhoenixError(
                "%s/%s is still locked by %s, which runs this same request; waited %.0fs "
                "(timeout); run again to keep waiting" % (artifact, environment,
                                                          holder.describe(),
                                                          time.time() - started),
                param="timeout")
        time.sleep(poll)


def final_release(store, artifact: str, environment: str, holder):
    """The release the awaited ``holder`` acted on, if it ended with an
    outcome of its own; None when the request must run again here (no
    release yet, cancelled because its playbook was gone, or its controller
    died and the release waits for recovery)."""
    if not holder.release_id:
        return None
    release = store.load(artifact, environment).get(holder.release_id)
    if release is None or release.status == IN_PROGRESS:
        return None
    if release.outcome == INTERRUPTED:
        return None
    if release.outcome in (ROLLED_BACK, FAILED) and any(
            event.get("cause") == "cancelled" for event in release.events):
        return None
    return release


def awaited_result(history, release, holder, waited: float) -> dict:
    """The module result of a run that waited for ``holder`` (same request)
    and now reports the outcome of its ``release``."""
    live = history.live_release()
    by = "by controller pid %d of the same request (waited %.1fs)" % (holder.pid, waited)
    if release.status == PAUSED:
        state, failed = PAUSED, False
        msg = "%s paused at %d%%: %s (%s)" % (release.release_id, release.weight,
                                              release.reason, by)
    elif release.outcome == SUCCEEDED:
        state, failed = LIVE, False
        msg = "%s (%s) is live; rolled out %s" % (release.version, release.release_id, by)
    else:
        state, failed = release.outcome, True
        msg = "%s of %s (%s) %s: %s (%s)" % (
            release.kind, release.version, release.release_id, release.outcome,
            release.reason, by)
    return dict(changed=False, failed=failed, state=state, msg=msg, release=release.as_dict(),
                live=live.as_dict() if live else None, events=list(release.events), plan=[])


# --------------------------------------------------------------------------
# the detached controller (wait: false)
# --------------------------------------------------------------------------
class NotifyingStore:
    """A release store that calls ``notify(lock)`` right after the lock was
    acquired (so ``wait: false`` reports only a lock really held)."""

    def __init__(self, store, notify: Callable):
        self._store = store
        self._notify = notify

    def acquire(self, *args, **kwargs):
        lock = self._store.acquire(*args, **kwargs)
        self._notify(lock)
        return lock

    def __getattr__(self, name):
        return getattr(self._store, name)


def run_detached(work: Callable[[Callable[[dict], None]], None], wait: float = 60.0) -> dict:
    """Run ``work(report)`` in a double-forked controller process
    (``detach.spawn_daemon``: a session of its own, stdio and every other
    inherited descriptor on /dev/null) and return the first dict it passes to
    ``report``; ``{}`` when it ended (or ``wait`` seconds passed) without."""
    read_fd, write_fd = os.pipe()
    state = {"fd": write_fd}

    def report(message: dict) -> None:
        if state["fd"] is None:
            return
        os.write(state["fd"], json.dumps(message).encode("utf-8") + b"\n")
        os.close(state["fd"])
        state["fd"] = None

    try:
        spawn_daemon(lambda: work(report), keep=[write_fd])
    finally:
        os.close(write_fd)
    data = b""
    deadline = time.time() + wait
    try:
        while b"\n" not in data:
            left = deadline - time.time()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                break
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    try:
        return json.loads(data.decode("utf-8").split("\n")[0]) if data else {}
    except ValueError:
        return {}
