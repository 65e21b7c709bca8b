# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of phoenix.deploy.pulumi_stack: runs the module as usual and,
when it returns revealed secrets (show_secrets: true), marks the result no_log,
so no callback prints it at any verbosity; the registered variable keeps the
values for the tasks that need them (e.g. rollout's infra)."""

from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        wrap_async = self._task.async_val and not self._connection.has_native_async
        result.update(self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
        try:
            reveal = boolean(self._task.args.get("show_secrets", False), strict=False)
        except TypeError:
            reveal = True  # unsure: hide
        if reveal:
            result["_ansible_no_log"] = True
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
