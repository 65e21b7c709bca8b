#!/usr/bin/env bash
# Print the version of the current commit as strict semver with build metadata
# (git hash + CI build number), the form every phoenix.deploy playbook takes:
#
#   on tag v1.4.0, BUILD_NUMBER=456          -> 1.4.0+34e57f0.b456
#   3 commits after v1.4.0, BUILD_NUMBER=457 -> 1.4.1-dev.3+5a6b7c8.b457
#   no v* tag yet                            -> <galaxy.yml version>-dev.<commits>+<hash>[.b<n>]
#   without BUILD_NUMBER (a laptop)          -> ...+<hash> (no .b part)
#
# Commits after a tag get a pre-release of the next patch, so they sort after
# the tag and before the next release (semver precedence). Run it in the git
# work tree to version (Jenkins: the workspace). Used by the Jenkinsfile's
# "Version" stage and by tests/pytest/test_jenkins.py.
set -euo pipefail

if ! top="$(git rev-parse --show-toplevel 2>/dev/null)"; then
  echo "ci-version.sh: $(pwd) is not a git work tree; run it inside the checkout to version" >&2
  exit 2
fi
build="${BUILD_NUMBER:-}"
if [[ -n "$build" && ! "$build" =~ ^[0-9]{1,12}$ ]]; then
  echo "ci-version.sh: BUILD_NUMBER='$build' is not a CI build number (digits only)" >&2
  exit 2
fi
hash="$(git rev-parse --short=7 HEAD)"
semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$'

if described="$(git describe --tags --long --abbrev=7 --match 'v[0-9]*.[0-9]*.[0-9]*' 2>/dev/null)"; then
  # vX.Y.Z-<commits since>-g<hash>
  tag="${described%-*-g*}"
  rest="${described#"$tag"-}"
  ahead="${rest%%-*}"
  if [[ ! "$tag" =~ $semver ]]; then
    echo "ci-version.sh: nearest tag '$tag' is not vMAJOR.MINOR.PATCH; tag releases like v1.4.0" >&2
    exit 2
  fi
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}" patch="${BASH_REMATCH[3]}"
  if [[ "$ahead" == 0 ]]; then
    version="$major.$minor.$patch"
  else
    version="$major.$minor.$((patch + 1))-dev.$ahead"
  fi
else
  base="0.0.0"
  if [[ -f "$top/galaxy.yml" ]]; then
    found="$(sed -n -E 's/^version:[[:space:]]*["'\'']?([0-9]+\.[0-9]+\.[0-9]+)["'\'']?[[:space:]]*$/\1/p' "$top/galaxy.yml" | head -n1)"
    base="${found:-$base}"
  fi
  version="$base-dev.$(git rev-list --count HEAD)"
fi

echo "$version+$hash${build:+.b$build}"
