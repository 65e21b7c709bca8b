# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the rollout and release_info modules share: the infra outputs (given
or read from a Pulumi stack), the platform driver for them, the release
store, and the image a version resolves to (verified before anything runs).
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils import images, versioning
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import is_oci_ref
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import FileReleaseStore

COMMON_SPEC = dict(
    artifact=dict(type="str", required=True),
    environment=dict(type="str", required=True),
    infra=dict(type="dict", no_log=True),  # carries the DB password; PhoenixModule masks only its secrets
    project_path=dict(type="path"),
    stack=dict(type="str"),
    store=dict(type="path"),
    store_backend=dict(type="str", default="auto", choices=["auto", "file", "kubernetes"]),
    image_store=dict(type="path"),
)


def load_infra(params) -> dict:
    infra = params.get("infra")
    if infra:
        _check_secrets(infra)
        return infra
    if params.get("infra_file"):
        return _infra_file(params["infra_file"])
    if not params.get("project_path") or not params.get("stack"):
        raise PhoenixError("infra: give the stack outputs (infra: \"{{ stack.outputs }}\" from "
                           "phoenix.deploy.pulumi_stack with show_secrets: true), or project_path "
                           "and stack to read them", param="infra")
    from ansible_collections.phoenix.deploy.plugins.module_utils import pulumi_stack
    runner = pulumi_stack.StackRunner(params["project_path"], params["stack"])
    infra = runner.outputs(show_secrets=True)
    if not infra:
        raise PhoenixError("stack %s of %s has no outputs: run phoenix.deploy.pulumi_stack first"
                           % (params["stack"], params["project_path"]), param="stack")
    return infra


def _infra_file(path) -> dict:
    """The stack outputs an operator exported with ``pulumi stack output
    --json --show-secrets`` (a stack this controller does not run)."""
    try:
        mode = os.stat(path).st_mode
        if mode & 0o077:
            raise PhoenixError("infra_file: %s is readable by group or others (mode %o); it holds the "
                               "database password: chmod 0600 it" % (path, mode & 0o777), param="infra_file")
        with open(path, encoding="utf-8") as handle:
            infra = json.load(handle)
    except OSError as exc:
        raise PhoenixError("infra_file: cannot read %s (%s); export the stack outputs with "
                           "pulumi stack output --json --show-secrets -s <stack> > %s"
                           % (path, exc.strerror, path), param="infra_file")
    except ValueError as exc:
        raise PhoenixError("infra_file: %s is not the JSON of pulumi stack output --json (%s)"
                           % (path, exc), param="infra_file")
    if not isinstance(infra, dict) or not infra.get("platform"):
        raise PhoenixError("infra_file: %s has no stack outputs (an object with platform); export them with "
                           "pulumi stack output --json --show-secrets" % path, param="infra_file")
    _check_secrets(infra)
    return infra


def _check_secrets(infra):
    password = (infra.get("database") or {}).get("password")
    if password == "[secret]":
        raise PhoenixError("infra.database.password reads '[secret]': register the "
                           "phoenix.deploy.pulumi_stack result with show_secrets: true, or pass "
                           "project_path and stack instead of infra", param="infra")


#: a GCE image self-link (the gce driver's resolve_image checks it exactly)
_GCE_IMAGE = re.compile(r"^(https://[a-z.]+/compute/v1/)?projects/[^/@]+/global/images/[^/@]+$")

#: the drivers that exist, by ``infra.platform``
DRIVERS = ("local", "kubernetes", "gce")


