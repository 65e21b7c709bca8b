#!/usr/bin/env bash
# make setup: install everything phoenix.deploy needs on a Debian machine.
# Idempotent: every step checks first and prints "ok" when nothing is to do.
# Preflight runs first so that a machine missing something we cannot install
# fails within seconds with the exact fix, never half-way through a run.
set -euo pipefail
# --no-kubernetes: leave out the Kubernetes binaries (a 15-25 min build the
# first time; `make demo` does not need them, `make test` does)
WITH_K8S=1
if [[ "${1:-}" == "--no-kubernetes" ]]; then WITH_K8S=0; shift; fi
[[ $# -eq 0 ]] || { echo "usage: scripts/setup.sh [--no-kubernetes]" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
APT_PACKAGES=(haproxy postgresql packer ca-certificates shellcheck)
APT_PACKAGES+=(skopeo docker-registry umoci)  # registries: push, promote by digest (tests make images with umoci)
APT_PACKAGES+=(mmdebstrap runc containerd)  # OCI bake without a daemon (mmdebstrap base layer, umoci); images run under containerd/runc
APT_PACKAGES+=(containernetworking-plugins gcc libc6-dev)  # k8s-local: CNI bridge, a static pause image
PYTHON="${PYTHON:-python3}"
T0=$(date +%s)

step() { STEP_T0=$(date +%s%N); printf "==> %-52s " "$1"; }
done_() {
  local ms=$(( ($(date +%s%N) - STEP_T0) / 1000000 ))
  printf '%s (%d.%01ds)\n' "$1" $((ms / 1000)) $((ms % 1000 / 100))
}
die() {
  printf '\nSETUP FAILED: %s\n' "$1" >&2
  shift
  for line in "$@"; do printf '  %s\n' "$line" >&2; done
  exit 1
}

# --- preflight: everything we cannot install ourselves -----------------------
step "preflight"
command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH" "install Python 3.11+: apt-get install -y python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); phoenix.deploy needs Python 3.11 or newer" \
         "install it (Debian 12: apt-get install -y python3) or run: make setup PYTHON=/path/to/python3.11"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot create virtualenvs (venv/ensurepip missing)" "install it: apt-get install -y python3-venv"
missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing_apt+=("$p")
done
if ((${#missing_apt[@]})); then
  if [[ $(id -u) -ne 0 ]] && ! sudo -n true 2>/dev/null; then
    die "Debian packages missing and no root to install them: ${missing_apt[*]}" \
        "run as root:  apt-get update && apt-get install -y ${missing_apt[*]}" \
        "then run make again"
  fi
fi
PULUMI_VERSION="$(sed -n 's/^pulumi==\([0-9.]*\).*/\1/p' requirements.txt)"
[[ -n "$PULUMI_VERSION" ]] || die "requirements.txt does not pin pulumi==X.Y.Z"
if ! "$ROOT/scripts/install-pulumi.sh" --check >/dev/null 2>&1 && ! command -v go >/dev/null \
    && ! command -v curl >/dev/null; then
  die "the Pulumi CLI v$PULUMI_VERSION is missing and neither Go nor curl is here to get it" \
      "install Go 1.25+ (apt-get install -y golang-1.25 or from your distribution),"  \
      "or install the Pulumi CLI v$PULUMI_VERSION on PATH yourself"
fi
done_ ok

# --- Debian packages ----------------------------------------------------------
step "debian packages (${APT_PACKAGES[*]})"
if ((${#missing_apt[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo -n"
  echo "installing ${missing_apt[*]}"
  $SUDO apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing_apt[@]}" >/dev/null
  # The Debian packages start system-wide services we do not use: phoenix.deploy
  # starts its own PostgreSQL and HAProxy per stack, inside the stack's state dir.
  done_ installed
else
  done_ ok
fi

# --- virtualenvs: the project's, and the Galaxy/lint tools' ---------------------
# uv installs the locked packages (a fresh .venv in about 20 s, byte-compiled, where pip took
# 45 s from a warm cache); it is itself pinned, from PyPI, once per user. Any
# failure of uv falls back to pip, which says so. PHOENIX_INSTALLER=pip: pip only.
UV_VERSION=0.13.9
UV_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/phoenix-deploy/uv-$UV_VERSION"
uv_bin() {
  [[ "${PHOENIX_INSTALLER:-uv}" == uv ]] || return 1
  if [[ ! -x "$UV_HOME/bin/uv" ]]; then  # built aside, then moved in: a setup beside this one keeps its own
    local tmp
    mkdir -p "$(dirname "$UV_HOME")" && tmp="$(mktemp -d "$UV_HOME.XXXXXX")" || return 1
    { "$PYTHON" -m venv "$tmp" && "$tmp/bin/python" -m pip install -q "uv==$UV_VERSION"; } >&2 \
      || { rm -rf "$tmp"; return 1; }
    [[ -x "$UV_HOME/bin/uv" ]] || { rm -rf "$UV_HOME"; mv -T "$tmp" "$UV_HOME"; } || true
    rm -rf "$tmp"
    [[ -x "$UV_HOME/bin/uv" ]] || return 1
  fi
  printf '%s' "$UV_HOME/bin/uv"
}
# uv with pip's settings of this machine (index, find-links) and the system's CA certificates
UV_PIP_SETTINGS=""
uv_install() {
  local uv="$1" dir="$2" req="$3" lock="$4"
  if [[ -z "$UV_PIP_SETTINGS" ]]; then  # asked once: pip config takes about a second
    UV_PIP_SETTINGS=1
    PIP_INDEX="${PIP_INDEX_URL:-$("$PYTHON" -m pip config get global.index-url 2>/dev/null || true)}"
    PIP_LINKS="${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}"
  fi
  # the interpreter "$PYTHON" runs (through a pyenv shim, say), never one uv would pick or download
  [[ -x "$dir/bin/python" ]] || UV_PYTHON_DOWNLOADS=never "$uv" venv -q --seed \
    --python "$("$PYTHON" -c 'import sys; print(sys.executable)')" "$dir" || return 1
  # --compile-bytecode, as pip does: with PYTHONDONTWRITEBYTECODE set (CI sets
  # it) nothing would ever write the .pyc files, and every process of the
  # suite would compile ansible, the Kubernetes client and Pulumi again
  UV_NATIVE_TLS=1 UV_INDEX_URL="$PIP_INDEX" UV_FIND_LINKS="$PIP_LINKS" \
    "$uv" pip install -q --compile-bytecode --python "$dir/bin/python" -r "$req" -c "$lock"
}
# venv DIR REQUIREMENTS LOCK: (re)install when the two files or the Python changed.
venv() {
  local dir="$1" req="$2" lock="$3" want uv how=installed
  want="$(cat "$req" "$lock" | sha256sum | cut -c1-16)-$("$PYTHON" -V 2>&1)"
  if [[ -f "$dir/.phoenix-stamp" && "$(cat "$dir/.phoenix-stamp")" == "$want" ]]; then
    done_ ok
    return
  fi
  if uv="$(uv_bin)" && uv_install "$uv" "$dir" "$req" "$lock"; then
    how="installed with uv $UV_VERSION"
  else
    [[ "${PHOENIX_INSTALLER:-uv}" == uv ]] && echo "uv failed (above); installing $lock with pip"
    [[ -x "$dir/bin/python" ]] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$dir/bin/python" -m pip install -q -r "$req" -c "$lock"
    how="installed with pip"
  fi
  echo "$want" > "$dir/.phoenix-stamp"
  done_ "$how"
}
step "virtualenv .venv (requirements.lock)"
venv "$VENV" requirements.txt requirements.lock

# galaxy-importer, ansible-lint and antsibull-docs for `make test`. A virtualenv
# of their own: galaxy-importer needs attrs<24, which .venv's lock cannot take.
step "galaxy tools .tools/galaxy-venv (requirements-galaxy.lock)"
venv "$TOOLS/galaxy-venv" requirements-galaxy.txt requirements-galaxy.lock

# --- the collection on the collections path ----------------------------------
step "collection phoenix.deploy -> .tools/collections"
link="$TOOLS/collections/ansible_collections/phoenix/deploy"
if [[ -L "$link" && "$(readlink "$link")" == "$ROOT" ]]; then
  done_ ok
else
  mkdir -p "$(dirname "$link")"
  ln -sfn "$ROOT" "$link"
  done_ linked
fi

# --- ansible-test offline bootstrap ---------------------------------------------
# ansible-test downloads a get-pip script into ~/.ansible/test/cache for every
# sanity venv; that host is unreachable offline, so we provide a stand-in that
# bootstraps pip with ensurepip and installs what ansible-test asks for.
step "ansible-test pip bootstrap (offline)"
pipver="$(sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p" \
  "$VENV"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1)"
[[ -n "$pipver" ]] || die "cannot find the pip version ansible-test wants"
cache="$HOME/.ansible/test/cache/get_pip_${pipver//./_}.py"
mkdir -p "$(dirname "$cache")"
if cmp -s "$ROOT/scripts/get_pip_standin.py" "$cache"; then
  done_ ok
else
  cp "$ROOT/scripts/get_pip_standin.py" "$cache"
  done_ "written (pip $pipver)"
fi

# --- Pulumi CLI -----------------------------------------------------------------
step "pulumi CLI v$PULUMI_VERSION"
if "$ROOT/scripts/install-pulumi.sh" --check >/dev/null 2>&1; then
  done_ "ok ($("$ROOT/scripts/install-pulumi.sh" --which))"
else
  echo "building (first time only; several minutes)"
  "$ROOT/scripts/install-pulumi.sh"
  done_ "installed ($("$ROOT/scripts/install-pulumi.sh" --which))"
fi

# --- Kubernetes binaries + Gateway API CRDs (k8s-local stack; once per user) -------
step "kubernetes binaries, gateway API CRDs (k8s-local stack)"
if [[ $WITH_K8S == 0 ]]; then
  done_ "left out (--no-kubernetes)"
else
  k8s=ok
  "$ROOT/scripts/install-kubernetes.sh" --check || { k8s=installed; echo; "$ROOT/scripts/install-kubernetes.sh"; }
  "$ROOT/scripts/install-gateway-api.sh" --check || { k8s=installed; echo; "$ROOT/scripts/install-gateway-api.sh"; }
  done_ "$k8s ($("$ROOT/scripts/install-kubernetes.sh" --which), $("$ROOT/scripts/install-gateway-api.sh" --which))"
fi

printf '==> setup complete in %ss\n' "$(( $(date +%s) - T0 ))"
