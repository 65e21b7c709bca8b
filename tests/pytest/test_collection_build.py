"""`ansible-galaxy collection build` makes a tarball that `ansible-galaxy
collection install` accepts, without dev-only files, and whose modules load."""
import os
import tarfile

import yaml


def test_build_and_install(tmp_path, run, repo_root):
    run(["ansible-galaxy", "collection", "build", "--force", "--output-path", str(tmp_path), str(repo_root)],
        cwd=repo_root)
    tarballs = list(tmp_path.glob("phoenix-deploy-*.tar.gz"))
    assert len(tarballs) == 1
    names = tarfile.open(tarballs[0]).getnames()
    assert "plugins/modules/pulumi_stack.py" in names
    assert "MANIFEST.json" in names and "galaxy.yml" not in names
    for dev_only in (".venv", ".tools", ".state", "infra", "tools", "scripts", "bench", "Makefile",
                     "requirements-galaxy.txt", "requirements-galaxy.lock", ".ansible-lint", "docs-notes"):
        assert not any(n == dev_only or n.startswith(dev_only + "/") for n in names), dev_only
    dest = tmp_path / "collections"
    # A clean Ansible config: only the fresh collections path, not the checkout's.
    clean_cfg = tmp_path / "ansible.cfg"
    clean_cfg.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(dest), ANSIBLE_CONFIG=str(clean_cfg))
    run(["ansible-galaxy", "collection", "install", "--force", str(tarballs[0]), "-p", str(dest)], env=env)
    installed = dest / "ansible_collections" / "phoenix" / "deploy"
    assert (installed / "MANIFEST.json").exists()
    doc = run(["ansible-doc", "-t", "module", "phoenix.deploy.pulumi_stack"], env=env, cwd=tmp_path)
    assert "project_path" in doc.stdout
    assert str(dest) in run(["ansible-galaxy", "collection", "list", "-p", str(dest)], env=env, cwd=tmp_path).stdout


def test_every_role_is_documented_with_the_collection_licence(repo_root):
    """What Galaxy's importer wants of each role (it fails on "No role readme
    found"): a README, meta/argument_specs.yml, and the collection's licence."""
    licence = yaml.safe_load((repo_root / "galaxy.yml").read_text())["license"]
    roles = sorted(p for p in (repo_root / "roles").iterdir() if p.is_dir())
    assert roles
    for role in roles:
        assert (role / "README.md").is_file(), f"{role.name}: no README.md"
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        assert specs["main"]["options"], f"{role.name}: no options in meta/argument_specs.yml"
        defaults = role / "defaults" / "main.yml"
        for var in (yaml.safe_load(defaults.read_text()) or {}) if defaults.exists() else {}:
            assert var.startswith(role.name + "_"), f"{role.name}: variable {var} lacks the role prefix"
            assert var in specs["main"]["options"], f"{role.name}: {var} is not in meta/argument_specs.yml"
        meta = yaml.safe_load((role / "meta" / "main.yml").read_text())
        assert [meta["galaxy_info"]["license"]] == licence, role.name
