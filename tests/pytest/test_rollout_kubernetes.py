"""Rollouts through the engine (module_utils/rollout.py) on the Kubernetes
driver against a real k8s-local cluster: Deployments, pods pulled by digest
from the stack's dev registry, HTTP load through the stack's gateway (HAProxy
fed from EndpointSlices, HTTPRoute weights); a crash-looping image fails fast
with the reason; bad credentials and RBAC denials fail with cause and fix.

One cluster per module; run under ``flock /tmp/phoenix-k8s.lock``."""
import shutil
import subprocess
import time

import pytest

from fixtures_k8s_local import build_hello_image, push
from fixtures_k8s_rollout import admin_client, gateway_url, k8s_platform, served_environment
from fixtures_rollout import LoadGen

from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import PlatformError, destroy_done
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.kubernetes import KubernetesPlatform
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import IN_PROGRESS, LIVE, FileReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.rollout import Rollout

V1, V2, CRASH = "1.0.0+5eed0f1.b1", "1.1.0+5eed0f1.b2", "1.2.0+5eed0f1.b3"
ANALYSIS = {"max_error_rate": 0.05, "min_requests": 5, "interval": 1, "failure_limit": 2}


@pytest.fixture(scope="module")
def images(k8s_rollout_stack):
    out = dict(k8s_rollout_stack.images)
    out["hello2"] = push(build_hello_image(k8s_rollout_stack.tmp / "img-hello2"),
                         k8s_rollout_stack.infra["registries"]["dev"], "phoenix-it/hello")
    assert out["hello2"] != out["hello"]  # a second build: another digest
    work = k8s_rollout_stack.tmp / "img-labelled"
    shutil.copytree(k8s_rollout_stack.tmp / "img-hello" / "oci", work / "oci")
    subprocess.run(["umoci", "config", "--image", "%s/oci:v1" % work, "--config.label",
                    "io.phoenix.deploy.health.http-path=/ready"], check=True, capture_output=True, timeout=60)
    out["labelled"] = push("oci:%s/oci:v1" % work, k8s_rollout_stack.infra["registries"]["dev"], "phoenix-it/hello")
    return out


class K8sEnv:
    """The environment the stack's gateway serves, with a release store of its own."""

    def __init__(self, stack, images, tmp):
        self.stack, self.images, self.infra = stack, images, stack.infra
        self.environment = served_environment(self.infra)
        self.platform = k8s_platform(stack)
        self.store = FileReleaseStore(str(tmp / "releases"))

    @property
    def url(self):
        return gateway_url(self.infra)

    def engine(self, **kw):
        return Rollout(self.platform, self.store, "catalog", self.environment, **kw)

    def deploy(self, version, key, size=2, strategy="rolling", settings=None, analysis=None):
        return self.engine().deploy(version, self.images[key], size, strategy, settings, analysis)

    def groups(self):
        return {g.name: g for g in self.platform.groups.list_groups("catalog", self.environment)}

    def history(self):
        return self.store.load("catalog", self.environment)

    def clean(self):
        for name in list(self.groups()):
            self.platform.groups.destroy(name)
        deadline = time.monotonic() + 120
        while self.groups() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.groups(), "groups left after clean-up: %s" % sorted(self.groups())


@pytest.fixture
def env(k8s_rollout_stack, images, tmp_path):
    k8s_env = K8sEnv(k8s_rollout_stack, images, tmp_path)
    yield k8s_env
    k8s_env.clean()


def assert_converged(env, version):
    history = env.history()
    live = history.live_release()
    assert live is not None and live.version == version, history.as_dict()
    assert not [r for r in history.releases if r.status == IN_PROGRESS]
    assert [r.release_id for r in history.releases if r.status == LIVE] == [live.release_id]
    groups = env.groups()
    # other groups may still be listed while the garbage collector removes them:
    # detached, deleting, no capacity (base.destroy_done)
    assert [n for n, g in groups.items() if not destroy_done(g)] == [live.group], groups
    assert all(g.deleting and g.size == 0 and g.weight == 0 for n, g in groups.items() if n != live.group), groups
    assert groups[live.group].weight == 100 and groups[live.group].attached
    assert env.platform.groups.health(live.group).ready == live.size


# --------------------------------------------------------------------------- failures

def test_crash_looping_image_fails_fast_with_the_reason(env):
    t0 = time.monotonic()
    res = env.deploy(CRASH, "crash", size=2)
    seconds = time.monotonic() - t0
    reason = res.release["reason"] or ""
    print("\ncrash loop: %s after %.1f s: %s" % (res.state, seconds, reason))
    assert res.state in ("failed", "rolled_back"), res.msg
    assert "CrashLoopBackOff" in reason and "exit code 3" in reason, reason
    assert seconds < 60, "a crash loop must fail fast, not wait for the deadline (%.1f s)" % seconds
    deadline = time.monotonic() + 60  # nothing left half-made: the engine removed the failed group
    while env.groups() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert env.groups() == {}


