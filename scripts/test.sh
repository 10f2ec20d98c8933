#!/usr/bin/env bash
# The one test command (README): installs what the tests need when missing,
# then runs the whole suite. Safe to run again; never skips a test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# Packaging: the compose file, the Helm chart (rendered with Go's
# text/template and sprig, as Helm does), the systemd unit.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/Masterminds/sprig ]] || missing+=(golang-github-masterminds-sprig-dev)
[[ -d /usr/share/gocode/src/gopkg.in/yaml.v2 ]] || missing+=(golang-gopkg-yaml.v2-dev)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The config schema is checked with an independent validator (Python's).
python3 -c 'import jsonschema, yaml' >/dev/null 2>&1 || missing+=(python3-jsonschema python3-yaml)
# The dashboard test drives Debian's Chromium with playwright-core (npm).
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test.sh: please install: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# playwright-core, pinned in tests/browser/package-lock.json.
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  echo "test.sh: installing playwright-core (npm ci in tests/browser)" >&2
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error >/dev/null
fi

# Postgres for the store tests: the machine's server on 127.0.0.1:5432 when
# it answers, otherwise a throwaway cluster (see scripts/pg-throwaway.sh).
if [[ -z "${TEST_DATABASE_URL:-}" ]]; then
  TEST_DATABASE_URL=$(scripts/pg-throwaway.sh)
  export TEST_DATABASE_URL
fi

# Benches are type-checked by clippy in CI and run with `cargo bench`.
exec cargo test --lib --bins --tests "$@"
