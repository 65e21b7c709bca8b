#!/usr/bin/env bash
# Install kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# etcd at the versions tools/kubernetes/go.mod pins (for the k8s-local stack).
#   install-kubernetes.sh           install if missing (no-op when ready)
#   install-kubernetes.sh --check   exit 0 when the binaries are ready, 1 otherwise
#   install-kubernetes.sh --which   print the directory holding them
# Order: the per-user build cache (~/.cache/phoenix-deploy/kubernetes-vX-etcd-vY/bin,
# shared by every checkout of this user); else build from the Go module proxy
# into that cache (tools/kubernetes; ~15-25 min on 2 cores, once per user).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/tools/kubernetes"
BIN="$ROOT/.tools/kubernetes/bin"
K8S="$(sed -n 's/^\s*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$MOD/go.mod" | head -1)"
ETCD="$(sed -n 's/^\s*go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$MOD/go.mod" | head -1)"
[[ -n "$K8S" && -n "$ETCD" ]] || { echo "tools/kubernetes/go.mod does not pin k8s.io/kubernetes and etcd server/v3" >&2; exit 1; }
VERSION="kubernetes-$K8S-etcd-$ETCD"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/phoenix-deploy/$VERSION/bin"
FILES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)

complete() {  # dir holds every binary (executable)
  local f
  for f in "${FILES[@]}"; do [[ -x "$1/$f" ]] || return 1; done
}
ours_ready() { complete "$BIN" && [[ "$(cat "$BIN/.version" 2>/dev/null)" == "$VERSION" ]]; }

case "${1:-}" in
  --check) ours_ready; exit $? ;;
  --which) ours_ready && echo "$BIN"; exit $? ;;
  "") ;;
  *) echo "usage: $0 [--check|--which]" >&2; exit 2 ;;
esac

ours_ready && exit 0
if ! complete "$CACHE"; then
  command -v go >/dev/null || { echo "cannot build Kubernetes $K8S: no go on PATH (install Go 1.26+)" >&2; exit 1; }
  echo "    go build kube-apiserver kube-controller-manager kube-scheduler kubelet $K8S and etcd $ETCD"
  echo "    into $CACHE (first time for this user only; 15-25 min on 2 cores)"
  mkdir -p "$CACHE.tmp"
  (cd "$MOD" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags='-s -w' -o "$CACHE.tmp/" \
     k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
     k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet ./cmd/etcd)
  complete "$CACHE.tmp" || { echo "Kubernetes build incomplete in $CACHE.tmp" >&2; exit 1; }
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
else
  echo "    from the build cache $CACHE"
fi
mkdir -p "$BIN"
for f in "${FILES[@]}"; do  # a hard link when the cache is on the same filesystem, else a copy
  ln -f "$CACHE/$f" "$BIN/$f" 2>/dev/null || cp -p "$CACHE/$f" "$BIN/$f"
done
echo "$VERSION" > "$BIN/.version"
ours_ready || { echo "Kubernetes install incomplete in $BIN" >&2; exit 1; }
echo "    $VERSION in $BIN"
