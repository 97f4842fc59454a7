#!/usr/bin/env bash
# What facts cost under load (README "Performance", "Facts"): tokengate's
# release binary serving the example's webinar rules (deploy/examples/
# policy.toml section 4, reading facts.event_hosts and facts.tickets from a
# real PostgreSQL loaded with deploy/examples/facts-schema.sql), driven by
# h2load over loopback, against the same rules with conditions of the same
# shape that read no fact. Prints a markdown table.
#
#   benches/load/facts.sh           3 runs of 15 s per variant after 3 s of warm-up,
#                                   16 connections × 1 stream (about 2 minutes
#                                   after the build)
#
# The hit rate. h2load sends one request body with one JWT, so every call
# asks for the same key (event "launch", subject "bench-user"): a miss can
# only come from expiry. So the facts' ttl (and negative_ttl: the caller is
# no host, so event_hosts is an empty answer) is made short: a key asked R
# times a second and kept for ttl misses once per ttl, a hit rate of
# 1 - 1/(R × ttl). A calibration run of FACTS_WARMUP seconds at
# ttl = 20 / (the no-fact variant's req/s) measures the facts variant's own
# R and hit rate, and the measured runs use the ttl that gives FACTS_HIT of
# the lookups from the cache, the other misses going to PostgreSQL (both
# facts of a call are fetched at once). Every run's hit rate is read from
# tokengate's own counters (tokengate_fact_lookups_total) and reported.
#
# Each run fails (and the script exits 1) unless h2load saw no failure,
# tokengate counted an allow for every success (and nothing else), and for
# the facts variant two lookups per call with no error or timeout; for the
# other variant, none.
#
# Overrides (environment): FACTS_SECONDS, FACTS_RUNS, FACTS_WARMUP,
# FACTS_SHAPE (connections x streams, e.g. 16x1), FACTS_HIT (0.95),
# FACTS_TTL (skip the calibration: a humantime duration such as 2ms),
# FACTS_PROFILE (release, or dev), FACTS_LOADBENCH (a built loadbench to
# write the benchmark directory with, `loadbench setup`: it is not
# measured; default: built with FACTS_PROFILE), FACTS_DIR (default target/facts-load),
# FACTS_OUTPUT (also write the report there).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

seconds=${FACTS_SECONDS:-15}; runs=${FACTS_RUNS:-3}; warmup=${FACTS_WARMUP:-3}
shape=${FACTS_SHAPE:-16x1}; target_hit=${FACTS_HIT:-0.95}
profile=${FACTS_PROFILE:-release}; dir=${FACTS_DIR:-$root/target/facts-load}
conns=${shape%x*}; streams=${shape#*x}
in_flight=$((conns * streams))
issuer="https://idp.bench.example"
method=/tokengate.v1.TokenService/IssueRtcToken

command -v h2load >/dev/null || bash .ci/setup
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pg_bin/initdb" ] || bash .ci/setup
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

echo "facts.sh: cargo build --profile $profile" >&2
cargo build --locked --profile "$profile" --bin tokengate >&2
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"
loadbench=${FACTS_LOADBENCH:-}
if [ -z "$loadbench" ]; then
  cargo build --locked --profile "$profile" --example loadbench >&2
  loadbench="$out/examples/loadbench"
fi

rm -rf "$dir"
mkdir -p "$dir"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "${pg_dir:-}" ] || rm -rf "$pg_dir"
}
trap cleanup EXIT

# A free loopback port: one nothing answers on.
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"; return 0
    fi
  done
  echo "facts.sh: no free port" >&2; exit 1
}

# PostgreSQL, as in tests/support/postgres.rs: a fresh cluster on loopback,
# the superuser over the Unix socket only, role tokengate (SELECT only) with
# a password over TCP. initdb and postgres refuse root: then they run as
# Debian's postgres user (setpriv execs, so the pid held is the postmaster).
# Its folder is under /tmp: the postgres user must reach it, and the
# socket's path must be short.
pg_dir=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$pg_dir"
  as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
