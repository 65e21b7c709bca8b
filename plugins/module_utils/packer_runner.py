# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run Packer through packer-py (``packerpy.PackerExecutable``) and read its manifest.

Why packer-py and what this wrapper adds:

* packer-py 0.3.0 builds the command line (``-machine-readable``, ``-only=...``,
  ``-var k=v``) and returns ``(returncode, stdout, stderr)``; that is all we need
  from it, so we use it rather than a runner of our own.
* It has no way to pass an environment, a working directory or a timeout, and
  its default executable path is ``/usr/local/packer``. So this wrapper passes
  ``executable_path=shutil.which('packer')``, runs Packer with the working
  directory it was called from (the template uses ``path.root`` for every
  path, so the working directory does not matter) and applies the environment
  Packer needs (``CHECKPOINT_DISABLE=1``: no call home, which would stall
  offline) by updating ``os.environ`` for the duration of the call and
  restoring it afterwards. Callers run one bake at a time per process.
* packer-py buffers all output until Packer exits (no streaming progress).
* What was built is decided from the ``manifest`` post-processor's JSON file,
  never from Packer's human output; machine-readable ``ui,error`` lines are
  only used to word error messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

try:
    from packerpy import PackerExecutable
    HAS_PACKERPY = True
    PACKERPY_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    PackerExecutable = None
    HAS_PACKERPY = False
    PACKERPY_IMPORT_ERROR = exc

__all__ = ["PackerError", "PackerRunner", "HAS_PACKERPY", "PACKERPY_IMPORT_ERROR", "template_variables"]

_VAR_RE = re.compile(r'^\s*variable\s+"([A-Za-z_][A-Za-z0-9_-]*)"', re.M)


class PackerError(PhoenixError, RuntimeError):
    """Packer failed; ``str()`` carries Packer's own error lines (the full
    ``output`` stays out of module results)."""

    def __init__(self, msg, returncode=None, output=""):
        PhoenixError.__init__(self, msg)
        self.returncode = returncode
        self.output = output


def template_variables(template_path):
    """Names of the ``variable`` blocks declared in an HCL2 template."""
    with open(template_path, "r", encoding="utf-8") as f:
        return _VAR_RE.findall(f.read())


def _errors_from_machine_readable(stdout):
    """Packer's ``ui,error`` messages plus the failing provisioner's own error lines (Ansible's
    ``fatal:``/``ERROR`` and the ``msg`` after them), from ``-machine-readable`` output.

    Only used to word error messages; success is decided from the exit status and the manifest."""
    errors, provisioner = [], []
    for line in stdout.splitlines():
        parts = line.split(",", 4)
        if len(parts) < 5 or parts[2] != "ui":
            continue
        text = parts[4].replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").strip()
        if parts[3] == "error":
            errors.append(text)
        elif parts[3] == "message":
            body = text.split(": ", 1)[-1].strip()
            if body.startswith(("fatal:", "[ERROR]", "ERROR!")) or (provisioner and body.startswith("msg:")):
                provisioner.append(body)
    return provisioner[-6:] + errors


class PackerRunner(object):
    """One Packer executable; ``build``/``validate`` raise :class:`PackerError` on failure."""

    ENV = {"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}

    def __init__(self, executable=None, env=None):
        if not HAS_PACKERPY:
            raise PackerError("the Python package packer.py is required (pip install packer.py==0.3.0): %s"
                              % (PACKERPY_IMPORT_ERROR,))
        self.executable = executable or shutil.which("packer")
        if not self.executable:
            raise PackerError("packer was not found on PATH: install it (Debian: apt-get install packer) or "
                              "put it on PATH")
        self.env = dict(self.ENV)
        self.env.update(env or {})
        self.packer = PackerExecutable(executable_path=self.executable)
        self.last_duration = None

    def _call(self, command, template, **kwargs):
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        t0 = time.monotonic()
        try:
            rc, out, err = getattr(self.packer, command)(template, **kwargs)
        finally:
            self.last_duration = time.monotonic() - t0
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out = out.decode("utf-8", "replace") if isinstance(out, bytes) else (out or "")
        err = err.decode("utf-8", "replace") if isinstance(err, bytes) else (err or "")
        if rc != 0:
            errors = _errors_from_machine_readable(out) or [l for l in err.splitlines() if l.strip()][-20:]
            raise PackerError("packer %s failed (exit %s): %s" % (command, rc, "\n".join(errors) or "no output"),
                              returncode=rc, output=out + err)
        return out

    @staticmethod
    def _args(only=None, variables=None):
        kwargs = {}
        if only:
            kwargs["only"] = only
        if variables:
            kwargs["var"] = dict((k, "" if v is None else str(v)) for k, v in sorted(variables.items()))
        return kwargs

    def validate(self, template, only=None, variables=None):
        """``packer validate``; returns Packer's output, raises PackerError when invalid."""
        return self._call("validate", template, **self._args(only, variables))

    def build(self, template, only, variables, manifest_path):
        """``packer build -only=<only>``; returns this run's entry of the manifest file."""
        variables = dict(variables)
        variables["manifest_path"] = manifest_path
        self._call("build", template, **self._args(only, variables))
        return read_manifest(manifest_path, build_name=only.split(".", 1)[0] if only else None)


def read_manifest(path, build_name=None):
    """The manifest entry of the last Packer run (``last_run_uuid``), optionally for one build name."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise PackerError("packer finished but its manifest %s cannot be read: %s" % (path, exc))
    run = doc.get("last_run_uuid")
    builds = [b for b in doc.get("builds", []) if b.get("packer_run_uuid") == run]
    if build_name:
        builds = [b for b in builds if b.get("name") == build_name] or builds
    if not builds:
        raise PackerError("packer manifest %s has no build for run %s" % (path, run))
    return builds[-1]
