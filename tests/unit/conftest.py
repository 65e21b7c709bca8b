"""Unit tests import the collection by FQCN from the checkout (.tools/collections,
linked by `make setup`) and the Pulumi program from infra/."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
for path in (ROOT / ".tools" / "collections", ROOT / "infra"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
