"""The Jenkins pipeline runs nothing the test suite does not run.

* Every shell step of the Jenkinsfile is a make target, a script under
  scripts/ or a playbook with the README's one-line interface; the scripts
  are run here with the exact command text of the Jenkinsfile.
* jobs/ renders with Jenkins Job Builder into a pipeline job with an SCM
  trigger and the Jenkinsfile as script path.
* The environments the pipeline deploys to (inventories/<environment>) exist,
  define the same keys, and their strategy / analysis settings pass the
  engine's own validation."""
import contextlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".tools" / "collections"))
from ansible_collections.phoenix.deploy.plugins.module_utils import analysis, strategies, versioning  # noqa: E402

JENKINSFILE = (ROOT / "Jenkinsfile").read_text()
HELPER = 'sh(label: command, script: "#!/bin/bash\\nset -euo pipefail\\nsource scripts/env.sh\\n${command}")'
STAGES = ["Test", "Version", "Bake", "Deploy to ci", "Integration checks on ci", "Promote", "Deploy to prod"]
ENVIRONMENTS = sorted(p.parent.parent.name for p in (ROOT / "inventories").glob("*/group_vars/all.yml"))
DEPLOY_VARS = {"artifact", "environment", "version", "strategy", "bake"}


def strip_comments(groovy):
    return re.sub(r"(?m)^\s*//.*$|\s+//[^'\"\n]*$", "", groovy)


def pipeline_env():
    """Literal values of the pipeline's environment {} block."""
    return dict(re.findall(r"(?m)^\s*([A-Z_]+)\s*=\s*'([^']*)'\s*$", JENKINSFILE))


def shell_steps():
    """(stage, kind, command) of every shell step: `sh '...'`, `sh(script: '...')`, `phoenix '...'`."""
    steps, stage = [], None
    for line in strip_comments(JENKINSFILE).splitlines():
        if m := re.search(r"stage\('([^']+)'\)", line):
            stage = m.group(1)
        for m in re.finditer(r"(?<![\w./-])(sh|phoenix)\s*\(?\s*(?:script:\s*)?'([^']*)'", line):
            steps.append((stage, m.group(1), m.group(2)))
    return steps


def jenkins_command(stage, prefix):
    found = [c for s, _k, c in shell_steps() if s == stage and c.startswith(prefix)]
    assert len(found) == 1, f"stage {stage!r}: want one step starting {prefix!r}, found {found}"
    return found[0]


def run_like_jenkins(command, env_extra, cwd=ROOT):
    """Run a Jenkinsfile command as the `phoenix` helper does (bash, env.sh sourced)."""
    env = dict(os.environ, **pipeline_env(), **env_extra)
    script = f"set -euo pipefail\nsource {shlex.quote(str(ROOT / 'scripts/env.sh'))}\n{command}"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- Jenkinsfile structure

def test_every_shell_step_is_a_known_command():
    all_sh = re.findall(r"(?<![\w./-])sh\s*[('\"]", strip_comments(JENKINSFILE))
    steps = shell_steps()
    assert HELPER in JENKINSFILE, "the phoenix() helper must run commands exactly like the Makefile (source scripts/env.sh)"
    # every `sh` is either the helper's template or a parsed step: nothing hides elsewhere
    assert len(all_sh) == 1 + sum(1 for _s, k, _c in steps if k == "sh")
    make_targets = set(re.findall(r"(?m)^([a-z][a-z0-9_-]*):", (ROOT / "Makefile").read_text()))
    kinds = []
    for stage, _kind, command in steps:
        argv = shlex.split(command)
        assert not set(command) & set(";|&`()<>"), f"{stage}: {command!r} is more than one command"
        if argv[0] == "make":
            assert len(argv) == 2 and argv[1] in make_targets, f"{stage}: make target {argv[1:]} not in Makefile"
            kinds.append((stage, "make"))
        elif argv[0].startswith("scripts/"):
            script = ROOT / argv[0]
            assert script.is_file() and os.access(script, os.X_OK), f"{stage}: {argv[0]} missing or not executable"
            assert argv[0] in ("scripts/ci-version.sh", "scripts/smoke.sh"), \
                f"{stage}: {argv[0]} is not one of the scripts this file runs"
            kinds.append((stage, "script"))
        elif argv[0] == "ansible-playbook":
            # existence and syntax: test_pipeline_playbooks_parse
            assert re.fullmatch(r"playbooks/[a-z_]+\.yml", argv[1]), f"{stage}: {argv[1]} is not under playbooks/"
            pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
            assert len(argv) == 2 + 2 * len(pairs), f"{stage}: only `-e key=value` options allowed: {command!r}"
            extra = dict(p.split("=", 1) for p in pairs)
            assert set(extra) <= DEPLOY_VARS, f"{stage}: unknown -e {sorted(set(extra) - DEPLOY_VARS)}"
            if "environment" in extra:
                assert extra["environment"] in ENVIRONMENTS, f"{stage}: no inventories/{extra['environment']}"
            kinds.append((stage, "playbook"))
        else:
            pytest.fail(f"{stage}: {command!r} is not a make target, a script under scripts/ or a playbook")
    assert kinds == [("Test", "make"), ("Version", "script"), ("Bake", "playbook"), ("Deploy to ci", "playbook"),
                     ("Integration checks on ci", "script"), ("Promote", "playbook"),
                     ("Deploy to prod", "playbook"), ("Deploy to prod", "script")]


