# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one module wrapper of phoenix.deploy (in the spirit of amazon.aws's
``AnsibleAWSModule``): common argument specs and a single error helper."""

from __future__ import annotations

import copy
import json
import math
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

SECRET_KEY = re.compile(r"(password|passphrase|secret|token|private_key|credential)", re.I)


def secret_leaves(value, secret=False):
    """The string forms of every leaf under a key that names a secret (password, token, ...)."""
    out = set()
    if isinstance(value, dict):
        for key, item in value.items():
            out |= secret_leaves(item, secret or bool(SECRET_KEY.search(str(key))))
    elif isinstance(value, (list, tuple)):
        for item in value:
            out |= secret_leaves(item, secret)
    elif secret and value not in (None, "", True, False):
        out.add(str(value))
    return out


def _leaves(value):
    """The string form of every leaf of ``value``."""
    return secret_leaves(value, secret=True)


def secret_config_leaves(config):
    """The secret values of a pulumi_stack-style ``config`` (entries ``{value: ..., secret: true}``),
    as strings and, for lists and dicts, in the JSON form they are stored in."""
    out = set()
    for item in (config or {}).values():
        if isinstance(item, dict) and item.get("secret") and item.get("value") not in (None, ""):
            value = item["value"]
            out |= _leaves(value)
            if isinstance(value, (dict, list)):
                out.add(json.dumps(value, sort_keys=True))
    return out


class PhoenixModule(AnsibleModule):
    """AnsibleModule plus ``fail_phoenix`` for engine errors, and secrets kept out of output.

    ``partly_secret`` maps dict options that carry a secret among plain settings to a function
    that picks the secret leaves (default: ``infra``, whose outputs carry the DB password). Those
    options are no_log in their spec, so Ansible never logs them whole (syslog/journal invocation
    lines), but in the module's result only their secret leaves are masked: masking every leaf would
    turn "local", "catalog" or a port number into "********" wherever it appears in a message."""

    def __init__(self, *args, **kwargs):
        partly_secret = kwargs.pop("partly_secret", None)
        if partly_secret is None:
            partly_secret = {"infra": secret_leaves}
        self._partly_secret = partly_secret
        AnsibleModule.__init__(self, *args, **kwargs)
        self._narrow_no_log(partly_secret)

    def _narrow_no_log(self, partly_secret):
        """Keep only the secret leaves of the ``partly_secret`` options in ``no_log_values`` (plus
        anything another no_log option holds)."""
        partly = [name for name in partly_secret
                  if (self.argument_spec.get(name) or {}).get("no_log") and self.params.get(name)]
        if not partly:
            return
        others = set()
        for name, spec in self.argument_spec.items():
            if spec.get("no_log") and name not in partly:
                others |= _leaves(self.params.get(name))
        for name in partly:
            value = self.params[name]
            self.no_log_values.difference_update(_leaves(value) - others)
            self.no_log_values.update(partly_secret[name](value))

    def reveal(self, values):
        """Stop masking ``values`` (e.g. secrets the caller asked to see), unless another no_log
        option holds them."""
        keep = set()
        for name, spec in self.argument_spec.items():
            if spec.get("no_log") and name not in self._partly_secret:
                keep |= _leaves(self.params.get(name))
        self.no_log_values.difference_update(set(values) - keep)

    def add_secrets(self, value):
        """Mask the secret leaves of ``value`` (e.g. stack outputs read by the module) in all output."""
        self.no_log_values.update(secret_leaves(value))

    def _load_params(self):
        """ansible-core's int check raises OverflowError (a traceback) on an
        infinite float; hand it the text instead, so ``size: .inf`` fails as
        any other non-integer does: naming the option."""
        super(PhoenixModule, self)._load_params()
        for key, value in list((self.params or {}).items()):
            if isinstance(value, float) and not math.isfinite(value):
                self.params[key] = "%r (not a finite number)" % value

    def fail_phoenix(self, exc, **result):
        """Fail with the engine error's message; never with a traceback."""
        if isinstance(exc, PhoenixError):
            details = dict(exc.details)
            if exc.param:
                details["param"] = exc.param
            self.fail_json(msg=exc.msg, **dict(result, **details))
        self.fail_json(msg="%s: %s" % (type(exc).__name__, exc), **result)


def argspec(spec):
    """A deep copy of a shared spec (like kubernetes.core's ``argspec()``), so
    modules never mutate each other's specs."""
    return copy.deepcopy(spec)
