"""phoenix.deploy infrastructure: compose the platform's components and export
the outputs contract (see README, "Stack outputs contract")."""
import importlib

import pulumi

import config
from phoenix_infra import contract

cfg = config.load()
PACKAGES = {"local": "local", "gce": "gcp", "kubernetes": "kubernetes"}
package = PACKAGES[cfg.platform]
if cfg.platform == "kubernetes" and cfg.get("cluster") == "local":
    package = "k8s_local"  # a single-node cluster on this machine instead of GKE
platform = importlib.import_module(f"phoenix_infra.{package}")
outputs = contract.complete(platform.build(cfg))
for key, value in outputs.items():
    pulumi.export(key, value)
