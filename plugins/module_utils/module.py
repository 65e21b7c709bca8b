# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one module wrapper of phoenix.deploy (in the spirit of amazon.aws's
``AnsibleAWSModule``): common argument specs and a single error helper."""

from __future__ import annotations

import copy
import math

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError


class PhoenixModule(AnsibleModule):
    """AnsibleModule plus ``fail_phoenix`` for engine errors."""

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
