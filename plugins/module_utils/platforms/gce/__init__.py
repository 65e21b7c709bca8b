# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GCE platform: a regional managed instance group per release behind the
global external Application Load Balancer, metrics from Cloud Monitoring.

* ``api``: the googleapiclient client (static discovery, ADC credentials or an
  injected ``http``), error classification, operation waits,
* ``driver``: what the roles share (config, groups, URL map edits),
* ``metrics``: the Cloud Monitoring metrics provider.

``GcePlatform(infra, ...)`` is the ``Platform`` of the three GCE roles.
"""

from __future__ import annotations

import re
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DriverGroups, DriverTraffic, Platform, PlatformError)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.api import (
    Api, missing_dependencies)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.driver import (
    GceConfig, GceDriver, api_calls, parse_image)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.gce.metrics import (
    CANARY_STEPS, GceMetrics)

#: a Secret Manager secret version
SECRET_REF = re.compile(r"^projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}/versions/([0-9]+|latest)$")

__all__ = ["GcePlatform", "GceDriver", "GceGroups", "GceTraffic", "GceMetrics", "GceConfig",
           "Api", "PlatformError", "parse_image", "missing_dependencies", "CANARY_STEPS"]


class GceGroups(DriverGroups):
    """Groups are instance template + regional MIG + backend service."""

    name = "gce"
    poll_interval = GceDriver.poll_interval

    def resolve_image(self, ref, artifact=None):
        """``projects/<p>/global/images/<name>`` (or its full URL) -> that path;
        anything else is refused naming the ``image`` parameter."""
        return self.driver.resolve_image(ref, artifact)


class GceTraffic(DriverTraffic):
    """Weights are ``weightedBackendServices`` of the artifact's route in the
    URL map; the load balancer applies them eventually, so ``verify_weights``
    says False (the URL map reads otherwise) or None (cannot tell)."""

    name = "gce"

    def __init__(self, driver: GceDriver):
        DriverTraffic.__init__(self, driver)
        self.settle_time = driver.config.settle_time


class GcePlatform(Platform):
    """The GCE roles over one ``GceDriver``.  ``http`` (tests) replaces the
    credentials; without it Application Default Credentials are used at the
    first API call, never before (a plan needs none)."""

    def __init__(self, infra: dict, http=None, credentials=None, clock=None,
                 api: Optional[Api] = None, plan_only: bool = False):
        driver = GceDriver(infra, http=http, credentials=credentials, clock=clock, api=api,
                           plan_only=plan_only)
        self.driver = driver
        Platform.__init__(self, GceGroups(driver), GceTraffic(driver), GceMetrics(driver),
                          name="gce")

    @property
    def api(self):
        return self.driver.api

    @staticmethod
    def check_secret_env(secret_env: dict) -> None:
        """Every secret is a Secret Manager version reference, never a value
        (instance metadata is readable on the instance and by project viewers);
        the refusal names the key, never the value."""
        for key in sorted(secret_env or {}):
            if not SECRET_REF.match(str(secret_env[key])):
                raise PlatformError("secret_env.%s: on the gce platform a secret is a Secret Manager "
                                    "version projects/<project>/secrets/<name>/versions/<number or "
                                    "latest>, not a value (it would land in instance metadata)" % key,
                                    param="secret_env")

    def api_plan(self, plan: list) -> list:
        """``plan`` (``Rollout.plan`` steps) with the ordered Google API calls
        of each step (``api_calls``); needs no credentials."""
        return [dict(step, api_calls=api_calls(step, self.driver.poll_interval,
                                               self.driver.config.settle_time)) for step in plan]

    @property
    def unobserved(self):
        """Why the groups could not be read (check mode without credentials), or None."""
        return self.driver.unobserved
