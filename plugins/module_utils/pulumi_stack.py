# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drive a Pulumi stack through Pulumi's Automation API.

Used by the ``phoenix.deploy.pulumi_stack`` module and the
``phoenix.deploy.pulumi_output`` lookup. ``changed`` is decided from the
engine's structured change summary and step events, never from CLI text.
Secrets stay masked (``[secret]`` at the exact nested place) unless the
caller asks for them.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    LockHeld, LockHolder, ReleaseStore)

try:
    import yaml  # a dependency of pulumi
    from pulumi import automation as auto
    from semver import VersionInfo  # a dependency of pulumi
    HAS_PULUMI = True
    PULUMI_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised by sanity's import test
    auto = None
    HAS_PULUMI = False
    PULUMI_IMPORT_ERROR = exc

LOCAL_STACK_PASSPHRASE = "phoenix-local"  # documented default, for the `local` stack only
STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NO_CHANGE_OPS = ("same", "read", "refresh")


def _find_repo_root(project_path):
    """The checkout that holds ``project_path`` (where .tools/ and .state/ live)."""
    path = os.path.abspath(project_path)
    while path != os.path.dirname(path):
        if os.path.isdir(os.path.join(path, ".tools")) or os.path.isfile(os.path.join(path, "galaxy.yml")):
            return path
        path = os.path.dirname(path)
    return os.path.dirname(os.path.abspath(project_path))


def pulumi_environment(project_path, stack, backend_url=None, passphrase=None, environ=None):
    """The environment every Pulumi call gets: offline file backend inside
    the project state dir, no update checks, no plugin downloads, and a
    passphrase (the default exists for the ``local`` stack only)."""
    environ = dict(os.environ if environ is None else environ)
    root = os.environ.get("PHOENIX_ROOT") or _find_repo_root(project_path)
    state_dir = environ.get("PHOENIX_STATE_DIR") or os.path.join(root, ".state")
    env = {
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_BACKEND_URL": backend_url or environ.get("PULUMI_BACKEND_URL")
        or "file://" + os.path.join(state_dir, "pulumi-backend"),
        "PULUMI_HOME": environ.get("PULUMI_HOME") or os.path.join(state_dir, "pulumi-home"),
        "PHOENIX_STATE_DIR": state_dir,
    }
    if passphrase:
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
    elif not (environ.get("PULUMI_CONFIG_PASSPHRASE") or environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
        if stack != "local":
            raise PhoenixError(
                "stack '%s' needs a secrets passphrase: set PULUMI_CONFIG_PASSPHRASE (or "
                "PULUMI_CONFIG_PASSPHRASE_FILE) in the environment or pass 'passphrase'; only the "
                "'local' stack has a default" % stack, param="passphrase")
        env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_STACK_PASSPHRASE
    if env["PULUMI_BACKEND_URL"].startswith("file://"):
        path = env["PULUMI_BACKEND_URL"][len("file://"):]
        os.makedirs(path, mode=0o700, exist_ok=True)
    os.makedirs(env["PULUMI_HOME"], mode=0o700, exist_ok=True)
    return env


def find_pulumi_root(project_path):
    """Directory whose ``bin/pulumi`` is the CLI to use: the project's own
    build in .tools/ when present, else the one on PATH (None)."""
    root = os.environ.get("PHOENIX_ROOT") or _find_repo_root(project_path)
    tools = os.path.join(root, ".tools")
    if os.access(os.path.join(tools, "bin", "pulumi"), os.X_OK):
        return tools
    return None


def pulumi_command(root):
    """The Pulumi CLI under ``root`` (None: the one on PATH).  The project's
    own build knows its version: ``scripts/install-pulumi.sh`` writes it to
    ``bin/.version`` beside the binary, so no ``pulumi version`` run (a
    quarter CPU-second, on every module run) is needed to learn it; a CLI
    without that file is asked, as the Automation API always does."""
    if root:
        try:
            with open(os.path.join(root, "bin", ".version")) as handle:
                version = VersionInfo.parse(handle.read().strip())
        except (OSError, ValueError, TypeError):
            version = None
        if version is not None:
            command = auto.PulumiCommand.__new__(auto.PulumiCommand)
            command.command = os.path.join(root, "bin", "pulumi")
            command.version = version
            return command
    return auto.PulumiCommand(root=root)


def config_values(config):
    """Module ``config`` → {key: (string value, secret)}. A value is a scalar,
    a list/dict (stored as JSON, read with Config.get_object), or
    ``{value: ..., secret: true}``."""
    out = {}
    for key, value in (config or {}).items():
        secret = False
        if isinstance(value, dict) and set(value) <= {"value", "secret"} and "value" in value:
            secret = bool(value.get("secret"))
            value = value["value"]
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value, sort_keys=True)
        elif value is None:
            raise PhoenixError("config key '%s' has no value; give a string, number, bool, list or "
                               "dict, or {value: ..., secret: true}" % key, param="config")
        out[key] = (str(value), secret)
    return out


