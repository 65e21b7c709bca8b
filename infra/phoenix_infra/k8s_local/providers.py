"""Dynamic providers of the local Kubernetes cluster (stack platform
``kubernetes`` with ``cluster: local``).

Like ``phoenix_infra.local.providers``: classes are pickled by reference, keep
no attributes, and take everything from inputs/outputs. Every component is a
real process started detached (its own session, log and pidfile in its 0700
dir under the stack's state dir), as the local platform runs PostgreSQL and
HAProxy; a dead process reads back as ``running: false`` so ``refresh``
shows it and ``up`` starts it again with the same files."""
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from phoenix_infra.k8s_local import pki
from phoenix_infra.local import procs
from phoenix_infra.local.providers import PostgresProvider, _Provider

PAUSE_IMAGE = "localhost/phoenix/pause:v1"
PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; }
int main(void) {
  signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
  for (;;) pause();
  return 0;
}
"""


def _umount_under(path):
    """Unmount whatever is still mounted below ``path`` (deepest first): a
    kubelet or containerd killed hard can leave volume or rootfs mounts."""
    prefix = os.path.realpath(path) + "/"
    try:
        with open("/proc/self/mountinfo") as fh:
            points = [line.split()[4] for line in fh]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _https(url, pki_dir, timeout=3):
    """GET ``url`` with the cluster CA and the admin client certificate: (status, body)."""
    ctx = ssl.create_default_context(cafile=os.path.join(pki_dir, "ca.crt"))
    ctx.load_cert_chain(os.path.join(pki_dir, "admin.crt"), os.path.join(pki_dir, "admin.key"))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:
        return None, str(exc)


def _http(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return None, str(exc)


def api_client(kubeconfig_file):
    """The official client, configured from one of the stack's kubeconfigs."""
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig_file, client_configuration=cfg)
    return client.ApiClient(cfg)


# --------------------------------------------------------------------------- certificates

class PkiProvider(_Provider):
    """The CA, certificates, service-account keys and per-component kubeconfigs."""
    KEYS = ("state_dir", "dir", "address", "service_ip", "node_name", "server")
    REPLACE = ("state_dir", "dir", "address", "service_ip", "node_name")

    def alive(self, outs):
        return os.path.exists(os.path.join(outs["dir"], "ca.crt"))

    def _make(self, props):
        d = props["dir"]
        created = procs.ensure_dir(props["state_dir"]) or bool(props.get("created_state_dir"))
        out = pki.generate(d, address=props["address"], service_ip=props["service_ip"],
                           node_name=props["node_name"])
        ca = os.path.join(d, "ca.crt")
        for stem in list(pki.CLIENTS) + ["kubelet"]:
            procs.write_private(os.path.join(d, f"{stem}.kubeconfig"), pki.kubeconfig(
                props["server"], ca, user=stem, cert_file=os.path.join(d, f"{stem}.crt"),
                key_file=os.path.join(d, f"{stem}.key")))
        return {**props, **out, "admin_kubeconfig": os.path.join(d, "admin.kubeconfig"),
                "created_state_dir": created}

    def create(self, props):
        return CreateResult(props["dir"], self._make(props))

    def update(self, _id, olds, news):
        return UpdateResult(self._make(news))

    def read(self, id_, props):
        if not self.alive(props):
            return ReadResult(None, {})
        return ReadResult(id_, props)

    def delete(self, _id, props):
        procs.remove_tree(props["dir"])
        if props.get("created_state_dir"):
            try:
                os.rmdir(props["state_dir"])  # only if empty: never remove what others left
            except OSError:
                pass


# --------------------------------------------------------------------------- processes

