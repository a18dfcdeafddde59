#!/usr/bin/env bash
# Overflow cost benchmark (issue "Overflow that truly costs nothing"): what a server spends on a
# request it does not serve, fiddler_crab against nginx and HAProxy in the same run. Two parts:
#
# 1. flood: the flood bench at 50× capacity. An endpoint of capacity 10 requests/s (100 ms jobs,
#    one at a time) with a queue of 10, under open-loop load of RATE (default 500) requests/s for
#    DURATION s (examples/loadgen.rs: request i sent at start + i / rate on a fresh connection,
#    HTTP/1.1 without `Connection: close`, closed by the client once answered; latency from the
#    scheduled send). Servers:
#      fc-ignore         examples/bench_server.rs, `sleep100` builtin, crab, queue 10,
#                        overflow = "ignore", queue_timeout_ms 5000, access log as ACCESS_LOG
#      fc-reject         the same with overflow = "reject" (503 + Retry-After)
#      nginx-limit-req   nginx → benches/slow_upstream.py (serial, 100 ms per request):
#                        `limit_req zone=… rate=10r/s burst=10` (delayed, no nodelay) on one global
#                        key: nginx's own queue in front of a 10 req/s capacity, 10 places, 503
#                        beyond. The anchor the ratios use: it is "capacity 10 req/s, queue 10,
#                        rest 503" in nginx's own words.
#      nginx-limit-conn  nginx → the same upstream with `limit_conn … 11` on one global key: at most
#                        11 requests inside (1 running, 10 waiting in the upstream's listen
#                        backlog), 503 beyond (the issue's original anchor)
#      haproxy           HAProxy (1 thread) → the same upstream: `server … maxconn 1` (one request
#                        at a time), requests beyond wait in HAProxy's queue (`timeout queue` 5 s),
#                        and `http-request deny deny_status 503 if { queue(be) ge 10 }` caps that
#                        queue at 10
#    nginx's access log is on (to a file, its default) when ACCESS_LOG=true, as fiddler_crab's,
#    and its error log (level error, its default) gets a line per refused request, as nginx's
#    limit_req_log_level / limit_conn_log_level default says; HAProxy logs nothing (its default
#    without a `log` line). Reported per server: 200s, 503s,
#    zero-byte closes, goodput (200s that ended within the DURATION s window ÷ DURATION), admitted
#    p50/p99/max, and server CPU per overflowed request (503s + zero-byte closes): the front's
#    processes (fiddler_crab; nginx's master and worker; HAProxy) and all server-side processes
#    (with the upstream, which serves the admitted requests); per-round ratios of the front's CPU
#    per overflowed request to nginx limit_req's and HAProxy's, with a bootstrap interval.
#
# 2. full: wrk -c32 keep-alive against a crab endpoint whose queue is always full (the real
#    fiddler_crab binary, exec `sleep 0.1`, queue 10: 11 connections hold admitted requests, the
#    other 21 overflow again and again), plain HTTP and TLS (`--self-signed`): full-ignore (the
#    hold: each overflowed connection is held unread for HOLD_MS, then closed without a byte),
#    full-ignore-close (overflow_hold_ms = 0: closed at once, nginx's 444), full-reject (503),
#    each also over TLS (-tls), and full-admitted (wrk -c11: the admitted requests alone, never
#    an overflow: the CPU the others spend on top of it is what their overflow costs). A closed
#    connection makes wrk reconnect (over TLS: a new handshake) and count a read error.
#    What an attempt is: a request wrk completed (200 or 503) or one that ended in a read or write
#    error (closed unanswered, at once or at the end of its hold). A held request is one attempt,
#    however long it is held; wrk's --timeout (5 s, above HOLD_MS) only counts late requests, it
#    never ends one, so timeouts are not attempts. Held, a connection makes one attempt per
#    HOLD_MS instead of one per round trip: attempts per second fall by orders of magnitude while
#    each one still costs a reconnect (and a handshake), so CPU per attempt and per overflowed
#    request do not show the gain (at a few attempts per second they are mostly the admitted
#    requests' CPU); the server's CPU % of a core, against full-admitted's, does. Reported: server
#    CPU per attempt, attempts/s, overflowed/s (503s + read/write errors), CPU per overflowed
#    request, server CPU % of a core; ratios against plain reject and reject on the same transport.
#
# Every server-side process pinned to CPU 0, the load generator to CPU 1; a fresh server per run;
# ROUNDS rounds, servers in turn, medians. Loopback only; every run ends by itself. Installs wrk,
# nginx-light and haproxy (Debian) when missing.
#
#   bash benches/overflow.sh                                  # both parts, 3 rounds (about 9 min)
#   PARTS=flood ROUNDS=1 DURATION=3 bash benches/overflow.sh  # a quick look at part 1
#
# Environment: PARTS (default "flood full"), ROUNDS (default 3), DURATION (s of load per run,
# default 10), RATE (flood requests/s, default 500), WARMUP (s before a wrk run, default 2; 0 for
# none), CONNECTIONS (wrk, default 32), ACCESS_LOG (true | false, default true: fiddler_crab as
# shipped, and nginx's default), FLOOD_SERVERS (default "fc-ignore fc-reject nginx-limit-req
# nginx-limit-conn haproxy"), FULL_SERVERS (default "full-admitted full-ignore full-ignore-close
# full-reject full-ignore-tls full-ignore-close-tls full-reject-tls"), HOLD_MS (full-ignore's
# overflow_hold_ms, default 1000, the shipped default; keep it under wrk's 5 s --timeout),
# FLOOD_HOLD_MS (fc-ignore's and fc-reject's overflow_hold_ms in part flood, default 1000),
# SERVER_CPU / LOADGEN_CPU (default 0 / 1), OUT, IDLE_MAX, IDLE_WAIT, INTRUDERS_MAX, MAX_ATTEMPTS
# (as in benches/ping.sh), DOOR (true | false, default true: an admin listener takes the probes,
# so fiddler_crab's door on the public listener can close; false: no admin listener, no door; the
# probes share the public listener). See benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-"flood full"}
DOOR=${DOOR:-true}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATE=${RATE:-500}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=1
ACCESS_LOG=${ACCESS_LOG:-true}
FLOOD_SERVERS=${FLOOD_SERVERS:-"fc-ignore fc-reject nginx-limit-req nginx-limit-conn haproxy"}
FULL_SERVERS=${FULL_SERVERS:-"full-admitted full-ignore full-ignore-close full-reject full-ignore-tls full-ignore-close-tls full-reject-tls"}
HOLD_MS=${HOLD_MS:-1000}
FLOOD_HOLD_MS=${FLOOD_HOLD_MS:-1000}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
QUEUE=10
JOB_MS=100
CAPACITY_RPS=10
BAR_MS=$(((QUEUE + 1) * JOB_MS))
mkdir -p bench-results
OUT=${OUT:-bench-results/overflow-$(date +%Y%m%d-%H%M%S).md}
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh|ping\.sh|workers\.sh|/fc-(ping|workers|overflow)\.'
OTHER_NAMES='wrk|cargo|rustc'

