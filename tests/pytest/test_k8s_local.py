"""The k8s-local stack for real: `pulumi up` of platform kubernetes with
cluster local starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, containerd and kubelet under a temp state dir, the node goes
Ready, a Deployment of an image pulled by digest from the stack's dev
registry runs with bridge IPs and answers HTTP, the deployer ServiceAccount
is confined to its namespace, a killed component is noticed by refresh and
restored by up, and destroy leaves nothing behind.

One module-scoped stack; tests run in file order. Traffic goes only to the
stack's loopback address and to pod IPs on the bridge the stack made."""
import ipaddress
import json
import os
import signal
import stat
import subprocess
import time
import urllib.request

import pytest

from fixtures_k8s_local import COMPONENTS, TempK8sStack, build_hello_image, pid_alive, push, wait_for

HOST_PATHS = ("/var/lib/kubelet", "/var/lib/cni")  # fixed paths kubelet and CNI use outside the state dir


def _netns():
    return set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()


def _shims(sock):
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and sock.encode() in argv:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def k8s():
    if os.geteuid() != 0:
        pytest.fail("test_k8s_local needs root (kubelet and containerd run as root)")
    netns_before = _netns()
    host_before = {p: os.path.lexists(p) for p in HOST_PATHS}
    stack = TempK8sStack()
    try:
        t0 = time.monotonic()
        stack.up_result = stack.up()
        stack.up_seconds = time.monotonic() - t0
        stack.netns_before, stack.host_before = netns_before, host_before
        print(f"\nk8s-local cluster bring-up (pulumi up, node Ready): {stack.up_seconds:.1f} s")
        yield stack
    finally:
        stack.cleanup()


def _clients(kubeconfig):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    return client.CoreV1Api(api), client.AppsV1Api(api)


def admin(stack):
    return _clients(stack.state_dir / "pki" / "admin.kubeconfig")


def deployer(stack):
    return _clients(stack.outputs()["kubernetes"]["kubeconfig"])


def _resource_outputs(stack, name):
    deployment = stack.stack.export_stack().deployment
    return next(r.get("outputs", {}) for r in deployment["resources"] if r["urn"].endswith(f"::{name}"))


def _deployment(name, image, replicas=2):
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "hello", "image": image, "ports": [{"containerPort": 8080}],
                                         "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}


# --------------------------------------------------------------------------- up

def test_up_starts_every_component_and_the_node_goes_ready(k8s):
    out = k8s.outputs()
    kube = out["kubernetes"]
    assert out["platform"] == "kubernetes"
    assert set(kube) >= {"api_server", "namespace", "deployer_service_account", "ca_cert", "token", "kubeconfig"}
    assert kube["api_server"] == f"https://{out['network']['address']}:6443"
    assert kube["namespace"] == "phoenix-it" and kube["deployer_service_account"] == "phoenix-deployer"
    assert kube["ca_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert set(out["registries"]) == {"dev", "prod"}
    assert sorted(k8s.live_pids()) == sorted(COMPONENTS)
    for d in [k8s.state_dir, *(k8s.state_dir / c for c in COMPONENTS), k8s.state_dir / "pki"]:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(kube["kubeconfig"]).st_mode) == 0o600
    for rel in ("pki/ca.key", "pki/sa.key", "pki/admin.key"):
        assert stat.S_IMODE(os.stat(k8s.state_dir / rel).st_mode) == 0o600
    shown = json.loads(k8s.cli("stack", "output", "kubernetes", "--json").stdout)
    assert shown["token"] == shown["kubeconfig"] == "[secret]"
    assert shown["ca_cert"] == kube["ca_cert"]  # not a secret
    assert kube["token"] not in "".join(k8s.log), "the deployer token leaked into Pulumi's output"

    core = admin(k8s)[0]
    node = core.read_node(f"phoenix-{k8s.name}")
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"


