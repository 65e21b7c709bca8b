#!/usr/bin/env bash
# Install the Gateway API standard CRDs (config/crd/standard/*.yaml of the
# sigs.k8s.io/gateway-api Go module at the version tools/gateway-api/go.mod pins)
# for the k8s-local stack.
#   install-gateway-api.sh           install if missing (no-op when ready)
#   install-gateway-api.sh --check   exit 0 when the CRDs are ready, 1 otherwise
#   install-gateway-api.sh --which   print the directory holding them
# Where: the per-user cache ~/.cache/phoenix-deploy/gateway-api-vX/crd (shared by
# every checkout of this user); fetched once with `go mod download` from the Go
# module proxy (checked against tools/gateway-api/go.sum).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/gateway-api"
V="$(sed -n 's/^require sigs.k8s.io\/gateway-api \(v[0-9.]*\)$/\1/p' "$MOD/go.mod" | head -1)"
[[ -n "$V" ]] || { echo "tools/gateway-api/go.mod does not pin sigs.k8s.io/gateway-api" >&2; exit 1; }
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/phoenix-deploy/gateway-api-$V/crd"
NEEDED=(gatewayclasses gateways httproutes referencegrants)

ready() {
  local n
  for n in "${NEEDED[@]}"; do [[ -s "$1/gateway.networking.k8s.io_$n.yaml" ]] || return 1; done
}

case "${1:-}" in
  --check) ready "$CACHE"; exit $? ;;
  --which) ready "$CACHE" && echo "$CACHE"; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--check|--which]" >&2; exit 2 ;;
esac

ready "$CACHE" && exit 0
command -v go >/dev/null || { echo "cannot fetch the Gateway API CRDs $V: no go on PATH (install Go 1.26+)" >&2; exit 1; }
DIR="$(cd "$MOD" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go mod download -json sigs.k8s.io/gateway-api \
       | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')"
[[ -n "$DIR" && -d "$DIR/config/crd/standard" ]] || {
  echo "go mod download sigs.k8s.io/gateway-api@$V gave no module dir with config/crd/standard" >&2; exit 1; }
rm -rf "$CACHE.tmp" && mkdir -p "$CACHE.tmp"
cp "$DIR"/config/crd/standard/*.yaml "$CACHE.tmp/"
chmod -R u+w "$CACHE.tmp"
ready "$CACHE.tmp" || { echo "sigs.k8s.io/gateway-api@$V lacks the standard CRDs ${NEEDED[*]}" >&2; exit 1; }
rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
echo "    Gateway API $V standard CRDs in $CACHE"
