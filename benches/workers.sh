#!/usr/bin/env bash
# Warm Python workers benchmark (issue "Warm workers"): a trivial Python handler answering
# {"hello":"world"} served three ways, under a closed-loop wrk load:
#   worker          fiddler_crab (release binary) with one endpoint GET /hello in crab mode whose
#                   [endpoint.worker] runs `python3 -m fiddler_worker examples/hello/app.py` (1
#                   worker process; PYTHONPATH=python). Needs the workers feature and python/
#                   (fiddler_worker); until both are there this server is skipped with the reason.
#   gunicorn        gunicorn, sync worker class, 1 worker, direct on TCP (benches/hello_wsgi.py,
#                   the same JSON). The sync worker closes the connection after every response, so
#                   wrk reconnects for each request: that is how gunicorn serves this client.
#   nginx-gunicorn  nginx (1 worker) → the same gunicorn on a Unix socket, configured as gunicorn's
#                   deployment guide does plus an upstream keepalive pool (proxy_http_version 1.1,
#                   Connection ""); the sync worker still closes each upstream connection.
# Every server-side process (fiddler_crab and its worker; gunicorn's arbiter and worker; nginx's
# master and worker) pinned to CPU 0, wrk to CPU 1. Per run: requests/s, p50/p99, server CPU µs per
# request (utime + stime of all the server-side processes over the run ÷ requests wrk completed),
# non-2xx and socket errors; servers in turn, ROUNDS times, medians, and each server's per-round
# ratios to gunicorn direct and to nginx → gunicorn (requests/s and CPU per request) with a
# bootstrap interval. Access logs are off everywhere (gunicorn's default); ACCESS_LOG=1 turns them
# on in all three (files in the temp dir).
#
# ROLL=1 instead measures a rolling restart under load: an open-loop load (examples/loadgen.rs,
# ROLL_RATE requests/s, a fresh connection per request, latency from the scheduled send) for
# DURATION s, with the roll signal sent ROLL_AT s in: SIGUSR2 to fiddler_crab (roll its workers),
# SIGHUP to gunicorn's arbiter (its graceful worker reload; behind nginx too). Reports, before /
# during (signal to signal + ROLL_WINDOW s) / after the roll: requests, errors (anything but 200,
# by kind) and p50/p99 of the 200s.
#
# Loopback only; every run ends by itself. Installs wrk and nginx-light (Debian) when missing, and
# gunicorn into the repository's .venv (gitignored) through scripts/venv.sh.
#
#   bash benches/workers.sh                         # 3 rounds × 10 s per server (about 2 minutes)
#   ROLL=1 bash benches/workers.sh                  # the rolling restart (about 1 minute)
#   SERVERS="gunicorn nginx-gunicorn" ROUNDS=1 DURATION=3 bash benches/workers.sh
#
# Environment: ROUNDS (default 3), DURATION (s, default 10), WARMUP (s, default 2; 0 for none),
# CONNECTIONS (default 32), THREADS (default 1), SERVERS (default "worker gunicorn
# nginx-gunicorn"), ACCESS_LOG (0 | 1, default 0), WORKER_EXTRA (extra lines for
# [endpoint.worker], default `env = { PYTHONPATH = "python" }`), ROLL (0 | 1), ROLL_RATE (req/s,
# default 200), ROLL_AT (s, default 3), ROLL_WINDOW (s, default 3), ROLL_SIGNAL_WORKER (default
# USR2), ROLL_SIGNAL_GUNICORN (default HUP), SERVER_CPU / LOADGEN_CPU (default 0 / 1), OUT,
# IDLE_MAX, IDLE_WAIT, INTRUDERS_MAX, MAX_ATTEMPTS (as in benches/ping.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
SERVERS=${SERVERS:-"worker gunicorn nginx-gunicorn"}
ACCESS_LOG=${ACCESS_LOG:-0}
WORKER_EXTRA=${WORKER_EXTRA:-'env = { PYTHONPATH = "python" }'}
ROLL=${ROLL:-0}
ROLL_RATE=${ROLL_RATE:-200}
ROLL_AT=${ROLL_AT:-3}
ROLL_WINDOW=${ROLL_WINDOW:-3}
ROLL_SIGNAL_WORKER=${ROLL_SIGNAL_WORKER:-USR2}
ROLL_SIGNAL_GUNICORN=${ROLL_SIGNAL_GUNICORN:-HUP}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
mkdir -p bench-results
OUT=${OUT:-bench-results/workers$([ "$ROLL" = 1 ] && echo -roll)-$(date +%Y%m%d-%H%M%S).md}
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh|ping\.sh|overflow\.sh|/fc-(ping|workers|overflow)\.'
OTHER_NAMES='wrk|cargo|rustc'