def test_deployment_pulled_by_digest_from_the_dev_registry_answers_http_on_bridge_ips(k8s):
    out = k8s.outputs()
    image = push(build_hello_image(k8s.tmp / "img"), out["registries"]["dev"], "phoenix-it/hello")
    assert "@sha256:" in image
    apps = deployer(k8s)[1]
    ns = out["kubernetes"]["namespace"]
    t0 = time.monotonic()
    apps.create_namespaced_deployment(ns, _deployment("hello", image))

    def available():
        status = apps.read_namespaced_deployment("hello", ns).status
        return (status.available_replicas or 0) == 2
    core = admin(k8s)[0]
    assert wait_for(available, 120, 0.5), json.dumps(
        [{"name": p.metadata.name, "phase": p.status.phase,
          "waiting": [str(c.state.waiting) for c in (p.status.container_statuses or [])]}
         for p in core.list_namespaced_pod(ns).items])
    print(f"\n2 pods Ready (image pulled by digest) in {time.monotonic() - t0:.1f} s")
    pods = core.list_namespaced_pod(ns, label_selector="app=hello").items
    subnet = ipaddress.ip_network(out["network"]["cidr"])
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.containers[0].image == image
        assert pod.status.container_statuses[0].image_id.endswith(image.split("@")[1])
        assert ipaddress.ip_address(pod.status.pod_ip) in subnet  # only the stack's own bridge
        with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/", timeout=5) as resp:
            assert resp.status == 200
            assert resp.read().decode().strip() == f"hello from {pod.metadata.name}"


def test_the_deployer_is_confined_to_its_namespace(k8s):
    from kubernetes.client.exceptions import ApiException
    core, apps = deployer(k8s)
    ns = k8s.outputs()["kubernetes"]["namespace"]
    with pytest.raises(ApiException) as exc:
        apps.create_namespaced_deployment("default", _deployment("elsewhere", "localhost/none@sha256:" + "0" * 64))
    assert exc.value.status == 403
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret(ns)  # not a verb the engine needs
    assert exc.value.status == 403
    assert [p.metadata.name for p in core.list_namespaced_pod(ns).items]  # what it may do, it can


# --------------------------------------------------------------------------- refresh + up

def test_a_killed_component_is_noticed_by_refresh_and_restored_by_up(k8s):
    pid = k8s.pid("kube-scheduler")
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 10)
    k8s.refresh()
    assert _resource_outputs(k8s, "cluster-kube-scheduler")["running"] is False
    result = k8s.up()
    assert result.summary.resource_changes.get("update") == 1, result.summary.resource_changes
    assert pid_alive(k8s.pid("kube-scheduler"), "kube-scheduler") and k8s.pid("kube-scheduler") != pid
    core = admin(k8s)[0]
    assert {c.type: c.status for c in core.read_node(f"phoenix-{k8s.name}").status.conditions}["Ready"] == "True"


def test_a_deleted_role_binding_is_noticed_by_refresh_and_made_again_by_up(k8s):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    core = admin(k8s)[0]
    ns = k8s.outputs()["kubernetes"]["namespace"]
    client.RbacAuthorizationV1Api(core.api_client).delete_namespaced_role_binding("phoenix-deployer", ns)
    deployer_core = deployer(k8s)[0]
    with pytest.raises(ApiException) as exc:
        deployer_core.list_namespaced_pod(ns)
    assert exc.value.status == 403
    k8s.refresh()
    result = k8s.up()
    assert result.summary.resource_changes.get("create") == 1, result.summary.resource_changes
    assert wait_for(lambda: _can_list_pods(deployer_core, ns), 10, 0.2)


def _can_list_pods(core, ns):
    from kubernetes.client.exceptions import ApiException
    try:
        core.list_namespaced_pod(ns)
    except ApiException:
        return False
    return True


# --------------------------------------------------------------------------- destroy

def test_destroy_leaves_no_process_and_no_file(k8s):
    sock = str(k8s.state_dir / "containerd" / "containerd.sock")
    bridge = _resource_outputs(k8s, "cluster-containerd")["bridge"]
    pids = k8s.live_pids()
    t0 = time.monotonic()
    k8s.destroy()
    print(f"\ndestroy: {time.monotonic() - t0:.1f} s")
    assert not any(pid_alive(pid) for pid in pids.values())
    assert k8s.live_pids() == {}
    assert _shims(sock) == []
    assert not k8s.state_dir.exists()
    assert sorted(os.listdir(k8s.tmp)) == ["backend", "img", "proj"]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert f" {bridge}:" not in links
    assert _netns() <= k8s.netns_before
    assert {p: os.path.lexists(p) for p in HOST_PATHS} == k8s.host_before
    with open("/proc/self/mountinfo") as fh:
        assert str(k8s.tmp) not in fh.read()
