#!/usr/bin/env bash
# make demo: the main job on the embedded local platform (no cloud account).
#   scripts/demo.sh            provision the local stack and print where things are
#   scripts/demo.sh --destroy  tear it down
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ "${1:-}" == "--destroy" ]]; then
  ansible-playbook playbooks/infra.yml -e state=absent
  exit 0
fi
T0=$(date +%s)
echo "==> provisioning the local stack (PostgreSQL, HAProxy, supervisord) with Pulumi"
ansible-playbook playbooks/infra.yml
echo "==> demo finished in $(( $(date +%s) - T0 ))s; tear down with: make destroy"