. "$(dirname "$0")/lib.sh"

ensure_cmd wrk wrk
if [[ " $PARTS " == *" flood "* ]]; then
  if [[ " $FLOOD_SERVERS " == *" nginx-"* ]]; then ensure_cmd nginx nginx-light nginx; fi
  if [[ " $FLOOD_SERVERS " == *" haproxy "* ]]; then ensure_cmd haproxy haproxy; fi
fi
cargo build --release --bin fiddler_crab --example bench_server --example loadgen
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' with uncommitted changes in src/ or crates/')"
work=$(mktemp -d /tmp/fc-overflow.XXXXXX)
chmod 755 "$work"
cp target/release/fiddler_crab target/release/examples/bench_server target/release/examples/loadgen \
  "$work/"
CLK_TCK=$(getconf CLK_TCK)
trap 'stop_server; rm -rf "$work"' EXIT
WRK_ARGS=(--timeout 5s)

# With DOOR=true an admin listener (on $admin_port) takes the probes, which lets the public listener's
# door close while the queue is full (docs/ARCHITECTURE.md "The door").
admin_line() {
  if [ "$DOOR" = true ]; then echo "admin_listen = \"127.0.0.1:$admin_port\""; fi
}

# fc_config OVERFLOW PORT: bench_server's flood endpoint (as benches/flood.sh, queue 10).
fc_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
shutdown_grace_ms = 2000
access_log = $ACCESS_LOG
overflow_hold_ms = $FLOOD_HOLD_MS
$(admin_line)

[[endpoint]]
path = "/sleep100"
methods = ["GET"]
builtin = "sleep100"
mode = "crab"
queue = $QUEUE
overflow = "$1"
queue_timeout_ms = 5000
pace_ms = 0
EOF
}

# full_config OVERFLOW PORT HOLD_MS: the real binary's always-full endpoint (exec `sleep 0.1`,
# queue 10), ignored overflow held for HOLD_MS.
full_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
overflow_hold_ms = $3
shutdown_grace_ms = 2000
access_log = $ACCESS_LOG
overflow_hold_ms = $FLOOD_HOLD_MS
$(admin_line)

