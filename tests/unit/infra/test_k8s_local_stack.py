"""The k8s-local stack (platform kubernetes, cluster local) under mocks: it
composes, and exports the same ``kubernetes`` keys as the GKE stack. The real
cluster is tested in tests/pytest/test_k8s_local.py."""
import importlib
import os

import pulumi
import pytest

from pulumi_harness import Registered, SchemaMocks, use_stack

pulumi.runtime.set_mocks(SchemaMocks(), project="phoenix-infra", stack="k8s-local", preview=False)

import config  # noqa: E402  (the program is imported after set_mocks)
from phoenix_infra import contract  # noqa: E402


class DynamicMocks(SchemaMocks):
    """SchemaMocks for dynamic resources (no schema): outputs the providers compute."""

    def new_resource(self, args):
        if not args.typ.startswith("pulumi-python:dynamic"):
            return super().new_resource(args)
        self.resources.append(Registered(args.typ, args.name, args.inputs, args.custom, args.provider or ""))
        out = dict(args.inputs)
        kind = args.typ.rsplit(":", 1)[1]
        if kind == "LoopbackPorts":
            out["ports"] = {n: 24000 + i for i, n in enumerate(args.inputs["names"])}
        elif kind == "DockerRegistry":
            out["url"] = f"http://{args.inputs['address']}:{int(args.inputs['port'])}"
        elif kind == "Pki":
            out.update(ca_cert="-----BEGIN CERTIFICATE-----\n", admin_kubeconfig=f"{args.inputs['dir']}/admin.kubeconfig")
        elif kind == "DeployerCredentials":
            out["token"] = "mock-token"
        return f"{args.name}-id", out


def _build(monkeypatch, tmp_path, **overrides):
    k8s_local = importlib.import_module("phoenix_infra.k8s_local")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setattr(k8s_local, "BIN", tmp_path)
    crds = tmp_path / "crd"
    crds.mkdir(exist_ok=True)
    (crds / "gateway.networking.k8s.io_httproutes.yaml").write_text("kind: CustomResourceDefinition\n")
    monkeypatch.setattr(importlib.import_module("phoenix_infra.k8s_local.gateway"), "crd_dir", lambda: str(crds))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    mocks = use_stack("k8s-local", mocks=DynamicMocks(), set={"phoenix-infra:state_dir": str(tmp_path / "st"), **overrides}, secrets={})
    box = {}

    @pulumi.runtime.test
    def program():
        cfg = config.load()
        outputs = contract.complete(k8s_local.build(cfg))
        return pulumi.Output.from_input(outputs).apply(box.update)
    program()
    return mocks, box


def test_outputs_follow_the_contract_with_the_same_kubernetes_keys_as_gke(monkeypatch, tmp_path):
    mocks, out = _build(monkeypatch, tmp_path)
    assert not mocks.errors
    assert tuple(out) == contract.KEYS and out["platform"] == "kubernetes"
    assert tuple(sorted(out["kubernetes"])) == tuple(sorted(contract.KUBERNETES_KEYS))
    assert out["kubernetes"]["api_server"] == "https://127.30.0.1:6443"
    assert out["kubernetes"]["namespace"] == "phoenix-dev"
    assert set(out["registries"]) == {"dev", "prod"}
    gateway = out["kubernetes"]["gateway"]
    assert tuple(sorted(gateway)) == tuple(sorted(contract.GATEWAY_KEYS))
    assert gateway["name"] == "phoenix" and gateway["class"] == "phoenix-haproxy"
    assert gateway["routes"] == {"catalog": "catalog-k8s"}  # <artifact>-<environment of Pulumi.k8s-local.yaml>
    assert gateway["url"] == {"catalog": "http://127.30.0.1:24005/"}  # the port after the local stack's five
    names = {r.name for r in mocks.resources if r.custom}
    assert {"gateway-crds", "gateway-class", "gateway-gateway", "gateway-haproxy", "gateway-controller"} <= names
    assert {"cluster-etcd", "cluster-kube-apiserver", "cluster-kube-controller-manager", "cluster-kube-scheduler",
            "cluster-containerd", "cluster-kubelet", "app-deployer-role", "app-deployer-binding"} <= names


@pytest.mark.parametrize("key, value, message", [
    ("pod_cidr", "not-a-cidr", "phoenix-infra:pod_cidr"),
    ("pod_cidr", "127.0.0.0/24", "not loopback"),
    ("address_block", "10.0.0.0/24", "inside 127.0.0.0/8"),
])
def test_bad_network_config_names_the_key(monkeypatch, tmp_path, key, value, message):
    with pytest.raises(Exception, match=message):
        _build(monkeypatch, tmp_path, **{f"phoenix-infra:{key}": value})


def test_an_unknown_cluster_kind_is_refused(monkeypatch, tmp_path):
    with pytest.raises(Exception, match="phoenix-infra:cluster.*allowed: gke"):
        _build(monkeypatch, tmp_path, **{"phoenix-infra:cluster": "kind"})


def test_the_environment_names_the_routes_and_bad_ones_are_refused(monkeypatch, tmp_path):
    _mocks, out = _build(monkeypatch, tmp_path, **{"phoenix-infra:environment": "dev"})
    assert out["kubernetes"]["gateway"]["routes"] == {"catalog": "catalog-dev"}
    with pytest.raises(Exception, match="phoenix-infra:environment.*DNS label"):
        _build(monkeypatch, tmp_path, **{"phoenix-infra:environment": "Bad_Env"})
