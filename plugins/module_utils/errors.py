# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors raised by the phoenix.deploy engine.

Every error that comes from user input names the parameter and what is
allowed, so a module can show it as is."""

from __future__ import annotations


class PhoenixError(Exception):
    """An error the user can act on. ``param`` names the offending option."""

    def __init__(self, msg, param=None, **details):
        super().__init__(msg)
        self.msg = msg
        self.param = param
        self.details = details
