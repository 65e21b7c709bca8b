# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Version and tag policy filters: semver_build, image_name, oci_tag, semver.

Documentation: one YAML file per filter beside this file (semver_build.yml, ...)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.phoenix.deploy.plugins.module_utils import versioning


def _wrap(func):
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except versioning.VersionError as exc:
            raise AnsibleFilterError(str(exc))
    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


def semver_build(version, git_hash, build_id=None):
    """'1.5.6' | semver_build('34e57f0d...', 456) -> '1.5.6+34e57f0.b456'"""
    return versioning.semver_build(version, git_hash, build_id)


def image_name(version, artifact):
    """'1.5.6+34e57f0.b456' | image_name('catalog') -> 'catalog-v1-5-6--34e57f0-b456'"""
    return versioning.image_name(version, artifact)


def oci_tag(version):
    """'1.5.6+34e57f0.b456' | oci_tag -> '1.5.6_34e57f0.b456'"""
    return versioning.oci_tag(version)


def semver(version):
    """Parse and check a version; returns its parts (refuses latest and other mutable tags)."""
    v = versioning.parse(version)
    return {
        "version": str(v), "core": v.core, "major": v.major, "minor": v.minor, "patch": v.patch,
        "prerelease": ".".join(v.prerelease), "build": ".".join(v.build),
        "git_hash": v.git_hash, "build_id": v.build_id,
    }


def semver_valid(version):
    """True when the version is semver and not a mutable tag (never raises)."""
    return versioning.is_semver(version)


class FilterModule(object):
    """phoenix.deploy version filters."""

    def filters(self):
        return {
            "semver_build": _wrap(semver_build),
            "image_name": _wrap(image_name),
            "oci_tag": _wrap(oci_tag),
            "semver": _wrap(semver),
            "semver_valid": semver_valid,
        }
