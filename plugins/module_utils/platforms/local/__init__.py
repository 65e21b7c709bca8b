# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local platform: supervisord programs behind the infra's HAProxy.

* ``driver``: what the roles share (instance table, start / drain / remove),
* ``supervisor``: the supervisord XML-RPC client,
* ``haproxy``: the one HAProxy runtime-API client and stats parser,
* ``ports``: loopback ports, ``weights``: shares <-> server weights,
* ``metrics``: counter snapshots and the metrics provider.

``LocalPlatform(infra, ...)`` is the ``Platform`` of the three local roles.
"""

from __future__ import annotations

from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DriverGroups, DriverTraffic, Platform, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.driver import (
    LocalDriver, parse_image_ref)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.metrics import (
    LocalMetrics)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.local.supervisor import (
    HAS_SUPERVISOR, SUPERVISOR_IMPORT_ERROR)

__all__ = ["LocalPlatform", "LocalDriver", "LocalGroups", "LocalTraffic", "LocalMetrics",
           "PlatformError", "parse_image_ref", "missing_dependencies", "HAS_SUPERVISOR",
           "SUPERVISOR_IMPORT_ERROR"]


def missing_dependencies() -> list:
    """``[(python package, import error)]`` the local driver lacks."""
    return [] if HAS_SUPERVISOR else [("supervisor", SUPERVISOR_IMPORT_ERROR)]


class LocalGroups(DriverGroups):
    """Groups are supervisord programs ``<group>.<index>`` started from a
    verified local image bundle."""

    name = "local"
    poll_interval = LocalDriver.poll_interval

    def resolve_image(self, ref, artifact=None):
        """``<image name>@sha256:<digest>`` -> the verified bundle
        (``{path, entrypoint, doc}``) of ``artifact`` in the image store; an
        OCI reference or an unknown image is refused naming the ``image``
        parameter."""
        if not artifact:
            raise PlatformError("image: %s; the local platform resolves images per artifact"
                                % ref, param="image")
        return self.driver.resolve_image(artifact, ref)

    def cancel_drain(self, group):
        return self.driver.cancel_drain(group)


class LocalTraffic(DriverTraffic):
    """Weights are HAProxy server weights (runtime API, no reloads), read
    back from HAProxy, so ``verify_weights`` always knows (never None)."""

    name = "local"
    settle_time = 0.0


class LocalPlatform(Platform):
    """The local roles over one ``LocalDriver``.  Tests reach the driver's
    helpers (``_stat``, ``_processes``, ``api``...) through this object."""

    def __init__(self, infra: dict, image_store: Optional[str] = None,
                 data_dir: Optional[str] = None, drain_timeout: float = 10.0,
                 verify_images: bool = True, clock=None):
        driver = LocalDriver(infra, image_store=image_store, data_dir=data_dir,
                             drain_timeout=drain_timeout, verify_images=verify_images,
                             clock=clock)
        self.driver = driver
        Platform.__init__(self, LocalGroups(driver), LocalTraffic(driver), LocalMetrics(driver),
                          name="local")

    def __getattr__(self, name):
        if name == "driver":
            raise AttributeError(name)
        return getattr(self.driver, name)

    @property
    def image_store(self):
        return self.driver.image_store

    @image_store.setter
    def image_store(self, value):
        self.driver.image_store = value
