#!/usr/bin/env bash
# make test: the collection checks Galaxy and collections' CI run, beside the
# pytest suite (unit + integration with real processes, PYTEST_WORKERS=4
# pytest-xdist workers); the checks' output follows pytest's. Every step is timed.
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
      echo "scripts/test.sh: $GALAXY_BIN/$tool is missing: run make setup" >&2; return 1; }
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

step_sanity() {
  # ansible-test needs the ansible_collections/<ns>/<name> path; outside a git
  # repository it tests every file of the copy, which is exactly the checkout.
  step_start "ansible-test sanity (whole checkout)"
  local dest pyver
  dest="$(checkout)"
  pyver="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  (cd "$dest" && ansible-test sanity --venv --python "$pyver" --color no) || return 1
  step_done "sanity"
}

step_galaxy() {
  # Galaxy's importer, offline: no ansible-test in a container, and its
  # ansible-lint pass is the "lint" step (same profile, no skipped rules).
  need_galaxy_tools python ansible-doc || return 1
  step_start "galaxy-importer (built tarball)"
  local dir="$sandbox/galaxy" rc=0
  mkdir -p "$dir"
  ansible-galaxy collection build --force --output-path "$dir" . >/dev/null || return 1
  printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nLOCAL_IMAGE_DOCKER = False\nRUN_ANSIBLE_LINT = False\n' \
    > "$dir/galaxy-importer.cfg"
  (cd "$dir" && PATH="$GALAXY_BIN:$PATH" GALAXY_IMPORTER_CONFIG="$dir/galaxy-importer.cfg" \
    "$GALAXY_BIN/python" -m galaxy_importer.main phoenix-deploy-*.tar.gz > importer.log 2>&1) || rc=$?
  if [[ $rc -ne 0 ]] || grep -qE '^(ERROR|WARNING|CRITICAL)' "$dir/importer.log"; then
    grep -vE '^(Loading|Importing|Getting|Finding)' "$dir/importer.log"
    echo "galaxy-importer: errors or warnings above (exit $rc)"
    return 1
  fi
  step_done "galaxy-importer"
}

step_lint() {
  need_galaxy_tools ansible-lint || return 1
  step_start "ansible-lint --profile production"
  PATH="$GALAXY_BIN:$PATH" ansible-lint --profile production --offline --nocolor \
    playbooks roles packer/bake.yml tests/integration galaxy.yml meta || return 1
  step_done "ansible-lint"
}

step_docs() {
  # antsibull-docs needs `ansible` on PATH and the collection under ansible_collections/.
  need_galaxy_tools antsibull-docs ansible || return 1
  step_start "antsibull-docs lint-collection-docs --plugin-docs"
  local dest
  dest="$(checkout)"
  (cd "$dest" && PATH="$GALAXY_BIN:$PATH" antsibull-docs lint-collection-docs --plugin-docs .) || return 1
  step_done "antsibull-docs"
}

checks_pid=""
if [[ -z "$only" ]]; then
  # The collection checks run beside the pytest suite: the suite leaves the
  # CPUs idle while its tests wait on real processes, and the checks fill
  # that time. Sanity and the Galaxy tools run side by side (each waits on
  # its subprocesses); their output follows pytest's, each step timed. Every
  # step runs even when one fails (the steps return 1 on failure).
  checkout >/dev/null
  (
    (rc=0; step_galaxy || rc=1; step_lint || rc=1; step_docs || rc=1; exit $rc) > "$sandbox/tools.log" 2>&1 &
    tools_pid=$!
    sanity_rc=0; step_sanity > "$sandbox/sanity.log" 2>&1 || sanity_rc=$?
    tools_rc=0; wait "$tools_pid" || tools_rc=$?
    echo "$sanity_rc $tools_rc" > "$sandbox/checks.rc"
  ) &
  checks_pid=$!
elif [[ "$only" != pytest ]]; then
  "step_$only"
fi

pytest_rc=0
if want pytest; then
  workers="${PYTEST_WORKERS:-4}"
  # The Go programs the suite starts (the Pulumi CLI about 2,000 times, Packer,
  # the Kubernetes control plane, containerd) collect garbage less often: a
  # Pulumi CLI run took 0.18 instead of 0.22 CPU-seconds, and its heap stays
  # small. The user's own GOGC wins.
  export GOGC="${GOGC:-400}"
  # The tree's own Python, byte-compiled once: with PYTHONDONTWRITEBYTECODE set
  # (CI's environment sets it) no process writes the .pyc files, so every
  # controller, infra program and provider process the suite starts compiled
  # the modules it imports from the tree again (the engine's: 0.05 CPU-s).
  python -m compileall -q -j 0 plugins infra tests bench >/dev/null \
    || echo "    compileall: some files did not compile; those compile again in each process"
  echo "==> pytest (unit + integration, $workers workers)"
  python -m pytest -n "$workers" --durations=15 "$@" || pytest_rc=$?
fi
if [[ -n "$checks_pid" ]]; then
  wait "$checks_pid" || true
  cat "$sandbox/sanity.log" "$sandbox/tools.log"
  read -r sanity_rc tools_rc < "$sandbox/checks.rc" || { sanity_rc=1; tools_rc=1; }
  if [[ $sanity_rc -ne 0 || $tools_rc -ne 0 ]]; then
    echo "==> make test failed: sanity exit $sanity_rc, galaxy/lint/docs exit $tools_rc, pytest exit $pytest_rc" >&2
    exit 1
  fi
fi
[[ $pytest_rc -eq 0 ]] || { echo "==> make test failed: pytest exit $pytest_rc" >&2; exit "$pytest_rc"; }
echo "==> make test finished in $(( $(date +%s) - T0 ))s"