SECRET_SENTINEL = "[secret]"  # what `pulumi stack output --json` prints for a secret


def _output_doc(command, cwd, env, stack, reveal):
    """The ``pulumi stack output --json`` document of ``stack`` (with
    ``--show-secrets`` when ``reveal``)."""
    args = ["stack", "output", "--json", "--stack", stack] + (["--show-secrets"] if reveal else [])
    return json.loads(command.run(args, cwd, env).stdout or "{}")


if HAS_PULUMI:
    class _Workspace(auto.LocalWorkspace):
        """The Automation API's workspace, keeping the two output documents
        ``Stack.up`` reads when the update ends, so the module's own
        ``outputs()`` right after it needs no third ``stack output`` run
        (each CLI run costs about 0.2 CPU-seconds). ``last_outputs`` is
        taken once, and cleared before every operation."""
        last_outputs = None

        def stack_outputs(self, stack_name):
            masked, revealed = (_output_doc(self.pulumi_command, self.work_dir, self.env_vars, stack_name, reveal)
                                for reveal in (False, True))
            self.last_outputs = (stack_name, masked, revealed)
            return {key: auto.OutputValue(value=value, secret=masked.get(key) == SECRET_SENTINEL)
                    for key, value in revealed.items()}


class StackRunner:
    """One stack of one Pulumi project on disk."""

    def __init__(self, project_path, stack, backend_url=None, passphrase=None):
        if not HAS_PULUMI:
            raise PhoenixError("the Python package 'pulumi' is required: %s" % PULUMI_IMPORT_ERROR)
        if not os.path.isfile(os.path.join(project_path, "Pulumi.yaml")):
            raise PhoenixError("project_path '%s' is not a Pulumi project (no Pulumi.yaml there)"
                               % project_path, param="project_path")
        if not STACK_NAME.match(stack or ""):
            raise PhoenixError("stack '%s' is not a valid stack name: use letters, digits, '-', '_' "
                               "and '.', starting with a letter or digit" % stack, param="stack")
        self.project_path = os.path.abspath(project_path)
        self.name = stack
        self.env = pulumi_environment(self.project_path, stack, backend_url, passphrase)
        try:
            command = pulumi_command(find_pulumi_root(self.project_path))
        except (OSError, ValueError) as exc:
            raise PhoenixError("cannot run the Pulumi CLI (%s): run `make setup` to build it" % exc)
        self.workspace = _Workspace(work_dir=self.project_path, env_vars=self.env, pulumi_command=command)
        self._stack = None

    # -- stack and config ---------------------------------------------------
    def exists(self):
        return any(s.name == self.name for s in self.workspace.list_stacks())

    def stack(self):
        if self._stack is None:
            self._stack = auto.Stack.create_or_select(self.name, self.workspace)
        return self._stack

    def remove_stack(self):
        """Forget a stack that holds no resources (used after a check-mode preview created it)."""
        self.workspace.remove_stack(self.name)
        self._stack = None

    def settings_file(self):
        return os.path.join(self.project_path, "Pulumi.%s.yaml" % self.name)

    def config_changes(self, config):
        """{key: (before, after)} for keys whose value differs (secrets compared, never returned)."""
        values = config_values(config)
        if not values or self._settings_hold(values):
            return {}
        current = self.stack().get_all_config()
        changes = {}
        for key, (value, secret) in values.items():
            full = self._qualified(key)
            old = current.get(full)
            if old is None or old.value != value or bool(old.secret) != secret:
                changes[full] = ("[secret]" if secret or (old and old.secret) else (old.value if old else None),
                                 "[secret]" if secret else value)
        return changes

    def _settings_hold(self, values):
        """True when the stack's settings file already holds every one of
        ``values`` as that plain text, none of them a secret, and imports no
        ESC environment: ``pulumi config`` would report no change, so it is
        not run (a quarter CPU-second). Anything else: False, ask the CLI."""
        if any(secret for _value, secret in values.values()):
            return False
        doc = self._settings_doc()
        if doc.get("environment") or not isinstance(doc.get("config"), dict):
            return False
        return all(doc["config"].get(self._qualified(key)) == value
                   for key, (value, _secret) in values.items())

    def _settings_doc(self) -> dict:
        """The stack's settings file as written ({} when missing or not YAML);
        read as a document, since the Automation API's ``StackSettings`` drops
        an ESC ``environment:``."""
        try:
            with open(self.settings_file(), encoding="utf-8") as handle:
                doc = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def apply_config(self, config):
        values = config_values(config)
        if values:
            self.stack().set_all_config(
                dict((k, auto.ConfigValue(value=v, secret=s)) for k, (v, s) in values.items()))

    def _project_name(self):
        return self.workspace.project_settings().name

    def _qualified(self, key):
        """``key`` with the project's namespace (``greeting`` -> ``<project>:greeting``)."""
        return key if ":" in key else "%s:%s" % (self._project_name(), key)

    def settings_value(self, key):
        """The plain value of project config ``key`` in the stack's settings file, or None
        (no file, no such key, a secret): read from the file, no CLI call."""
        config = self._settings_doc().get("config")
        value = config.get(self._qualified(key)) if isinstance(config, dict) else None
        return value if isinstance(value, str) else None

    # -- operations -----------------------------------------------------------
    @staticmethod
    def _collector(steps):
        def on_event(event):
            pre = event.resource_pre_event
            if pre is not None and pre.metadata.op.value not in NO_CHANGE_OPS:
                md = pre.metadata
                steps.append({"op": md.op.value, "urn": md.urn, "type": md.type,
                              "diffs": list(md.diffs or [])})
        return on_event

    @staticmethod
    def _changed(resource_changes):
        return any(count and op not in NO_CHANGE_OPS for op, count in (resource_changes or {}).items())

    def _run(self, fn, **kw):
        self.workspace.last_outputs = None
        try:
            return fn(**kw)
        except auto.errors.CommandError as exc:
            raise PhoenixError("pulumi failed for stack '%s': %s" % (self.name, _short_error(exc)))

    def refresh(self):
        steps = []
        result = self._run(self.stack().refresh, on_event=self._collector(steps), show_secrets=False,
                           color="never")
        return {"summary": dict(result.summary.resource_changes or {}), "steps": steps}

    def preview(self, target=None):
        steps = []
        result = self._run(self.stack().preview, target=target or None, diff=True,
                           on_event=self._collector(steps), color="never")
        return {"changed": self._changed(result.change_summary),
                "summary": dict(result.change_summary or {}), "steps": steps}

    def up(self, target=None):
        steps = []
        result = self._run(self.stack().up, target=target or None, on_event=self._collector(steps),
                           show_secrets=False, color="never")
        return {"changed": self._changed(result.summary.resource_changes),
                "summary": dict(result.summary.resource_changes or {}), "steps": steps}

    def preview_destroy(self, target=None):
        steps = []
        result = self._run(self.stack().preview_destroy, target=target or None,
                           on_event=self._collector(steps), color="never")
        return {"changed": self._changed(result.change_summary),
                "summary": dict(result.change_summary or {}), "steps": steps}

    def destroy(self, target=None):
        steps = []
        result = self._run(self.stack().destroy, target=target or None, on_event=self._collector(steps),
                           show_secrets=False, color="never")
        return {"changed": self._changed(result.summary.resource_changes),
                "summary": dict(result.summary.resource_changes or {}), "steps": steps}

    def outputs(self, show_secrets=False):
        """Stack outputs; secret leaves read "[secret]" unless ``show_secrets``:
        the documents the up that just ended read, else one CLI run."""
        last, self.workspace.last_outputs = self.workspace.last_outputs, None
        if last is not None and last[0] == self.name:
            return last[2] if show_secrets else last[1]
        return _output_doc(self.workspace.pulumi_command, self.project_path, self.env, self.name, show_secrets)


