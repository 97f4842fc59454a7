#!/usr/bin/env bash
# The load benchmark (issue 13; README "Performance"): builds tokengate, the
# floor and loadbench, installs the Node peer, and runs `loadbench run`, which
# drives each server with h2load and prints a markdown table.
#
#   benches/load/load.sh              the full benchmark: release build, 3 runs of 15 s
#                                     per shape after 3 s of warm-up (about 20 minutes)
#   benches/load/load.sh --check      CI: the debug build `cargo test` left, 1 s of 1x1
#                                     per call and server, noise check off; fails if a
#                                     reply is not a verified success
#   benches/load/load.sh --self-test  CI: the same, with a broken JWT (and a wrong route
#                                     for Node) sent by h2load; passes only if every run
#                                     is reported as failed
#
# Overrides (environment): LOAD_SECONDS, LOAD_RUNS, LOAD_WARMUP, LOAD_RETRIES,
# LOAD_SHAPES (e.g. "16x1,4x4"), LOAD_CALLS (issue,check,renew),
# LOAD_TARGETS (tokengate,floor,node), LOAD_MAX_OTHER_CPU (cores; -1 = off),
# LOAD_THREADS (h2load's), LOAD_PROFILE (release, or dev), LOAD_JWT_CACHE
# (off, the default: every call verifies its JWT; on), LOAD_CONFIG_EXTRA
# (a TOML file appended to tokengate's config), LOAD_DIR (default
# target/load), LOAD_OUTPUT (also write the report there).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

mode=full
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --self-test) mode=self-test ;;
  *) echo "usage: $0 [--check | --self-test]" >&2; exit 64 ;;
esac

if [ "$mode" = full ]; then
  seconds=${LOAD_SECONDS:-15}; runs=${LOAD_RUNS:-3}; warmup=${LOAD_WARMUP:-3}
  shapes=${LOAD_SHAPES:-1x1,16x1,1x16,4x4}; noise=${LOAD_MAX_OTHER_CPU:-0.05}
  profile=${LOAD_PROFILE:-release}; probes=50
else
  # The success checks only: whatever else the machine runs is not a failure here.
  seconds=${LOAD_SECONDS:-1}; runs=${LOAD_RUNS:-1}; warmup=${LOAD_WARMUP:-0}
  shapes=${LOAD_SHAPES:-1x1}; noise=${LOAD_MAX_OTHER_CPU:--1}
  profile=${LOAD_PROFILE:-dev}; probes=20
fi
calls=${LOAD_CALLS:-issue,check,renew}
targets=${LOAD_TARGETS:-tokengate,floor,node}
dir=${LOAD_DIR:-$root/target/load}

# h2load (Debian's nghttp2-client) and the rest come from .ci/setup.
command -v h2load >/dev/null || bash .ci/setup

# The Node peer, pinned by its lock file, in its own folder under .tools/.
node_dir="$root/.tools/bench-node"
if [[ ",$targets," == *",node,"* ]]; then
  mkdir -p "$node_dir"
  for f in package.json package-lock.json server.js; do
    cmp -s "benches/load/node/$f" "$node_dir/$f" || cp "benches/load/node/$f" "$node_dir/$f"
  done
  if ! (cd "$node_dir" && npm ls --depth=0 >/dev/null 2>&1); then
    echo "load.sh: npm ci (express, agora-token)" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

# The full benchmark builds the binary alone, with exactly the features it
# ships with (built next to the examples, it would get the dev-dependencies'
# features too, such as tokio's test-util), then the bench's own binaries.
# The checks build all three at once, as `cargo test` left them.
echo "load.sh: cargo build --profile $profile" >&2
if [ "$mode" = full ]; then
  cargo build --locked --profile "$profile" --bin tokengate >&2
  cargo build --locked --profile "$profile" --example floor --example loadbench >&2
else
  cargo build --locked --profile "$profile" --bin tokengate --example floor --example loadbench >&2
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"

args=(run --dir "$dir" --h2load "$(command -v h2load)"
  --seconds "$seconds" --runs "$runs" --warmup "$warmup" --shapes "$shapes"
  --calls "$calls" "--max-other-cpu=$noise" --probe-calls "$probes"
  --retries "${LOAD_RETRIES:-3}" --threads "${LOAD_THREADS:-1}")
[[ ",$targets," == *",tokengate,"* ]] && args+=(--tokengate "$out/tokengate")
[[ ",$targets," == *",floor,"* ]] && args+=(--floor "$out/examples/floor")
[[ ",$targets," == *",node,"* ]] && args+=(--node "$node_dir")
# The verified-JWT cache is on by default in tokengate; the benchmark measures
# a verification on every call unless LOAD_JWT_CACHE=on (the same JWT repeats).
extra="$dir.extra.toml"
mkdir -p "$(dirname "$extra")"
case "${LOAD_JWT_CACHE:-off}" in
  off) printf '[jwt_cache]\nenabled = false\n' >"$extra" ;;
  on) printf '[jwt_cache]\nenabled = true\n' >"$extra" ;;
  *) echo "load.sh: LOAD_JWT_CACHE is on or off" >&2; exit 64 ;;
esac
[ -n "${LOAD_CONFIG_EXTRA:-}" ] && cat "$LOAD_CONFIG_EXTRA" >>"$extra"
args+=(--config-extra "$extra")
[ -n "${LOAD_OUTPUT:-}" ] && args+=(--output "$LOAD_OUTPUT")
[ "$mode" = self-test ] && args+=(--self-test)
exec "$out/examples/loadbench" "${args[@]}"
