# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platform drivers for the rollout engine.

``base`` holds the small interface every driver implements (``local``,
``gce``, ``kubernetes``); strategies are written once against it and a
platform never knows which strategy drives it.
"""
