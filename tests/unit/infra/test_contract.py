"""The outputs contract's helpers agree with the rollout driver they describe."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import objects
from phoenix_infra import contract

NAMES = [("catalog", "dev"), ("catalog", "k8s-local"), ("Big_Artifact", "integrated_qa"), ("orders", "qa.eu"),
         ("9lives", "dev"), ("a" * 40, "b" * 40), ("x", "-y-"), ("catalog_v2", "gke-dev")]


@pytest.mark.parametrize("artifact,environment", NAMES)
def test_the_stacks_name_routes_as_the_kubernetes_driver_does(artifact, environment):
    name = contract.route_name(artifact, environment)
    assert name == objects.route_name(artifact, environment)
    assert len(name) <= 63 and name[0].isalpha()


def test_the_gateway_keys_name_the_routes():
    assert "routes" in contract.GATEWAY_KEYS and "gateway" in contract.KUBERNETES_KEYS
