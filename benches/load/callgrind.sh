#!/usr/bin/env bash
# Instructions per IssueRtcToken call, counted by valgrind's callgrind: a
# figure that does not depend on what else the machine runs (issue 13;
# README "Performance"). Usage: benches/load/callgrind.sh
#
# (a) In process: `loadbench inprocess` calls the handler as `serve` wires it
#     (config, JWKS file, pipeline with metrics, JSON audit line to stdout) on
#     one thread. It runs twice under callgrind, with CALLGRIND_BASE and
#     CALLGRIND_CALLS calls; the difference of the two totals divided by the
#     difference of the calls is the cost of one call, setup cancelled out.
# (b) Through the real server: `tokengate serve` runs under callgrind; after
#     a warm-up of CALLGRIND_BASE calls from h2load (one connection), the
#     counters are zeroed (`callgrind_control --zero`), h2load makes
#     CALLGRIND_CALLS more calls on a new connection, the counters are dumped,
#     and the dump's total is divided by the calls. The total covers every
#     thread of the server: the transport (HTTP/2, HPACK, tonic), the
#     handler, the audit write, and the accept of that one connection.
#
# The client (h2load) runs outside valgrind, so it is never counted. The
# binaries are the release build (no debug info; symbols are enough here).
#
# `benches/load/callgrind.sh facts` counts (a) only, for what a cached fact
# costs a call (the facts issue): `loadbench inprocess --fact literal` (the
# webinar attendee rule, its condition over a literal list of tickets) and
# `--fact hit` (the same condition over facts.tickets, an http fact whose
# cache answers every call but the first), and their difference.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
base=${CALLGRIND_BASE:-200}
calls=${CALLGRIND_CALLS:-2200}
profile=${CALLGRIND_PROFILE:-release}
dir=${CALLGRIND_DIR:-$root/target/callgrind}
command -v valgrind >/dev/null && command -v h2load >/dev/null || bash .ci/setup

# The binary alone (its shipped features), then loadbench (see load.sh).
# (facts counts loadbench only.)
[ "${1:-}" = facts ] || cargo build --locked --profile "$profile" --bin tokengate >&2
cargo build --locked --profile "$profile" --example loadbench >&2
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"
mkdir -p "$dir"
rm -f "$dir"/*.out "$dir"/*.out.*

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
admin_port=$(free_port)
"$out/examples/loadbench" setup --dir "$dir" --grpc-port "$grpc_port" --admin-port "$admin_port"

# The "summary:" (or "totals:") line of a callgrind output file: instructions executed.
total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

# --- facts: (a) for the webinar rule without and with a cached fact ---------
if [ "${1:-}" = facts ]; then
  declare -A per_call
  for fact in literal hit; do
    for n in "$base" "$calls"; do
      valgrind --tool=callgrind --callgrind-out-file="$dir/facts.$fact.$n.out" \
        "$out/examples/loadbench" inprocess --dir "$dir" --calls "$n" --fact "$fact" \
        >/dev/null 2>"$dir/facts.$fact.$n.log" || { cat "$dir/facts.$fact.$n.log" >&2; exit 1; }
    done
    per_call[$fact]=$(( ($(total "$dir/facts.$fact.$calls.out") - $(total "$dir/facts.$fact.$base.out")) / (calls - base) ))
  done
  cat <<EOF
| webinar attendee rule, in process | instructions per IssueRtcToken call |
|---|---:|
| condition over a literal list (no fact read) | ${per_call[literal]} |
| condition over facts.tickets, a cache hit | ${per_call[hit]} |
| a cached fact adds | $(( per_call[hit] - per_call[literal] )) |

(callgrind; each (calls $calls − calls $base) ÷ $((calls - base)); outputs in $dir/facts.*.out)
EOF
  exit 0
fi

# --- (a) in process -------------------------------------------------------
for n in "$base" "$calls"; do
  valgrind --tool=callgrind --callgrind-out-file="$dir/inprocess.$n.out" \
    "$out/examples/loadbench" inprocess --dir "$dir" --calls "$n" >/dev/null 2>"$dir/inprocess.$n.log" \
    || { cat "$dir/inprocess.$n.log" >&2; exit 1; }
done
a_base=$(total "$dir/inprocess.$base.out")
a_calls=$(total "$dir/inprocess.$calls.out")
inprocess=$(( (a_calls - a_base) / (calls - base) ))

# --- (b) through the server -------------------------------------------------
valgrind --tool=callgrind --callgrind-out-file="$dir/server.out" \
  "$out/tokengate" serve --config "$dir/tokengate.toml" >/dev/null 2>"$dir/server.log" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  sleep 0.1
done
jwt=$(cat "$dir/jwt")
drive() {
  local n=$1 report
  report=$(h2load -n "$n" -c 1 -m 1 -d "$dir/issue.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $jwt" \
    "http://127.0.0.1:$grpc_port/tokengate.v1.TokenService/IssueRtcToken")
  # Every call a success with a token in its reply: h2load's 2xx count is not
  # enough (a gRPC error is HTTP 200 too), so the body bytes are checked as
  # well (an error reply has none; a reply with a token has over 300 bytes).
  grep -q " $n succeeded" <<<"$report" || { echo "$report" >&2; exit 1; }
  local data
  data=$(sed -n 's/.*(\([0-9]*\)) data$/\1/p' <<<"$report")
  [ "${data:-0}" -ge $((n * 300)) ] || { echo "replies too small ($data bytes for $n):" >&2; echo "$report" >&2; exit 1; }
}
drive "$base"
callgrind_control --zero "$server" >/dev/null
drive "$calls"
callgrind_control --dump=measured "$server" >/dev/null
dump=$(ls "$dir"/server.out.* | head -1)
server_total=$(total "$dump")
through_server=$(( server_total / calls ))
kill -TERM "$server"
wait "$server" 2>/dev/null || true
trap - EXIT

# 1234567 -> 1,234,567
commas() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta' <<<"$1"; }
cat <<EOF
| path | instructions per IssueRtcToken call |
|---|---:|
| in process (authenticate, decide, build, reply, audit, metrics) | $(commas "$inprocess") |
| through the server (+ HTTP/2, tonic, connection) | $(commas "$through_server") |

(callgrind; (a) ($a_calls - $a_base) / ($calls - $base); (b) $server_total / $calls after $base warm-up calls)
EOF
