# shellcheck shell=bash
# Shell helpers shared by the benchmark drivers (sourced, not run): the quiet-machine wait,
# fiddler_crab's /ping config, anchor installs (apt, gunicorn in .venv), CPU of a process tree,
# readiness waits, nginx configs, and the closed-loop wrk measurement (wrk_measure). `others` reads
# the caller's OTHERS (a pgrep -f pattern) and OTHER_NAMES (a pgrep -x pattern).

# Other benchmarks' processes (never this script's own: none of its command lines match).
others() {
  { pgrep -fa "$OTHERS"; pgrep -ax "$OTHER_NAMES"; } | grep -v "^$$ " | cut -c1-150 || true
}
# Percent of all CPUs busy over one second (from /proc/stat).
host_busy() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.0f", (y[1] - x[1]) / (y[2] - x[2]) * 100 }'
}
# Wait until no other benchmark and no build runs and the machine is nearly idle (at most
# IDLE_MAX % busy, default 15), or IDLE_WAIT seconds (default 1800) have passed.
wait_quiet() {
  local said=0 waited=0 busy
  while :; do
    busy=$(host_busy)
    if [ -z "$(others)" ] && [ "$busy" -le "${IDLE_MAX:-15}" ]; then return; fi
    if [ "$waited" -ge "${IDLE_WAIT:-1800}" ]; then
      echo "still not quiet after ${waited} s (${busy}% busy); measuring anyway" >&2
      return
    fi
    if [ $said = 0 ]; then
      echo "waiting for a quiet machine (${busy}% busy):" >&2
      others >&2
      said=1
    fi
    sleep 4
    waited=$((waited + 5))
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# fiddler_crab_config MODE PORT: the GET /ping benchmarks' config (one builtin endpoint, no access
# log), on 127.0.0.1:PORT.
fiddler_crab_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
access_log = false

[[endpoint]]
path = "/ping"
methods = ["GET", "HEAD"]
mode = "$1"
builtin = "ping"
queue = 1024
overflow = "reject"
EOF
}

# fc_proxy_config PORT UPSTREAM_PORT SLOTS [ACCESS_LOG [METHODS_AND_MORE]]: fiddler_crab's config
# for the proxy hop benchmarks: /ping on 127.0.0.1:PORT an upstream endpoint (jellyfish, SLOTS
# slots) to bare hyper on UPSTREAM_PORT, access log off unless ACCESS_LOG is true (proxy.sh,
# ping_instructions.sh, proxy_switches.sh, proxy_profile.sh); METHODS_AND_MORE replaces the
# endpoint's `methods` line (proxy.sh's large bodies: POST and a `max_body_bytes`).
fc_proxy_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
access_log = ${4:-false}

[[endpoint]]
path = "/ping"
${5:-methods = [\"GET\", \"HEAD\"]}
mode = "jellyfish"
workers = $3
queue = 1024
overflow = "reject"
[endpoint.upstream]
url = "http://127.0.0.1:$2"
EOF
}

# ensure_cmd COMMAND PACKAGE...: when COMMAND is missing, installs the first Debian PACKAGE that
# apt-get can install (running `apt-get update` once if an install fails), without starting any
# service the package ships (a policy-rc.d that says no, for the install only). Returns non-zero,
# with a message, when COMMAND is still missing.
ensure_cmd() {
  local cmd=$1 pkg made=0 policy=/usr/sbin/policy-rc.d
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$cmd not found, and not root to install it (Debian: apt-get install -y $1)" >&2
    return 1
  fi
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
  fi
  for pkg in "$@"; do
    echo "installing $pkg (for $cmd)" >&2
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2; then break; fi
    if [ "${APT_UPDATED:-0}" = 0 ]; then
      APT_UPDATED=1
      apt-get update -q >&2 || true
      if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2; then break; fi
    fi
  done
  if [ "$made" = 1 ]; then rm -f "$policy"; fi
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "$cmd is still missing after trying to install: $*" >&2
  return 1
}

# ensure_gunicorn: gunicorn in the repository's .venv (gitignored), made or completed by
# scripts/venv.sh, the one script that owns that venv (idempotent; it also installs what the tests
# need); without that script, a venv with gunicorn alone. Sets GUNICORN to its path. Run from the
# repository root.
ensure_gunicorn() {
  GUNICORN=$PWD/.venv/bin/gunicorn
  if [ -f scripts/venv.sh ]; then
    bash scripts/venv.sh >&2 || echo "scripts/venv.sh failed" >&2
  elif [ ! -x "$GUNICORN" ]; then
    if [ ! -x .venv/bin/python ]; then python3 -m venv .venv >&2 || true; fi
    .venv/bin/pip install -q gunicorn >&2 || true
  fi
  [ -x "$GUNICORN" ] && return 0
  echo "gunicorn is missing from .venv (bash scripts/venv.sh, or python3 -m venv .venv &&" \
    ".venv/bin/pip install gunicorn)" >&2
  return 1
}

# Every process (pid, parent) from /proc, for the two tree helpers below.
_proc_stats() { cat /proc/[0-9]*/stat 2>/dev/null || true; }

# tree_ticks PID...: CPU clock ticks (utime + stime) of these processes and all their living
# descendants, plus what their reaped children used (cutime + cstime), so a worker that exited or
# was replaced during a run still counts. For servers of several processes (nginx's master and
# worker, gunicorn's arbiter and workers, fiddler_crab and its worker processes).
tree_ticks() {
  _proc_stats | awk -v roots="$*" '
    { pid = $1; s = $0; sub(/.*\) /, "", s); split(s, f, " ")
      parent[pid] = f[2]; ticks[pid] = f[12] + f[13] + f[14] + f[15] }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1
      total = 0
      for (p in ticks) {
        q = p; hops = 0
        while (!(q in root) && (q in parent) && q > 1 && hops < 64) { q = parent[q]; hops++ }
        if (q in root) total += ticks[p]
      }
      print total
    }'
}

