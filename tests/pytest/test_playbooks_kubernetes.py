"""The one-liner on Kubernetes, exactly as a user types it: environment `k8s`
(inventories/k8s, the k8s-local cluster of this machine). deploy.yml brings
the stack up, bakes the OCI image when asked, pushes it to the stack's dev
registry and deploys it by digest; the history and the lock live in the
cluster (ConfigMap + Lease); chaos.yml deletes a pod while traffic flows
through the cluster's gateway and the Deployment heals it with 0 failed
requests; destroy.yml removes it all.

Private state dir and Pulumi project (test_playbooks.Env). The inventory's
stack uses a fixed loopback block (127.30.0.0/24) and starts a cluster: run
under BOTH flocks (/tmp/phoenix-k8s.lock, /tmp/phoenix-fixed-ports.lock).
Traffic goes to the stack's loopback address only."""
import json
import os
import re
import shutil
import time
import urllib.request

import pytest

from test_playbooks import Env, failed_task, task_status  # pylint: disable=import-error

V1 = "1.0.0+k.b1"
V2 = "1.1.0+k.b2"


@pytest.fixture(scope="module")
def kpb():
    if os.geteuid() != 0:
        pytest.fail("test_playbooks_kubernetes needs root (the k8s-local cluster runs kubelet and containerd)")
    env = Env()
    yield env
    if (env.state / "stacks" / "k8s-local").exists():
        env.play("destroy.yml", "-e", "environment=k8s", check=False)
    shutil.rmtree(env.state, ignore_errors=True)


def admin(env):
    from kubernetes import client, config
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(env.state / "stacks" / "k8s-local" / "pki" / "admin.kubeconfig"),
                            client_configuration=cfg)
    api = client.ApiClient(cfg)
    return client.CoreV1Api(api), client.AppsV1Api(api)


def get(url, path):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_an_unbaked_version_is_refused_naming_the_oci_bake(kpb):
    proc = kpb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=k8s", "-e",
                    "version=9.9.9+never.baked", check=False)
    assert proc.returncode != 0
    assert failed_task(proc.stdout) == "Refuse a version that is not baked (unless asked to bake)"
    assert "-e artifact=catalog -e version=9.9.9+never.baked -e target=oci -e environment=k8s" in proc.stdout
    assert kpb.stacks() == []  # nothing was made


def test_the_one_liner_bakes_pushes_and_deploys_by_digest(kpb):
    t0 = time.monotonic()
    out = kpb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=k8s", "-e", f"version={V1}",
                   "-e", "bake=true", "-e", "strategy=rolling", "-e", "analysis=none").stdout
    print(f"\none-liner on k8s (cluster up, OCI bake, push, rollout): {time.monotonic() - t0:.0f} s")
    assert re.search(r"catalog in k8s: live: ", out), out[-3000:]
    outputs = kpb.outputs("k8s-local")
    dev = outputs["registries"]["dev"].split("://", 1)[1].rstrip("/")
    ns = outputs["kubernetes"]["namespace"]
    core, apps = admin(kpb)
    # the history is in the cluster, the release image is the dev registry's, by digest
    cms = [c for c in core.list_namespaced_config_map(ns, label_selector="app.kubernetes.io/managed-by=phoenix.deploy").items
           if "history.json" in (c.data or {})]
    assert len(cms) == 1
    history = json.loads(cms[0].data["history.json"])
    live = next(r for r in history["releases"] if r["release_id"] == history["live"])
    assert live["version"] == V1 and re.fullmatch(re.escape(dev) + r"/catalog@sha256:[0-9a-f]{64}", live["image"])
    deployment = apps.read_namespaced_deployment(live["group"], ns)
    assert deployment.spec.template.spec.containers[0].image == live["image"]
    assert deployment.status.ready_replicas == 2
    env = {e.name: e for e in deployment.spec.template.spec.containers[0].env}
    assert env["DB_PASSWORD"].value is None and env["DB_PASSWORD"].value_from.secret_key_ref.name == "phoenix-database"
    assert not (kpb.state / "releases" / "catalog" / "k8s" / "history.json").exists()  # not in the file store
    url = outputs["kubernetes"]["gateway"]["url"]["catalog"]
    status, body = get(url, "/version")
    assert status == 200 and body["version"] == V1
    status, _body = get(url, "/items")
    assert status == 200


def test_chaos_deletes_a_pod_and_the_deployment_heals_it_with_zero_errors(kpb):
    ns = kpb.outputs("k8s-local")["kubernetes"]["namespace"]
    core = admin(kpb)[0]
    before = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="phoenix.deploy/artifact=catalog").items}
    out = kpb.play("chaos.yml", "-e", "artifact=catalog", "-e", "environment=k8s").stdout
    victim = re.search(r"deleted pod (\S+);", out)
    report = re.search(r"traffic: (\d+)\s+requests,\s+(\d+)\s+errors", out)
    assert victim and report, out[-3000:]
    print(f"\nchaos on k8s: {report.group(1)} requests, {report.group(2)} errors")
    assert victim.group(1) in before
    assert int(report.group(1)) > 100 and int(report.group(2)) == 0
    after = {p.metadata.name for p in core.list_namespaced_pod(ns, label_selector="phoenix.deploy/artifact=catalog").items
             if p.metadata.deletion_timestamp is None}
    assert victim.group(1) not in after and len(after) == len(before)


def test_a_version_baked_by_bake_yml_rolls_out_through_the_gateway(kpb):
    """bake.yml -e target=oci pushes (here with a baked-in setting, as the demo's
    faulty version); deploy.yml then deploys that image by digest, baking nothing."""
    kpb.play("bake.yml", "-e", "artifact=catalog", "-e", f"version={V2}", "-e", "target=oci",
             "-e", "environment=k8s", "-e", '{"fault": {"latency_ms": 1}}')
    out = kpb.play("deploy.yml", "-e", "artifact=catalog", "-e", "environment=k8s", "-e", f"version={V2}",
                   "-e", "strategy=rolling", "-e", "analysis=none").stdout
    assert task_status(out, "Bake catalog") == "skipping"
    assert re.search(r"catalog in k8s: live: ", out), out[-3000:]
    url = kpb.outputs("k8s-local")["kubernetes"]["gateway"]["url"]["catalog"]
    assert get(url, "/version")[1]["version"] == V2
    status = kpb.play("status.yml", "-e", "artifact=catalog", "-e", "environment=k8s").stdout
    assert f"load balancer:  {url}" in status and f"live release:   {V2}" in status


def test_destroy_removes_the_cluster(kpb):
    stack_dir = kpb.state / "stacks" / "k8s-local"
    kpb.play("destroy.yml", "-e", "environment=k8s")
    assert not stack_dir.exists()
