# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Kubernetes platform: one Deployment + Service per release, traffic by
Gateway API HTTPRoute backend weights, metrics from the gateway's HAProxy
counters.

* ``api``: the official ``kubernetes`` client from the infra outputs and one
  error mapping (transient: 429, 5xx, connection; permanent: 401, 403, a
  missing namespace, TLS),
* ``objects``: the Deployment, Service and HTTPRoute as dicts, names, labels,
  the route's status verdict,
* ``driver``: what the roles share (API calls, route edits, counters).

``KubernetesPlatform(infra, ...)`` is the ``Platform`` of the three roles.
"""

from __future__ import annotations

from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DriverGroups, DriverTraffic, Metrics, MetricsProvider, Platform, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.counters import (
    RESOLUTION, window_metrics)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.api import (
    HAS_KUBERNETES, KUBERNETES_IMPORT_ERROR)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes.driver import (
    DEFAULT_HEALTH_PATH, KubernetesDriver)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import objects

__all__ = ["KubernetesPlatform", "KubernetesDriver", "KubernetesGroups", "KubernetesTraffic",
           "KubernetesMetrics", "PlatformError", "missing_dependencies"]


def missing_dependencies() -> list:
    """``[(python package, import error)]`` the kubernetes driver lacks."""
    return [] if HAS_KUBERNETES else [("kubernetes", KUBERNETES_IMPORT_ERROR)]


class KubernetesGroups(DriverGroups):
    """A group is a Deployment (immutable selector with the release) plus a
    Service of the same name; images by digest only."""

    name = "kubernetes"
    poll_interval = KubernetesDriver.poll_interval

    def resolve_image(self, ref, artifact=None):
        """``registry/repo@sha256:<64 hex>`` as is; a tag or a local image is
        refused naming the ``image`` parameter, and so is an image missing
        from the stack's registries (its health path is read on the way)."""
        objects.check_image(ref)
        if self.driver is not None:
            self.driver.image_health_path(ref)
        return ref

    def create_group(self, artifact, environment, release_id, image, size, env, name=None, owner=None):
        name = name or self.group_name(artifact, environment, release_id)
        return self.driver.create_group(artifact, environment, release_id, image, size, env, name, owner)


class KubernetesTraffic(DriverTraffic):
    """Weights are the HTTPRoute's ``rules[0].backendRefs`` weights, replaced
    with the route's resourceVersion; verified by the gateway's status at the
    route's current generation (so never None)."""

    name = "kubernetes"
    settle_time = 0.0


class KubernetesMetrics(MetricsProvider):
    """Traffic of a group from the gateway's HAProxy counters: the rows of
    the route's backend ``be_<namespace>_<route>`` whose server name starts
    with ``<group>~`` or ``<group>.`` (one per endpoint of the group's Service;
    the gateway keeps a gone endpoint's server in maintenance, so its counters
    stay readable), over the
    window rule of ``platforms.counters``.  Without a gateway socket in the
    infra outputs every answer is "no data" (inconclusive), never a pass."""

    name = "kubernetes"
    resolution = RESOLUTION

    def __init__(self, driver: KubernetesDriver):
        self.driver = driver

    def metrics(self, group, start, end) -> Metrics:
        driver = self.driver
        if driver.haproxy is None:
            return Metrics(0, 0, None, 0.0)
        stats = None
        if end >= driver.clock.now() - RESOLUTION:
            stats = driver.snapshot(group)
        history = driver.history
        first = history.near(group, start, before=True)
        last = history.near(group, end) if stats is None else history.groups[group][-1]
        if first is None or last is None or last[0] <= first[0]:
            return Metrics(0, 0, None, 0.0)
        members = [{"instance": n} for n in sorted(stats or {})]
        return window_metrics(first, last, members, stats)


class KubernetesPlatform(Platform):
    """The Kubernetes roles over one ``KubernetesDriver``."""

    def __init__(self, infra: dict, drain_timeout: float = 10.0, prestop_seconds: int = 3,
                 verify_timeout: float = 60.0, health_path: str = DEFAULT_HEALTH_PATH,
                 clock=None, driver: Optional[KubernetesDriver] = None):
        self.driver = driver or KubernetesDriver(infra, drain_timeout=drain_timeout,
                                                 prestop_seconds=prestop_seconds,
                                                 verify_timeout=verify_timeout,
                                                 health_path=health_path, clock=clock)
        Platform.__init__(self, KubernetesGroups(self.driver), KubernetesTraffic(self.driver),
                          KubernetesMetrics(self.driver), name="kubernetes")