class DaemonProvider(_Provider):
    """One long-lived process: ``argv`` run detached in ``dir`` with the
    ``files`` (relative path -> text, 0600) written first; ready when
    ``ready`` (``{"url", "pki"}``: HTTPS with the cluster CA + admin client;
    ``{"url"}``: plain HTTP on loopback; ``{"socket"}``: a unix socket)
    answers 200 / exists, within ``timeout`` seconds."""
    KEYS = ("dir", "argv", "files", "ready")
    REPLACE = ("dir",)
    #: the process's umask (its dir is 0700 whatever this is)
    UMASK = 0o077

    @staticmethod
    def _paths(props):
        d = props["dir"]
        return {"pid": os.path.join(d, "daemon.pid"), "log": os.path.join(d, "daemon.log")}

    def alive(self, outs):
        return procs.pid_alive(procs.read_pid(self._paths(outs)["pid"]), outs["argv"][0])

    def ready(self, props):
        r = props.get("ready") or {}
        if "socket" in r:
            return os.path.exists(r["socket"])
        if "pki" in r:
            return _https(r["url"], r["pki"])[0] == 200
        return _http(r["url"])[0] == 200

    def prepare(self, props):
        """Hook: work before the process starts."""

    @staticmethod
    def _note_host_paths(props):
        """Record which of ``host_paths`` (fixed paths outside the state dir the
        process creates: kubelet's device-plugin socket dir, the CNI result
        cache) do not exist yet, once, so ``delete`` removes only those."""
        record = os.path.join(props["dir"], "host-paths.json")
        if not os.path.exists(record):
            procs.write_private(record, json.dumps([p for p in props.get("host_paths") or []
                                                    if not os.path.lexists(p)]))

    @staticmethod
    def _remove_host_paths(props):
        try:
            with open(os.path.join(props["dir"], "host-paths.json")) as fh:
                made = json.load(fh)
        except (OSError, ValueError):
            return
        for path in made:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)

    def after_start(self, props):
        """Hook: work once the process is ready."""

    def _start(self, props, old=None):
        p = self._paths(props)
        procs.ensure_dir(props["dir"])
        for rel, text in (props.get("files") or {}).items():
            target = os.path.join(props["dir"], rel)
            procs.ensure_dir(os.path.dirname(target))
            procs.write_private(target, text)
        if old is not None and self.alive(old):
            if old.get("argv") == props["argv"] and old.get("files") == props.get("files"):
                return
            self.stop(old)
        self._note_host_paths(props)
        self.prepare(props)
        if not os.path.exists(props["argv"][0]) and not shutil.which(props["argv"][0]):
            raise procs.InfraError(f"{props['argv'][0]} is missing: run `make setup` "
                                   "(scripts/install-kubernetes.sh installs the Kubernetes binaries)")
        with open(p["log"], "ab") as log:
            os.chmod(p["log"], 0o600)
            proc = subprocess.Popen(props["argv"], cwd=props["dir"], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, env=procs.daemon_env(), start_new_session=True, umask=self.UMASK)
        procs.write_private(p["pid"], f"{proc.pid}\n")
        timeout = float(props.get("timeout") or 60)
        if not procs.wait_until(lambda: proc.poll() is None and self.ready(props), timeout, 0.2):
            code = proc.poll()
            self.stop(props)
            state = f"exited with {code}" if code is not None else f"not ready within {timeout:.0f} s"
            raise procs.InfraError(f"{props['name']} {state}; its log ({p['log']}) ends with:\n"
                                   f"{procs.tail(p['log'], 15)}")
        self.after_start(props)

    def stop(self, props):
        procs.stop_pid(procs.read_pid(self._paths(props)["pid"]), props["argv"][0], timeout=20)

    def _outs(self, props):
        return {**props, "running": True, "log": self._paths(props)["log"]}

    def create(self, props):
        try:
            self._start(props)
        except Exception:
            self.delete(None, props)
            raise
        return CreateResult(props["dir"], self._outs(props))

    def update(self, _id, olds, news):
        self._start(news, old=olds)
        return UpdateResult(self._outs(news))

    def delete(self, _id, props):
        self.stop(props)
        self._remove_host_paths(props)
        _umount_under(props["dir"])
        procs.remove_tree(props["dir"])


