"""Run a module's ``main()`` in this process as Ansible would: the module
arguments go through ``AnsibleModule``'s real argument parsing
(``ansible.module_utils.testing.patch_module_args``); only ``exit_json`` /
``fail_json`` are replaced, to capture the result instead of exiting."""
import importlib
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class ModuleExit(Exception):
    """What a module ended with: ``failed`` and its result."""

    def __init__(self, failed, result):
        super().__init__(result.get("msg", ""))
        self.failed = failed
        self.result = result


def _exit_json(self, **result):  # pylint: disable=unused-argument
    raise ModuleExit(False, result)


def _fail_json(self, msg, **result):  # pylint: disable=unused-argument
    raise ModuleExit(True, dict(result, msg=msg))


def run_main(name, args, check_mode=False):
    """Run plugins/modules/<name>.py's main() with ``args``; return its ModuleExit."""
    module = importlib.import_module("ansible_collections.phoenix.deploy.plugins.modules." + name)
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json):
        with pytest.raises(ModuleExit) as info:
            module.main()
    return info.value


def run_failing(name, args, check_mode=False):
    """run_main() for arguments the module must refuse: the failed result."""
    end = run_main(name, args, check_mode)
    assert end.failed, end.result
    assert not end.result.get("changed"), end.result
    return end.result
