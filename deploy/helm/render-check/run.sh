#!/usr/bin/env bash
# Renders the chart with a stand-in for `helm template` (main.go: Go
# text/template + sprig + Helm's include/tpl/toYaml/fromYaml/fail) for the
# default values, the two example values files and the cases/ files, checks
# every document parses, validates the values against values.schema.json and,
# when LINEAGED_BIN is set, runs `lineaged check` on the rendered config.
#
# Needs (Debian 12): apt-get install golang-go golang-github-masterminds-sprig-dev
#   golang-gopkg-yaml.v2-dev; python3 with PyYAML and jsonschema.
# Not a replacement for `helm lint` / `helm template` / kubeconform.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
chart=$(cd "$here/../lineaged" && pwd)
examples=$(cd "$here/../examples" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$out/gocache"
(cd "$here" && go build -o "$out/render" .)

fails=0
render() { # NAME VALUES...
  local name=$1; shift
  local args=()
  for f in "$@"; do args+=(-f "$f"); done
  if ! DUMP_VALUES="$out/$name.json" "$out/render" "$chart" -n lineaged -r lineaged "${args[@]}" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "$name: render failed: $(sed 's/.*error calling fail: //' "$out/$name.err")"
    return 1
  fi
  KEYS_DIR="$out/keys" EXTRA_ENV="GITHUB_TOKEN REGISTRY_PASSWORD LINEAGED_API_TOKEN_OPS LINEAGED_API_TOKEN_GRAFANA HARBOR_RECEIVER_TOKEN SLACK_WEBHOOK_URL=https://hooks.slack.com/services/x CI_WEBHOOK_SECRET" \
    python3 "$here/check.py" "$out/$name.yaml" "$out/$name.json" ${LINEAGED_BIN:-} | sed "s/^/$name: /"
}
if [ ! -f "$out/keys/cosign.pub" ]; then
  mkdir -p "$out/keys"
  openssl ecparam -name prime256v1 -genkey -noout | openssl ec -pubout -out "$out/keys/cosign.pub" 2>/dev/null
fi
render default || fails=$((fails+1))
render example-postgres "$examples/values-postgres.yaml" || fails=$((fails+1))
render example-sqlite "$examples/values-sqlite.yaml" || fails=$((fails+1))
for f in "$here"/cases/ok-*.yaml; do render "$(basename "$f" .yaml)" "$f" || fails=$((fails+1)); done
for f in "$here"/cases/fail-*.yaml; do
  if render "$(basename "$f" .yaml)" "$f" >/dev/null 2>&1; then
    echo "$(basename "$f"): rendered but should fail"; fails=$((fails+1))
  else
    echo "$(basename "$f" .yaml): refused as expected: $(sed 's/.*error calling fail: //' "$out/$(basename "$f" .yaml).err" | cut -c1-140)"
  fi
done
echo "$fails failed"
[ "$fails" -eq 0 ]
