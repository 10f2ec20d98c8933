#!/usr/bin/env bash
# See lineaged work in a minute, on this machine, without containers:
#
#   1. a registry (Debian's docker-registry) on 127.0.0.1,
#   2. a base image and a three-level lineage built on it, pushed there,
#   3. a demo CI (scripts/demo-ci.py) that "rebuilds" by pushing and calls back,
#   4. lineaged serve on SQLite, told about pushes by the registry,
#   5. a new base image pushed, and the rollout printed as it happens.
#
# The dashboard stays up until Ctrl-C, which stops everything and removes the
# temporary directory. The same pieces run in containers with
# `docker compose up` (docker-compose.yml).
#
# Environment:
#   LINEAGED_BIN   a built lineaged binary (default: cargo build)
#   DEMO_PORT      the API and dashboard port (default 8080)
#   DEMO_EXIT=1    exit after the rollout (for tests and CI) instead of waiting
#
# Exit codes: 0 the rollout succeeded, 1 it did not, 2 setup failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
[[ -t 2 ]] || say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 2; }

# --- what it needs, from Debian packages ------------------------------------
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (Debian packages)"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bin=${LINEAGED_BIN:-}
if [[ -z $bin ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) or set LINEAGED_BIN"
  # A debug build: about half the time of the release one (LTO), and
  # plenty fast for a demo.
  say "building lineaged (cargo build; a few minutes the first time)"
  cargo build --quiet --bin lineaged
  bin=$root/target/debug/lineaged
fi
[[ -x $bin ]] || die "$bin is not an executable"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=${DEMO_PORT:-8080}
if (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
  die "port $port is taken; set DEMO_PORT"
fi
reg_port=$(free_port)
ci_port=$(free_port)
registry=127.0.0.1:$reg_port
api=http://127.0.0.1:$port

# --- everything it starts is stopped on exit or Ctrl-C ----------------------
work=$(mktemp -d -t lineaged-demo.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null || true
  ((${#pids[@]})) && wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$work"
  say "stopped the demo (registry, CI, lineaged) and removed $work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # URL WHAT
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "--- logs in $work:" >&2; tail -n 20 "$work"/*.log >&2 || true
  die "$2 did not come up at $1"
}

export DEMO_CI_SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
export DEMO_PUSH_TOKEN="$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')"

# --- 1. the registry, with push notifications to lineaged -------------------
cat >"$work/registry.yml" <<EOF
version: 0.1
log: { level: error }
storage:
  filesystem: { rootdirectory: $work/registry }
  delete: { enabled: true }
http: { addr: $registry }
notifications:
  endpoints:
    - name: lineaged
      url: $api/api/v1/hooks/registry/distribution
      headers: { Authorization: ["Bearer $DEMO_PUSH_TOKEN"] }
      timeout: 2s
      threshold: 5
      backoff: 1s
EOF
say "starting a registry on $registry"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
wait_for "http://$registry/v2/" "the registry"

# --- 2. a base image and a three-level lineage on it ------------------------
say "pushing demo/base:1 and four images built on it"
python3 scripts/demo-ci.py seed --registry "$registry"

# --- 3. the demo CI ---------------------------------------------------------
say "starting the demo CI on 127.0.0.1:$ci_port (checks lineaged's webhook signatures)"
python3 scripts/demo-ci.py serve --port "$ci_port" >"$work/ci.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$ci_port/healthz" "the demo CI"

# --- 4. lineaged on SQLite --------------------------------------------------
# The lineage of docker-compose.yml, with this machine's addresses.
config=$root/config/compose/lineaged.yaml
export LINEAGED_DATABASE_URL="sqlite://$work/lineaged.db"
export LINEAGED_LISTEN="127.0.0.1:$port" LINEAGED_PUBLIC_URL=$api
export DEMO_REGISTRY=$registry DEMO_CI_URL="http://127.0.0.1:$ci_port/"
"$bin" check -c "$config" >&2
say "starting lineaged serve on $config (SQLite in $work)"
"$bin" serve -c "$config" >"$work/lineaged.log" 2>&1 &
pids+=($!)
wait_for "$api/readyz" "lineaged"
say "the dashboard: $api/ (open it now to watch the rollout)"
# The first look at each image records its digest; a change is a change
# from there.
for _ in $(seq 1 100); do
  unchecked=$(curl -fsS "$api/api/v1/images?limit=100" |
    python3 -c 'import json,sys; print(sum(1 for i in json.load(sys.stdin)["images"] if i["state"] == "unchecked"))')
  [[ $unchecked == 0 ]] && break
  sleep 0.2
done
"$bin" plan -c "$config" --changed "$registry/demo/base:1" >&2

# --- 5. a new base, and the rollout -----------------------------------------
last=$(curl -fsS "$api/api/v1/rollouts?limit=1" | python3 -c 'import json,sys; i=json.load(sys.stdin)["rollouts"]; print(i[0]["id"] if i else 0)')
say "pushing a new demo/base:1 (an upstream fix)"
python3 scripts/demo-ci.py bump --registry "$registry"
rc=0
python3 scripts/demo-ci.py follow --api "$api" --after "$last" --timeout 120 || rc=$?
say "CI log:"
sed 's/^/    /' "$work/ci.log" >&2

if [[ ${DEMO_EXIT:-} == 1 ]]; then
  exit "$rc"
fi
cat >&2 <<EOF

The dashboard: $api/
  the API:      curl -s $api/api/v1/rollouts | python3 -m json.tool
  push again:   python3 scripts/demo-ci.py bump --registry $registry
  logs:         $work/*.log
Ctrl-C stops everything.
EOF
wait "${pids[@]}"
