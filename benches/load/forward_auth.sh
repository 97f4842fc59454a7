#!/usr/bin/env bash
# What forward authentication costs under load (issue 17; README
# "Performance", "Forward auth"): one tokengate release binary with the
# load benchmark's ext_authz route and [forward_auth] (x-original, as nginx's
# snippet uses it), driven by h2load over loopback, in rotating rounds:
#
#   check         Envoy's gRPC ext_authz Check (the load benchmark's CheckRequest)
#   fa-h2c        the same check on the forward-auth listener over h2c: the JWT,
#                 X-Original-Method GET, X-Original-URI /rooms/team-blue-standup/join
#   fa-h1         the same over HTTP/1.1 (nginx's and Caddy's form), kept alive
#   nginx-auth    nginx running deploy/forward-auth/nginx.conf (auth_request to
#                 tokengate, the token passed upstream) in front of an app
#   nginx-plain   the same nginx proxying to the same app without auth_request
#
# The app is a second nginx answering 200 (both fronts reach it the same
# way). Each nginx runs one worker; tokengate, both nginx and h2load share
# the machine's cores, so the absolute req/s say more about the machine than
# about tokengate, and the ratios of the same run are what is reported.
#
#   benches/load/forward_auth.sh           FA_ROUNDS (3) rounds of every variant,
#                                          FA_SECONDS (10) s each after FA_WARMUP (2) s
#                                          of the same variant (about 3 minutes after
#                                          the build)
#   benches/load/forward_auth.sh --check   CI: the debug build cargo test left, one
#                                          round of 1 s per variant, no warm-up
#   benches/load/forward_auth.sh --self-test
#                                          CI: the same with a broken JWT (and Envoy's
#                                          request carrying it), nginx-plain left out;
#                                          passes only if every run is refused
#
# Every run is checked, and the script exits 1 on a failure: h2load saw no
# failed request and only 2xx answers, and tokengate's
# tokengate_ext_authz_checks_total counted an allowed check, by the variant's
# way (via="ext_authz" for check, "forward_auth" otherwise), for every
# success (none for nginx-plain), and nothing else.
#
# Overrides (environment): FA_SECONDS, FA_ROUNDS, FA_WARMUP, FA_SHAPE
# (connections x streams, default 16x1; streams apply to the h2c variants),
# FA_VARIANTS (a comma list of the above), FA_PROFILE (release, or dev),
# FA_JWT_CACHE (on, the default: one JWT repeats, so the check's framing is
# what differs; off: every call verifies its RS256 JWT), FA_DIR (default
# target/forward-auth-load), FA_OUTPUT (also write the report there).
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
  seconds=${FA_SECONDS:-10}; rounds=${FA_ROUNDS:-3}; warmup=${FA_WARMUP:-2}
  profile=${FA_PROFILE:-release}
else
  seconds=${FA_SECONDS:-1}; rounds=${FA_ROUNDS:-1}; warmup=${FA_WARMUP:-0}
  profile=${FA_PROFILE:-dev}
