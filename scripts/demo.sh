#!/usr/bin/env bash
# make demo: the main job on the embedded local platform (no cloud account).
#   1. provision the local stack (PostgreSQL, HAProxy, supervisord) with Pulumi
#   2. bake catalog 1.0.0 and deploy it
#   3. bake 1.1.0 and roll it out as a canary under synthetic traffic
#   4. bake a bad 1.2.0 (50 % HTTP 500, baked in) and watch it roll back by itself
#   5. print where everything is
# Safe to run twice. `scripts/demo.sh --destroy` (make destroy) removes it all.
#
# PLATFORM=kubernetes (make demo-kubernetes) tells the same story on the k8s-local
# cluster (environment k8s, run as root): the stack starts etcd, the Kubernetes
# control plane, containerd, kubelet, the registries and the gateway; every version
# is baked as an OCI image, pushed to the dev registry and deployed by digest;
# traffic goes through the cluster's gateway. Its destroy: PLATFORM=kubernetes
# scripts/demo.sh --destroy (make destroy-kubernetes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PLATFORM="${PLATFORM:-local}"
ARTIFACT=catalog
case "$PLATFORM" in
  local) ENVIRONMENT=local; STACK=local; BAKE=() ;;
  kubernetes) ENVIRONMENT=k8s; STACK=k8s-local; BAKE=(-e target=oci -e environment=k8s)
    # the demo cluster's stack secrets (only the `local` stack has a built-in default)
    export PULUMI_CONFIG_PASSPHRASE="${PULUMI_CONFIG_PASSPHRASE:-phoenix-demo-k8s}" ;;
  *) echo "PLATFORM=$PLATFORM: give PLATFORM=local (default) or PLATFORM=kubernetes" >&2; exit 2 ;;
esac
INFRA_DIR="${PHOENIX_INFRA_DIR:-$ROOT/infra}"  # the Pulumi project (tests point it at a private copy)
ap() { ansible-playbook -e "phoenix_infra_dir=$INFRA_DIR" "$@"; }

if [[ "${1:-}" == "--destroy" ]]; then
  ap playbooks/destroy.yml -e environment=$ENVIRONMENT
  exit 0
fi
T0=$(date +%s)
say() { printf '\n==> [%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

if [[ "$PLATFORM" == kubernetes ]]; then
  say "1/5 provisioning the k8s-local cluster (etcd, control plane, containerd, kubelet, registries, gateway) with Pulumi"
else
  say "1/5 provisioning the local stack (PostgreSQL, HAProxy, supervisord) with Pulumi"
fi
ap playbooks/infra.yml -e environment=$ENVIRONMENT

say "2/5 bake $ARTIFACT 1.0.0 and deploy it"
ap playbooks/bake.yml -e artifact=$ARTIFACT -e version=1.0.0+demo.b1 "${BAKE[@]}"
# the baseline release, deployed before any traffic flows: analysis could only be
# inconclusive (which rolls back a re-run of the demo), so it is skipped on purpose
# and recorded on the release as `analysed: none`
ap playbooks/deploy.yml -e artifact=$ARTIFACT -e environment=$ENVIRONMENT -e version=1.0.0+demo.b1 -e strategy=rolling \
  -e analysis=none

if [[ "$PLATFORM" == kubernetes ]]; then  # the gateway's listener of the artifact
  LB="$(cd "$INFRA_DIR" && PULUMI_CONFIG_PASSPHRASE="${PULUMI_CONFIG_PASSPHRASE:-phoenix-local}" \
        pulumi stack output kubernetes --json -s $STACK | python -c 'import json,sys; print(json.load(sys.stdin)["gateway"]["url"][sys.argv[1]])' $ARTIFACT)"
else
  LB="$(cd "$INFRA_DIR" && PULUMI_CONFIG_PASSPHRASE="${PULUMI_CONFIG_PASSPHRASE:-phoenix-local}" \
        pulumi stack output load_balancer --json -s $STACK | python -c 'import json,sys; print(json.load(sys.stdin)["url"])')"
fi
TRAFFIC="$PHOENIX_STATE_DIR/demo-traffic.json"

say "3/5 bake 1.1.0 and roll it out as a canary under synthetic traffic ($LB)"
ap playbooks/bake.yml -e artifact=$ARTIFACT -e version=1.1.0+demo.b2 "${BAKE[@]}"
python scripts/traffic.py "$LB" --host $ARTIFACT --path /items --seconds 150 --rate 40 --out "$TRAFFIC" >/dev/null &
traffic_pid=$!
ap playbooks/deploy.yml -e artifact=$ARTIFACT -e environment=$ENVIRONMENT -e version=1.1.0+demo.b2 -e strategy=canary
kill "$traffic_pid" 2>/dev/null || true; wait "$traffic_pid" 2>/dev/null || true
if [[ -s "$TRAFFIC" ]]; then
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print('    traffic during the canary: %(requests)d requests, %(errors)d errors' % d)" "$TRAFFIC" || true
fi

say "4/5 bake a bad 1.2.0 (50 % HTTP 500 baked in) and deploy it as a canary: analysis must roll it back"
ap playbooks/bake.yml -e artifact=$ARTIFACT -e version=1.2.0+demo.b3 -e '{"fault": {"error_rate": 0.5}}' "${BAKE[@]}"
python scripts/traffic.py "$LB" --host $ARTIFACT --path /items --seconds 150 --rate 40 --out "$TRAFFIC" >/dev/null &
traffic_pid=$!
if ap playbooks/deploy.yml -e artifact=$ARTIFACT -e environment=$ENVIRONMENT -e version=1.2.0+demo.b3 -e strategy=canary; then
  echo "    UNEXPECTED: the faulty 1.2.0 was not rolled back" >&2
  kill "$traffic_pid" 2>/dev/null || true
  exit 1
fi
kill "$traffic_pid" 2>/dev/null || true; wait "$traffic_pid" 2>/dev/null || true
echo "    1.2.0 was rolled back automatically (the deploy above says why)"

say "5/5 summary"
ap playbooks/status.yml -e artifact=$ARTIFACT -e environment=$ENVIRONMENT
echo "==> demo finished in $(( $(date +%s) - T0 ))s; tear down with: make destroy$([[ "$PLATFORM" == kubernetes ]] && echo -kubernetes)"