# thread_ticks FIELD PID...: /proc/PID/task/*/stat field FIELD (14 utime, 15 stime) summed over
# every thread of the PIDs, in clock ticks: a process's user and system time kept apart.
thread_ticks() {
  local field=$1 p t sum=0
  shift
  for p in "$@"; do
    for t in /proc/"$p"/task/*/stat; do
      sum=$((sum + $(awk -v f="$field" '{print $f}' "$t" 2>/dev/null || echo 0)))
    done
  done
  echo "$sum"
}

# tree_pids PID...: these processes and all their living descendants, one per line.
tree_pids() {
  _proc_stats | awk -v roots="$*" '
    { s = $0; sub(/.*\) /, "", s); split(s, f, " "); parent[$1] = f[2] }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1
      for (p in parent) {
        q = p; hops = 0
        while (!(q in root) && (q in parent) && q > 1 && hops < 64) { q = parent[q]; hops++ }
        if (q in root) print p
      }
    }'
}

# stop_tree PID...: SIGTERM to each (the servers' graceful stop), then SIGKILL to whatever is left
# of their process trees after STOP_GRACE seconds (default 10). Only these processes and their
# descendants are signalled.
stop_tree() {
  local pids p left="" i
  [ $# -gt 0 ] || return 0
  pids=$(tree_pids "$@")
  kill -TERM "$@" 2>/dev/null || true
  for i in $(seq 1 $((${STOP_GRACE:-10} * 10))); do
    left=""
    for p in $pids; do if kill -0 "$p" 2>/dev/null; then left="$left $p"; fi; done
    [ -z "$left" ] && break
    sleep 0.1
  done
  if [ -n "$left" ]; then
    echo "still running after ${STOP_GRACE:-10} s, killed:$left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

cpu_busy_ticks() { # busy clock ticks of CPU $1 (/proc/stat)
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

to_us() { # wrk latency such as 812.00us, 1.23ms, 2.00s → microseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /s$/) print n * 1000000; else print n }'
}

# wait_http URL [TRIES] [PID]: until URL answers 2xx (a TLS certificate is not checked), 0.1 s
# apart, at most TRIES times (default 100), or until process PID has exited. Returns non-zero if
# it never did.
wait_http() {
  local i
  for i in $(seq 1 "${2:-100}"); do
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
    if python3 -c 'import ssl, sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2, context=ssl._create_unverified_context())' \
      "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# wait_tcp HOST PORT [TRIES] [PID]: until HOST:PORT accepts a connection (nothing is sent), 0.1 s
# apart, at most TRIES times (default 100), or until process PID has exited.
wait_tcp() {
  local i
  for i in $(seq 1 "${3:-100}"); do
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then return 1; fi
    if python3 -c 'import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()' "$1" "$2" \
      2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# nginx_conf DIR LOG SERVERS: an nginx.conf for nginx_cmd DIR: pid, error log and temp files in
# DIR, the http block's server (and upstream) blocks from SERVERS. LOG "on" writes the access log
# to DIR/access.log as nginx does by default (combined format, one write per line: no buffer=);
# "off" writes none.
nginx_conf() {
  local log="access_log off;"
  if [ "$2" = on ]; then log="access_log $1/access.log;"; fi
  printf '%s\n' \
    "pid $1/nginx.pid;" \
    "error_log $1/error.log error;" \
    "events { worker_connections 4096; }" \
    "http {" \
    "    $log" \
    "    client_body_temp_path $1/client_body;" \
    "    proxy_temp_path $1/proxy;" \
    "    fastcgi_temp_path $1/fastcgi;" \
    "    uwsgi_temp_path $1/uwsgi;" \
    "    scgi_temp_path $1/scgi;" \
    "$3" \
    "}"
}

# haproxy_head [LINE...]: the start of an haproxy.cfg for the anchors: one thread, HTTP mode, the
# same timeouts, then each LINE in the defaults section (`http-reuse always`, `timeout queue 5s`);
# the caller appends its frontend and backend.
haproxy_head() {
  local line
  printf '%s\n' "global" "    maxconn 4096" "    nbthread 1" "" "defaults" "    mode http" \
    "    timeout connect 5s" "    timeout client 30s" "    timeout server 30s"
  for line in "$@"; do printf '    %s\n' "$line"; done
  echo
}

# nginx_ping_conf DIR LOG PORT: nginx.conf in DIR answering GET /ping with "pong\n" on PORT,
# access log on (LOG=on) or off, as benches/ping.sh and benches/ping_instructions.sh run it.
nginx_ping_conf() {
  nginx_conf "$1" "$2" "    server {
        listen 127.0.0.1:$3;
        location = /ping { default_type text/plain; return 200 \"pong\\n\"; }
    }" >"$1/nginx.conf"
}

# nginx_cmd DIR: nginx in the foreground (master and one worker) on DIR/nginx.conf, writing only
# into DIR. Prints the command line as words for an array: cmd=($(nginx_cmd DIR)) would split the
# -g value, so use: mapfile -t cmd < <(nginx_cmd DIR).
nginx_cmd() {
  printf '%s\n' "$(command -v nginx)" -p "$1" -c "$1/nginx.conf" -e "$1/error.log" \
    -g "daemon off; master_process on; worker_processes 1;"
}

# ----------------------------------------------------------------------------------------------
# The closed-loop wrk measurement shared by ping.sh, workers.sh and overflow.sh.
#
# The caller defines start_server NAME, which starts the server pinned to $SERVER_CPU, sets
# server_pids (an array: the roots of the server's process trees; nginx → gunicorn has two), url
# (what wrk loads) and returns non-zero if the server did not start (having said why); and sets
# SERVER_CPU, LOADGEN_CPU, THREADS, CONNECTIONS, DURATION, WARMUP, CLK_TCK and WRK_ARGS (an array
# of extra wrk arguments: -H 'Connection: close', -s SCRIPT).
WRK_COLUMNS="server round requests rps p50_us p99_us cpu_us busy_pct non2xx err_connect err_read err_write err_timeout others_pct cpu_attempt_us attempts_per_s overflowed_per_s cpu_overflowed_us"

server_pids=()
stop_server() {
  if [ ${#server_pids[@]} -gt 0 ]; then stop_tree "${server_pids[@]}"; fi
  server_pids=()
}

# wrk_measure NAME ROUND RESULTS: a warm-up (WARMUP s, none if 0) and a measured wrk run against a
# fresh server; appends one row (WRK_COLUMNS) to RESULTS. wrk opens CONNECTIONS connections, or
# wrk_connections when the caller's start_server sets it. Server CPU is the utime + stime of all
# its processes over the run (tree_ticks). Waits for a quiet machine first, and repeats a run
# during which another benchmark or build ran or other work took more than INTRUDERS_MAX % of
# either CPU, MAX_ATTEMPTS times at most (default 10); with BUSY_MIN set (a % of one core), also a
# run whose server was busy less than that: a stalled client, not a slow server (a connection per
# request on loopback runs through the ephemeral ports within seconds, and a SYN that meets the
# server's TIME_WAIT of the same ports can wait a second for its retry). Returns 1 if the server
# did not start.
wrk_measure() {
  local name=$1 round=$2 results=$3 before after t0 t1 core0 core1 lg0 lg1 wrk_cpu wrk_out
  local requests rps p50 p99 non2xx cpu_us cpu_att intruders lg_intruders busy attempt=0
  local e_conn e_read e_write e_time
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    if ! start_server "$name"; then
      stop_server
      return 1
    fi
    if [ "$WARMUP" != 0 ]; then
      taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"${wrk_connections:-$CONNECTIONS}" -d"${WARMUP}s" "${WRK_ARGS[@]}" \
        "$url" >/dev/null 2>&1 || true
    fi
    before=$(tree_ticks "${server_pids[@]}")
    core0=$(cpu_busy_ticks "$SERVER_CPU")
    lg0=$(cpu_busy_ticks "$LOADGEN_CPU")
    t0=$(date +%s.%N)
    wrk_out=$(taskset -c "$LOADGEN_CPU" /usr/bin/time -f 'WRK_CPU %U %S' \
      wrk -t"$THREADS" -c"${wrk_connections:-$CONNECTIONS}" -d"${DURATION}s" --latency "${WRK_ARGS[@]}" "$url" 2>&1) ||
      true
    t1=$(date +%s.%N)
    lg1=$(cpu_busy_ticks "$LOADGEN_CPU")
    core1=$(cpu_busy_ticks "$SERVER_CPU")
    after=$(tree_ticks "${server_pids[@]}")
    stop_server
    # Whatever else ran on the server's CPU and on wrk's CPU meanwhile, % of the wall time.
    intruders=$(awk -v c=$((core1 - core0 - after + before)) -v hz="$CLK_TCK" -v t0="$t0" \
      -v t1="$t1" 'BEGIN { v = c / hz / (t1 - t0) * 100; printf "%.0f", v < 0 ? 0 : v }')
    wrk_cpu=$(awk '$1 == "WRK_CPU" {print $2 + $3}' <<<"$wrk_out")
    lg_intruders=$(awk -v c=$((lg1 - lg0)) -v w="${wrk_cpu:-0}" -v hz="$CLK_TCK" -v t0="$t0" \
      -v t1="$t1" 'BEGIN { v = (c / hz - w) / (t1 - t0) * 100; printf "%.0f", v < 0 ? 0 : v }')
    if [ "$attempt" -ge "${MAX_ATTEMPTS:-10}" ]; then
      if [ "${MAX_ATTEMPTS:-10}" -gt 1 ]; then
        echo "$name round $round: still disturbed after $attempt attempts; keeping this one" >&2
      fi
      break
    elif [ -n "$(others)" ]; then
      echo "another benchmark or build ran during $name round $round; repeating it" >&2
    elif [ "$intruders" -gt "${INTRUDERS_MAX:-3}" ] ||
      [ "$lg_intruders" -gt "${INTRUDERS_MAX:-3}" ]; then
      echo "other work took ${intruders}% of CPU $SERVER_CPU and ${lg_intruders}% of CPU" \
        "$LOADGEN_CPU during $name round $round; repeating it" >&2
    elif [ -n "${BUSY_MIN:-}" ] && awk -v t=$((after - before)) -v hz="$CLK_TCK" -v t0="$t0" \
      -v t1="$t1" -v min="$BUSY_MIN" 'BEGIN { exit !(t / hz / (t1 - t0) * 100 < min) }'; then
      echo "the server was busy less than ${BUSY_MIN}% of a core during $name round $round" \
        "(the client stalled); repeating it" >&2
    else
      break
    fi
  done
  requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' <<<"$wrk_out")
  requests=${requests:-0}
  rps=$(sed -n 's/^Requests\/sec: *//p' <<<"$wrk_out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$wrk_out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$wrk_out")")
  non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *//p' <<<"$wrk_out")
  non2xx=${non2xx:-0}
  read -r e_conn e_read e_write e_time < <(sed -n \
    's/^ *Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' \
    <<<"$wrk_out" | grep . || echo 0 0 0 0)
  if [ "$requests" = 0 ]; then
    echo "$name round $round: wrk completed no request:" >&2
    echo "$wrk_out" >&2
  fi
  cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
    'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }')
  # Per attempt: completed requests plus the ones that ended in a read or write error (a server
  # that closes a connection unanswered: ignored overflow).
  cpu_att=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n=$((requests + e_read + e_write)) \
    'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }')
  # Overflowed: answered non-2xx (503) or ended in a read or write error (closed unanswered, at
  # once or at the end of a hold); per second of wrk's run, and the server's CPU per one of them.
  local overflowed=$((non2xx + e_read + e_write)) rates
  rates=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v a=$((requests + e_read + e_write)) \
    -v o="$overflowed" -v d="$DURATION" \
    'BEGIN { printf "%.1f\t%.1f\t%.2f", a / d, o / d, (o > 0 ? t / hz * 1e6 / o : 0) }')
  # Of the wall time between the two CPU samples (wrk's start-up and exit included).
  busy=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%.0f", t / hz / (t1 - t0) * 100 }')
  printf '%s\t' "$name" "$round" "$requests" "${rps:-0}" "$p50" "$p99" "$cpu_us" "$busy" "$non2xx" \
    "$e_conn" "$e_read" "$e_write" "$e_time" \
    "$((intruders > lg_intruders ? intruders : lg_intruders))" >>"$results"
  printf '%s\t%s\n' "$cpu_att" "$rates" >>"$results"
  echo "$name round $round: ${rps:-0} req/s, p50 ${p50} us, p99 ${p99} us, ${cpu_us} CPU-us/req" \
    "(${cpu_att} per attempt), server CPU ${busy}% of one core, non-2xx $non2xx, socket errors" \
    "c/r/w/t $e_conn/$e_read/$e_write/$e_time, others on CPU $SERVER_CPU / $LOADGEN_CPU:" \
    "${intruders}% / ${lg_intruders}%" >&2
}

