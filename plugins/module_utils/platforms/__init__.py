# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platform drivers for the rollout engine.

``base`` holds the three roles every driver implements (group manager,
traffic router, metrics provider) and ``Platform``, a combination of them;
strategies are written once against the roles and a platform never knows
which strategy drives it.  ``local`` is the one driver today (a package);
``targets.make_platform`` picks the driver from the infra outputs and checks
its dependencies.  Every driver passes the conformance suite
``tests/unit/plugins/module_utils/platform_contract.py``.
"""