pg_port=$(free_port)
(cd "$pg_dir" && "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth-local=trust \
  --auth-host=reject --no-sync -E UTF8 --locale=C --no-instructions) >"$dir/initdb.log" 2>&1
printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$pg_dir/data/pg_hba.conf"
(cd "$pg_dir" && LC_ALL=C exec "${as_pg[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -p "$pg_port" \
  -k "$pg_dir" -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
  -c full_page_writes=off -c logging_collector=off) </dev/null >"$dir/postgres.log" 2>&1 &
pids+=($!)
pg_pid=$!
psql_su() { psql -X -h "$pg_dir" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 -At "$@"; }
for i in $(seq 1 300); do
  psql_su -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
  kill -0 "$pg_pid" 2>/dev/null || { cat "$dir/postgres.log" >&2; exit 1; }
  [ "$i" = 300 ] && { echo "facts.sh: postgres not ready in 30 s" >&2; exit 1; }
  sleep 0.1
done
password="facts-bench-$RANDOM$RANDOM"
printf '%s' "$password" >"$dir/db-password"
psql_su -d postgres -c "CREATE ROLE tokengate LOGIN PASSWORD '$password'" >/dev/null
psql_su -d postgres -c "CREATE DATABASE app" >/dev/null
psql_su -d app -f deploy/examples/facts-schema.sql >/dev/null
# The caller holds a ticket and hosts nothing: each call reads both facts,
# one empty (negative_ttl), and the attendee rule allows.
psql_su -d app -c "INSERT INTO tickets VALUES ('launch', 'bench-user', 'standard')" >/dev/null
echo "facts.sh: postgres ready on 127.0.0.1:$pg_port" >&2

# The benchmark directory (keys, JWT, base config, request bodies), the
# verified-JWT cache on: one JWT repeats, and the facts are what is measured.
grpc_port=$(free_port); admin_port=$(free_port)
printf '[jwt_cache]\nenabled = true\n' >"$dir/extra.toml"
"$loadbench" setup --dir "$dir/bench" --grpc-port "$grpc_port" \
  --admin-port "$admin_port" --config-extra "$dir/extra.toml"
bench="$dir/bench"
jwt=$(cat "$bench/jwt")

# The example's webinar rules for the bench's issuer and project, and its
# [databases] and [[facts]] pointed at this PostgreSQL with `ttl`.
webinar_rules() {
  sed -n '/^# 4\. Webinars/,/^# 5\./p' deploy/examples/policy.toml | sed '$d' |
    sed -e "s|https://login.example.com|$issuer|" -e 's|project = "events"|project = "main"|'
}
facts_section() {
  sed -n '/^\[databases\.app\]/,$p' deploy/examples/tokengate.toml |
    sed -e "s|postgres://tokengate@postgres.app.svc:5432/app|postgres://tokengate@127.0.0.1:$pg_port/app|" \
      -e "s|password_env = \"TOKENGATE_DB_PASSWORD\"|password_file = \"$dir/db-password\"|" \
      -e "s|^ttl = \"5m\"|ttl = \"$1\"|" -e "s|^negative_ttl = \"10s\"|negative_ttl = \"$1\"|"
}
# variant ttl -> the config's path. `facts`: the example's rules; `none`:
# the same rules whose conditions have the same shape and read no fact
# (false for hosts, true for attendees), the facts still declared.
write_config() {
  local variant=$1 ttl=$2 path="$dir/$1.toml"
  {
    cat "$bench/tokengate.toml"
    echo
    if [ "$variant" = facts ]; then
      webinar_rules
    else
      webinar_rules | sed -e "s|'size(facts.event_hosts) > 0'|'size([caller.subject]) > 5'|" \
        -e "s|'facts.tickets.exists(t, t.tier != \"refunded\")'|'[caller.subject].exists(t, t != \"refunded\")'|"
    fi
    echo
    facts_section "$ttl"
  } >"$path"
  # Both webinar conditions read facts in one, none in the other; else the
  # example's conditions changed and the substitutions above no longer apply.
  local reading; reading=$(grep '^condition' "$path" | grep -c 'facts\.' || true)
  if [ "$reading" != "$([ "$variant" = facts ] && echo 2 || echo 0)" ]; then
    echo "facts.sh: $variant: $reading conditions read facts; update write_config" >&2; exit 1
  fi
}

metric() { # scrape name-and-labels-regex -> the sum of matching series
  awk -v re="$2" '$0 !~ /^#/ && $1 ~ re { s += $2 } END { printf "%d\n", s }' "$1"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

tg_pid=
start_tokengate() {
  "$out/tokengate" serve --config "$1" >"$dir/tokengate.log" 2>&1 &
  tg_pid=$!
  pids+=("$tg_pid")
  for i in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$tg_pid" 2>/dev/null || { cat "$dir/tokengate.log" >&2; exit 1; }
    [ "$i" = 300 ] && { echo "facts.sh: tokengate not ready in 30 s" >&2; exit 1; }
    sleep 0.1
  done
}
stop_tokengate() {
  kill "$tg_pid" 2>/dev/null || true
  wait "$tg_pid" 2>/dev/null || true
}
h2() { # seconds log -> h2load's stdout
  h2load --clients="$conns" --max-concurrent-streams="$streams" --threads=1 \
    --duration="$1" --log-file "$2" \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $jwt" \
    --data "$bench/issue-webinar.bin" "http://127.0.0.1:$grpc_port$method"
}

# One measured run: variant ttl seconds; writes "req/s hit_rate p50_us
# p99_us cpu_us_per_call" to $dir/result after checking every call; exits 1
# on a failed check. (Not in a subshell: the cleanup must see tokengate.)
measure() {
  local variant=$1 ttl=$2 secs=$3 log="$dir/h2load.log"
  write_config "$variant" "$ttl"
  start_tokengate "$dir/$variant.toml"
  # One verified call first: the rule allows (and the facts' pool is warm).
  h2load -n 1 -c 1 -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $jwt" --data "$bench/issue-webinar.bin" \
    "http://127.0.0.1:$grpc_port$method" >/dev/null
  curl -fsS "http://127.0.0.1:$admin_port/metrics" >"$dir/before.prom"
  local cpu0; cpu0=$(cpu_ticks "$tg_pid")
  rm -f "$log"
  local summary; summary=$(h2 "$secs" "$log")
  local cpu1; cpu1=$(cpu_ticks "$tg_pid")
  curl -fsS "http://127.0.0.1:$admin_port/metrics" >"$dir/after.prom"
  stop_tokengate
  local rps ok failed non2xx
  rps=$(awk '/^finished in/ { sub(/,/, "", $4); print $4 }' <<<"$summary")
  ok=$(awk '/^requests:/ { print $8 }' <<<"$summary")
  failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' <<<"$summary")
  non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' <<<"$summary")
  d() { echo $(( $(metric "$dir/after.prom" "$1") - $(metric "$dir/before.prom" "$1") )); }
  local allowed denied hits lookups bad
  allowed=$(d '^tokengate_decisions_total[{].*decision="allow"')
  denied=$(( $(d '^tokengate_decisions_total') - allowed ))
  hits=$(d '^tokengate_fact_lookups_total[{].*result="hit"')
  lookups=$(d '^tokengate_fact_lookups_total')
  bad=$(d '^tokengate_fact_lookups_total[{].*result="(error|error_hit|timeout)"')
  local reasons=()
  [ "$ok" -gt 0 ] || reasons+=("no request succeeded")
  [ "$failed" = 0 ] && [ "$non2xx" = 0 ] || reasons+=("h2load: $failed failed, $non2xx not 2xx")
  [ "$denied" = 0 ] || reasons+=("tokengate counted $denied decisions other than allow")
  { [ "$allowed" -ge "$ok" ] && [ "$allowed" -le $((ok + in_flight)) ]; } ||
    reasons+=("tokengate counted $allowed allows for $ok successes")
  if [ "$variant" = facts ]; then
    { [ "$lookups" -ge $((2 * ok)) ] && [ "$lookups" -le $((2 * (ok + in_flight))) ]; } ||
      reasons+=("tokengate counted $lookups fact lookups for $ok successes (2 each)")
    [ "$bad" = 0 ] || reasons+=("$bad fact lookups failed or timed out")
  else
    [ "$lookups" = 0 ] || reasons+=("$lookups fact lookups with no rule reading a fact")
  fi
  if [ "${#reasons[@]}" -gt 0 ]; then
    printf 'facts.sh: %s run failed: %s\n' "$variant" "${reasons[*]}" >&2
    exit 1
  fi
  local hit=-
  [ "$lookups" -gt 0 ] && hit=$(awk -v h="$hits" -v l="$lookups" 'BEGIN { printf "%.4f", h / l }')
  local p50 p99
  read -r p50 p99 < <(awk -F'\t' '{ print $3 }' "$log" | sort -n |
    awk '{ v[NR] = $1 } END { i = int(NR * 0.5 + 0.999999); j = int(NR * 0.99 + 0.999999); print v[i], v[j] }')
  local cpu
  cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" -v n="$ok" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  echo "$rps $hit $p50 $p99 $cpu" >"$dir/result"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The ttl: calibrated from the rates unless given.
ttl=${FACTS_TTL:-}
if [ -z "$ttl" ]; then
  measure none 5m "$warmup"
  read -r rps0 _ <"$dir/result"
  ttl_us=$(awk -v r="$rps0" 'BEGIN { printf "%d", 20 / r * 1e6 }')
  measure facts "${ttl_us}us" "$warmup"
  read -r rps1 hit1 _ <"$dir/result"
  # Misses scale as 1/ttl: the ttl that leaves (1 - target) of the lookups missing.
  ttl_us=$(awk -v t="$ttl_us" -v h="$hit1" -v g="$target_hit" 'BEGIN { printf "%d", t * (1 - h) / (1 - g) }')
  ttl="${ttl_us}us"
  echo "facts.sh: calibration: no facts $rps0 req/s; facts at 20/that: $rps1 req/s, hit rate $hit1; ttl $ttl" >&2
fi

declare -A results
for run in $(seq 1 "$runs"); do
  for variant in none facts; do
    # A warm-up of the same variant first (not measured), as load.sh does.
    [ "$warmup" = 0 ] || measure "$variant" "$ttl" "$warmup"
    measure "$variant" "$ttl" "$seconds"
    line=$(cat "$dir/result")
    echo "facts.sh: run $run, $variant: $line (req/s hit p50_us p99_us cpu_us)" >&2
    results[$variant]+="$line"$'\n'
  done
done

col() { awk -v c="$2" 'NF { print $c }' <<<"${results[$1]}" | median; }
rps_none=$(col none 1); rps_facts=$(col facts 1)
report=$(
  echo "facts.sh: $runs run(s) of $seconds s per variant after $warmup s of warm-up, $conns × $streams, h2load 1 thread, verified-JWT cache on, medians; facts ttl = negative_ttl = $ttl"
  echo
  echo "| rules | hit rate | req/s | ÷ no facts | p50 | p99 | tokengate CPU per call |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for variant in none facts; do
    label=$([ "$variant" = none ] && echo "webinar, conditions without facts" || echo "webinar, 2 facts per call")
    ratio=$(awk -v a="$(col "$variant" 1)" -v b="$rps_none" 'BEGIN { printf "%.2f", a / b }')
    printf '| %s | %s | %.0f | %s | %s µs | %s µs | %s µs |\n' "$label" "$(col "$variant" 2)" \
      "$(col "$variant" 1)" "$([ "$variant" = none ] && echo – || echo "$ratio")" \
      "$(col "$variant" 3)" "$(col "$variant" 4)" "$(col "$variant" 5)"
  done
)
echo "$report"
[ -z "${FACTS_OUTPUT:-}" ] || echo "$report" >"$FACTS_OUTPUT"
: "$rps_facts"
