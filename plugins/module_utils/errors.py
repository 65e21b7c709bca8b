# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# Apache License 2.0 (see LICENSE)
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
