"""Which release store a module gets (targets.make_store): files for the local
platform, ConfigMap + Lease for a platform kubernetes stack (store_backend
auto), and clear errors for a backend the infra cannot serve; the names the
Kubernetes store gives its objects. Talks to no cluster (tests/pytest/
test_release_store_kubernetes.py does)."""
import re

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import targets
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores import kubernetes
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def kube_infra(tmp_path, **kube):
    base = {"api_server": "https://127.0.0.1:6443", "ca_cert": CA, "token": "t0ken",
            "namespace": "phoenix"}
    base.update(kube)
    return {"platform": "kubernetes", "state_dir": str(tmp_path), "kubernetes": base}


def test_auto_is_files_on_the_local_platform(tmp_path):
    store = targets.make_store({"store": str(tmp_path / "r")}, {"platform": "local"})
    assert isinstance(store, FileReleaseStore) and store.root == str(tmp_path / "r")


def test_auto_is_configmaps_on_kubernetes_and_file_can_be_chosen(tmp_path, monkeypatch):
    monkeypatch.delenv("PHOENIX_STATE_DIR", raising=False)
    store = targets.make_store({"store": str(tmp_path / "r")}, kube_infra(tmp_path))
    assert isinstance(store, kubernetes.ConfigMapReleaseStore)
    assert store.namespace == "phoenix" and "namespace phoenix at https://127.0.0.1:6443" in store.root
    assert store.directory("catalog", "k8s") == str(tmp_path / "r" / "catalog" / "k8s")  # reports stay local
    assert "t0ken" not in store.root
    chosen = targets.make_store({"store_backend": "file"}, kube_infra(tmp_path))
    assert isinstance(chosen, FileReleaseStore) and chosen.root == str(tmp_path / "releases")


def test_kubernetes_backend_without_a_cluster_names_the_option(tmp_path):
    with pytest.raises(PhoenixError) as err:
        targets.make_store({"store_backend": "kubernetes", "store": str(tmp_path)}, {"platform": "local"})
    assert err.value.param == "store_backend" and "use store_backend file" in err.value.msg
    with pytest.raises(PhoenixError) as err:
        targets.make_store({"store_backend": "s3", "store": str(tmp_path)}, {"platform": "local"})
    assert err.value.param == "store_backend" and "allowed: auto, file, kubernetes" in err.value.msg


def test_incomplete_kubernetes_outputs_are_named(tmp_path):
    with pytest.raises(PhoenixError) as err:
        targets.make_store({}, kube_infra(tmp_path, token="", namespace=None))
    assert err.value.param == "infra" and "infra.kubernetes lacks token (or kubeconfig), namespace" in err.value.msg


@pytest.mark.parametrize("artifact,environment", [
    ("catalog", "k8s"), ("Catalog_v2", "integrated_qa"), ("a" * 63, "b.c" * 21), ("x-", "y")])
def test_object_names_are_dns_1123_and_distinct(artifact, environment):
    name = kubernetes.object_name(artifact, environment)
    assert DNS1123.fullmatch(name) and len(name) <= 253
    assert name.startswith("phoenix-releases-")


def test_object_names_keep_different_pairs_apart():
    pairs = [("a-b", "c"), ("a", "b-c"), ("A", "b"), ("a", "b"), ("a_b", "c"), ("a.b", "c")]
    assert len({kubernetes.object_name(*p) for p in pairs}) == len(pairs)


def test_the_store_needs_exactly_these_verbs():
    assert kubernetes.VERBS == {"configmaps": ("get", "create", "update"),
                                "leases.coordination.k8s.io": ("get", "create", "update", "delete")}
