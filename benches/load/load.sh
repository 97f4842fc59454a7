#!/usr/bin/env bash
# The load benchmark (issue 13; README "Performance"): builds tokengate, the
# floor and loadbench, installs the Node peer, and runs `loadbench run`, which
# drives each server with h2load and prints a markdown table.
#
#   benches/load/load.sh              the full benchmark: release build, 3 runs of 15 s
#                                     per shape after 3 s of warm-up (about 20 minutes)
#   benches/load/load.sh --check      CI: the debug build `cargo test` left, 1 s of 1x1
#                                     per call and server, noise check off; fails if a
#                                     reply is not a verified success; then 1 s of 1x1
#                                     IssueRtcToken on 2 tokengate replicas without a
#                                     limit, with a local one and sharing a Redis one
#                                     (about 8 s more)
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
#
# Replicas and limits (issue 15), tokengate only:
#   LOAD_REPLICAS   tokengate processes run at once, each with its own ports and
#                   its own h2load of each shape; req/s is their sum, p50/p99 are
#                   each replica's, and every replica's own counters must account
#                   for its h2load's replies. Default 1; a list ("1,2") measures each.
#   LOAD_VARIANTS   tokengate configs measured in turn in the same run (default
#                   none): none (no limit), local (a local [[limits.rate]]), redis
#                   (the same limit shared through [limits.redis], on a redis-server
#                   this run starts on a free loopback port, without persistence).
#                   Each limit is rate = "1000000/s", burst = 1000000, key caller:
#                   every call is checked and admitted, and a run fails unless
#                   tokengate counted an admitted check of the variant's backend for
#                   every call (no limited, unavailable or local_fallback check) and,
#                   for redis, redis-server ran a script per call. With none and a
#                   limit, the report adds what the limit costs per call.
# Each replica count and variant is measured like one more tokengate (its
# calls and shapes), so the full benchmark's time grows by as much each.
# For example, 1 and then 2 replicas, each without a limit, with a local one
# and with a Redis one:
#   LOAD_REPLICAS=1,2 LOAD_VARIANTS=none,local,redis LOAD_TARGETS=tokengate \
#     LOAD_CALLS=issue benches/load/load.sh
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
replicas=${LOAD_REPLICAS:-1}
variants=${LOAD_VARIANTS:-none}
dir=${LOAD_DIR:-$root/target/load}
# The check's cluster run: 2 replicas, without a limit, with a local one and
# with a Redis one.
cluster=no
[ "$mode" = check ] && [[ ",$targets," == *",tokengate,"* ]] && cluster=yes
redis=no
{ [[ ",$variants," == *",redis,"* ]] || [ "$cluster" = yes ]; } && redis=yes

# h2load (Debian's nghttp2-client), redis-server and the rest come from .ci/setup.
command -v h2load >/dev/null || bash .ci/setup
[ "$redis" = no ] || command -v redis-server >/dev/null || bash .ci/setup

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

common=(--h2load "$(command -v h2load)" --seconds "$seconds" --runs "$runs"
  --warmup "$warmup" "--max-other-cpu=$noise" --probe-calls "$probes"
  --retries "${LOAD_RETRIES:-3}" --threads "${LOAD_THREADS:-1}")
[ "$redis" = no ] || common+=(--redis-server "$(command -v redis-server)")
args=(run --dir "$dir" "${common[@]}" --shapes "$shapes" --calls "$calls"
  --replicas "$replicas" --variants "$variants")
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
[ "$cluster" = yes ] || exec "$out/examples/loadbench" "${args[@]}"

"$out/examples/loadbench" "${args[@]}"
# Every replica's counters and Redis's own count checked, briefly: the
# shapes of the issue's comparison, at 1x1 for 1 s.
echo "load.sh: the cluster check: 2 tokengate replicas, no limit, a local and a Redis limit" >&2
exec "$out/examples/loadbench" run --dir "$dir-cluster" "${common[@]}" --shapes 1x1 \
  --calls issue --replicas 2 --variants none,local,redis --tokengate "$out/tokengate" \
  --config-extra "$extra"