[[endpoint]]
path = "/sleep100"
methods = ["GET"]
mode = "crab"
queue = $QUEUE
overflow = "$1"
queue_timeout_ms = 5000
pace_ms = 0

[endpoint.exec]
command = ["sleep", "0.1"]
EOF
}

# start_upstream: benches/slow_upstream.py on CPU $SERVER_CPU; sets upstream_pid, upstream_port.
start_upstream() {
  local i
  taskset -c "$SERVER_CPU" python3 benches/slow_upstream.py --job-ms "$JOB_MS" --max-seconds 600 \
    >"$work/upstream.log" 2>&1 &
  upstream_pid=$!
  upstream_port=""
  for i in $(seq 1 100); do
    upstream_port=$(sed -n 's/^slow_upstream listening on //p' "$work/upstream.log")
    [ -n "$upstream_port" ] && return 0
    sleep 0.1
  done
  echo "slow_upstream did not start:" >&2
  cat "$work/upstream.log" >&2
  return 1
}

# start_server NAME: every process on CPU $SERVER_CPU; sets server_pids (all server-side process
# trees), front_pids (the front's: what answers the overflow), addr and url. Returns 1 (having said
# why) if it did not start.
front_pids=()
start_server() {
  local name=$1 port dir cmd
  port=$(free_port)
  admin_port=$(free_port)
  addr=127.0.0.1:$port
  url=http://$addr/sleep100
  rm -f "$work/server.log"
  server_pids=()
  wrk_connections=""
  case $name in
    fc-ignore | fc-reject)
      fc_config "${name#fc-}" "$port" >"$work/fc.toml"
      taskset -c "$SERVER_CPU" "$work/bench_server" --config "$work/fc.toml" --max-seconds 600 \
        >"$work/server.log" 2>&1 &
      server_pids=($!)
      ;;
    full-*)
      local overflow=${name#full-} tls=() hold=$HOLD_MS
      overflow=${overflow%-tls}
      case $overflow in
        ignore | reject) ;;
        ignore-close) overflow=ignore hold=0 ;;
        # The admitted requests alone: as many connections as the queue and the job take.
        admitted) overflow=reject wrk_connections=$((QUEUE + 1)) ;;
        *) echo "unknown server $name" >&2; exit 2 ;;
      esac
      if [[ $name == *-tls ]]; then
        tls=(--self-signed)
        url=https://$addr/sleep100
      fi
      full_config "$overflow" "$port" "$hold" >"$work/full.toml"
      taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$work/full.toml" "${tls[@]}" \
        >"$work/server.log" 2>&1 &
      server_pids=($!)
      front_pids=("${server_pids[@]}")
      local status_url=${url%/sleep100}/status
      if [ "$DOOR" = true ]; then status_url=http://127.0.0.1:$admin_port/status; fi
      if wait_http "$status_url" 100 "${server_pids[0]}"; then return 0; fi
      echo "$name did not start:" >&2
      cat "$work/server.log" >&2
      return 1
      ;;
    nginx-limit-req | nginx-limit-conn)
      start_upstream || return 1
      server_pids=("$upstream_pid")
      dir=$work/nginx
      rm -rf "$dir"
      mkdir -p "$dir"
      local zone limit
      if [ "$name" = nginx-limit-req ]; then
        zone="limit_req_zone \$server_name zone=flood:1m rate=${CAPACITY_RPS}r/s;"
        limit="limit_req zone=flood burst=$QUEUE; limit_req_status 503;"
      else
        zone="limit_conn_zone \$server_name zone=flood:1m;"
        limit="limit_conn flood $((QUEUE + 1)); limit_conn_status 503;"
      fi
      nginx_conf "$dir" "$([ "$ACCESS_LOG" = true ] && echo on || echo off)" "    $zone
    upstream slow { server 127.0.0.1:$upstream_port max_fails=0; }
    server {
        listen $addr;
        server_name bench;
        location = /sleep100 {
            $limit
            proxy_pass http://slow;
        }
    }" >"$dir/nginx.conf"
      mapfile -t cmd < <(nginx_cmd "$dir")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 &
      server_pids+=($!)
      ;;
    haproxy)
      start_upstream || return 1
      server_pids=("$upstream_pid")
      {
        haproxy_head "timeout queue 5s" "timeout http-request 10s"
        cat <<EOF
frontend flood
    bind $addr
    # At most $QUEUE requests wait in the backend's queue; the rest get 503 at once.
    http-request deny deny_status 503 if { queue(slow) ge $QUEUE }
    default_backend slow

backend slow
    server upstream 127.0.0.1:$upstream_port maxconn 1
EOF
      } >"$work/haproxy.cfg"
      taskset -c "$SERVER_CPU" haproxy -db -f "$work/haproxy.cfg" >"$work/server.log" 2>&1 &
      server_pids+=($!)
      ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  # The front is the last process started (the upstream, if any, came first).
  front_pids=("${server_pids[-1]}")
  if wait_tcp 127.0.0.1 "$port" 100 "${front_pids[0]}"; then return 0; fi
  echo "$name did not start:" >&2
  cat "$work/server.log" "$work/nginx/error.log" 2>/dev/null >&2 || true
  return 1
}

