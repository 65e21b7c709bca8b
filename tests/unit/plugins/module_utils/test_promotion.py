"""Promotion qualifies an image only after a release that analysis judged, or one
deployed with an explicit ``analysis: none`` (real image bundles and release
stores in a scratch directory)."""
import os

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import images, promotion, versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, Release, ROLLED_BACK, SUCCEEDED)

from test_images import make_image

VERSION = "1.0.0+abc1234.b7"


@pytest.fixture
def stores(tmp_path):
    name = versioning.image_name(VERSION, "catalog")
    _path, doc = make_image(tmp_path / "images", name, version=VERSION)
    yield {"test": str(tmp_path / "images"), "prod": str(tmp_path / "images-prod"),
           "releases": str(tmp_path / "releases"), "ref": "%s@%s" % (name, doc["content_digest"]),
           "name": name}
    images._make_writable(str(tmp_path))


def record(stores, environment, analysed, outcome=SUCCEEDED, finished=100.0, kind="deploy"):
    store = FileReleaseStore(stores["releases"])
    history = store.load("catalog", environment)
    release_id = history.new_release_id()
    history.add(Release(release_id, "catalog", environment, VERSION, stores["ref"], "rolling",
                        kind=kind, status="live", outcome=outcome, finished=finished,
                        analysed=analysed))
    store.save(history)
    return release_id


def promote(stores, sources=("ci", "integrated_qa")):
    return promotion.promote("catalog", VERSION, stores["test"], stores["prod"], stores["releases"],
                             list(sources))


@pytest.mark.parametrize("analysed, why", [
    (None, "no analysis configured"),
    ("inconclusive", "analysis inconclusive"),
])
def test_a_release_analysis_did_not_judge_does_not_qualify(stores, analysed, why):
    release_id = record(stores, "ci", analysed)
    with pytest.raises(PhoenixError) as err:
        promote(stores)
    assert err.value.param == "version"
    assert "has successful releases in ci, integrated_qa that analysis did not judge: " \
           "ci %s (%s)" % (release_id, why) in err.value.msg
    assert "analysis: none" in err.value.msg
    assert not os.path.exists(stores["prod"])


def test_failed_or_rolled_back_releases_never_qualify(stores):
    record(stores, "ci", "fail", outcome=ROLLED_BACK)
    with pytest.raises(PhoenixError, match="has no successful release in ci, integrated_qa"):
        promote(stores)


@pytest.mark.parametrize("analysed", ["pass", "none"])
def test_an_analysed_or_explicitly_unanalysed_release_qualifies(stores, analysed):
    record(stores, "ci", None, finished=200.0)  # newer, but not judged: skipped
    release_id = record(stores, "integrated_qa", analysed, finished=100.0)
    result = promote(stores)
    assert result["changed"] and result["qualified_by"] == {
        "environment": "integrated_qa", "release_id": release_id, "analysed": analysed}
    assert images.verify_image(os.path.join(stores["prod"], "local", "catalog", stores["name"]))


def test_a_rollback_to_the_image_is_not_a_qualifying_release(stores):
    record(stores, "ci", None, kind="rollback")
    with pytest.raises(PhoenixError, match="has no successful release in ci, integrated_qa"):
        promote(stores)
