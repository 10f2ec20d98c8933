#!/usr/bin/env bash
# Longer fuzz runs than the test command's (tests/fuzz.rs, and the callback
# bodies in tests/api.rs): CASES per target (default 200000) with a fresh
# seed each run, printed so a failure can be replayed:
#   LINEAGED_FUZZ_SEED=<seed> scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LINEAGED_FUZZ_CASES=${CASES:-200000}
export LINEAGED_FUZZ_SEED=${LINEAGED_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "fuzz: ${LINEAGED_FUZZ_CASES} cases per target, seed ${LINEAGED_FUZZ_SEED}" >&2
# Optimised without LTO ([profile.bench]). The callback fuzz goes over
# HTTP: a tenth of the cases.
cargo test --profile bench --test fuzz -- --nocapture
LINEAGED_FUZZ_CASES=$((LINEAGED_FUZZ_CASES / 10)) \
  cargo test --profile bench --test api fuzzed_callback_bodies -- --nocapture
