"""``meta/runtime.yml`` declares the action group ``phoenix.deploy.phoenix``, so a
play sets the options its modules share once with ``module_defaults``; the
options rollout and release_info share are documented once, in the
``phoenix.deploy.target`` doc fragment (issue 10, item 5)."""
import json
import os
import pathlib
import subprocess
import sys

import yaml

from ansible_collections.phoenix.deploy.plugins.doc_fragments.target import ModuleDocFragment
from ansible_collections.phoenix.deploy.plugins.module_utils.targets import COMMON_SPEC

from .test_bad_input import COLLECTIONS, ROOT, fake_infra

MODULES = ["pulumi_stack", "image_bake", "image_promote", "rollout", "release_info", "registry_retention"]


def test_the_group_lists_every_module():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    assert sorted(runtime["action_groups"]["phoenix"]) == sorted(MODULES)
    assert sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")) == sorted(MODULES)


def test_module_defaults_of_the_group_reach_release_info(tmp_path):
    infra = fake_infra(tmp_path)
    (tmp_path / "include").mkdir()  # no instances: the platform is never called
    play = [{
        "hosts": "localhost", "gather_facts": False,
        "module_defaults": {"group/phoenix.deploy.phoenix": {
            "artifact": "catalog", "environment": "ci", "infra": infra,
            "store": str(tmp_path / "releases"), "image_store": str(tmp_path / "images")}},
        "tasks": [
            {"name": "Read the release store with the group's defaults",
             "phoenix.deploy.release_info": {"history": 5}, "register": "info"},
            {"name": "It read the empty store of catalog in ci",
             "ansible.builtin.assert": {"that": ["info.live is none", "info.history == []",
                                                 "info.groups == []"]}},
        ]}]
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_CONFIG=str(tmp_path / "none.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               PHOENIX_STATE_DIR=str(tmp_path / "state"))
    binary = pathlib.Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(binary), "-i", "localhost,", "-c", "local", "--check",
                           "-e", "ansible_python_interpreter=%s" % sys.executable, str(playbook)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok=2 " in proc.stdout and "failed=0" in proc.stdout, proc.stdout
    assert "s3cr3t-never-shown" not in proc.stdout


def test_the_doc_fragment_documents_the_common_spec():
    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert sorted(options) == sorted(COMMON_SPEC)
    for name, spec in COMMON_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("required", False) == spec.get("required", False), name
    for module in ("rollout", "release_info"):
        text = (ROOT / "plugins" / "modules" / (module + ".py")).read_text()
        doc = yaml.safe_load(text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])
        assert doc["extends_documentation_fragment"] == ["phoenix.deploy.target"]
        assert not set(doc["options"]) & set(COMMON_SPEC), module  # documented once
