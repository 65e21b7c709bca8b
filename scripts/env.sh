# shellcheck shell=bash
# Environment for every phoenix.deploy command (sourced by the Makefile and
# the test suite). Offline Pulumi: file backend inside the project state
# dir, no update checks, no plugin downloads.
PHOENIX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PHOENIX_ROOT
export PHOENIX_STATE_DIR="${PHOENIX_STATE_DIR:-$PHOENIX_ROOT/.state}"
_pulumi_dir="$("$PHOENIX_ROOT/scripts/install-pulumi.sh" --which 2>/dev/null || true)"
export PATH="$PHOENIX_ROOT/.venv/bin${_pulumi_dir:+:$_pulumi_dir}:$PATH"
unset _pulumi_dir
export PULUMI_HOME="${PULUMI_HOME:-$PHOENIX_STATE_DIR/pulumi-home}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$PHOENIX_STATE_DIR/pulumi-backend}"
export PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export ANSIBLE_CONFIG="$PHOENIX_ROOT/ansible.cfg"
mkdir -p "$PHOENIX_STATE_DIR" && chmod 0700 "$PHOENIX_STATE_DIR"