. "$(dirname "$0")/lib.sh"

ensure_cmd wrk wrk
if [[ " $SERVERS " == *" nginx-gunicorn "* ]]; then ensure_cmd nginx nginx-light nginx; fi
if [[ " $SERVERS " == *"gunicorn "* ]]; then ensure_gunicorn; fi
cargo build --release --bin fiddler_crab --example loadgen
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates python 2>/dev/null || echo ' with uncommitted changes')"
work=$(mktemp -d /tmp/fc-workers.XXXXXX)
# nginx's worker runs as nobody when started as root: it must reach the socket here.
chmod 755 "$work"
cp target/release/fiddler_crab target/release/examples/loadgen "$work/"
CLK_TCK=$(getconf CLK_TCK)
trap 'stop_server; rm -rf "$work"' EXIT
WRK_ARGS=()

worker_config() { # PORT
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
access_log = $([ "$ACCESS_LOG" = 1 ] && echo true || echo false)

[[endpoint]]
path = "/hello"
methods = ["GET"]
mode = "crab"
queue = 1024
overflow = "reject"

[endpoint.worker]
command = ["python3", "-m", "fiddler_worker", "examples/hello/app.py"]
$WORKER_EXTRA
EOF
}

# gunicorn_cmd BIND: gunicorn, sync worker class, 1 worker, on BIND (host:port or unix:PATH).
gunicorn_cmd() {
  local cmd=("$GUNICORN" --workers 1 --worker-class sync --bind "$1" --chdir "$PWD/benches"
    --error-logfile "$work/gunicorn.log")
  if [ "$ACCESS_LOG" = 1 ]; then cmd+=(--access-logfile "$work/gunicorn-access.log"); fi
  printf '%s\n' "${cmd[@]}" hello_wsgi:app
}

# roll_pid / roll_signal: where the ROLL=1 run sends its signal.
roll_pid=""
roll_signal=""

# start_server NAME: starts it with every process on CPU $SERVER_CPU; sets server_pids, url, addr,
# roll_pid and roll_signal. Returns 1 (having said why) if it did not start.
start_server() {
  local name=$1 port cmd dir gpid
  port=$(free_port)
  addr=127.0.0.1:$port
  url="http://$addr/hello"
  rm -f "$work/server.log"
  case $name in
    worker)
      if [ ! -d python/fiddler_worker ]; then
        echo "skipping worker: python/fiddler_worker is not in this tree (the py-worker branch)" >&2
        return 1
      fi
      worker_config "$port" >"$work/worker.toml"
      if ! "$work/fiddler_crab" --config "$work/worker.toml" check >"$work/server.log" 2>&1; then
        echo "skipping worker: this fiddler_crab does not accept the worker config (the workers" \
          "feature is not there yet?):" >&2
        sed 's/^/    /' "$work/server.log" >&2
        return 1
      fi
      PYTHONPATH=$PWD/python taskset -c "$SERVER_CPU" "$work/fiddler_crab" \
        --config "$work/worker.toml" >"$work/server.log" 2>&1 &
      server_pids=($!)
      roll_pid=$!
      roll_signal=$ROLL_SIGNAL_WORKER
      ;;
    gunicorn)
      mapfile -t cmd < <(gunicorn_cmd "$addr")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 &
      server_pids=($!)
      roll_pid=$!
      roll_signal=$ROLL_SIGNAL_GUNICORN
      ;;
    nginx-gunicorn)
      dir=$work/nginx
      rm -rf "$dir"
      mkdir -p "$dir"
      mapfile -t cmd < <(gunicorn_cmd "unix:$dir/gunicorn.sock")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 &
      gpid=$!
      server_pids=("$gpid")
      roll_pid=$gpid
      roll_signal=$ROLL_SIGNAL_GUNICORN
      local i
      for i in $(seq 1 100); do [ -S "$dir/gunicorn.sock" ] && break; sleep 0.1; done
      # shellcheck disable=SC2016
      nginx_conf "$dir" "$([ "$ACCESS_LOG" = 1 ] && echo on || echo off)" "    upstream app_server {
        server unix:$dir/gunicorn.sock fail_timeout=0;
        keepalive 16;
    }
    server {
        listen $addr;
        location / {
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header Host \$http_host;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_redirect off;
            proxy_pass http://app_server;
        }
    }" >"$dir/nginx.conf"
      mapfile -t cmd < <(nginx_cmd "$dir")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >>"$work/server.log" 2>&1 &
      server_pids+=($!)
      ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  if wait_http "$url" 300 "${server_pids[0]}"; then return 0; fi
  echo "skipping $name: it did not answer $url:" >&2
  cat "$work/server.log" "$work/gunicorn.log" "$work/nginx/error.log" 2>/dev/null | tail -20 |
    sed 's/^/    /' >&2 || true
  return 1
}

