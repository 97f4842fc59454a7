#!/usr/bin/env bash
# The long soak: the fault suite's fixed-rate soak of the real binary (200
# calls/s over 4 connections, 0 errors, RSS growth under 10 MiB after
# warm-up), run for 10 minutes instead of CI's 30 s. Usage: .ci/soak.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENGATE_SOAK_SECS="${1:-600}" exec cargo test --release --test it \
  faults::a_soak_at_a_fixed_rate_has_no_errors_and_flat_memory -- --exact --nocapture