# new_results FILE: an empty results file with its column names.
new_results() {
  tr ' ' '\t' <<<"$WRK_COLUMNS" >"$1"
}

# machine_line: one line about the machine, for the reports.
machine_line() {
  echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)."
}

# instructions_each WHAT NAME...: for each NAME, runs the calling script's `one NAME SECONDS`
# (which prints "COUNT INSTRUCTIONS": requests served and the server's instruction total) for SHORT,
# then for LONG seconds, and prints "NAME PER": the difference of the totals over the difference of
# the counts, start-up and shutdown cancelled out. Each line also goes to stderr, with its runs and
# WHAT a count counts ("request", "overflowed request").
instructions_each() {
  local what=$1 name short long per
  shift
  for name in "$@"; do
    short=$(one "$name" "$SHORT")
    long=$(one "$name" "$LONG")
    per=$(awk -v a="$short" -v b="$long" 'BEGIN { split(a, x, " "); split(b, y, " ");
      printf "%.0f", (y[2] - x[2]) / (y[1] - x[1]) }')
    echo "$name: $per instructions per $what (runs of $short and $long: ${what}s, instructions)" >&2
    echo "$name $per"
  done
}

# nginx_proxy_cmd DIR PORT UPSTREAM_PORT [fwd]: writes DIR/nginx.conf for nginx as one process
# (the worker is the proxy) proxying /ping on PORT to 127.0.0.1:UPSTREAM_PORT over kept-alive
# connections, and prints the command that runs it, one word per line (mapfile -t). With fwd, it
# does the rewrite fiddler_crab does: the client's Host, X-Forwarded-For and X-Forwarded-Proto.
nginx_proxy_cmd() {
  local dir=$1 port=$2 up_port=$3 forward=""
  if [ "${4:-}" = fwd ]; then
    forward=" proxy_set_header Host \$http_host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;"
  fi
  mkdir -p "$dir"
  nginx_conf "$dir" off "    upstream bare { server 127.0.0.1:$up_port; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location = /ping { proxy_pass http://bare; proxy_http_version 1.1; proxy_set_header Connection \"\";$forward }
    }" >"$dir/nginx.conf"
  printf '%s\n' "$(command -v nginx)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    -g "daemon off; master_process off; worker_processes 1;"
}

