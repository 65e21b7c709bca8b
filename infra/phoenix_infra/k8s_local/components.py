"""Components of the local Kubernetes cluster: dynamic resources whose
providers (``providers.py``) run the real processes under the stack's state
dir, and the in-cluster objects made through the official client."""
import ipaddress
import json
import os

import pulumi
from pulumi import dynamic

from phoenix_infra.k8s_local import providers


def _with_outputs(props, *names):
    return {**props, **{n: None for n in names}}


class _Pki(dynamic.Resource, module="phoenix-k8s-local", name="Pki"):
    def __init__(self, name, props, opts):
        super().__init__(providers.PkiProvider(), name, _with_outputs(props, "ca_cert", "admin_kubeconfig", "created_state_dir"), opts)


class _Daemon(dynamic.Resource, module="phoenix-k8s-local", name="Daemon"):
    def __init__(self, name, props, opts, provider=None):
        super().__init__(provider or providers.DaemonProvider(), name,
                         _with_outputs(props, "running", "log"), opts)


class _Object(dynamic.Resource, module="phoenix-k8s-local", name="Object"):
    def __init__(self, name, props, opts):
        super().__init__(providers.ObjectProvider(), name, _with_outputs(props, "uid"), opts)


class _Credentials(dynamic.Resource, module="phoenix-k8s-local", name="DeployerCredentials"):
    def __init__(self, name, props, opts):
        super().__init__(providers.DeployerCredentialsProvider(), name,
                         _with_outputs(props, "token", "secret"), opts)


def cni_conflist(network, bridge, pod_cidr, ipam_dir):
    return json.dumps({
        "cniVersion": "1.0.0", "name": network,
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "dataDir": ipam_dir}}],
    }, indent=1) + "\n"


def registry_hosts(urls):
    """containerd's ``certs.d/<host:port>/hosts.toml`` per registry: pull and
    resolve over plain HTTP (the registries listen on loopback only)."""
    files = {}
    for url in sorted(set(urls)):
        host = url.split("://", 1)[1].rstrip("/")
        files[f"certs.d/{host}/hosts.toml"] = "\n".join([
            f'server = "{url}"', f'[host."{url}"]', '  capabilities = ["pull", "resolve"]', ""])
    return files


def containerd_toml(d, sock, cni_dir, sandbox_image, mirrors_dir=None):
    lines = [
        "# written by phoenix.deploy (k8s-local)", "version = 2",
        f'root = "{d}/root"', f'state = "{d}/state"',
        "[grpc]", f'  address = "{sock}"',
        "[plugins]",
        '  [plugins."io.containerd.internal.v1.opt"]', f'    path = "{d}/opt"',
        '  [plugins."io.containerd.grpc.v1.cri"]',
        f'    sandbox_image = "{sandbox_image}"',
        "    restrict_oom_score_adj = true",
        '    stream_server_address = "127.0.0.1"',
        '    [plugins."io.containerd.grpc.v1.cri".cni]',
        '      bin_dir = "/usr/lib/cni"', f'      conf_dir = "{cni_dir}"',
        '    [plugins."io.containerd.grpc.v1.cri".containerd]', '      snapshotter = "overlayfs"',
    ]
    if mirrors_dir:
        lines += ['    [plugins."io.containerd.grpc.v1.cri".registry]', f'      config_path = "{mirrors_dir}"']
    return "\n".join(lines) + "\n"


