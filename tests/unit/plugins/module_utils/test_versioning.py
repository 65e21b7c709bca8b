"""Version and tag policy: semver parsing, build metadata, image names, mutable tags."""
import re

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.versioning import VersionError

GCE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
OCI = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@pytest.mark.parametrize("text, core, pre, build", [
    ("1.5.6", "1.5.6", (), ()),
    ("0.0.0", "0.0.0", (), ()),
    ("1.5.6-rc.1", "1.5.6", ("rc", "1"), ()),
    ("1.5.6+34e57f0.b456", "1.5.6", (), ("34e57f0", "b456")),
    ("1.5.6-alpha.beta-2+exp.sha.5114f85", "1.5.6", ("alpha", "beta-2"), ("exp", "sha", "5114f85")),
    ("10.20.30-0A.is.legal", "10.20.30", ("0A", "is", "legal"), ()),
])
def test_parse_valid(text, core, pre, build):
    v = versioning.parse(text)
    assert (v.core, v.prerelease, v.build, str(v)) == (core, pre, build, text)


@pytest.mark.parametrize("text", [
    "1.5", "1.5.6.7", "01.5.6", "1.05.6", "1.5.6-", "1.5.6+", "1.5.6-01", "1.5.6+a..b", "1.5.6 ", " 1.5.6",
    "1.5.6-rc/1", "1.5.6;rm -rf /", "../1.5.6", "1.5.6+a b", "", "one.two.three",
])
def test_parse_refuses_non_semver(text):
    with pytest.raises(VersionError, match=r"version .*(not semver|non-empty)"):
        versioning.parse(text)


@pytest.mark.parametrize("tag", ["latest", "LATEST", "stable", "main", "master", "nightly", "head", "edge"])
def test_mutable_tags_are_refused_with_what_to_use(tag):
    with pytest.raises(VersionError) as err:
        versioning.parse(tag)
    msg = str(err.value)
    assert "mutable tag" in msg and "MAJOR.MINOR.PATCH" in msg and "semver_build" in msg


def test_leading_v_says_how_to_write_it():
    with pytest.raises(VersionError, match=r"leading 'v'; write it as '1\.2\.3'"):
        versioning.parse("v1.2.3")


def test_option_name_in_message():
    with pytest.raises(VersionError, match=r"^release_version 'latest'"):
        versioning.parse("latest", option="release_version")


def test_git_hash_and_build_id_from_build_metadata():
    v = versioning.parse("1.5.6+34e57f0.b456")
    assert (v.git_hash, v.build_id) == ("34e57f0", "456")
    v = versioning.parse("1.5.6+exp.sha")
    assert (v.git_hash, v.build_id) == (None, None)


@pytest.mark.parametrize("version, git_hash, build_id, expected", [
    ("1.5.6", "34e57f0d1c2b3a4f", 456, "1.5.6+34e57f0.b456"),
    ("1.5.6", "34E57F0", "b456", "1.5.6+34e57f0.b456"),
    ("1.5.6-rc.1", "34e57f0", "0456", "1.5.6-rc.1+34e57f0.b456"),
    ("1.5.6+old.meta", "34e57f0", None, "1.5.6+34e57f0"),
])
def test_semver_build(version, git_hash, build_id, expected):
    assert versioning.semver_build(version, git_hash, build_id) == expected
    assert versioning.parse(expected).git_hash == "34e57f0"


@pytest.mark.parametrize("git_hash, build_id, match", [
    ("xyz1234", 1, "git_hash"), ("34e57", 1, "git_hash"),
    ("34e57f0", "b-1", "build_id"), ("34e57f0", "45 6", "build_id"),
])
def test_semver_build_refuses_bad_parts(git_hash, build_id, match):
    with pytest.raises(VersionError, match=match):
        versioning.semver_build("1.0.0", git_hash, build_id)


def test_semver_build_refuses_mutable_version():
    with pytest.raises(VersionError, match="mutable"):
        versioning.semver_build("latest", "34e57f0", 1)


