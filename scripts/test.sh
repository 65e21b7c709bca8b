#!/usr/bin/env bash
# make test: the collection checks Galaxy and collections' CI run, then the
# pytest suite (unit + integration with real processes). Every step is timed.
#   scripts/test.sh [--only sanity|galaxy|lint|docs|pytest] [pytest args...]
#
#   sanity  ansible-test sanity on the git checkout (every tracked file, plus
#           new files not ignored by git) under ansible_collections/phoenix/deploy,
#           zero ignore files
#   galaxy  galaxy-importer (offline) on the tarball `ansible-galaxy collection build` makes
#   lint    ansible-lint --profile production on playbooks, roles and the other Ansible content
#   docs    antsibull-docs lint-collection-docs --plugin-docs
#   pytest  the pytest suite
# The Galaxy tools live in .tools/galaxy-venv (make setup, requirements-galaxy.lock).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
only=""
if [[ "${1:-}" == "--only" ]]; then only="$2"; shift 2; fi
case "$only" in ""|sanity|galaxy|lint|docs|pytest) ;; *)
  echo "scripts/test.sh: --only must be one of sanity, galaxy, lint, docs, pytest (got '$only')" >&2; exit 2;;
esac
T0=$(date +%s)
GALAXY_BIN="$ROOT/.tools/galaxy-venv/bin"
sandbox="$(mktemp -d "${TMPDIR:-/tmp}/phoenix-test.XXXXXX")"
trap 'rm -rf "$sandbox"' EXIT

want() { [[ -z "$only" || "$only" == "$1" ]]; }
step_start() { echo "==> $1"; STEP_T0=$(date +%s); }
step_done() { echo "    $1 passed ($(( $(date +%s) - STEP_T0 ))s)"; }
need_galaxy_tools() {
  for tool in "$@"; do
    [[ -x "$GALAXY_BIN/$tool" ]] || {
      echo "scripts/test.sh: $GALAXY_BIN/$tool is missing: run make setup" >&2; exit 1; }
  done
}
# The checkout as collections' CI sees it: tracked files (and new files git
# does not ignore) under <sandbox>/ansible_collections/phoenix/deploy.
checkout() {
  local dest="$sandbox/checkout/ansible_collections/phoenix/deploy"
  if [[ ! -d "$dest" ]]; then
    mkdir -p "$dest"
    git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"; done \
      | tar --null -T - -cf - | tar -xf - -C "$dest"
  fi
  printf '%s' "$dest"
}

if compgen -G "tests/sanity/ignore-*.txt" >/dev/null; then
  echo "tests/sanity/ignore-*.txt exist: phoenix.deploy keeps zero sanity ignores" >&2
  exit 1
fi

if want sanity; then
  # ansible-test needs the ansible_collections/<ns>/<name> path; outside a git
  # repository it tests every file of the copy, which is exactly the checkout.
  step_start "ansible-test sanity (whole checkout)"
  dest="$(checkout)"
  pyver="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  (cd "$dest" && ansible-test sanity --venv --python "$pyver" --color no)
  step_done "sanity"
fi

if want galaxy; then
  # Galaxy's importer, offline: no ansible-test in a container, and its
  # ansible-lint pass is the "lint" step below (same profile, no skipped rules).
  need_galaxy_tools python ansible-doc
  step_start "galaxy-importer (built tarball)"
  mkdir -p "$sandbox/galaxy"
  ansible-galaxy collection build --force --output-path "$sandbox/galaxy" . >/dev/null
  printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nLOCAL_IMAGE_DOCKER = False\nRUN_ANSIBLE_LINT = False\n' \
    > "$sandbox/galaxy/galaxy-importer.cfg"
  rc=0
  (cd "$sandbox/galaxy" && PATH="$GALAXY_BIN:$PATH" GALAXY_IMPORTER_CONFIG="$sandbox/galaxy/galaxy-importer.cfg" \
    "$GALAXY_BIN/python" -m galaxy_importer.main phoenix-deploy-*.tar.gz > importer.log 2>&1) || rc=$?
  if [[ $rc -ne 0 ]] || grep -qE '^(ERROR|WARNING|CRITICAL)' "$sandbox/galaxy/importer.log"; then
    grep -vE '^(Loading|Importing|Getting|Finding)' "$sandbox/galaxy/importer.log" >&2
    echo "galaxy-importer: errors or warnings above (exit $rc)" >&2
    exit 1
  fi
  step_done "galaxy-importer"
fi

if want lint; then
  need_galaxy_tools ansible-lint
  step_start "ansible-lint --profile production"
  PATH="$GALAXY_BIN:$PATH" ansible-lint --profile production --offline --nocolor \
    playbooks roles packer/bake.yml tests/integration galaxy.yml meta
  step_done "ansible-lint"
fi

if want docs; then
  # antsibull-docs needs `ansible` on PATH and the collection under ansible_collections/.
  need_galaxy_tools antsibull-docs ansible
  step_start "antsibull-docs lint-collection-docs --plugin-docs"
  dest="$(checkout)"
  (cd "$dest" && PATH="$GALAXY_BIN:$PATH" antsibull-docs lint-collection-docs --plugin-docs .)
  step_done "antsibull-docs"
fi

if want pytest; then
  echo "==> pytest (unit + integration)"
  python -m pytest --durations=15 "$@"
fi
echo "==> make test finished in $(( $(date +%s) - T0 ))s"
