# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The platform roles every driver implements, plus polling helpers.

A platform is three roles (``Platform`` holds one of each): a
``GroupManager`` (groups of one release: create, resize, health, destroy,
list, names, images), a ``TrafficRouter`` (weights, their verification, drain)
and a ``MetricsProvider`` (traffic of a group between two clock times).
The engine (strategies, rollout, analysis) talks to the roles only.

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
* ``destroy`` may hand the rest of the removal to the platform: once the
  platform accepted the deletion of a group that is off the load balancer
  (Kubernetes: a Deployment with a ``deletionTimestamp``, whose pods the
  garbage collector removes after their ``preStop`` and grace period),
  ``list_groups`` reports it with ``deleting=True``, size 0, until it is gone.
  The engine counts a detached group under platform-owned deletion as
  destroyed (``destroy_done``); such a group is never resized, reused,
  counted as capacity or given traffic (the driver refuses it).  Platforms
  that remove a group themselves keep ``deleting=False`` (the default): the
  engine then waits until the group is gone.
* ``verify_weights`` says whether the router serves the weights asked for
  (True / False) or that it cannot tell (None); the engine then waits the
  router's ``settle_time``.
* ``metrics`` answers for an explicit ``[start, end]`` window of clock times,
  within the provider's documented ``resolution``.
* group names are DNS-1123 labels (``valid_name``), at most 63 characters.
"""

from __future__ import annotations

import abc
import hashlib
import re
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
    #: the platform accepted the group's deletion and finishes it by itself
    #: (see the module's contract): no capacity, never routed to or reused
    deleting: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def destroy_done(group: Optional[ServerGroup]) -> bool:
    """True when ``destroy`` needs nothing more from the engine: the group is
    gone, or detached and under platform-owned deletion (``deleting``)."""
    return group is None or (group.deleting and not group.attached)


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


class GroupManager(abc.ABC):
    """The group lifecycle of a platform: server groups of one release,
    their size and health, and what a group runs (``resolve_image``)."""

    name = "abstract"
    #: seconds between polls the engine should use for this platform
    poll_interval = 1.0

    def group_name(self, artifact: str, environment: str, release_id: str) -> str:
        """The platform's name for a group: by default a DNS-1123 label (see
        ``group_name``), which every platform so far takes."""
        return group_name(artifact, environment, release_id)

    def resolve_image(self, ref: str, artifact: Optional[str] = None):
        """What the platform runs for the image reference ``ref`` (an image
        with its content digest) of ``artifact``: a local bundle, a GCE image
        self-link, an OCI reference.  ``PlatformError`` (``param="image"``)
        when this platform cannot run it."""
        return ref

    @abc.abstractmethod
    def create_group(self, artifact: str, environment: str, release_id: str,
                     image: str, size: int, env: dict,
                     name: Optional[str] = None,
                     owner: Optional[str] = None) -> ServerGroup:
        """Request a new group at weight 0; returns at once (instances may be starting)."""

    @abc.abstractmethod
    def resize(self, group: str, size: int) -> None:
        """Request a new instance count; removed instances are drained first."""

    @abc.abstractmethod
    def health(self, group: str) -> Health:
        """Ready / total instances with per-instance detail."""

    def cancel_drain(self, group: str) -> None:
        """Undo a drain a dead controller left half-done (weight 0, attached)."""

    def config_inputs(self) -> dict:
        """What the platform injects into every instance besides ``env``
        (secrets as digests), part of a release's config digest."""
        return {}

    @abc.abstractmethod
    def destroy(self, group: str) -> None:
        """Request removal of the group and all its instances (done for the
        engine when ``destroy_done`` holds for its ``list_groups`` entry)."""

    @abc.abstractmethod
    def list_groups(self, artifact: str, environment: str) -> list:
        """Observed ``ServerGroup`` list of one (artifact, environment),
        including groups being destroyed until they are gone."""


class TrafficRouter(abc.ABC):
    """The traffic side: weights between the groups of one backend."""

    name = "abstract"
    #: seconds a router that cannot verify weights (``verify_weights`` returns
    #: None) needs until a weight change is in effect; the engine waits this
    #: long and says so in the step log
    settle_time = 0.0

    @abc.abstractmethod
    def set_weights(self, weights: dict) -> None:
        """Request traffic shares ``{group name: 0..100}``; a detached group
        given a weight above 0 is attached again."""

    @abc.abstractmethod
    def verify_weights(self, weights: dict) -> Optional[bool]:
        """True once the router serves ``weights`` (a group with weight above
        0 attached), False while not yet, None when the platform cannot tell
        (a load balancer that applies weights eventually)."""

    @abc.abstractmethod
    def drain_and_detach(self, group: str) -> None:
        """Request drain and removal from the load balancer (keeps it warm)."""