@pytest.mark.parametrize("playbook", sorted({shlex.split(c)[1] for _s, _k, c in shell_steps()
                                             if c.startswith("ansible-playbook ")}))
def test_pipeline_playbooks_parse(playbook, run):
    """The playbooks Jenkins runs exist and pass ansible-playbook --syntax-check."""
    assert (ROOT / playbook).is_file(), f"{playbook}: the Jenkinsfile runs it but it is not in the repository"
    run(["ansible-playbook", "--syntax-check", playbook], cwd=ROOT)


def test_stage_order_and_approval_gate():
    stages = re.findall(r"stage\('([^']+)'\)", JENKINSFILE)
    assert stages == STAGES
    prod = JENKINSFILE[JENKINSFILE.index("stage('Deploy to prod')"):]
    assert prod.index("input {") < prod.index("environment=prod"), "prod deploy must wait for the input approval"
    assert "make test" in JENKINSFILE[JENKINSFILE.index("stage('Test')"):JENKINSFILE.index("stage('Version')")]


def test_deploy_steps_use_the_one_line_interface():
    """Jenkins deploys with the README's one-liner: artifact, environment, version, nothing else."""
    for stage, environment in (("Deploy to ci", "ci"), ("Deploy to prod", "prod")):
        command = jenkins_command(stage, "ansible-playbook playbooks/deploy.yml")
        assert command == ("ansible-playbook playbooks/deploy.yml -e artifact=$ARTIFACT "
                           f"-e environment={environment} -e version=$PHOENIX_VERSION")
    artifact = pipeline_env()["ARTIFACT"]
    for environment in ("ci", "prod"):
        assert artifact in inventory(environment)["phoenix_artifacts"]


# --------------------------------------------------------------------------- scripts/ci-version.sh

def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", *args],
                   check=True, capture_output=True, text=True)


def head(repo):
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()


def checkout(path):
    """A work tree that carries scripts/ci-version.sh, like Jenkins' workspace."""
    (path / "scripts").mkdir(parents=True)
    (path / "scripts/ci-version.sh").write_bytes((ROOT / "scripts/ci-version.sh").read_bytes())
    (path / "scripts/ci-version.sh").chmod(0o755)
    return path


def ci_version(cwd, build="456"):
    env = {"BUILD_NUMBER": build} if build is not None else {}
    proc = run_like_jenkins(jenkins_command("Version", "scripts/ci-version.sh"), env, cwd=cwd)
    return proc


def test_ci_version_in_this_checkout():
    proc = ci_version(ROOT)
    assert proc.returncode == 0, proc.stderr
    version = versioning.parse(proc.stdout.strip())
    assert version.build_id == "456"
    assert version.git_hash == head(ROOT)


