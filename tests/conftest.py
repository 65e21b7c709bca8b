"""Test helpers shared by tests/unit and tests/pytest (``gcp_fake``, the
schema-checking fake of Google's APIs) are imported from this directory."""
import pathlib
import sys

TESTS = str(pathlib.Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import os  # noqa: E402

# Network rule: no test may reach anything but loopback. google-auth looks for
# Application Default Credentials on the GCE metadata server (169.254.169.254)
# when no key file is set, and version 2.62 ignores NO_GCE_CHECK: point it at
# a loopback port where nothing listens (port 9, discard), for every test and
# every process a test starts.
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
