# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors raised by the phoenix.deploy engine.

Every engine error derives from ``PhoenixError``, so a module needs one
``except PhoenixError`` and one helper (``PhoenixModule.fail_phoenix``).
An error that comes from user input names the parameter (``param``) and
what is allowed, so a module can show it as is.

``transient`` marks an error the platform clears by itself (an API's HTTP
429 or 5xx, a 412 fingerprint conflict, a dropped or refused connection to
the control endpoint): the engine retries the call with jittered backoff
(``retries.retry_transient``) until its deadline instead of rolling back.
"""

from __future__ import annotations


class PhoenixError(Exception):
    """An error the user can act on. ``param`` names the offending option;
    ``transient`` says that the same call may succeed if retried."""

    def __init__(self, msg, param=None, transient=False, **details):
        super().__init__(msg)
        self.msg = msg
        self.param = param
        self.transient = bool(transient)
        self.details = details


class InvalidName(PhoenixError, ValueError):
    """A name (artifact, environment, stack, ...) that may not be used in a
    path or a platform resource; ``param`` is the option it came from."""