def _short_error(exc):
    """The useful part of a CLI failure: its diagnostics, not the whole log."""
    text = (getattr(exc, "stderr", "") or "") + "\n" + (getattr(exc, "stdout", "") or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if "error" in ln.lower()] or lines[-5:]
    return " | ".join(keep[-6:])[:2000]


def get_output(outputs, path):
    """Look up ``a.b.c`` in an outputs dict; a clear error names missing keys."""
    value = outputs
    walked = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise PhoenixError("stack output '%s' not found (at '%s'; available: %s)"
                               % (path, ".".join(walked), have), param="path")
    return value


INFRA_ACTION = "infra"
_LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _name(value, option):
    """A release-store name, matched whole (no trailing newline)."""
    if not isinstance(value, str) or not _LOCK_NAME.fullmatch(value):
        raise ValueError("%s: %r is not a valid name; use letters, digits, '.', '_' or '-' "
                         "(max 63, starting with a letter or digit)" % (option, value))
    return value


def environment_store(store, store_backend="auto", infra=None):
    """The release store the rollouts of an environment use, chosen as the
    rollout module chooses it (``targets.make_store``: ``store_backend``,
    ``auto`` = the Kubernetes store (ConfigMap + Lease) when ``infra`` - the
    stack outputs the rollouts read - is a ``kubernetes`` platform's, else the
    file store in ``store``)."""
    from ansible_collections.phoenix.deploy.plugins.module_utils import targets
    try:
        return targets.make_store({"store": store, "store_backend": store_backend}, infra or {})
    except PhoenixError as exc:
        raise PhoenixError("release_lock: %s" % exc.msg, param="release_lock")


