# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Options of the modules that act on one artifact in one environment
    (``targets.COMMON_SPEC``): M(phoenix.deploy.rollout), M(phoenix.deploy.release_info)."""

    DOCUMENTATION = r"""
options:
  artifact:
    description: The deployable service, for example V(catalog).
    type: str
    required: true
  environment:
    description: Where the release runs, for example V(ci) or V(prod).
    type: str
    required: true
  infra:
    description:
      - The infra stack outputs (the C(outputs) of M(phoenix.deploy.pulumi_stack) registered with
        C(show_secrets=true)). Either this or O(project_path) and O(stack).
      - Never logged; in the module's output its secret values (the database password) are masked.
    type: dict
  project_path:
    description: Pulumi project to read the stack outputs from, with O(stack).
    type: path
  stack:
    description: Stack of O(project_path), for example V(local).
    type: str
  store:
    description:
      - Release store directory (history and locks of the V(file) backend; rollout reports of every backend).
        Defaults to C($PHOENIX_STATE_DIR/releases) (the playbooks' C(phoenix_release_store)), else
        C(<infra state_dir>/releases).
      - V(gs://<bucket>[/<prefix>]) keeps history and locks in a Cloud Storage bucket instead (one object per
        artifact and environment, written with generation preconditions; Application Default Credentials);
        leave O(store_backend) at V(auto) then.
    type: path
  store_backend:
    description:
      - Where the release history and the lock live.
      - V(file) - files in O(store) (atomic writes, a lock file); for one controller host.
      - V(kubernetes) - a ConfigMap (history, written with C(resourceVersion) compare-and-swap) and a
        C(coordination.k8s.io/v1) Lease (the lock, renewed while held, taken over once expired) per
        artifact and environment in the namespace of O(infra) C(kubernetes), so controllers on different
        machines share them. Needs the Python package C(kubernetes).
      - V(auto) - V(kubernetes) when the infra platform is C(kubernetes), else V(file).
    type: str
    default: auto
    choices: [auto, file, kubernetes]
  image_store:
    description: Image store of the bakes. Defaults to C($PHOENIX_STATE_DIR/images).
    type: path
"""