@pytest.mark.parametrize("version, expected", [
    ("1.5.6", "catalog-v1-5-6"),
    ("1.5.6+34e57f0.b456", "catalog-v1-5-6--34e57f0-b456"),
    ("1.5.6-rc.1+34e57f0.b456", "catalog-v1-5-6-rc-1--34e57f0-b456"),
])
def test_image_name_readable(version, expected):
    assert versioning.image_name(version, "catalog") == expected


VERSIONS = [
    "1.5.6", "1.5.6-rc.1", "1.5.6+rc.1", "1.5.6-rc-1", "1.5.6-RC.1", "1.5.6-rc.1+34e57f0.b456",
    "1.5.6-rc.1+34E57F0.b456", "1.5.6+34e57f0.b456", "1.5.6+34e57f0.b457", "11.5.6", "1.15.6",
    "1.5.6-" + "x" * 80, "1.5.6-" + "x" * 80 + "y", "1.5.6+" + "a.b" * 30, "1.5.6-a.b" + ".c" * 40,
]


def test_image_names_are_valid_deterministic_and_distinct():
    names = {}
    for v in VERSIONS:
        name = versioning.image_name(v, "catalog-api")
        assert GCE.match(name), name
        assert OCI.match(name), name
        assert name == versioning.image_name(v, "catalog-api")
        assert name not in names, "%s and %s both map to %s" % (names.get(name), v, name)
        names[name] = v


@pytest.mark.parametrize("artifact", ["", "a", "Catalog", "1catalog", "catalog-", "../catalog", "cat/alog",
                                      "cat alog", "cat;alog", "cat$(id)", "cat`id`", "x" * 40, None])
def test_artifact_names_refused(artifact):
    with pytest.raises(VersionError, match=r"artifact .* not allowed: use 2-32 characters"):
        versioning.image_name("1.0.0", artifact)


def test_oci_tag():
    assert versioning.oci_tag("1.5.6+34e57f0.b456") == "1.5.6_34e57f0.b456"
    assert versioning.oci_tag("1.5.6-rc.1") == "1.5.6-rc.1"
    for v in VERSIONS[:10]:
        assert OCI.match(versioning.oci_tag(v))
    with pytest.raises(VersionError, match="mutable"):
        versioning.oci_tag("latest")


@pytest.mark.parametrize("tag, words", [("latest", "mutable tag"), ("stable", "mutable tag"),
                                        ("1.4", "not semver"), ("v1.4.0", "leading 'v'"),
                                        ("1.4.0_34e57f0", "not semver"), ("", "non-empty")])
def test_oci_tag_refuses_mutable_and_non_semver_naming_the_parameter(tag, words):
    with pytest.raises(VersionError, match=words) as err:
        versioning.oci_tag(tag, "tag")
    assert err.value.param == "tag" and str(err.value).startswith("tag ")


def test_oci_tags_are_one_to_one():
    tags = {}
    for v in VERSIONS:
        tag = versioning.oci_tag(v)
        assert "+" not in tag and tag.replace("_", "+") == v
        assert tags.setdefault(tag, v) == v


def test_precedence():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    shuffled = list(reversed(ordered))
    assert sorted(shuffled, key=lambda s: versioning.parse(s).precedence_key()) == ordered
    assert versioning.parse("1.0.0+a").precedence_key() == versioning.parse("1.0.0+b").precedence_key()


@pytest.mark.parametrize("text, git_hash, build_id", [
    ("1.4.0+b179026.b456", "b179026", "456"),  # a hash that looks like a build id (CI saw it)
    ("1.4.0+b179026", "b179026", None),
    ("1.4.0+34e57f0.b456", "34e57f0", "456"),
    ("1.4.0+b456", None, "456"),
])
def test_git_hash_and_build_id_are_told_apart(text, git_hash, build_id):
    version = versioning.parse(text)
    assert (version.git_hash, version.build_id) == (git_hash, build_id)
