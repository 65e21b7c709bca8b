"""phoenix.deploy.image_bake: its options parsed by AnsibleModule, refusals
naming the option, and a check-mode run on the example artifact that predicts
a bake and writes nothing."""
import pathlib

from .module_runner import run_failing, run_main

ROOT = pathlib.Path(__file__).resolve().parents[4]
VERSION = "1.0.0+abcdef0.b1"


def args(tmp_path, **extra):
    base = {"artifact": "catalog", "version": VERSION, "source": str(ROOT / "examples" / "catalog"),
            "store": str(tmp_path / "images"), "project_dir": str(ROOT)}
    base.update(extra)
    return base


def test_missing_source_is_named(tmp_path):
    bad = args(tmp_path)
    del bad["source"]
    assert "missing required arguments: source" in run_failing("image_bake", bad)["msg"]


def test_unknown_target_names_the_choices(tmp_path):
    msg = run_failing("image_bake", args(tmp_path, target="floppy"))["msg"]
    assert "target" in msg and "local" in msg and "gce" in msg


def test_retain_must_be_an_integer(tmp_path):
    assert "retain" in run_failing("image_bake", args(tmp_path, retain="many"))["msg"]


def test_negative_retain_is_refused_naming_the_option(tmp_path):
    result = run_failing("image_bake", args(tmp_path, retain=-1))
    assert result["param"] == "retain" and "retain" in result["msg"]


def test_mutable_version_is_refused_naming_the_option(tmp_path):
    result = run_failing("image_bake", args(tmp_path, version="latest"))
    assert result["param"] == "version" and "mutable tag" in result["msg"]
    assert not (tmp_path / "images").exists()


def test_check_mode_predicts_a_bake_and_writes_nothing(tmp_path):
    end = run_main("image_bake", args(tmp_path), check_mode=True)
    assert not end.failed, end.result
    result = end.result
    assert result["changed"] is True and result["cache_hit"] is False and result["packer_ran"] is False
    assert result["image"]["name"] == "catalog-v1-0-0--abcdef0-b1"
    assert result["diff"]["after"]["baked"] == result["image"]["name"]
    assert not (tmp_path / "images").exists()