FLOOD_COLUMNS="server round sent ok s503 closed other overflowed goodput_rps adm_p50_ms adm_p99_ms adm_max_ms front_cpu_s all_cpu_s front_us_per_overflow all_us_per_overflow others_pct"

# flood_run NAME ROUND RESULTS: one open-loop flood against a fresh server; appends a row
# (FLOOD_COLUMNS). Repeats a disturbed run as wrk_measure does (server's CPU only: loadgen's own
# time is not known).
flood_run() {
  local name=$1 round=$2 results=$3 attempt=0 f0 f1 a0 a1 core0 core1 t0 t1 intruders row
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    if ! start_server "$name"; then
      stop_server
      return 1
    fi
    sleep 0.5 # let the server settle before the "before" sample
    f0=$(tree_ticks "${front_pids[@]}")
    a0=$(tree_ticks "${server_pids[@]}")
    core0=$(cpu_busy_ticks "$SERVER_CPU")
    t0=$(date +%s.%N)
    taskset -c "$LOADGEN_CPU" "$work/loadgen" --addr "$addr" --path /sleep100 --rate "$RATE" \
      --duration "$DURATION" --timeout 30 --capacity-rps "$CAPACITY_RPS" --bar-ms "$BAR_MS" \
      --dump "$work/dump.csv" >"$work/loadgen.out" 2>&1 ||
      { echo "loadgen failed:" >&2; cat "$work/loadgen.out" >&2; }
    t1=$(date +%s.%N)
    core1=$(cpu_busy_ticks "$SERVER_CPU")
    a1=$(tree_ticks "${server_pids[@]}")
    f1=$(tree_ticks "${front_pids[@]}")
    stop_server
    intruders=$(awk -v c=$((core1 - core0 - a1 + a0)) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
      'BEGIN { v = c / hz / (t1 - t0) * 100; printf "%.0f", v < 0 ? 0 : v }')
    if [ "$attempt" -ge "${MAX_ATTEMPTS:-10}" ]; then
      break
    elif [ -n "$(others)" ]; then
      echo "another benchmark or build ran during $name round $round; repeating it" >&2
    elif [ "$intruders" -gt "${INTRUDERS_MAX:-3}" ]; then
      echo "other work took ${intruders}% of CPU $SERVER_CPU during $name round $round; repeating it" >&2
    else
      break
    fi
  done
  if [ ! -s "$work/dump.csv" ]; then
    echo "$name round $round: no loadgen dump" >&2
    return 1
  fi
  row=$(python3 benches/report.py flood-row "$work/dump.csv" --duration "$DURATION")
  rm -f "$work/dump.csv"
  # shellcheck disable=SC2086
  set -- $row
  local overflowed=$6
  printf '%s\t' "$name" "$round" $row >>"$results"
  awk -v f=$((f1 - f0)) -v a=$((a1 - a0)) -v hz="$CLK_TCK" -v n="$overflowed" -v o="$intruders" \
    'BEGIN { printf "%.2f\t%.2f\t%.1f\t%.1f\t%s\n", f / hz, a / hz, (n > 0 ? f / hz * 1e6 / n : 0),
      (n > 0 ? a / hz * 1e6 / n : 0), o }' >>"$results"
  echo "$name round $round: $(tail -1 "$results" | cut -f3-)" >&2
  echo "  (sent 200 503 closed other overflowed goodput p50 p99 max front_s all_s front_us/ovf all_us/ovf others%)" >&2
}