def kubelet_config(s, pki_dir):
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [], "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{s['sock']}",
        "address": s["address"], "port": s["ports"]["kubelet"], "readOnlyPort": 0,
        "healthzBindAddress": s["address"], "healthzPort": s["ports"]["kubelet_healthz"],
        "tlsCertFile": os.path.join(pki_dir, "serving.crt"), "tlsPrivateKeyFile": os.path.join(pki_dir, "serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": os.path.join(pki_dir, "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "podLogsDir": os.path.join(s["dir"], "kubelet", "pod-logs"),
        "evictionHard": {"memory.available": "10Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "syncFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        "registerNode": True, "maxPods": 110,
    }, indent=1) + "\n"


class Cluster(pulumi.ComponentResource):
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    containerd and kubelet on one loopback address, each in a 0700 dir of the
    stack's state dir."""

    def __init__(self, name, s, network=None, registries=None, opts=None):
        super().__init__("phoenix:k8s-local:Cluster", name, None, opts)
        d, a, p, b = s["dir"], s["address"], s["ports"], s["bin"]
        server = f"https://{a}:{p['apiserver']}"
        pki_dir = os.path.join(d, "pki")
        pk = _Pki(f"{name}-pki", {"state_dir": d, "dir": pki_dir, "address": a, "service_ip": s["service_ip"],
                                  "node_name": s["node_name"], "server": server},
                  pulumi.ResourceOptions(parent=self, depends_on=[network] if network else []))
        self.server, self.ca_cert, self.admin_kubeconfig = server, pk.ca_cert, pk.admin_kubeconfig
        ca, crt, key = (os.path.join(pki_dir, f) for f in ("ca.crt", "serving.crt", "serving.key"))
        etcd_url = f"http://{a}:{p['etcd']}"

        def daemon(component, argv, ready, deps, files=None, provider=None, timeout=60, **extra):
            return _Daemon(f"{name}-{component}", {
                "name": component, "dir": os.path.join(d, component), "argv": argv, "ready": ready,
                "files": {} if files is None else files, "timeout": timeout, **extra,
            }, pulumi.ResourceOptions(parent=self, depends_on=deps), provider)

        etcd = daemon("etcd", [
            f"{b}/etcd", "--name", "phoenix", "--data-dir", os.path.join(d, "etcd", "data"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://{a}:{p['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://{a}:{p['etcd_peer']}",
            "--initial-cluster", f"phoenix=http://{a}:{p['etcd_peer']}", "--log-level", "warn",
        ], {"url": f"{etcd_url}/health"}, [pk])
        apiserver = daemon("kube-apiserver", [
            f"{b}/kube-apiserver", "--etcd-servers", etcd_url,
            "--bind-address", a, "--advertise-address", a, "--secure-port", str(p["apiserver"]),
            "--endpoint-reconciler-type=none", "--tls-cert-file", crt, "--tls-private-key-file", key,
            "--client-ca-file", ca, "--authorization-mode=Node,RBAC", "--anonymous-auth=false",
            "--service-cluster-ip-range", s["service_cidr"],
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-account-key-file", os.path.join(pki_dir, "sa.pub"),
            "--service-account-signing-key-file", os.path.join(pki_dir, "sa.key"),
            "--kubelet-client-certificate", os.path.join(pki_dir, "apiserver-kubelet-client.crt"),
            "--kubelet-client-key", os.path.join(pki_dir, "apiserver-kubelet-client.key"),
            "--kubelet-certificate-authority", ca, "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--cert-dir", os.path.join(d, "kube-apiserver", "certs"), "--profiling=false",
        ], {"url": f"{server}/readyz", "pki": pki_dir}, [etcd], timeout=90)
        common = ["--bind-address", a, "--tls-cert-file", crt, "--tls-private-key-file", key,
                  "--leader-elect=false", "--profiling=false"]
        self.controller_manager = daemon("kube-controller-manager", [
            f"{b}/kube-controller-manager", "--kubeconfig", os.path.join(pki_dir, "controller-manager.kubeconfig"),
            "--secure-port", str(p["controller_manager"]), *common,
            "--service-account-private-key-file", os.path.join(pki_dir, "sa.key"), "--root-ca-file", ca,
            "--use-service-account-credentials=true", "--service-cluster-ip-range", s["service_cidr"],
            "--client-ca-file", ca,
        ], {"url": f"https://{a}:{p['controller_manager']}/healthz", "pki": pki_dir}, [apiserver])
        self.scheduler = daemon("kube-scheduler", [
            f"{b}/kube-scheduler", "--kubeconfig", os.path.join(pki_dir, "scheduler.kubeconfig"),
            "--secure-port", str(p["scheduler"]), *common, "--client-ca-file", ca,
        ], {"url": f"https://{a}:{p['scheduler']}/healthz", "pki": pki_dir}, [apiserver])
        cd = os.path.join(d, "containerd")
        cni_dir = os.path.join(cd, "cni", "net.d")
        files = {
            "config.toml": containerd_toml(cd, s["sock"], cni_dir, providers.PAUSE_IMAGE, os.path.join(cd, "certs.d")),
            "cni/net.d/10-phoenix.conflist": cni_conflist(s["network"], s["bridge"], s["pod_cidr"],
                                                          os.path.join(cd, "cni", "ipam")),
        }
        if registries:
            files = pulumi.Output.all(*registries.values()).apply(lambda urls, base=files: {**base, **registry_hosts(urls)})
        containerd = daemon("containerd", [
            "/usr/bin/containerd", "--config", os.path.join(cd, "config.toml"),
        ], {"socket": s["sock"]}, [pk], files=files, provider=providers.ContainerdProvider(),
            host_paths=["/var/lib/cni"], bridge=s["bridge"], sock=s["sock"], network=s["network"])
        kd = os.path.join(d, "kubelet")
        self.kubelet = daemon("kubelet", [
            f"{b}/kubelet", "--config", os.path.join(kd, "config.json"),
            "--kubeconfig", os.path.join(pki_dir, "kubelet.kubeconfig"),
            "--root-dir", os.path.join(kd, "root"), "--cert-dir", os.path.join(kd, "pki"),
            "--hostname-override", s["node_name"], "--node-ip", a, "--v=1",
        ], {"url": f"http://{a}:{p['kubelet_healthz']}/healthz"},
            [apiserver, containerd, self.controller_manager, self.scheduler],
            files={"config.json": kubelet_config(s, pki_dir)}, provider=providers.KubeletProvider(),
            timeout=120, host_paths=["/var/lib/kubelet"], node_name=s["node_name"],
            admin_kubeconfig=pk.admin_kubeconfig)
        self.containerd = containerd
        self.components = [etcd, apiserver, self.controller_manager, self.scheduler, containerd, self.kubelet]
        self.register_outputs({"server": server})

    def obj(self, name, manifest, deps=(), parent=None):
        """An object in the cluster (deleted before the node goes away)."""
        return _Object(name, {"kubeconfig": self.admin_kubeconfig, "manifest": manifest},
                       pulumi.ResourceOptions(parent=parent or self, depends_on=[self.kubelet, *deps]))


class _PodPostgres(dynamic.Resource, module="phoenix-k8s-local", name="PodPostgres"):
    def __init__(self, name, props, opts):
        super().__init__(providers.PodPostgresProvider(), name, _with_outputs(props, "password", "running"), opts)


class PodDatabase(pulumi.ComponentResource):
    """PostgreSQL for the artifacts' pods (the local platform's, run by the
    stack): on the CNI bridge's gateway address, pods of the pod subnet only,
    its password also in the Secret ``phoenix-database`` of the namespace,
    which pods reference (the deployer never reads it)."""

    SECRET = "phoenix-database"

    def __init__(self, name, *, cluster, network, settings, namespace, namespace_obj, database, user, opts=None):
        super().__init__("phoenix:k8s-local:PodDatabase", name, None, opts)
        host = str(next(ipaddress.ip_network(settings["pod_cidr"]).hosts()))
        pg = _PodPostgres(f"{name}-postgres", {
            "dir": network.subdir("postgres"), "address": host, "port": network.port("postgres"),
            "database": database, "user": user, "bridge": settings["bridge"], "clients": settings["pod_cidr"],
        }, pulumi.ResourceOptions(parent=self, depends_on=[cluster.containerd],
                                  additional_secret_outputs=["password"]))
        self.password = pulumi.Output.secret(pg.password)
        cluster.obj(f"{name}-secret", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.SECRET, "namespace": namespace},
            "stringData": {"password": self.password}}, [namespace_obj], parent=self)
        self.outputs = {"host": host, "port": pg.port, "name": database, "user": user,
                        "password": self.password, "secret": self.SECRET}
        self.register_outputs({"host": host, "port": pg.port, "name": database, "user": user})