def make_platform(infra: dict, image_store=None, drain_timeout: float = 10.0, clock=None,
                  check_mode: bool = False):
    """The ``Platform`` (group manager, traffic router, metrics provider) for
    the infra outputs.  A driver's Python dependencies are checked here, so
    a module never imports a driver itself.  ``check_mode``: a cloud driver
    plans without credentials (it cannot observe its groups then)."""
    platform = infra.get("platform")
    if platform == "local":
        from ansible_collections.phoenix.deploy.plugins.module_utils.platforms import local
        _check_dependencies(platform, local.missing_dependencies())
        return local.LocalPlatform(infra, image_store=image_store, drain_timeout=drain_timeout,
                                   clock=clock)
    if platform in ("gce", "gcp"):
        from ansible_collections.phoenix.deploy.plugins.module_utils.platforms import gce
        _check_dependencies("gce", gce.missing_dependencies())
        return gce.GcePlatform(infra, clock=clock, plan_only=check_mode)
    if platform == "kubernetes":
        from ansible_collections.phoenix.deploy.plugins.module_utils.platforms import kubernetes
        _check_dependencies(platform, kubernetes.missing_dependencies())
        return kubernetes.KubernetesPlatform(infra, drain_timeout=drain_timeout, clock=clock)
    raise PhoenixError("infra.platform: %r has no driver yet; allowed: %s"
                       % (platform, ", ".join(DRIVERS)), param="infra")


def _check_dependencies(platform, missing):
    if missing:
        raise PhoenixError("the %s platform driver needs the Python package(s) %s on the host "
                           "that runs the module (pip install %s): %s"
                           % (platform, ", ".join(m[0] for m in missing),
                              " ".join(m[0] for m in missing),
                              "; ".join(str(m[1]) for m in missing)), param="infra")


def default_store_root(infra: dict) -> str:
    """The one default the modules and the playbooks share:
    ``$PHOENIX_STATE_DIR/releases`` (what ``phoenix_release_store`` is in every
    inventory), else ``<infra state_dir>/releases``."""
    state = os.environ.get("PHOENIX_STATE_DIR") or infra.get("state_dir")
    if not state:
        raise PhoenixError("store: no release store path, PHOENIX_STATE_DIR is unset and the "
                           "infra has no state_dir; set store", param="store")
    return os.path.join(state, "releases")


#: where history and locks live, by ``store_backend``
STORE_BACKENDS = ("auto", "file", "kubernetes")


def make_store(params, infra):
    """The release store: ``store`` ``gs://<bucket>[/<prefix>]``
    (``GCSReleaseStore``; reports stay under the default store directory),
    else by ``store_backend``: ``file`` (``store`` directory), ``kubernetes``
    (ConfigMap + Lease in the namespace of ``infra.kubernetes``, shared by
    every controller of the cluster; ``store`` keeps only local files such as
    reports), or ``auto`` (the default): ``kubernetes`` when
    ``infra.platform`` is kubernetes, else ``file``."""
    from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores import gcs
    backend = params.get("store_backend") or "auto"
    if backend not in STORE_BACKENDS:
        raise PhoenixError("store_backend: %r; allowed: %s" % (backend, ", ".join(STORE_BACKENDS)),
                           param="store_backend")
    store = params.get("store")
    if gcs.is_gcs_location(store):
        if backend not in ("auto",):
            raise PhoenixError("store_backend: %s does not go with store %r (a Cloud Storage bucket); "
                               "leave store_backend at auto" % (backend, store), param="store_backend")
        bucket, prefix = gcs.parse_location(store, "store")
        try:
            local = default_store_root(infra)
        except PhoenixError:
            local = None
        return gcs.GCSReleaseStore(bucket, prefix, local_root=local)
    if gcs.is_url(store):
        raise PhoenixError("store: %r is not supported; allowed: a directory, or gs://<bucket>[/<prefix>] "
                           "for a Cloud Storage bucket" % store, param="store")
    root = store or default_store_root(infra)
    if backend == "auto":
        backend = "kubernetes" if infra.get("platform") == "kubernetes" else "file"
    if backend == "file":
        return FileReleaseStore(root)
    from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores import kubernetes
    missing = kubernetes.missing_dependencies()
    if missing:
        raise PhoenixError("store_backend: kubernetes needs the Python package kubernetes on the host "
                           "that runs the module (pip install kubernetes): %s" % missing[0][1],
                           param="store_backend")
    if not isinstance(infra.get("kubernetes"), dict):
        raise PhoenixError("store_backend: kubernetes needs the outputs of a platform kubernetes "
                           "stack (infra.kubernetes with api_server, ca_cert, token, namespace); "
                           "infra.platform is %r: use store_backend file" % (infra.get("platform"),),
                           param="store_backend")
    return kubernetes.ConfigMapReleaseStore(infra["kubernetes"], root)


