#!/usr/bin/env bash
# make test: ansible-test sanity (zero ignore files) on the collection as it
# is built, then the pytest suite (unit + integration with real processes).
#   scripts/test.sh [--only sanity|pytest] [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
only=""
if [[ "${1:-}" == "--only" ]]; then only="$2"; shift 2; fi
T0=$(date +%s)

if compgen -G "tests/sanity/ignore-*.txt" >/dev/null; then
  echo "tests/sanity/ignore-*.txt exist: phoenix.deploy keeps zero sanity ignores" >&2
  exit 1
fi

if [[ -z "$only" || "$only" == "sanity" ]]; then
  # Sanity runs on exactly what `ansible-galaxy collection build` ships,
  # unpacked under <tmp>/ansible_collections/phoenix/deploy: ansible-test
  # needs that path, and outside this git checkout it tests every file of
  # the copy (inside, it would ask git and see only tracked files).
  echo "==> ansible-test sanity"
  sandbox="$(mktemp -d "${TMPDIR:-/tmp}/phoenix-sanity.XXXXXX")"
  trap 'rm -rf "$sandbox"' EXIT
  dest="$sandbox/ansible_collections/phoenix/deploy"
  rm -rf "$ROOT/.tools/dist"
  ansible-galaxy collection build --force --output-path "$ROOT/.tools/dist" . >/dev/null
  mkdir -p "$dest"
  tar -xzf "$ROOT"/.tools/dist/phoenix-deploy-*.tar.gz -C "$dest"
  pyver="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  (cd "$dest" && ansible-test sanity --venv --python "$pyver" --color no)
  echo "    sanity passed ($(( $(date +%s) - T0 ))s)"
fi

if [[ -z "$only" || "$only" == "pytest" ]]; then
  echo "==> pytest (unit + integration, ${PYTEST_WORKERS:-2} workers)"
  python -m pytest -n "${PYTEST_WORKERS:-2}" --durations=15 "$@"
fi
echo "==> make test finished in $(( $(date +%s) - T0 ))s"
