"""The rollout module on a gce environment without Google credentials: check
mode prints the ordered API plan of every step (nothing is called), a real
run fails at its first step naming the missing credential, and bad GCE input
(an image that is not a self-link, a malformed project) is refused naming the
option.  The module runs as Ansible runs it (a child process); Application
Default Credentials point at a file that does not exist and the metadata
server check is off, so nothing leaves this machine."""
import json
import os
import subprocess
import sys

from .test_bad_input import COLLECTIONS, MODULES

IMAGE = "projects/phoenix-dev/global/images/catalog-v1-4-0-abc1234-b7"


def gce_infra(project="phoenix-dev"):
    return {"platform": "gce",
            "database": {"host": "10.64.0.3", "port": 5432, "name": "phoenix", "user": "phoenix",
                         "password": "s3cr3t-never-shown"},
            "gce": {"project": project, "region": "europe-west1", "network": "phoenix-net",
                    "subnetwork": "phoenix-subnet", "service_account": "sa@phoenix-dev.iam.gserviceaccount.com",
                    "network_tags": ["phoenix"], "backend_services": {"catalog": "phoenix-catalog"},
                    "health_check": "phoenix-health", "url_map": "phoenix-urls", "path_matcher": "artifacts",
                    "routes": {"catalog": {"path_matcher": "artifacts", "paths": None}}}}


def run(tmp_path, check, **extra):
    args = {"artifact": "catalog", "environment": "ci", "version": "1.4.0", "image": IMAGE,
            "infra": gce_infra(), "store": str(tmp_path / "releases"), "size": 3,
            "strategy": "canary", "strategy_settings": {"steps": [{"set_weight": 10},
                                                                  {"pause": {"duration": 600}}]}}
    args.update(extra)
    if check:
        args["_ansible_check_mode"] = True
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), PHOENIX_STATE_DIR=str(tmp_path / "state"),
               GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "no-such-key.json"), NO_GCE_CHECK="True")
    proc = subprocess.run([sys.executable, str(MODULES / "rollout.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "s3cr3t-never-shown" not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_check_mode_prints_the_ordered_api_plan_without_credentials(tmp_path):
    result = run(tmp_path, check=True)
    assert not result.get("failed"), result
    assert result["state"] == "planned" and result["changed"]
    kinds = [s["kind"] for s in result["plan"]]
    assert kinds[:3] == ["create", "wait_healthy", "set_weights"], kinds
    create = result["plan"][0]["api_calls"]
    order = [c.split(" ")[0] for c in create]
    inserts = [c for c in order if c.endswith((".insert", ".setNamedPorts", ".patch"))]
    assert inserts == ["compute.instanceTemplates.insert", "compute.regionInstanceGroupManagers.insert",
                       "compute.regionInstanceGroups.setNamedPorts", "compute.backendServices.insert",
                       "compute.urlMaps.patch"]
    assert order.index("compute.urlMaps.validate") < order.index("compute.urlMaps.patch")
    weights = result["plan"][2]["api_calls"]
    assert weights[0] == "compute.urlMaps.get" and "urlMaps.patch" in weights[2]
    warnings = json.dumps(result.get("warnings"))  # plain strings or (ansible-core 2.19) summaries
    assert "not observed (no Google credentials" in warnings and "GOOGLE_APPLICATION_CREDENTIALS" in warnings


def test_a_real_run_without_credentials_fails_at_the_first_step_naming_them(tmp_path):
    result = run(tmp_path, check=False)
    assert result.get("failed") is True and not result.get("changed"), result
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result["msg"]
    assert "Application Default Credentials" in result["msg"]


def test_bad_gce_input_is_refused_naming_the_option(tmp_path):
    result = run(tmp_path, check=True, image="catalog-v1-4-0@sha256:" + "a" * 64, version=None)
    assert result.get("failed") is True and result.get("param") == "image", result
    assert "projects/<project>/global/images/<name>" in result["msg"]
    result = run(tmp_path, check=True, infra=gce_infra(project="Bad_Project"))
    assert result.get("failed") is True and result.get("param") == "infra.gce.project", result


def test_a_secret_value_is_refused_a_secret_manager_reference_is_not(tmp_path):
    result = run(tmp_path, check=True, secret_env={"API_KEY": "hunter2-never-shown"})
    assert result.get("failed") is True and result.get("param") == "secret_env", result
    assert "secret_env.API_KEY" in result["msg"] and "hunter2-never-shown" not in json.dumps(result)
    ref = "projects/phoenix-dev/secrets/catalog-api-key/versions/3"
    result = run(tmp_path, check=True, secret_env={"API_KEY": ref})
    assert not result.get("failed"), result
