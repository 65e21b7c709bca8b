#!/usr/bin/env bash
# Integration checks of one environment through its load balancer:
#   scripts/smoke.sh <environment> [--artifact catalog] [--version 1.4.0+34e57f0.b456]
#                                  [--requests 20] [--url http://127.20.1.1:26001/]
# Every one of --requests rounds must get GET /healthz -> 200 {"status": "ok"}
# and GET /version -> 200 naming the artifact (and --version when given), so
# every instance behind the LB is hit. Exit 0 when all pass, 1 on a failed
# check (each failure printed with the URL, status and body), 2 on bad usage.
#
# The LB URL is read from the environment's Pulumi stack (phoenix_stack of
# inventories/<environment>, output load_balancer.url); --url or
# PHOENIX_SMOKE_URL overrides it. Requests carry `Host: <artifact>`: the LB
# routes on the first label of the Host header.
# Used by the Jenkinsfile (after each deploy) and tests/pytest/test_jenkins.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { echo "usage: scripts/smoke.sh <environment> [--artifact NAME] [--version VERSION] [--requests N] [--url URL]" >&2
          echo "       environments: $(find "$ROOT/inventories" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | tr '\n' ' ')" >&2
          exit 2; }

[[ $# -ge 1 && "$1" != -* ]] || usage
environment="$1"; shift
artifact=catalog version="" requests=20 url="${PHOENIX_SMOKE_URL:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --artifact) artifact="${2:?}"; shift 2 ;;
    --version) version="${2:?}"; shift 2 ;;
    --requests) requests="${2:?}"; shift 2 ;;
    --url) url="${2:?}"; shift 2 ;;
    *) echo "smoke.sh: unknown option '$1'" >&2; usage ;;
  esac
done
if [[ ! -f "$ROOT/inventories/$environment/group_vars/all.yml" || "$environment" == */* ]]; then
  echo "smoke.sh: unknown environment '$environment'" >&2; usage
fi
[[ "$requests" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "smoke.sh: --requests '$requests' must be 1..9999" >&2; exit 2; }

if [[ -z "$url" ]]; then
  # phoenix_stack of the environment, then the stack's load_balancer output
  stack="$(ansible-inventory -i "$ROOT/inventories/$environment" --host localhost |
           python3 -c 'import json, sys; print(json.load(sys.stdin)["phoenix_stack"])')"
  url="$(cd "$ROOT/infra" && pulumi stack output load_balancer --json --stack "$stack" |
         python3 -c 'import json, sys; print((json.load(sys.stdin) or {}).get("url") or "")')"
  [[ -n "$url" ]] || { echo "smoke.sh: stack '$stack' of $environment has no load_balancer.url; run playbooks/infra.yml first" >&2; exit 2; }
fi

exec python3 - "$environment" "$artifact" "$version" "$requests" "$url" <<'PY'
import json, sys, time, urllib.error, urllib.request

environment, artifact, version, requests, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
base = base.rstrip("/")
failures, seen = [], {}


def get(path):
    req = urllib.request.Request(base + path, headers={"Host": artifact})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return None, str(exc)


def doc(body):
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


start = time.monotonic()
for i in range(requests):
    status, body = get("/healthz")
    if status != 200 or (doc(body) or {}).get("status") != "ok":
        failures.append("GET %s/healthz -> %s %s (want 200 {\"status\": \"ok\"})" % (base, status, body[:200]))
    status, body = get("/version")
    info = doc(body)
    if status != 200 or info is None:
        failures.append("GET %s/version -> %s %s (want 200 and a JSON object)" % (base, status, body[:200]))
        continue
    if info.get("artifact") != artifact:
        failures.append("GET %s/version: artifact %r, want %r" % (base, info.get("artifact"), artifact))
    if version and info.get("version") != version:
        failures.append("GET %s/version: version %r, want %r" % (base, info.get("version"), version))
    seen[info.get("version")] = seen.get(info.get("version"), 0) + 1

took = time.monotonic() - start
for line in failures[:20]:
    print("FAIL " + line)
print("smoke %s: %s %d rounds in %.2fs, %d failed checks, versions seen %s"
      % (environment, artifact, requests, took, len(failures), json.dumps(seen, sort_keys=True)))
sys.exit(1 if failures else 0)
PY
