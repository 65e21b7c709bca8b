"""The local platform's container registries: Debian's ``docker-registry``
(distribution 2.8), one process per registry (``dev`` and ``prod``), each with
its own config, 0700 storage dir and pid file under the stack's state dir,
listening on the stack's loopback address.

Like the other local providers (see ``providers.py``) it keeps no state of its
own; a dead process is a change (``running``), so ``pulumi refresh`` notices it
and ``pulumi up`` starts it again on the same storage. ``delete`` decides
whether the registry accepts manifest deletes: off for prod, so nothing but a
``pulumi destroy`` removes a promoted image.
"""
import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request

from pulumi.dynamic import CreateResult, UpdateResult

from phoenix_infra.local import procs
from phoenix_infra.local.providers import _Provider

BINARY = "docker-registry"


class RegistryProvider(_Provider):
    """One ``docker-registry serve <dir>/config.yml``; id = its URL."""
    KEYS = ("dir", "address", "port", "delete", "name")
    REPLACE = ("dir",)

    @staticmethod
    def _paths(props):
        d = props["dir"]
        return {"cfg": os.path.join(d, "config.yml"), "pid": os.path.join(d, "registry.pid"),
                "log": os.path.join(d, "registry.log"), "data": os.path.join(d, "data")}

    @staticmethod
    def url(props):
        return f"http://{props['address']}:{int(props['port'])}"

    def alive(self, outs):
        return procs.pid_alive(procs.read_pid(self._paths(outs)["pid"]), self._paths(outs)["cfg"])

    @staticmethod
    def config(props, paths, secret):
        """The registry's config (YAML; JSON is YAML). ``secret`` signs upload state."""
        return json.dumps({
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": paths["data"]},
                        "delete": {"enabled": bool(props["delete"])},
                        "maintenance": {"uploadpurging": {"enabled": True, "age": "24h", "interval": "1h",
                                                          "dryrun": False}}},
            "http": {"addr": f"{props['address']}:{int(props['port'])}", "secret": secret,
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }, indent=2, sort_keys=True) + "\n"

    def _secret(self, paths):
        """The upload-state secret of an existing config (kept across restarts), or a new one."""
        try:
            with open(paths["cfg"]) as fh:
                return json.load(fh)["http"]["secret"]
        except (OSError, ValueError, KeyError, TypeError):
            return secrets.token_urlsafe(24)

    def _ready(self, props):
        try:
            with urllib.request.urlopen(self.url(props) + "/v2/", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _start(self, props, old=None):
        """Write the config and (re)start the registry unless it already runs with it."""
        paths = self._paths(props)
        exe = shutil.which(BINARY)
        if exe is None:
            raise procs.InfraError(f"{BINARY} is not installed: run make setup (Debian package docker-registry)")
        procs.ensure_dir(props["dir"])
        procs.ensure_dir(paths["data"])
        text = self.config(props, paths, self._secret(paths))
        running = old is not None and self.alive(old)
        if running and procs.read_text(paths["cfg"]) == text and old.get("dir") == props["dir"]:
            return
        if not (running and (old["address"], int(old["port"])) == (props["address"], int(props["port"]))):
            procs.require_free(props["address"], int(props["port"]), f"registry {props['name']}")
        if running:
            self._stop(old)
        procs.write_private(paths["cfg"], text)
        with open(paths["log"], "ab") as log:
            os.chmod(paths["log"], 0o600)
            proc = subprocess.Popen([exe, "serve", paths["cfg"]], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, env=procs.daemon_env(), cwd=props["dir"],
                                    start_new_session=True, umask=0o077)
        procs.write_private(paths["pid"], f"{proc.pid}\n")
        if not procs.wait_until(lambda: proc.poll() is not None or self._ready(props), 15):
            procs.stop_pid(proc.pid, paths["cfg"], timeout=5)
            raise procs.InfraError(f"registry {props['name']} did not answer on {self.url(props)}/v2/ within 15 s: "
                                   f"{procs.tail(paths['log'])}")
        if proc.poll() is not None:
            raise procs.InfraError(f"registry {props['name']} exited ({proc.returncode}): {procs.tail(paths['log'])}")

    def _stop(self, props):
        procs.stop_pid(procs.read_pid(self._paths(props)["pid"]), self._paths(props)["cfg"], timeout=15)

    def _outs(self, props):
        return {**props, "url": self.url(props), "config": self._paths(props)["cfg"], "running": True}

    def create(self, props):
        fresh = not os.path.exists(props["dir"])
        try:
            self._start(props)
        except Exception:
            self._stop(props)
            if fresh:
                procs.remove_tree(props["dir"])
            raise
        return CreateResult(self.url(props), self._outs(props))

    def update(self, _id, olds, news):
        try:
            self._start(news, old=olds)
        except Exception:
            if not self.alive(olds):  # leave the previous registry running
                try:
                    self._start(olds)
                except procs.InfraError:
                    pass
            raise
        return UpdateResult(self._outs(news))

    def delete(self, _id, props):
        self._stop(props)
        procs.remove_tree(props["dir"])