def test_ci_version_from_tags(tmp_path):
    repo = checkout(tmp_path / "repo")
    git(repo, "init", "-q")
    (repo / "galaxy.yml").write_text("namespace: x\nname: y\nversion: 2.3.0\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    # no tag yet: the galaxy.yml version as a pre-release
    assert ci_version(repo).stdout.strip() == f"2.3.0-dev.1+{head(repo)}.b456"
    git(repo, "tag", "v1.4.0")
    assert ci_version(repo).stdout.strip() == f"1.4.0+{head(repo)}.b456"
    assert ci_version(repo, build=None).stdout.strip() == f"1.4.0+{head(repo)}"
    git(repo, "commit", "-q", "--allow-empty", "-m", "two")
    git(repo, "commit", "-q", "--allow-empty", "-m", "three")
    after = ci_version(repo, build="457").stdout.strip()
    assert after == f"1.4.1-dev.2+{head(repo)}.b457"
    # sorts after the tag and before the next release
    key = versioning.Version.precedence_key
    assert key(versioning.parse("1.4.0")) < key(versioning.parse(after)) < key(versioning.parse("1.4.1"))


@pytest.mark.parametrize("build, tag, message", [
    ("45x", None, "BUILD_NUMBER='45x' is not a CI build number"),
    ("1", "v1.4", None),            # not a full semver tag: ignored by --match, falls back to 0.0.0-dev
    ("1", "v1.4.0rc1", "is not vMAJOR.MINOR.PATCH"),
])
def test_ci_version_refuses(tmp_path, build, tag, message):
    repo = checkout(tmp_path / "repo")
    git(repo, "init", "-q")
    git(repo, "commit", "-q", "--allow-empty", "-m", "one")
    if tag:
        git(repo, "tag", tag)
    proc = ci_version(repo, build=build)
    if message:
        assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == f"0.0.0-dev.1+{head(repo)}.b1"


def test_ci_version_outside_git(tmp_path):
    proc = ci_version(checkout(tmp_path / "plain"))
    assert proc.returncode == 2 and "not a git work tree" in proc.stderr


# --------------------------------------------------------------------------- scripts/smoke.sh

@contextlib.contextmanager
def http_service(version, health=200, artifact="catalog"):
    """A plain HTTP server on 127.0.0.1 standing in for the LB of an environment."""
    hosts = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hosts.append(self.headers.get("Host"))
            if self.path == "/healthz":
                code, body = health, {"status": "ok" if health == 200 else "draining"}
            elif self.path == "/version":
                code, body = 200, {"artifact": artifact, "version": version}
            else:
                code, body = 404, {"error": "not found"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hosts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


VERSION = "1.4.0+34e57f0.b456"


@pytest.mark.parametrize("stage", ["Integration checks on ci", "Deploy to prod"])
def test_smoke_passes(stage):
    command = jenkins_command(stage, "scripts/smoke.sh")
    with http_service(VERSION) as (url, hosts):
        proc = run_like_jenkins(command, {"PHOENIX_VERSION": VERSION, "PHOENIX_SMOKE_URL": url})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20 rounds" in proc.stdout and "0 failed checks" in proc.stdout
    assert f'{{"{VERSION}": 20}}' in proc.stdout
    assert len(hosts) == 40 and set(hosts) == {"catalog"}  # routed by Host: <artifact>


@pytest.mark.parametrize("service, wanted", [
    ({"version": "1.3.9+0000000.b455"}, "version '1.3.9+0000000.b455', want '1.4.0+34e57f0.b456'"),
    ({"version": VERSION, "health": 503}, "/healthz -> 503"),
    ({"version": VERSION, "artifact": "search"}, "artifact 'search', want 'catalog'"),
])
def test_smoke_fails(service, wanted):
    command = jenkins_command("Integration checks on ci", "scripts/smoke.sh")
    with http_service(**service) as (url, _hosts):
        proc = run_like_jenkins(command, {"PHOENIX_VERSION": VERSION, "PHOENIX_SMOKE_URL": url})
    assert proc.returncode == 1
    assert wanted in proc.stdout and "FAIL " in proc.stdout


def test_smoke_unreachable_and_bad_usage():
    with http_service(VERSION) as (url, _hosts):
        pass  # closed: nothing listens there any more
    proc = run_like_jenkins(f"scripts/smoke.sh ci --requests 2 --url {url}", {})
    assert proc.returncode == 1 and "Connection refused" in proc.stdout
    proc = run_like_jenkins("scripts/smoke.sh staging", {})
    assert proc.returncode == 2 and "unknown environment 'staging'" in proc.stderr
    assert "environments: ci gcp-dev integrated_qa k8s local prod" in proc.stderr


# --------------------------------------------------------------------------- jobs/ (Jenkins Job Builder)

def test_jjb_renders_pipeline_job(tmp_path, run):
    out = tmp_path / "out"
    run(["jenkins-jobs", "test", str(ROOT / "jobs"), "-o", str(out)], cwd=ROOT)
    rendered = sorted(p.name for p in out.iterdir())
    assert rendered == ["phoenix-deploy"]
    xml = ET.parse(out / "phoenix-deploy").getroot()
    assert xml.tag == "flow-definition"
    definition = xml.find("definition")
    assert definition.get("class") == "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition"
    script_path = definition.findtext("scriptPath")
    assert script_path == "Jenkinsfile" and (ROOT / script_path).is_file()
    assert definition.find("scm").get("class") == "hudson.plugins.git.GitSCM"
    assert [b.findtext("name") for b in definition.iter("hudson.plugins.git.BranchSpec")] == ["*/main"]
    assert definition.find(".//extensions/hudson.plugins.git.extensions.impl.WipeWorkspace") is None
    triggers = xml.findall(".//triggers/hudson.triggers.SCMTrigger")
    assert len(triggers) == 1 and triggers[0].findtext("spec").strip()
    assert xml.find(".//org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty") is not None


# --------------------------------------------------------------------------- environments

KEYS = {"phoenix_environment", "phoenix_platform", "phoenix_stack", "phoenix_infra_dir", "phoenix_infra_config",
        "phoenix_artifacts", "phoenix_state_dir", "phoenix_release_store", "phoenix_image_stores",
        "phoenix_image_store_kind", "phoenix_image_store", "phoenix_require_promoted_image",
        "phoenix_promotion_sources", "phoenix_instances", "phoenix_strategy", "phoenix_strategy_settings",
        "phoenix_analysis", "phoenix_db_backup_before_migration"}
_INVENTORIES = {}


def inventory(environment):
    """The environment's variables as Ansible renders them (templates resolved)."""
    if environment not in _INVENTORIES:
        expr = "{{ {" + ", ".join(f"'{k}': {k}" for k in sorted(KEYS)) + "} | to_json }}"
        proc = subprocess.run(["ansible", "localhost", "-i", f"inventories/{environment}", "--playbook-dir",
                               "playbooks", "-o", "-m", "ansible.builtin.debug", "-a", f"msg={expr}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout.split("=>", 1)[1])
        _INVENTORIES[environment] = json.loads(result["msg"]) if isinstance(result["msg"], str) else result["msg"]
    return _INVENTORIES[environment]


def test_environments_exist():
    assert ENVIRONMENTS == ["ci", "gcp-dev", "integrated_qa", "k8s", "local", "prod"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_environment_settings(environment):
    env = inventory(environment)
    assert env["phoenix_environment"] == environment
    assert env["phoenix_platform"] in ("local", "gce", "kubernetes")
    assert env["phoenix_strategy"] in strategies.STRATEGIES
    assert set(env["phoenix_instances"]) == set(env["phoenix_artifacts"])
    for artifact, size in env["phoenix_instances"].items():
        for name in strategies.STRATEGIES:  # every strategy's settings pass the engine's validation
            strategies.parse_settings(name, env["phoenix_strategy_settings"][name], size)
    if env["phoenix_analysis"] != "none":  # none: deployed without analysis on purpose, recorded as such
        spec = analysis.AnalysisSpec.from_dict(env["phoenix_analysis"])
        assert spec.min_requests >= 1  # no data is never a pass
    assert env["phoenix_image_store"] == env["phoenix_image_stores"][env["phoenix_image_store_kind"]]
    assert env["phoenix_release_store"].startswith(env["phoenix_state_dir"])
    assert env["phoenix_state_dir"] == os.environ["PHOENIX_STATE_DIR"]


def test_environments_side_by_side():
    envs = {name: inventory(name) for name in ENVIRONMENTS}
    # same stores for all: one artifact moves through all environments unchanged
    assert len({json.dumps(e["phoenix_image_stores"], sort_keys=True) for e in envs.values()}) == 1
    # separate stacks (own state dir, loopback block) and port ranges
    assert len({e["phoenix_stack"] for e in envs.values()}) == len(envs)
    ranges = [e["phoenix_infra_config"].get("port_range", "24000-24999") for e in envs.values()
              if e["phoenix_platform"] != "gce"]  # a GCP stack has no loopback port range
    assert len(set(ranges)) == len(ranges)
    # only prod requires a promoted image, and deploys from the prod store
    assert {n for n, e in envs.items() if e["phoenix_require_promoted_image"]} == {"prod"}
    assert {n: e["phoenix_image_store_kind"] for n, e in envs.items()} == \
        {"ci": "test", "gcp-dev": "test", "integrated_qa": "test", "k8s": "test", "local": "test", "prod": "prod"}
    assert set(envs["prod"]["phoenix_promotion_sources"]) <= {"ci", "integrated_qa"}
    # prod judges, and at least as strictly as every other environment that analyses
    assert envs["prod"]["phoenix_analysis"] != "none"
    for other in (e["phoenix_analysis"] for e in envs.values() if e["phoenix_analysis"] != "none"):
        assert envs["prod"]["phoenix_analysis"]["max_error_rate"] <= other["max_error_rate"]
        assert envs["prod"]["phoenix_analysis"]["min_requests"] >= other["min_requests"]
