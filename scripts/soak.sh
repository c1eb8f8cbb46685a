#!/usr/bin/env bash
# The long form of the durability tests (not run in CI): many SIGKILL cycles against a flaky
# ARR and a 100 k-event backlog, on an optimised build.
#   scripts/soak.sh [cycles] [backlog events]
set -euo pipefail
cd "$(dirname "$0")/.."
export BALP_SOAK_CYCLES="${1:-200}"
export BALP_BACKLOG_EVENTS="${2:-100000}"
exec cargo test --release --test durability -- --nocapture --test-threads 1