# start_nginx_proxy DIR PORT UPSTREAM_PORT CPU: nginx_proxy_cmd's nginx on CPU
# (proxy_switches.sh, proxy_profile.sh); its pid is $!.
start_nginx_proxy() {
  local cmd
  mapfile -t cmd < <(nginx_proxy_cmd "$1" "$2" "$3")
  taskset -c "$4" "${cmd[@]}" >"$1/stdout.log" 2>&1 &
}

# start_bare_upstream LOG CPU: the bare hyper upstream (target/release/examples/bare_hyper, built
# by the caller) on a free port, on CPU, for at most 120 s; sets up_port and up (its pid).
start_bare_upstream() {
  up_port=$(free_port)
  taskset -c "$2" target/release/examples/bare_hyper --listen "127.0.0.1:$up_port" \
    --max-seconds 120 >"$1" 2>&1 &
  up=$!
}

# syscall_counts FILE REQUESTS [SKIP_ZERO]: from `perf stat -e raw_syscalls:sys_enter,
# syscalls:sys_enter_NAME,...` output in FILE, " all N name N ..." per request on one line (with
# SKIP_ZERO=1, calls never made are left out). ping_syscalls.sh, proxy_switches.sh.
syscall_counts() {
  awk -v r="$2" -v skip="${3:-0}" '
    $2 ~ /sys_enter/ { gsub(",", "", $1); call = $2; sub(/^.*sys_enter_?/, "", call);
      if (call == "") call = "all"; if (!skip || $1 > 0) line = line sprintf(" %s %.3f", call, $1 / r) }
    END { print line }' "$1"
}