report_parts=()
if [[ " $PARTS " == *" flood "* ]]; then
  flood_results=$work/flood.tsv
  tr ' ' '\t' <<<"$FLOOD_COLUMNS" >"$flood_results"
  active=$FLOOD_SERVERS
  for round in $(seq 1 "$ROUNDS"); do
    for name in $active; do
      if ! flood_run "$name" "$round" "$flood_results"; then
        active=$(tr ' ' '\n' <<<"$active" | grep -vx "$name" | tr '\n' ' ')
      fi
    done
  done
  report_parts+=(flood)
fi
if [[ " $PARTS " == *" full "* ]]; then
  full_results=$work/full.tsv
  new_results "$full_results"
  active=$FULL_SERVERS
  for round in $(seq 1 "$ROUNDS"); do
    for name in $active; do
      if ! wrk_measure "$name" "$round" "$full_results"; then
        active=$(tr ' ' '\n' <<<"$active" | grep -vx "$name" | tr '\n' ' ')
      fi
    done
  done
  report_parts+=(full)
fi

{
  echo "# Overflow cost benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  machine_line
  echo "Built from commit $COMMIT.$(command -v nginx >/dev/null && echo " $(nginx -v 2>&1 | sed 's/.*: //').")$(command -v haproxy >/dev/null && echo " $(haproxy -v | head -1 | cut -d' ' -f1-3).")"
  echo "Every server-side process on CPU $SERVER_CPU, load generator on CPU $LOADGEN_CPU; a fresh server per run; $ROUNDS rounds, servers in turn, medians; access logs: fiddler_crab and nginx $ACCESS_LOG, HAProxy none."
  for part in "${report_parts[@]}"; do
    echo
    if [ "$part" = flood ]; then
      echo "## Flood at $((RATE / CAPACITY_RPS))× capacity"
      echo
      echo "Capacity $CAPACITY_RPS req/s (${JOB_MS} ms jobs, one at a time), queue $QUEUE; open loop $RATE req/s for $DURATION s, a fresh connection per request (examples/loadgen.rs); admitted p99 bar (queue + 1) × job = $BAR_MS ms."
      echo "Overflowed = 503s + zero-byte closes. Front CPU: fiddler_crab / nginx (master + worker) / HAProxy; all: with benches/slow_upstream.py, the anchors' upstream."
      echo
      python3 benches/report.py flood "$flood_results" --servers "$FLOOD_SERVERS" \
        --capacity "$CAPACITY_RPS" --bar-ms "$BAR_MS" \
        --compare 'nginx limit_req:*=nginx-limit-req' --compare 'HAProxy:*=haproxy' \
        --label 'fc-ignore=fiddler_crab, overflow = "ignore"' \
        --label 'fc-reject=fiddler_crab, overflow = "reject"' \
        --label "nginx-limit-req=nginx limit_req rate=${CAPACITY_RPS}r/s burst=$QUEUE → 503" \
        --label "nginx-limit-conn=nginx limit_conn $((QUEUE + 1)) → 503" \
        --label "haproxy=HAProxy maxconn 1, queue ≤ $QUEUE → 503"
    else
      echo "## Full queue, wrk -c$CONNECTIONS keep-alive"
      echo
      echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s --timeout 5s after a ${WARMUP} s warm-up against fiddler_crab (release binary), crab, exec \`sleep 0.1\`, queue $QUEUE (full-admitted: -c$((QUEUE + 1)), the admitted requests alone). An attempt is a request wrk completed or one that ended in a read/write error (closed unanswered: at once with overflow_hold_ms = 0, after the ${HOLD_MS} ms hold otherwise); overflowed = 503s + those errors. CPU per attempt and per overflowed request = server CPU (with its \`sleep\` children) ÷ their number; with the hold they fall to a few per second per connection, so compare the server CPU % of a core (against full-admitted's) too."
      echo
      python3 benches/report.py wrk "$full_results" --servers "$FULL_SERVERS" \
        --metric cpu_attempt_us \
        --compare 'plain reject:*=full-reject' \
        --compare 'reject, same transport:full-ignore-tls=full-reject-tls,full-ignore-close-tls=full-reject-tls,full-reject-tls=full-reject-tls,*=full-reject' \
        --label 'full-admitted=plain, admitted only (-c'$((QUEUE + 1))')' \
        --label "full-ignore=plain, ignore, held ${HOLD_MS} ms" \
        --label 'full-ignore-close=plain, ignore, closed at once' \
        --label 'full-reject=plain, reject (503)' \
        --label "full-ignore-tls=TLS, ignore, held ${HOLD_MS} ms" \
        --label 'full-ignore-close-tls=TLS, ignore, closed at once' \
        --label 'full-reject-tls=TLS, reject (503)'
    fi
  done
} | tee "$OUT"
echo "saved to $OUT" >&2