labels=(
  --label 'worker=fiddler_crab + fiddler_worker, crab, 1 worker'
  --label 'gunicorn=gunicorn sync, 1 worker, direct'
  --label 'nginx-gunicorn=nginx → gunicorn sync, 1 worker (Unix socket)'
)

header() {
  echo "# Warm Python workers benchmark$([ "$ROLL" = 1 ] && echo ": rolling restart") $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  machine_line
  echo "Built from commit $COMMIT. $("${GUNICORN:-gunicorn}" --version 2>/dev/null || true); $(nginx -v 2>&1 | sed 's/.*: //' || true); $(python3 --version)."
  echo "Handler: {\"hello\":\"world\"} (examples/hello/app.py; benches/hello_wsgi.py for gunicorn). Every server-side process on CPU $SERVER_CPU, load generator on CPU $LOADGEN_CPU; access logs $([ "$ACCESS_LOG" = 1 ] && echo on || echo off)."
}

if [ "$ROLL" = 1 ]; then
  rows=()
  for name in $SERVERS; do
    wait_quiet
    if ! start_server "$name"; then stop_server; continue; fi
    echo "== $name: $ROLL_RATE req/s for $DURATION s, SIG$roll_signal to pid $roll_pid at $ROLL_AT s" >&2
    taskset -c "$LOADGEN_CPU" "$work/loadgen" --addr "$addr" --path /hello --rate "$ROLL_RATE" \
      --duration "$DURATION" --timeout 10 --dump "$work/roll-$name.csv" >"$work/loadgen.out" 2>&1 &
    lg=$!
    sleep "$ROLL_AT"
    kill -s "$roll_signal" "$roll_pid" 2>/dev/null || echo "could not signal $name ($roll_pid)" >&2
    wait "$lg" || { echo "loadgen failed:" >&2; cat "$work/loadgen.out" >&2; }
    sed 's/^/    /' "$work/loadgen.out" >&2
    stop_server
    echo "  the server's log around the roll:" >&2
    grep -ih "signal\|worker\|roll\|restart" "$work/server.log" "$work/gunicorn.log" 2>/dev/null |
      tail -8 | sed 's/^/    /' >&2 || true
    if [ -s "$work/roll-$name.csv" ]; then
      label=$(printf '%s\n' "${labels[@]}" | sed -n "s/^$name=//p")
      rows+=("$(python3 benches/report.py roll "$work/roll-$name.csv" --at "$ROLL_AT" \
        --window "$ROLL_WINDOW" --duration "$DURATION" --label "${label:-$name}")")
    fi
  done
  {
    header
    echo "Open loop: $ROLL_RATE req/s for $DURATION s (examples/loadgen.rs, a fresh connection per request, latency from the scheduled send); the roll signal (fiddler_crab SIG$ROLL_SIGNAL_WORKER, gunicorn's arbiter SIG$ROLL_SIGNAL_GUNICORN) at $ROLL_AT s; \"during\" is from the signal to $ROLL_WINDOW s after it."
    echo
    echo "| server | before: requests | errors | p50 ms | p99 ms | during the roll: requests | errors | p50 ms | p99 ms | after: requests | errors | p50 ms | p99 ms |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } | tee "$OUT"
  echo "saved to $OUT" >&2
  exit 0
fi

results=$work/results.tsv
new_results "$results"
active=$SERVERS
for round in $(seq 1 "$ROUNDS"); do
  for name in $active; do
    if ! wrk_measure "$name" "$round" "$results"; then
      active=$(tr ' ' '\n' <<<"$active" | grep -vx "$name" | tr '\n' ' ')
    fi
  done
done

{
  header
  echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency after a ${WARMUP} s warm-up; a fresh server per run; $ROUNDS rounds, servers in turn."
  echo "Server CPU per request: utime + stime of every server-side process over the run ÷ requests wrk completed."
  echo
  python3 benches/report.py wrk "$results" --servers "$SERVERS" \
    --compare 'gunicorn:*=gunicorn' --compare 'nginx → gunicorn:*=nginx-gunicorn' "${labels[@]}"
} | tee "$OUT"
echo "saved to $OUT" >&2
