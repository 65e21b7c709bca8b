#!/usr/bin/env bash
# Install the Pulumi CLI at the version of the pinned PyPI `pulumi` package.
#   install-pulumi.sh           install if missing (no-op when ready)
#   install-pulumi.sh --check   exit 0 when a usable CLI is ready, 1 otherwise
#   install-pulumi.sh --which   print the directory holding the CLI
# Order: a `pulumi` already on PATH whose major version matches the SDK (and
# that has a Python language host beside it); else build from the published
# Go modules into .tools/bin (tools/pulumi/go.mod pins pkg/v3 and sdk/v3 at
# the same tag); else Pulumi's official installer (needs internet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/bin"
VERSION="$(sed -n 's/^pulumi==\([0-9.]*\).*/\1/p' "$ROOT/requirements.txt")"
MAJOR="${VERSION%%.*}"

ours_ready() {
  [[ -x "$BIN/pulumi" && -x "$BIN/pulumi-language-python" && -f "$BIN/pulumi-language-python-exec" \
     && -x "$BIN/pulumi-resource-pulumi-python" && "$(cat "$BIN/.version" 2>/dev/null)" == "$VERSION" ]]
}

path_ready() {  # a pulumi on PATH (not ours) with a matching major and a python host
  local p dir v
  p="$(PATH="${PATH//$BIN:/}" command -v pulumi 2>/dev/null)" || return 1
  dir="$(dirname "$(readlink -f "$p")")"
  v="$("$p" version 2>/dev/null)" || return 1
  [[ "${v#v}" == "$MAJOR".* ]] || return 1
  [[ -x "$dir/pulumi-language-python" ]] || command -v pulumi-language-python >/dev/null || return 1
  echo "$dir"
}

which_dir() {
  if ours_ready; then echo "$BIN"; return 0; fi
  path_ready
}

case "${1:-}" in
  --check) which_dir >/dev/null; exit $? ;;
  --which) which_dir; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--check|--which]" >&2; exit 2 ;;
esac

which_dir >/dev/null && exit 0
mkdir -p "$BIN"

# A build is shared by every checkout of this user through a per-version cache
# (so a fresh clone, e.g. in CI, does not rebuild a CLI it already built).
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/phoenix-deploy/pulumi-v$VERSION-$(uname -m)"
FILES=(pulumi pulumi-language-python pulumi-language-python-exec pulumi-resource-pulumi-python .version)
if [[ -f "$CACHE/.version" && "$(cat "$CACHE/.version")" == "$VERSION" ]]; then
  echo "    from the build cache $CACHE"
  for f in "${FILES[@]}"; do cp -p "$CACHE/$f" "$BIN/$f"; done
  ours_ready && { "$BIN/pulumi" version; exit 0; }
fi

if command -v go >/dev/null; then
  cd "$ROOT/tools/pulumi"
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  ldflags="-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$VERSION"
  grep -q "github.com/pulumi/pulumi/pkg/v3 v$VERSION\$" go.mod \
    || { echo "tools/pulumi/go.mod does not pin pkg/v3 v$VERSION (requirements.txt pins pulumi==$VERSION)" >&2; exit 1; }
  echo "    go build pulumi v$VERSION (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)"
  go build -trimpath -tags osusergo,grpcnotrace -ldflags "$ldflags" -o "$BIN/pulumi" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  echo "    go build pulumi-language-python (tools/pulumi/cmd/pulumi-language-python)"
  go build -trimpath -ldflags "$ldflags" -o "$BIN/pulumi-language-python" ./cmd/pulumi-language-python
  sdk="$(go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)"
  install -m 0644 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
elif command -v curl >/dev/null; then
  echo "    no Go here: using Pulumi's official installer for v$VERSION"
  curl -fsSL https://get.pulumi.com | sh -s -- --version "$VERSION" --install-root "$ROOT/.tools/pulumi-official" --no-edit-path
  for f in "$ROOT/.tools/pulumi-official/bin/"*; do ln -sfn "$f" "$BIN/$(basename "$f")"; done
else
  echo "cannot install the Pulumi CLI: neither go nor curl is available" >&2
  exit 1
fi
echo "$VERSION" > "$BIN/.version"
ours_ready || { echo "Pulumi CLI install incomplete in $BIN" >&2; exit 1; }
mkdir -p "$CACHE.tmp" && for f in "${FILES[@]}"; do cp -p "$BIN/$f" "$CACHE.tmp/$f"; done \
  && rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
"$BIN/pulumi" version