fi
shape=${FA_SHAPE:-16x1}; conns=${shape%x*}; streams=${shape#*x}
in_flight=$((conns * streams))
variants=${FA_VARIANTS:-check,fa-h2c,fa-h1,nginx-auth,nginx-plain}
[ "$mode" = self-test ] && variants=check,fa-h2c,fa-h1,nginx-auth
jwt_cache=${FA_JWT_CACHE:-on}
dir=${FA_DIR:-$root/target/forward-auth-load}
path=/rooms/team-blue-standup/join

command -v h2load >/dev/null && command -v nginx >/dev/null && command -v curl >/dev/null ||
  bash .ci/setup

# The binary alone first, with its shipped features (built with the
# examples, it would get their dev-dependencies' features too, such as
# tokio's test-util), then loadbench; the checks build both at once, as
# `cargo test` left them.
echo "forward_auth.sh: cargo build --profile $profile" >&2
if [ "$mode" = full ]; then
  cargo build --locked --profile "$profile" --bin tokengate >&2
  cargo build --locked --profile "$profile" --example loadbench >&2
else
  cargo build --locked --profile "$profile" --bin tokengate --example loadbench >&2
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"

rm -rf "$dir"
mkdir -p "$dir"
pids=()
cleanup() {
  # SIGTERM: an nginx master stops its workers (a SIGKILL would leave them).
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port); admin_port=$(free_port); fa_port=$(free_port)
front_port=$(free_port); plain_port=$(free_port); app_port=$(free_port)

# The benchmark directory (keys, JWT, config with the ext_authz route, the
# CheckRequest body), with [forward_auth] on its own port.
{
  printf '[jwt_cache]\nenabled = %s\n\n' "$([ "$jwt_cache" = on ] && echo true || echo false)"
  printf '[forward_auth]\nenabled = true\nlisten = "127.0.0.1:%s"\npath_prefix = "/check"\n' "$fa_port"
  printf 'original_request = "x-original"\n'
} >"$dir/extra.toml"
"$out/examples/loadbench" setup --dir "$dir/bench" --grpc-port "$grpc_port" \
  --admin-port "$admin_port" --config-extra "$dir/extra.toml"
bench="$dir/bench"
jwt=$(cat "$bench/jwt")
check_body="$bench/check.bin"
if [ "$mode" = self-test ]; then
  jwt=$(cat "$bench/jwt.bad"); check_body="$bench/check.bad.bin"
fi

"$out/tokengate" serve --config "$bench/tokengate.toml" >"$dir/tokengate.log" 2>&1 &
tg_pid=$!
pids+=("$tg_pid")
wait_for() { # url what
  for i in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    [ "$i" = 300 ] && { echo "forward_auth.sh: $2 not ready in 30 s" >&2; tail -n 20 "$dir"/*.log >&2; exit 1; }
    sleep 0.1
  done
}
wait_for "http://127.0.0.1:$admin_port/readyz" tokengate

# nginx: the app, and the fronts (the shipped snippet, pointed at loopback,
# and a plain proxy to the same app). Workers run as root under a root
# master (they must reach the folder).
user=$([ "$(id -u)" = 0 ] && echo "user root root;" || true)
nginx_main() { # name site-file
  local d="$dir/$1"
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<EOF
$user
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log notice;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/client_body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  include $2;
}
EOF
  nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;' >"$dir/$1.log" 2>&1 &
  pids+=($!)
  echo $! >"$d/master.pid"
}
cat >"$dir/app.conf" <<EOF
server {
  listen 127.0.0.1:$app_port;
  keepalive_requests 100000;
  location / { return 200 "ok\n"; }
}
EOF
substitute() { # file from to -> stdout; fails unless from occurs exactly once
  local n; n=$(grep -cF -- "$2" "$1" || true)
  [ "$n" = 1 ] || { echo "forward_auth.sh: '$2' occurs $n times in $1; update the script" >&2; exit 1; }
  python3 -c 'import sys; s=open(sys.argv[1]).read(); sys.stdout.write(s.replace(sys.argv[2], sys.argv[3]))' "$1" "$2" "$3"
}
substitute deploy/forward-auth/nginx.conf "server tokengate:9191;" "server 127.0.0.1:$fa_port;" >"$dir/front.1"
substitute "$dir/front.1" "server app:8081;" "server 127.0.0.1:$app_port;" >"$dir/front.2"
substitute "$dir/front.2" "listen 8080;" "listen 127.0.0.1:$front_port; keepalive_requests 100000;" >"$dir/front.conf"
cat >>"$dir/front.conf" <<EOF

# The same front without auth_request (the benchmark's comparison).
server {
    listen 127.0.0.1:$plain_port;
    keepalive_requests 100000;
    location / {
        proxy_set_header Authorization "";
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://app;
    }
}
EOF
nginx_main app "$dir/app.conf"
nginx_main front "$dir/front.conf"
wait_for "http://127.0.0.1:$app_port/" "the app nginx"
wait_for "http://127.0.0.1:$plain_port/" "the front nginx"
front_master=$(cat "$dir/front/master.pid")

# Each variant's h2load arguments.
h2load_args() {
  local auth="authorization: Bearer $jwt"
  case "$1" in
    check) echo "-H|content-type: application/grpc|-H|te: trailers|--data|$check_body|http://127.0.0.1:$grpc_port/envoy.service.auth.v3.Authorization/Check" ;;
    fa-h2c) echo "-H|$auth|-H|x-original-method: GET|-H|x-original-uri: $path|http://127.0.0.1:$fa_port/check" ;;
    fa-h1) echo "--h1|-H|$auth|-H|x-original-method: GET|-H|x-original-uri: $path|http://127.0.0.1:$fa_port/check" ;;
    nginx-auth) echo "--h1|-H|$auth|http://127.0.0.1:$front_port$path" ;;
    nginx-plain) echo "--h1|-H|$auth|http://127.0.0.1:$plain_port$path" ;;
    *) echo "forward_auth.sh: unknown variant $1" >&2; exit 64 ;;
  esac
}
metric() { # scrape regex -> the sum of matching series
  awk -v re="$2" '$0 !~ /^#/ && $1 ~ re { s += $2 } END { printf "%d\n", s }' "$1"
}
# utime + stime of a process and its children's threads (nginx: the master's
# one worker, found by its parent pid).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
worker_of() { ps -o pid= --ppid "$1" | head -n 1 | tr -d ' '; }
hz=$(getconf CLK_TCK)

# One run: variant seconds -> "req/s p50_us p99_us tg_cpu_us nginx_cpu_us"
# in $dir/result, after checking every call; returns 1 (saying why) when a
# check fails.
measure() {
  local variant=$1 secs=$2 log="$dir/h2load.log" args summary
  IFS='|' read -r -a args <<<"$(h2load_args "$variant")"
  local m=1
  [[ "$variant" == *h2c || "$variant" == check ]] && m=$streams
  local worker; worker=$(worker_of "$front_master")
  curl -fsS "http://127.0.0.1:$admin_port/metrics" >"$dir/before.prom"
  local tg0 ng0; tg0=$(cpu_ticks "$tg_pid"); ng0=$(cpu_ticks "$worker")
  rm -f "$log"
  summary=$(h2load --clients="$conns" --max-concurrent-streams="$m" --threads=1 \
    --duration="$secs" --log-file "$log" "${args[@]}")
  local tg1 ng1; tg1=$(cpu_ticks "$tg_pid"); ng1=$(cpu_ticks "$worker")
  curl -fsS "http://127.0.0.1:$admin_port/metrics" >"$dir/after.prom"
  local rps ok failed non2xx
  rps=$(awk '/^finished in/ { sub(/,/, "", $4); print $4 }' <<<"$summary")
  ok=$(awk '/^requests:/ { print $8 }' <<<"$summary")
  failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' <<<"$summary")
  non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' <<<"$summary")
  d() { echo $(( $(metric "$dir/after.prom" "$1") - $(metric "$dir/before.prom" "$1") )); }
  local via=forward_auth
  [ "$variant" = check ] && via=ext_authz
  local allowed all expect_min expect_max
  allowed=$(d "^tokengate_ext_authz_checks_total[{].*outcome=\"allowed\".*via=\"$via\"")
  all=$(d '^tokengate_ext_authz_checks_total')
  expect_min=$ok; expect_max=$((ok + in_flight))
  [ "$variant" = nginx-plain ] && { expect_min=0; expect_max=0; }
  local reasons=()
  [ "${ok:-0}" -gt 0 ] || reasons+=("no request succeeded")
  [ "$failed" = 0 ] && [ "$non2xx" = 0 ] || reasons+=("h2load: $failed failed, $non2xx not 2xx")
  { [ "$allowed" -ge "$expect_min" ] && [ "$allowed" -le "$expect_max" ]; } ||
    reasons+=("tokengate counted $allowed allowed checks via $via for $ok successes")
  [ "$all" = "$allowed" ] || reasons+=("tokengate counted $((all - allowed)) other checks")
  if [ "${#reasons[@]}" -gt 0 ]; then
    printf 'forward_auth.sh: %s failed: %s\n' "$variant" "${reasons[*]}" >&2
    return 1
  fi
  local p50 p99
  read -r p50 p99 < <(awk -F'\t' '{ print $3 }' "$log" | sort -n |
    awk '{ v[NR] = $1 } END { i = int(NR * 0.5 + 0.999999); j = int(NR * 0.99 + 0.999999); print v[i], v[j] }')
  local tg ng
  tg=$(awk -v t=$((tg1 - tg0)) -v hz="$hz" -v n="$ok" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  ng=$(awk -v t=$((ng1 - ng0)) -v hz="$hz" -v n="$ok" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  echo "$rps $p50 $p99 $tg $ng" >"$dir/result"
}

declare -A results
IFS=',' read -r -a list <<<"$variants"
if [ "$mode" = self-test ]; then
  for variant in "${list[@]}"; do
    if measure "$variant" "$seconds"; then
      echo "forward_auth.sh: self-test: $variant passed its checks with a broken JWT" >&2
      exit 1
    fi
  done
  echo "forward_auth.sh: self-test: every run with a broken JWT was refused"
  exit 0
fi
for round in $(seq 1 "$rounds"); do
  for variant in "${list[@]}"; do
    [ "$warmup" = 0 ] || measure "$variant" "$warmup" || exit 1
    measure "$variant" "$seconds" || exit 1
    line=$(cat "$dir/result")
    echo "forward_auth.sh: round $round, $variant: $line (req/s p50_us p99_us tokengate_cpu_us nginx_cpu_us)" >&2
    results[$variant]+="$line"$'\n'
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
col() { awk -v c="$2" 'NF { print $c }' <<<"${results[$1]:-}" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "–"; else printf "%.2f×", a / b }'; }
label() {
  case "$1" in
    check) echo "gRPC Check (Envoy's CheckRequest, h2c)" ;;
    fa-h2c) echo "forward-auth, h2c" ;;
    fa-h1) echo "forward-auth, HTTP/1.1" ;;
    nginx-auth) echo "nginx with auth_request (deploy/forward-auth/nginx.conf)" ;;
    nginx-plain) echo "nginx without auth_request" ;;
  esac
}
report=$(
  echo "forward_auth.sh: $rounds round(s) of $seconds s per variant after $warmup s of warm-up, $conns connections × $streams streams (h2c), h2load 1 thread, verified-JWT cache $jwt_cache, $profile build, medians"
  echo
  echo "| variant | req/s | p50 | p99 | tokengate CPU per call | ÷ gRPC Check | nginx worker CPU per request |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for variant in "${list[@]}"; do
    cpu=$(col "$variant" 4)
    vs=$( [ "$variant" = nginx-plain ] && echo – || ratio "$cpu" "$(col check 4)")
    ng=$( [[ "$variant" == nginx-* ]] && echo "$(col "$variant" 5) µs" || echo –)
    printf '| %s | %.0f | %s µs | %s µs | %s µs | %s | %s |\n' "$(label "$variant")" \
      "$(col "$variant" 1)" "$(col "$variant" 2)" "$(col "$variant" 3)" "$cpu" "$vs" "$ng"
  done
  if [ -n "${results[nginx-auth]:-}" ] && [ -n "${results[nginx-plain]:-}" ]; then
    echo
    echo "nginx req/s with auth_request ÷ without: $(ratio "$(col nginx-auth 1)" "$(col nginx-plain 1)")"
  fi
)
echo "$report"
[ -z "${FA_OUTPUT:-}" ] || echo "$report" >"$FA_OUTPUT"
