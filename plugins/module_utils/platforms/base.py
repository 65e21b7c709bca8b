# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The platform interface every driver implements, plus polling helpers.

Every operation may be asynchronous (a GCE MIG resize, a Kubernetes
Deployment scale): a call only *requests* a change.  The engine observes the
effect through ``health`` and ``list_groups`` and polls with deadlines
(``wait_until``); it never assumes instant effect.

Contract (what the engine relies on):

* ``create_group`` registers a group of ``size`` instances started from
  ``image`` with ``env`` injected; a new group is attached with weight 0,
  so it takes no traffic until ``set_weights`` gives it some.
* ``resize`` to a smaller size drains the removed instances before they stop.
* ``set_weights`` sets the traffic share (0..100) of each named group; a
  detached group named with a weight above 0 is attached again.
* ``drain_and_detach`` stops new traffic, lets in-flight requests finish and
  removes the group from the load balancer; its instances keep running
  (a *warm* group) until ``destroy``.
* ``cancel_drain`` puts members that a killed controller left draining (or
  in maintenance) back into the load balancer at weight 0; a platform whose
  drain cannot be left half-done keeps the default no-op.
* ``create_group`` stamps ``owner`` (the release store id) on the group, and
  ``list_groups`` reports it, so the engine only ever destroys what it made.
* ``list_groups`` reports the observed state (size, weight, attached) of the
  groups of one (artifact, environment), including ones being destroyed.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

READY = "ready"
STARTING = "starting"
FAILED = "failed"
DRAINING = "draining"


class PlatformError(PhoenixError):
    """A platform operation was refused or failed.  ``transient=True`` when the
    platform clears it by itself (HTTP 429/5xx, a 412 fingerprint conflict, a
    refused or dropped connection to its control endpoint): the engine retries
    the call with jittered backoff until its deadline."""


class WaitTimeout(PhoenixError):
    """A polled condition did not become true before its deadline."""


class HealthFailure(PhoenixError):
    """Instances are failing (crash loop): there is no point in waiting."""


@dataclass
class ServerGroup:
    """The instances of one release, e.g. ``catalog-ci-v007``."""

    name: str
    artifact: str
    environment: str
    release_id: str
    image: str
    size: int = 0
    weight: int = 0
    attached: bool = True
    #: id of the release store whose engine created the group (None: unknown)
    owner: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class InstanceHealth:
    name: str
    state: str  # READY / STARTING / FAILED / DRAINING
    detail: str = ""
    restarts: int = 0


@dataclass
class Health:
    ready: int
    total: int
    instances: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return [i for i in self.instances if i.state == FAILED]

    def summary(self) -> str:
        text = "%d/%d ready" % (self.ready, self.total)
        bad = self.failed
        if bad:
            text += "; failed: " + ", ".join(
                "%s (%s)" % (i.name, i.detail or "failed") for i in bad)
        return text


@dataclass
class Metrics:
    """Traffic of one group over a window.  Latencies are in milliseconds,
    keyed ``p50``/``p90``/``p95``/``p99``; ``None`` when there was no data."""

    requests: int = 0
    errors_5xx: int = 0
    latency_ms: Optional[dict] = None
    window: float = 0.0

    @property
    def error_rate(self) -> Optional[float]:
        if not self.requests:
            return None
        return self.errors_5xx / float(self.requests)


class Clock:
    """Wall clock; tests pass a fake one whose ``sleep`` advances time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def wait_until(predicate: Callable, deadline: float, interval: float,
               describe, clock: Optional[Clock] = None):
    """Poll ``predicate()`` until it returns a truthy value and return it.

    ``deadline`` is an absolute ``clock.now()`` value.  ``describe`` is a
    string or a callable returning the current state; it ends up in the
    ``WaitTimeout`` message, e.g. ``timed out after 30s waiting for
    catalog-ci-v002 healthy (3/5 ready)``.  Exceptions raised by the
    predicate (``HealthFailure``) propagate at once: fail fast.
    """
    clock = clock or Clock()
    start = clock.now()
    interval = max(interval, 0.001)
    while True:
        value = predicate()
        if value:
            return value
        now = clock.now()
        if now >= deadline:
            text = describe() if callable(describe) else describe
            raise WaitTimeout("timed out after %gs waiting for %s"
                              % (round(now - start, 3), text))
        clock.sleep(min(interval, deadline - now))


class Platform(abc.ABC):
    """What a driver must do; see the module docstring for the contract."""

    name = "abstract"
    #: seconds between polls the engine should use for this platform
    poll_interval = 1.0

    @abc.abstractmethod
    def create_group(self, artifact: str, environment: str, release_id: str,
                     image: str, size: int, env: dict,
                     name: Optional[str] = None,
                     owner: Optional[str] = None) -> ServerGroup:
        """Request a new group; returns at once (instances may be starting)."""

    @abc.abstractmethod
    def resize(self, group: str, size: int) -> None:
        """Request a new instance count; removed instances are drained first."""

    @abc.abstractmethod
    def health(self, group: str) -> Health:
        """Ready / total instances with per-instance detail."""

    @abc.abstractmethod
    def set_weights(self, weights: dict) -> None:
        """Request traffic shares ``{group name: 0..100}``."""

    @abc.abstractmethod
    def drain_and_detach(self, group: str) -> None:
        """Request drain and removal from the load balancer (keeps it warm)."""

    def cancel_drain(self, group: str) -> None:
        """Undo a drain a dead controller left half-done (weight 0, attached)."""

    def config_inputs(self) -> dict:
        """What the platform injects into every instance besides ``env``
        (secrets as digests), part of a release's config digest."""
        return {}

    @abc.abstractmethod
    def destroy(self, group: str) -> None:
        """Request removal of the group and all its instances."""

    @abc.abstractmethod
    def list_groups(self, artifact: str, environment: str) -> list:
        """Observed ``ServerGroup`` list of one (artifact, environment)."""

    @abc.abstractmethod
    def metrics(self, group: str, window: float) -> Metrics:
        """Requests, 5xx and latency of ``group`` over the last ``window`` s."""