DEPLOYER_RULES = (
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["services"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get", "list", "watch"]},
    # the release store (history ConfigMap written with resourceVersion CAS, lock Lease) and chaos.yml
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
)


class AppPlatform(pulumi.ComponentResource):
    """The namespace, one Service per artifact, and the deployer
    ServiceAccount bound to a Role with the verbs the engine uses, plus its
    token in a 0600 kubeconfig."""

    def __init__(self, name, *, cluster, namespace, artifacts, labels, port, kubeconfig_path, opts=None):
        super().__init__("phoenix:k8s-local:AppPlatform", name, None, opts)
        ns = cluster.obj(f"{name}-ns", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": namespace, "labels": labels}}, parent=self)
        meta = {"namespace": namespace, "labels": labels}
        services = {a: cluster.obj(f"{name}-{a}", {
            "apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": a.replace("_", "-")},
            "spec": {"selector": {**labels, "app": a},
                     "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
        }, [ns], parent=self) for a in artifacts}
        sa = cluster.obj(f"{name}-deployer-sa", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                 "metadata": {**meta, "name": "phoenix-deployer"}}, [ns], self)
        role = cluster.obj(f"{name}-deployer-role", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {**meta, "name": "phoenix-deployer"}, "rules": [dict(r) for r in DEPLOYER_RULES]}, [ns], self)
        binding = cluster.obj(f"{name}-deployer-binding", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {**meta, "name": "phoenix-deployer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "phoenix-deployer"},
            "subjects": [{"kind": "ServiceAccount", "name": "phoenix-deployer", "namespace": namespace}]},
            [role, sa], self)
        creds = _Credentials(f"{name}-deployer-credentials", {
            "kubeconfig": cluster.admin_kubeconfig, "namespace": namespace, "service_account": "phoenix-deployer",
            "server": cluster.server, "ca_file": cluster.admin_kubeconfig.apply(
                lambda k: os.path.join(os.path.dirname(k), "ca.crt")),
            "path": kubeconfig_path,
        }, pulumi.ResourceOptions(parent=self, depends_on=[binding, cluster.controller_manager],
                                  additional_secret_outputs=["token"]))
        self.namespace = ns
        self.outputs = {
            "api_server": cluster.server,
            "namespace": namespace,
            "deployer_service_account": "phoenix-deployer",
            "ca_cert": cluster.ca_cert,
            "token": pulumi.Output.secret(creds.token),
            "kubeconfig": pulumi.Output.secret(creds.path),
            "service_names": {a: a.replace("_", "-") for a in services},
            "labels": labels,
        }
        self.register_outputs({"namespace": namespace})