def test_bad_credentials_and_rbac_denials_name_cause_and_fix(env):
    kube = env.infra["kubernetes"]
    bad_token = KubernetesPlatform(dict(env.infra, kubernetes=dict(kube, token="phoenix-invalid-token")))
    with pytest.raises(PlatformError) as err:
        bad_token.groups.list_groups("catalog", env.environment)
    assert not err.value.transient and "401" in err.value.msg and "pulumi up" in err.value.msg
    assert kube["token"] not in err.value.msg
    elsewhere = KubernetesPlatform(dict(env.infra, kubernetes=dict(kube, namespace="default")))
    with pytest.raises(PlatformError) as err:
        elsewhere.groups.create_group("catalog", env.environment, "v001", env.images["hello"], 1, {},
                                      name="catalog-x-v001")
    assert not err.value.transient and "RBAC" in err.value.msg and "phoenix-deployer" in err.value.msg
    down = KubernetesPlatform(dict(env.infra, kubernetes=dict(kube, api_server="https://127.0.0.1:1")))
    with pytest.raises(PlatformError) as err:
        down.groups.list_groups("catalog", env.environment)
    assert err.value.transient and "unreachable" in err.value.msg
    assert env.groups() == {}  # nothing made


def test_create_is_get_or_create_and_foreign_objects_are_never_touched(env):
    from kubernetes import client
    groups = env.platform.groups
    name = groups.group_name("catalog", env.environment, "v001")
    first = groups.create_group("catalog", env.environment, "v001", env.images["hello"], 1, {"GREETING": "hi"},
                                name=name, owner="it")
    again = groups.create_group("catalog", env.environment, "v001", env.images["hello"], 1, {"GREETING": "hi"},
                                name=name, owner="it")  # a rerun after a crash converges
    assert first.name == again.name == name
    with pytest.raises(PlatformError, match="already exists"):
        groups.create_group("catalog", env.environment, "v001", env.images["hello2"], 1, {}, name=name)
    groups.resize(name, 2)
    deadline = time.monotonic() + 90
    while groups.health(name).ready < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert groups.health(name).ready == 2
    assert env.groups()[name].size == 2 and env.groups()[name].owner == "it"
    # a Deployment someone else made, with our artifact labels but not managed by us
    apps = client.AppsV1Api(admin_client(env.stack))
    ns = env.infra["kubernetes"]["namespace"]
    labels = {"phoenix.deploy/artifact": "catalog", "phoenix.deploy/environment": env.environment, "app": "foreign"}
    apps.create_namespaced_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "foreign", "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "foreign"}},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "x", "image": env.images["hello"]}]}}}})
    try:
        assert "foreign" not in env.groups()
        with pytest.raises(PlatformError, match="not managed by phoenix.deploy"):
            groups.destroy("foreign")
    finally:
        apps.delete_namespaced_deployment("foreign", ns)


def test_health_path_from_the_image_label_and_a_missing_image_is_refused_before_anything_is_made(env):
    from kubernetes import client
    groups = env.platform.groups
    assert groups.resolve_image(env.images["labelled"], "catalog") == env.images["labelled"]
    name = groups.group_name("catalog", env.environment, "v001")
    groups.create_group("catalog", env.environment, "v001", env.images["labelled"], 1, {}, name=name)
    apps = client.AppsV1Api(admin_client(env.stack))
    dep = apps.read_namespaced_deployment(name, env.infra["kubernetes"]["namespace"])
    assert dep.spec.template.spec.containers[0].readiness_probe.http_get.path == "/ready"
    assert groups.health(name).total == 1
    missing = env.images["hello"].split("@")[0] + "@sha256:" + "0" * 64
    with pytest.raises(PlatformError) as err:
        groups.resolve_image(missing, "catalog")
    assert err.value.param == "image" and "no image" in err.value.msg and not err.value.transient
    with pytest.raises(PlatformError):
        groups.create_group("catalog", env.environment, "v002", missing, 1, {},
                            name=groups.group_name("catalog", env.environment, "v002"))
    assert sorted(env.groups()) == [name]


# --------------------------------------------------------------------------- under load

def test_rolling_under_load_through_the_gateway_zero_failures(env):
    assert env.deploy(V1, "hello", size=2).state == "live"
    with LoadGen(env.url, path="/") as load:
        time.sleep(0.5)
        t0 = time.monotonic()
        res = env.deploy(V2, "hello2", size=2, strategy="rolling", settings={"max_surge": 1, "max_unavailable": 0})
        seconds = time.monotonic() - t0
        time.sleep(0.5)
    print("\nrolling on kubernetes: %.1f s, %s" % (seconds, load.summary()))
    assert res.state == "live", res.msg
    assert load.total > 100 and load.failed == 0, load.summary()
    assert_converged(env, V2)


def test_canary_with_analysis_from_the_gateway_counters_zero_failures(env):
    assert env.deploy(V1, "hello", size=2).state == "live"
    with LoadGen(env.url, path="/") as load:
        res = env.deploy(V2, "hello2", size=2, strategy="canary", analysis=ANALYSIS, settings={"steps": [
            {"set_weight": 50}, {"pause": {"duration": 3}}, {"pause": {}}]})
        assert res.state == "paused", res.msg
        weights = sorted(g.weight for g in env.groups().values())
        assert weights == [50, 50], weights
        promoted = env.engine().promote()
    print("\ncanary on kubernetes:", load.summary())
    assert promoted.state == "live", promoted.msg
    passes = [e for e in res.events if e.get("verdict") == "pass"]
    assert passes, [e["message"] for e in res.events]
    assert load.failed == 0, load.summary()
    assert_converged(env, V2)