class ContainerdProvider(DaemonProvider):
    """containerd with its CRI plugin: private root/state/socket, a local pause
    image (a static C program wrapped with umoci, imported with ctr) and the
    CNI bridge conflist. On delete every pod sandbox it runs is stopped
    (their shims outlive containerd) and the bridge is removed."""
    KEYS = DaemonProvider.KEYS + ("bridge", "sock")
    #: containerd's snapshot dirs are the containers' root filesystems: under umask 077 a
    #: layer without a "./" entry leaves its dir 0700, the container's "/" inherits it and a
    #: non-root image user cannot even load libc ("libc.so.6: Permission denied", exit 127).
    #: The state dir above stays 0700, so nothing is exposed on the host.
    UMASK = 0o022

    @staticmethod
    def _ctr(props, *args, timeout=60, check=True):
        cmd = ["ctr", "--address", props["sock"], "--namespace", "k8s.io", *args]
        if check:
            return procs.run(cmd, f"ctr {' '.join(args[:2])}", timeout=timeout)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def _pause_tar(self, props):
        """Build the pause image once (gcc -static, umoci) as an OCI archive."""
        d = os.path.join(props["dir"], "pause")
        tar = os.path.join(d, "pause.tar")
        if os.path.exists(tar):
            return tar
        procs.remove_tree(d)
        procs.ensure_dir(d)
        with open(os.path.join(d, "pause.c"), "w") as fh:
            fh.write(PAUSE_C)
        layout, bundle = os.path.join(d, "oci"), os.path.join(d, "bundle")
        procs.run(["gcc", "-static", "-Os", "-s", "-o", os.path.join(d, "pause"), os.path.join(d, "pause.c")],
                  "gcc (pause)")
        procs.run(["umoci", "init", "--layout", layout], "umoci init")
        procs.run(["umoci", "new", "--image", f"{layout}:v1"], "umoci new")
        procs.run(["umoci", "unpack", "--image", f"{layout}:v1", bundle], "umoci unpack")
        shutil.copy2(os.path.join(d, "pause"), os.path.join(bundle, "rootfs", "pause"))
        procs.run(["umoci", "repack", "--image", f"{layout}:v1", bundle], "umoci repack")
        procs.run(["umoci", "config", "--image", f"{layout}:v1", "--config.entrypoint", "/pause",
                   "--config.user", "65535:65535"], "umoci config")
        procs.run(["umoci", "gc", "--layout", layout], "umoci gc")
        procs.run(["tar", "-C", layout, "-cf", tar + ".tmp", "."], "tar (pause)")
        os.replace(tar + ".tmp", tar)
        procs.remove_tree(bundle)
        return tar

    def prepare(self, props):
        self._pause_tar(props)

    def ready(self, props):
        return os.path.exists(props["sock"]) and self._ctr(props, "version", check=False).returncode == 0

    def after_start(self, props):
        listed = self._ctr(props, "images", "ls", "-q", check=False).stdout.split()
        if PAUSE_IMAGE not in listed:
            self._ctr(props, "images", "import", "--base-name", PAUSE_IMAGE.rsplit(":", 1)[0],
                      self._pause_tar(props))

    def _shims(self, props):
        """Shim processes serving this containerd (they carry ``-address <sock>``)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in argv[0] and props["sock"].encode() in argv:
                found.append(int(entry))
        return found

    def delete(self, _id, props):
        if self.alive(props):  # stop what kubelet left: tasks first (their shims outlive containerd)
            for task in self._ctr(props, "tasks", "ls", "-q", check=False).stdout.split():
                self._ctr(props, "tasks", "kill", "-s", "SIGKILL", task, check=False)
        self.stop(props)
        procs.stop_pids(self._shims(props), 10)
        subprocess.run(["ip", "link", "delete", props["bridge"]], capture_output=True, check=False)
        self._remove_host_paths(props)
        _umount_under(props["dir"])
        procs.remove_tree(props["dir"])


class KubeletProvider(DaemonProvider):
    """kubelet; ready when its node is Ready. On delete the node is cordoned,
    its pods are deleted (kubelet stops their sandboxes: CNI DEL, netns
    removed), then kubelet stops and the Node object is removed."""

    def _api(self, props):
        from kubernetes import client
        return client.CoreV1Api(api_client(props["admin_kubeconfig"]))

    def ready(self, props):
        if _http(props["ready"]["url"])[0] != 200:
            return False
        try:
            node = self._api(props).read_node(props["node_name"])
        except Exception:  # noqa: BLE001 - not registered yet, or the API server restarting
            return False
        return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))

    def delete(self, _id, props):
        from kubernetes.client.exceptions import ApiException
        node = props["node_name"]
        try:
            api = self._api(props)
            api.patch_node(node, {"spec": {"unschedulable": True}})
            pods = api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
            for pod in pods:
                try:
                    api.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=1)
                except ApiException:
                    pass
            if self.alive(props):
                procs.wait_until(lambda: not api.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={node}").items, 60, 0.5)
        except Exception:  # noqa: BLE001 - a dead API server: containerd's delete stops the pods
            api = None
        self.stop(props)
        if api is not None:
            try:
                api.delete_node(node)
            except Exception:  # noqa: BLE001 - gone already, or the API server is down
                pass
        self._remove_host_paths(props)
        _umount_under(props["dir"])
        procs.remove_tree(props["dir"])


# --------------------------------------------------------------------------- objects in the cluster

def _ints(value):
    """Pulumi passes numbers as floats; the API server wants integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def _api_error(exc, what):
    """An InfraError with the API server's message (not its headers)."""
    try:
        message = json.loads(exc.body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return procs.InfraError(f"{what}: {exc.status} {exc.reason}: {message or exc.body}")


class ObjectProvider(_Provider):
    """One Kubernetes object (``manifest``) created through the official
    client with the admin kubeconfig; read back on refresh (a deleted object
    is gone from the state and ``up`` makes it again)."""
    KEYS = ("manifest",)
    REPLACE = ("kubeconfig",)

    @staticmethod
    def _resource(props):
        from kubernetes import dynamic
        m = props["manifest"]
        client = dynamic.DynamicClient(api_client(props["kubeconfig"]))
        return client.resources.get(api_version=m["apiVersion"], kind=m["kind"])

    @staticmethod
    def _ns(props):
        return props["manifest"]["metadata"].get("namespace")

    def create(self, props):
        from kubernetes.client.exceptions import ApiException
        m = props["manifest"]
        try:
            obj = self._resource(props).create(body=_ints(m), namespace=self._ns(props))
        except ApiException as exc:
            raise _api_error(exc, f"creating {m['kind']} {m['metadata']['name']}") from None
        return CreateResult(f"{props['manifest']['kind']}/{obj.metadata.name}",
                            {**props, "uid": obj.metadata.uid})

    def update(self, _id, olds, news):
        res = self._resource(news)
        name = news["manifest"]["metadata"]["name"]
        current = res.get(name=name, namespace=self._ns(news))
        body = _ints(json.loads(json.dumps(news["manifest"])))
        body["metadata"]["resourceVersion"] = current.metadata.resourceVersion
        obj = res.replace(body=body, namespace=self._ns(news))
        return UpdateResult({**news, "uid": obj.metadata.uid})

    def read(self, id_, props):
        from kubernetes.client.exceptions import ApiException
        try:
            obj = self._resource(props).get(name=props["manifest"]["metadata"]["name"], namespace=self._ns(props))
        except ApiException as exc:
            if exc.status == 404:
                return ReadResult(None, {})
            raise
        if obj.metadata.uid != props.get("uid"):
            return ReadResult(None, {})
        return ReadResult(id_, props)

    def delete(self, _id, props):
        from kubernetes.client.exceptions import ApiException
        res = self._resource(props)
        name = props["manifest"]["metadata"]["name"]
        try:
            res.delete(name=name, namespace=self._ns(props), body={"propagationPolicy": "Foreground"})
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        if props["manifest"]["kind"] == "Namespace":  # its pods must be gone before kubelet stops

            def gone():
                try:
                    res.get(name=name)
                except ApiException as exc:
                    return exc.status == 404
                return False
            procs.wait_until(gone, 90, 0.5)


class DeployerCredentialsProvider(_Provider):
    """A long-lived token of the deployer ServiceAccount (a
    ``kubernetes.io/service-account-token`` Secret the token controller
    fills) and a kubeconfig with it (0600)."""
    KEYS = ("namespace", "service_account", "server", "path")
    REPLACE = ("namespace", "service_account", "path", "kubeconfig")
    serialize_as_secret_always = True

    def alive(self, outs):
        return os.path.exists(outs["path"])

    def _make(self, props):
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        api = client.CoreV1Api(api_client(props["kubeconfig"]))
        name, ns = f"{props['service_account']}-token", props["namespace"]
        try:
            api.create_namespaced_secret(ns, {
                "metadata": {"name": name, "annotations": {
                    "kubernetes.io/service-account.name": props["service_account"]}},
                "type": "kubernetes.io/service-account-token"})
        except ApiException as exc:
            if exc.status != 409:
                raise
        token = {}

        def filled():
            data = api.read_namespaced_secret(name, ns).data or {}
            token["value"] = data.get("token")
            return bool(token["value"])
        if not procs.wait_until(filled, 30, 0.3):
            raise procs.InfraError(f"the token controller did not fill secret {ns}/{name} within 30 s "
                                   "(is kube-controller-manager running?)")
        import base64
        value = base64.b64decode(token["value"]).decode()
        procs.write_private(props["path"], pki.kubeconfig(props["server"], props["ca_file"],
                                                          user=props["service_account"], token=value))
        return {**props, "token": value, "secret": name}

    def create(self, props):
        return CreateResult(props["path"], self._make(props))

    def update(self, _id, olds, news):
        return UpdateResult(self._make(news))

    def read(self, id_, props):
        return ReadResult(id_, props if self.alive(props) else {**props, "token": None})

    def delete(self, _id, props):
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        try:
            client.CoreV1Api(api_client(props["kubeconfig"])).delete_namespaced_secret(
                props.get("secret") or f"{props['service_account']}-token", props["namespace"])
        except Exception:  # noqa: BLE001 - the namespace (and the secret in it) goes next anyway
            pass
        try:
            os.unlink(props["path"])
        except FileNotFoundError:
            pass


class PodPostgresProvider(PostgresProvider):
    """The local platform's PostgreSQL for the cluster's pods: it listens on
    the CNI bridge's gateway address (``address``; the bridge ``bridge`` is
    made here with that address, before the CNI plugin adds its first pod, and
    removed by containerd's delete) and its pg_hba also accepts ``clients``
    (the pod subnet) with scram-sha-256, for the stack's one database and user."""
    KEYS = PostgresProvider.KEYS + ("bridge", "clients")

    @staticmethod
    def _bridge(props):
        net = ipaddress.ip_network(props["clients"])
        subprocess.run(["ip", "link", "add", "name", props["bridge"], "type", "bridge"],
                       capture_output=True, check=False)  # exists already: fine
        for cmd in (["ip", "addr", "replace", f"{props['address']}/{net.prefixlen}", "dev", props["bridge"]],
                    ["ip", "link", "set", props["bridge"], "up"]):
            procs.run(cmd, " ".join(cmd[:3]))

    def _initdb(self, props):
        super()._initdb(props)
        hba = os.path.join(props["dir"], "data", "pg_hba.conf")
        line = f"host {props['database']} {props['user']} {props['clients']} scram-sha-256\n"
        with open(hba) as fh:
            text = fh.read()
        if line not in text:
            with open(hba, "a") as fh:
                fh.write(line)

    def _start(self, props):
        self._bridge(props)
        return super()._start(props)