def resolve_image(artifact: str, version, image, image_store=None, infra=None) -> dict:
    """``{"ref": "<name>@<digest>", "version", "name", "path", "digest"}`` of a
    baked local image, verified (content digest recomputed) before use.  An
    OCI reference ``registry/repo@sha256:<64 hex>`` is checked for shape only
    (``path`` None): the platform's ``resolve_image`` says whether it runs it."""
    if (infra or {}).get("platform") in ("gce", "gcp"):
        return _gce_image(artifact, version, image, infra)
    store = images.ImageStore(image_store or images.default_store())
    digest = None
    if image:
        if is_oci_ref(str(image)) or _GCE_IMAGE.match(str(image)):
            # the driver decides whether it can run it (resolve_image)
            repo, _sep, digest = str(image).partition("@")
            return {"ref": str(image), "version": version, "name": repo, "path": None,
                    "digest": digest or None}
        name, _sep, digest = str(image).partition("@")
        if not name or "/" in name:
            raise PhoenixError("image: %r; give a baked image name (e.g. catalog-v1-4-0--abc1234-b7), "
                               "optionally with @sha256:<content digest>, or an OCI reference "
                               "registry/repository@sha256:<64 hex digits>, or a GCE image self-link "
                               "projects/<project>/global/images/<name>" % (image,), param="image")
    else:
        name = _versioned_name(artifact, version)
    path = store.path("local", artifact, name)
    if not os.path.isdir(path):
        what = "image %s" % name if image else "version %s of %s (image %s)" % (version, artifact, name)
        raise PhoenixError("%s is not baked: no %s; bake it with phoenix.deploy.image_bake "
                           "(image_store: %s)" % (what, path, store.root),
                           param="image" if image else "version")
    try:
        doc = images.verify_image(path, digest or None)
    except images.ImageError as exc:
        raise PhoenixError(str(exc), param="image" if image else "version")
    if doc.get("artifact") != artifact:
        raise PhoenixError("image %s belongs to artifact %s, not %s"
                           % (name, doc.get("artifact"), artifact), param="image")
    if version is not None and image and doc.get("version") != version:
        raise PhoenixError("image %s is version %s, but version is %s"
                           % (name, doc.get("version"), version), param="version")
    return {"ref": "%s@%s" % (name, doc["content_digest"]), "version": doc["version"],
            "name": name, "path": path, "digest": doc["content_digest"]}


def _versioned_name(artifact, version) -> str:
    """The image name a bake of ``version`` of ``artifact`` made (``version`` is required)."""
    if version is None:
        raise PhoenixError("version or image is required for action deploy", param="version")
    try:
        versioning.parse(version, "version")
        return versioning.image_name(version, artifact)
    except versioning.VersionError as exc:
        raise PhoenixError(str(exc), param="version")


def _gce_image(artifact, version, image, infra) -> dict:
    """On GCE an image is a self-link (the driver's ``resolve_image`` checks it
    exactly); a version alone names the image its bake made in the stack's project."""
    if image:
        if not _GCE_IMAGE.match(str(image)):
            raise PhoenixError("image: %r; the gce platform runs a GCE image self-link "
                               "projects/<project>/global/images/<name>" % (image,), param="image")
        return {"ref": str(image), "version": version, "name": str(image).rsplit("/", 1)[-1],
                "path": None, "digest": None}
    name = _versioned_name(artifact, version)
    project = ((infra or {}).get("gce") or {}).get("project")
    ref = "projects/%s/global/images/%s" % (project, name)
    return {"ref": ref, "version": version, "name": name, "path": None, "digest": None}