class EnvironmentLocks:
    """The release-store locks of every artifact of one environment, the
    same per-(artifact, environment) locks a rollout takes: ``pulumi up`` /
    ``destroy`` of the environment's stack runs under them, so neither can
    change the infrastructure under a running rollout, and no rollout starts
    while they run. Taken in sorted order (two holders never deadlock), all or
    none; the holder is this process with action ``infra`` (a holder that
    died is recovered like a dead rollout's).

    The store is the one the environment's rollouts use
    (``environment_store``): the file store's lock files, or the Kubernetes
    store's Leases. When that is the Kubernetes store and its API server
    gives no answer for ``unreachable_grace`` seconds (default 2/3 of the
    lease: by then any rollout holding a Lease has given it up and writes
    nothing more), nothing can be rolling out there - the cluster is down,
    which is what ``pulumi up`` restores - so ``acquire`` proceeds without the
    locks and ``warning`` says why."""

    def __init__(self, store, environment, artifacts, action=INFRA_ACTION, store_backend="auto", infra=None,
                 unreachable_grace=None):
        try:
            _name(environment, "release_lock.environment")
            self.artifacts = sorted(set(_name(a, "release_lock.artifacts") for a in (artifacts or [])))
        except ValueError as exc:
            raise PhoenixError(str(exc), param="release_lock")
        if not self.artifacts:
            raise PhoenixError("release_lock.artifacts is empty; list the artifacts of "
                               "environment '%s'" % environment, param="release_lock")
        if not store:
            raise PhoenixError("release_lock.store is empty; give the release store "
                               "directory the rollouts use", param="release_lock")
        self.environment = environment
        self.action = action
        self.held = []
        self.warning = None
        if store_backend == "kubernetes" and not infra and not isinstance(store, ReleaseStore):
            # the stack was never brought up: no cluster, so no store and no rollout
            self.store, self.kubernetes = None, True
            self.warning = ("release locks of environment '%s' not taken: the stack has no outputs yet, so there "
                            "is no cluster whose leases a rollout could hold; this proceeds without them"
                            % environment)
            return
        self.store = store if isinstance(store, ReleaseStore) else environment_store(store, store_backend, infra)
        self.kubernetes = hasattr(self.store, "lease_seconds")  # release_stores.kubernetes.ConfigMapReleaseStore
        if self.kubernetes:
            grace = self.store.lease_seconds * 2.0 / 3.0 if unreachable_grace is None else unreachable_grace
            self.store.retry_seconds = max(0.0, float(grace))

    def try_acquire(self):
        """Take every lock: None when they are all ours; else the ``LockHeld``
        of the first one another holder has (and none is kept)."""
        if self.store is None:
            return None
        holder = LockHolder.current(action=self.action)
        for artifact in self.artifacts:
            try:
                self.held.append(self.store.acquire(artifact, self.environment, holder))
            except LockHeld as exc:
                self.release()
                return exc
            except PhoenixError as exc:
                self.release()
                if not (self.kubernetes and exc.details.get("unreachable")):
                    raise
                self.warning = (
                    "release locks of environment '%s' not taken: %s; no rollout can be running against an "
                    "API server that does not answer (a rollout that cannot renew its lease stops writing "
                    "after %.0fs), so this proceeds without them"
                    % (self.environment, exc.msg, self.store.lease_seconds * 2.0 / 3.0))
                return None
        return None

    def acquire(self, what, timeout=0.0, poll=1.0, nothing_to_do=None):
        """Take every lock, waiting up to ``timeout`` seconds for a holder to
        end. Returns None when taken, or the ``LockHeld`` when another holder
        keeps one and ``nothing_to_do()`` proves ``what`` would change
        nothing (so it cannot fight that holder and is skipped). Else raises a
        PhoenixError naming the holder."""
        deadline = time.monotonic() + max(0.0, float(timeout))
        checked = False
        while True:
            held = self.try_acquire()
            if held is None:
                return None
            if nothing_to_do is not None and not checked:
                checked = True
                if nothing_to_do():
                    return held
            left = deadline - time.monotonic()
            if left <= 0:
                waited = " (waited %gs)" % float(timeout) if timeout else ""
                raise PhoenixError(
                    "%s of environment '%s' must not run during a rollout: %s%s; run it again when "
                    "that has ended, or set release_lock.timeout to wait for it"
                    % (what, self.environment, held, waited), param="release_lock",
                    holder=held.holder.describe() if held.holder else None)
            time.sleep(min(poll, left))

    def release(self):
        """Give every lock back; a Kubernetes API server that stopped
        answering meanwhile leaves the Leases to expire (a warning)."""
        while self.held:
            lock = self.held.pop()
            try:
                self.store.release(lock)
            except PhoenixError as exc:
                if not (self.kubernetes and exc.details.get("unreachable")):
                    raise
                self.warning = "lock of %s/%s not released (its lease expires by itself): %s" % (
                    lock.artifact, lock.environment, exc.msg)
