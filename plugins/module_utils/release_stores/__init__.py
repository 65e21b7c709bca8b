# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release stores beside ``releases.FileReleaseStore``: ``kubernetes``
(history in a ConfigMap, the lock in a coordination.k8s.io Lease) and
``gcs`` (objects in a Cloud Storage bucket, generation preconditions).
``targets.make_store`` picks one from the ``store_backend`` option and the
infra outputs."""
