#!/usr/bin/env bash
# The overload benchmark (issue 15; README "Performance", "Load shedding"):
# tokengate (release build, verified-JWT cache on) under far more concurrent
# callers than two cores serve, once with a generous `limits.max_in_flight`
# (1024, the default: nothing is shed, every call queues) and once with a
# tight one, driven by the `overload` example (tonic, 256 callers making calls
# one after another over 4 connections). Prints a markdown table: per bound,
# the OK calls/s with their p50/p99/max latency and the shed calls/s with
# theirs. Every OK reply is checked to carry a 007 token.
#
#   benches/load/overload.sh
#
# Each bound runs twice: callers that retry a refusal at once (the worst
# case), and callers that wait its `RetryInfo` delay, as well-behaved gRPC
# clients do ("honours RetryInfo" column).
#
# Overrides: OVERLOAD_BOUNDS (default "1024,32"), OVERLOAD_CALLERS (256),
# OVERLOAD_SECONDS (10, after 2 s of warm-up), LOAD_PROFILE (release).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
profile=${LOAD_PROFILE:-release}
bounds=${OVERLOAD_BOUNDS:-1024,32}
callers=${OVERLOAD_CALLERS:-256}
seconds=${OVERLOAD_SECONDS:-10}

cargo build --locked --profile "$profile" --bin tokengate >&2
cargo build --locked --profile "$profile" --example overload --example loadbench >&2
out="$root/target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
dir="$root/target/overload"
rm -rf "$dir"
mkdir -p "$dir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "| max_in_flight | honours RetryInfo | OK calls/s | OK p50 | OK p99 | OK max | shed calls/s | shed p50 | shed p99 |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
IFS=, read -ra list <<<"$bounds"
for bound in "${list[@]}"; do
  grpc=$(free_port); admin=$(free_port)
  printf '[jwt_cache]\nenabled = true\n\n[limits]\nmax_in_flight = %s\n' "$bound" >"$dir/extra-$bound.toml"
  "$out/examples/loadbench" setup --dir "$dir/$bound" --grpc-port "$grpc" --admin-port "$admin" \
    --config-extra "$dir/extra-$bound.toml" >/dev/null
  # Audit lines go to a file: the benchmark measures the service, not a terminal.
  "$out/tokengate" serve --config "$dir/$bound/tokengate.toml" 2>"$dir/$bound/log" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "tokengate did not turn ready" >&2; exit 1; }
  "$out/examples/overload" --addr "127.0.0.1:$grpc" --jwt-file "$dir/$bound/jwt" \
    --callers "$callers" --seconds 2 >/dev/null
  for honor in no yes; do
    flag=(); [ "$honor" = yes ] && flag=(--honor-retry-info)
    report=$("$out/examples/overload" --addr "127.0.0.1:$grpc" --jwt-file "$dir/$bound/jwt" \
      --callers "$callers" --seconds "$seconds" "${flag[@]}")
    python3 - "$bound" "$honor" "$report" <<'PY'
import json, sys
bound, honor, report = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
other = set(report) - {"ok", "resourceexhausted"}
if other:
    sys.exit(f"unexpected outcomes at max_in_flight {bound}: {sorted(other)}")
ok = report.get("ok", {"count": 0, "per_second": 0, "p50_us": 0, "p99_us": 0, "max_us": 0})
shed = report.get("resourceexhausted", {"per_second": 0, "p50_us": 0, "p99_us": 0})
ms = lambda us: f"{us / 1000:.2f} ms"
print(f"| {bound} | {honor} | {ok['per_second']:,.0f} | {ms(ok['p50_us'])} | {ms(ok['p99_us'])} | {ms(ok['max_us'])} "
      f"| {shed['per_second']:,.0f} | {ms(shed['p50_us'])} | {ms(shed['p99_us'])} |")
PY
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