class DriverGroups(GroupManager):
    """A group manager whose operations are its driver's methods of the same
    name; a driver package subclasses it for its name, poll interval and
    whatever it answers itself (``resolve_image``...)."""

    def __init__(self, driver):
        self.driver = driver

    def create_group(self, artifact, environment, release_id, image, size, env,
                     name=None, owner=None):
        return self.driver.create_group(artifact, environment, release_id, image, size, env,
                                        name=name, owner=owner)

    def resize(self, group, size):
        return self.driver.resize(group, size)

    def health(self, group):
        return self.driver.health(group)

    def config_inputs(self):
        return self.driver.config_inputs()

    def destroy(self, group):
        return self.driver.destroy(group)

    def list_groups(self, artifact, environment):
        return self.driver.list_groups(artifact, environment)


class DriverTraffic(TrafficRouter):
    """A traffic router whose operations are its driver's methods of the same name."""

    def __init__(self, driver):
        self.driver = driver

    def set_weights(self, weights):
        return self.driver.set_weights(weights)

    def verify_weights(self, weights):
        return self.driver.verify_weights(weights)

    def drain_and_detach(self, group):
        return self.driver.drain_and_detach(group)


class MetricsProvider(abc.ABC):
    """Requests, server-side errors and latency of a group over a window."""

    name = "abstract"
    #: how close to the asked window boundaries the answer is (seconds); a
    #: driver documents what its counters allow
    resolution = 0.0

    @abc.abstractmethod
    def metrics(self, group: str, start: float, end: float) -> Metrics:
        """Traffic of ``group`` between the clock times ``start`` and ``end``
        (``Metrics.window`` is the span really covered)."""


ROLES = ("groups", "traffic", "metrics")
#: which role answers an operation (``Executor.platform_call`` routes by it)
ROLE_OF = {
    "create_group": "groups", "resize": "groups", "health": "groups",
    "destroy": "groups", "list_groups": "groups", "group_name": "groups",
    "resolve_image": "groups", "config_inputs": "groups", "cancel_drain": "groups",
    "set_weights": "traffic", "verify_weights": "traffic",
    "drain_and_detach": "traffic", "metrics": "metrics",
}


class Platform:
    """A platform is a combination of the three roles, chosen by the infra
    outputs (``targets.make_platform``): e.g. local groups behind local
    HAProxy with HAProxy's counters, or managed instance groups behind a
    cloud load balancer with the cloud's monitoring."""

    def __init__(self, groups: GroupManager, traffic: TrafficRouter, metrics: MetricsProvider,
                 name: Optional[str] = None):
        self.groups = groups
        self.traffic = traffic
        self.metrics = metrics
        self.name = name or getattr(groups, "name", "platform")

    @property
    def poll_interval(self) -> float:
        return getattr(self.groups, "poll_interval", 1.0)

    def role(self, op: str):
        """The role object that answers ``op``."""
        try:
            return getattr(self, ROLE_OF[op])
        except KeyError:
            raise ValueError("no platform role has the operation %r" % op)

    def call(self, op: str, *args, **kwargs):
        return getattr(self.role(op), op)(*args, **kwargs)


_NOT_DNS = re.compile(r"[^a-z0-9]+")
_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def group_name(artifact: str, environment: str, release_id: str) -> str:
    """``<artifact>-<environment>-<release>`` as a name every platform takes
    (DNS-1123 label, GCE resource name): lowercase ``[a-z0-9-]``, starting
    with a letter, at most 63 characters, derived deterministically
    (``integrated_qa`` -> ``integrated-qa``; too long -> cut + 8-hex hash)."""
    return dns_label(artifact, environment, release_id)


def dns_label(*parts) -> str:
    """``parts`` joined with ``-`` as a DNS-1123 label that starts with a
    letter (the rule of ``group_name``), e.g. a per-(artifact, environment)
    resource such as a Kubernetes HTTPRoute: ``dns_label("catalog", "integrated_qa")``."""
    raw = "-".join(str(p) for p in parts)
    name = _NOT_DNS.sub("-", raw.lower()).strip("-")
    if not name[:1].isalpha():
        name = "g-" + name
    if len(name) > 63:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
        name = "%s-%s" % (name[:54].rstrip("-"), digest)
    return name


def valid_name(name: str) -> bool:
    """A DNS-1123 label that starts with a letter (GCE resource names too)."""
    return isinstance(name, str) and bool(_DNS_LABEL.match(name))


#: an OCI image reference pinned by digest, ``registry/repo@sha256:<64 hex>``
OCI_REF = re.compile(r"^(?P<repo>[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?"
                     r"(/[a-z0-9]+([._-]+[a-z0-9]+)*)+)@(?P<digest>sha256:[0-9a-f]{64})$")


def is_oci_ref(ref) -> bool:
    return isinstance(ref, str) and bool(OCI_REF.match(ref))
