"""Test helpers shared by tests/unit and tests/pytest (``gcp_fake``, the
schema-checking fake of Google's APIs) are imported from this directory."""
import pathlib
import sys

TESTS = str(pathlib.Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
