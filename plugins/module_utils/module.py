# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one module wrapper of phoenix.deploy (in the spirit of amazon.aws's
``AnsibleAWSModule``): common argument specs and a single error helper."""

from __future__ import annotations

import copy
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

# Dict options that carry a secret among plain settings (the infra outputs carry the DB password).
# They are no_log, so Ansible never logs them whole (syslog/journal invocation lines), but in the
# module's result only their secret leaves are masked: masking every leaf would turn "local",
# "catalog" or a port number into "********" wherever it appears in a message.
PARTLY_SECRET_OPTIONS = ("infra",)
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
    if isinstance(value, dict):
        return set().union(*[_leaves(v) for v in value.values()]) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*[_leaves(v) for v in value]) if value else set()
    if value in (None, "", True, False):
        return set()
    return {str(value)}


class PhoenixModule(AnsibleModule):
    """AnsibleModule plus ``fail_phoenix`` for engine errors, and secrets kept out of output."""

    def __init__(self, *args, **kwargs):
        AnsibleModule.__init__(self, *args, **kwargs)
        self._narrow_no_log()

    def _narrow_no_log(self):
        """For :data:`PARTLY_SECRET_OPTIONS`: keep only their secret leaves in ``no_log_values``
        (plus anything another no_log option holds)."""
        partly = [name for name in PARTLY_SECRET_OPTIONS
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
            self.no_log_values.update(secret_leaves(value))

    def add_secrets(self, value):
        """Mask the secret leaves of ``value`` (e.g. stack outputs read by the module) in all output."""
        self.no_log_values.update(secret_leaves(value))

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
