# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: pulumi_output
short_description: Read one output of a Pulumi stack
version_added: 0.1.0
description:
  - Returns the value of a stack output, addressed with a dotted path such as C(load_balancer.url).
  - Secret values read C([secret]) unless O(show_secrets) is true.
author:
  - phoenix.deploy maintainers (@phoenix-deploy)
options:
  _terms:
    description: Dotted paths of the outputs to read.
    required: true
    type: list
    elements: str
  project_path:
    description: Directory holding the project's C(Pulumi.yaml).
    type: path
    required: true
  stack:
    description: Stack name.
    type: str
    required: true
  show_secrets:
    description: Return secret values in clear text.
    type: bool
    default: false
  passphrase:
    description: Passphrase of the stack's secrets provider (default from E(PULUMI_CONFIG_PASSPHRASE)).
    type: str
  backend_url:
    description: State backend (default from E(PULUMI_BACKEND_URL)).
    type: str
"""

EXAMPLES = r"""
- name: Where is the load balancer?
  ansible.builtin.debug:
    msg: "{{ lookup('phoenix.deploy.pulumi_output', 'load_balancer.url', project_path='infra', stack='local') }}"
"""

RETURN = r"""
_raw:
  description: One value per term.
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack as engine


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        try:
            runner = engine.StackRunner(self.get_option("project_path"), self.get_option("stack"),
                                        self.get_option("backend_url"), self.get_option("passphrase"))
            outputs = runner.outputs(self.get_option("show_secrets"))
            return [engine.get_output(outputs, term) for term in terms]
        except PhoenixError as exc:
            raise AnsibleLookupError(exc.msg) from exc
