"""make bench: run every benchmark module in bench/ and print one table.

Each module ``bench/<name>.py`` exposes ``run() -> list[dict]`` with rows
{name, value, unit, goal}. Results go to bench/results/<UTC time>.json and
bench/results/latest.json. Figures on these shared machines are noisy:
compare ratios measured in the same run, not absolute numbers across runs.
"""
import datetime
import hashlib
import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def collections_root() -> pathlib.Path:
    """A collections path whose ``phoenix.deploy`` is THIS checkout.  `make
    setup` links .tools/collections/ansible_collections/phoenix/deploy to the
    checkout that ran it; where several checkouts share one .tools, that link
    may name another one, and the benchmark would time someone else's code.
    Then a private path (a temp dir with its own link) is used instead."""
    shared = ROOT / ".tools" / "collections"
    if (shared / "ansible_collections" / "phoenix" / "deploy").resolve() == ROOT:
        return shared
    private = pathlib.Path(tempfile.gettempdir()) / ("phoenix-bench-collections-%d-%s" % (
        os.getuid(), hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]))
    link = private / "ansible_collections" / "phoenix" / "deploy"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != ROOT:
        tmp = link.with_name("deploy.%d" % os.getpid())
        tmp.symlink_to(ROOT)
        os.replace(tmp, link)
    return private


def setup_rows():
    """The foundation's own figure: a second `make setup` on a ready machine."""
    t0 = time.perf_counter()
    subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], check=True, capture_output=True)
    return [{"name": "make setup (no-op, ready machine)", "value": time.perf_counter() - t0,
             "unit": "s", "goal": "<= 10"}]


def main(selected):
    sys.path.insert(0, str(HERE))
    modules = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run")
    if selected:
        modules = [m for m in modules if m in selected]
    rows, failures = [], []
    if not selected or "setup" in selected:
        rows += [dict(r, suite="setup") for r in setup_rows()]
    for name in modules:
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            rows += [dict(r, suite=name) for r in importlib.import_module(name).run()]
        except Exception:  # a broken benchmark is reported, and fails make bench at the end
            failures.append(name)
            traceback.print_exc()
    width = max([len(r["name"]) for r in rows] + [10])
    print(f"\n{'suite':<12} {'benchmark':<{width}} {'value':>10} {'unit':<5} goal")
    for r in rows:
        value = r["value"]
        shown = f"{value:10.3f}" if isinstance(value, float) else f"{value!s:>10}"
        print(f"{r['suite']:<12} {r['name']:<{width}} {shown} {r['unit']:<5} {r.get('goal', '-')}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    doc = {"time": stamp, "host": {"machine": platform.machine(), "python": platform.python_version()},
           "rows": rows, "failed": failures}
    for path in (out / f"{stamp}.json", out / "latest.json"):
        path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults: bench/results/{stamp}.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
