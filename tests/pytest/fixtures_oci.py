"""Fixtures for OCI bakes: real mmdebstrap + umoci runs (target oci), one image store per session.

``catalog_oci_store`` keeps its base layer cache (``<store>/.oci-base``) for the whole session, so only the
first bake builds the base; ``catalog_oci_image`` is catalog 1.0.0 baked there."""
import functools
import os
import time

import pytest

from fixtures_bake import GIT_HASH, make_writable

from ansible_collections.phoenix.deploy.plugins.module_utils import oci

OCI_TOOLS = ("umoci", "mmdebstrap")


def require_oci_tools():
    missing = oci.missing_tools(OCI_TOOLS)
    if missing:
        pytest.fail("%s missing: apt-get install -y umoci mmdebstrap (make setup installs them)" % ", ".join(missing))
    if os.geteuid() != 0:
        pytest.fail("target oci needs root (mmdebstrap in root mode, overlay mounts)")


@pytest.fixture(scope="session")
def catalog_oci_store(tmp_path_factory):
    require_oci_tools()
    store = tmp_path_factory.mktemp("oci-store")
    yield store
    make_writable(store)


@pytest.fixture(scope="session")
def oci_bake(bake):
    """oci_bake(store, version, **vars) -> engine result of a target oci bake of catalog."""
    return functools.partial(bake, target="oci")


@pytest.fixture(scope="session")
def catalog_oci_image(catalog_oci_store, oci_bake):
    """catalog 1.0.0 baked as an OCI image (base layer built first): (engine result, seconds)."""
    t0 = time.monotonic()
    result = oci_bake(catalog_oci_store, "1.0.0+%s.b1" % GIT_HASH)
    return result, time.monotonic() - t0
