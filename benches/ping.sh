#!/usr/bin/env bash
# GET /ping benchmark: fiddler_crab (release binary) against two anchors in the same run, a bare
# hyper 1 server (examples/bare_hyper.rs) and nginx, under a closed-loop wrk load. Servers:
#   bare        bare hyper (no log)
#   nginx       nginx, `location = /ping { return 200 "pong\n"; }`, access_log off
#   nginx-log   the same with nginx's default access log: combined format to a file, no buffer=
#               (one write per request)
#   jellyfish   fiddler_crab, /ping builtin in jellyfish mode, access log off
#   default     fiddler_crab's embedded default config as shipped (`fiddler_crab --listen ADDR`, no
#               --config): /ping jellyfish with the access log on. The access log is a tracing
#               event (target fiddler_crab::access) written by the fmt subscriber to stderr, one
#               write per line (crates/frontend/src/access.rs, src/main.rs); stderr and stdout go
#               to a file.
#   crab        fiddler_crab, /ping in crab mode, access log off
#   (also: bare-plain, hyper's builder defaults; jellyfish-ref, the fiddler_crab binary REF_BIN)
# Every server process pinned to CPU 0 (nginx: master and its one worker), wrk to CPU 1. Per run:
# requests/s, p50/p99 latency (wrk --latency), and server CPU microseconds per request: the
# utime + stime delta of all the server's processes (/proc/PID/stat of the process tree) over the
# wrk run divided by the requests wrk completed. The servers are run in turn, ROUNDS times, and
# each figure's median is reported; each server is held against bare, against its nginx anchor
# (log-on servers against nginx-log, log-off ones against nginx) and, for the log-on servers,
# against the same server with its log off: the median of each round's ratio to that round's
# anchor run, and the ratio of the mean CPU per request over the rounds with a bootstrap 95%
# interval (the figure to hold against a bar on a noisy machine). CONN=close runs every request on
# a new connection (wrk -H 'Connection: close'), reported in its own table. Loopback only; every
# run ends by itself. Installs wrk and nginx-light (Debian) when missing.
#
#   bash benches/ping.sh                          # 3 rounds of 10 s per server (about 4.5 minutes)
#   CONN=both bash benches/ping.sh                # keep-alive, then a connection per request (9 min)
#   ROUNDS=1 DURATION=3 bash benches/ping.sh      # a quick look
#
# Environment: ROUNDS (default 3), DURATION (s per wrk run, default 10), WARMUP (s, default 2; 0
# for none), CONNECTIONS (default 32), THREADS (wrk threads, default 1), CONN (keepalive | close |
# both, default keepalive), DELAY_MS (default 0; when set, each connection pauses that many ms
# after every response, so that every server gets about the same request rate rather than as many
# as it can take), SERVER_CPU / LOADGEN_CPU (default 0 / 1), SERVERS (default
# "bare nginx nginx-log jellyfish default crab"), REF_BIN, OUT (result file), IDLE_MAX (% busy the
# machine may be before a run, default 15), IDLE_WAIT (s to wait for that at most, default 1800),
# INTRUDERS_MAX (default 3), MAX_ATTEMPTS (default 10). Before each measurement the script waits
# until no other benchmark or build (bench_server, loadgen, flood.sh, adaptive.sh, workers.sh,
# overflow.sh, another ping.sh's servers, wrk, cargo, rustc) runs and the machine is nearly idle,
# and repeats a run during which one ran or during which other work took more than INTRUDERS_MAX %
# of either CPU (the server's CPU less the server; wrk's CPU less wrk), at most MAX_ATTEMPTS
# times; and, closed loop (DELAY_MS 0), a run whose server was busy less than BUSY_MIN % of a core
# (default 40; every server takes 50-100% here): the client stalled, as a connection per request
# does now and then when a SYN meets a TIME_WAIT of the same ports (a second per retry). See
# docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
DELAY_MS=${DELAY_MS:-0}
if [ "$DELAY_MS" = 0 ]; then BUSY_MIN=${BUSY_MIN:-40}; fi
THREADS=${THREADS:-1}
CONN=${CONN:-keepalive}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVERS=${SERVERS:-"bare nginx nginx-log jellyfish default crab"}
mkdir -p bench-results
OUT=${OUT:-bench-results/ping-$(date +%Y%m%d-%H%M%S).md}
# Other benchmarks' processes (their servers run from /tmp/fc-NAME.* directories).
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh|workers\.sh|overflow\.sh|/fc-(ping|workers|overflow)\.'
# Process names of load generators and builds.
OTHER_NAMES='wrk|cargo|rustc'
case $CONN in
  keepalive) MODES=keepalive ;;
  close) MODES=close ;;
  both) MODES="keepalive close" ;;
  *) echo "CONN must be keepalive, close or both, not $CONN" >&2; exit 2 ;;
esac

# others, wait_quiet, free_port, fiddler_crab_config, ensure_cmd, tree_ticks, wrk_measure, ...
. "$(dirname "$0")/lib.sh"

ensure_cmd wrk wrk
if [[ " $SERVERS " == *" nginx"* ]]; then ensure_cmd nginx nginx-light nginx; fi
cargo build --release --bin fiddler_crab --example bare_hyper
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' with uncommitted changes in src/ or crates/')"
# Private copies: a rebuild by someone else during the run cannot swap the binaries.
work=$(mktemp -d /tmp/fc-ping.XXXXXX)
# nginx's worker runs as nobody when started as root: it must reach its files here.
chmod 755 "$work"
cp target/release/fiddler_crab target/release/examples/bare_hyper "$work/"
# REF_BIN: another fiddler_crab build (say, the previous commit's) to run as server
# "jellyfish-ref", so a change is measured against what it changes in the same run.
if [ -n "${REF_BIN:-}" ]; then cp "$REF_BIN" "$work/fiddler_crab-ref"; fi
CLK_TCK=$(getconf CLK_TCK)
trap 'stop_server; rm -rf "$work"' EXIT

# start_server NAME: starts it on CPU $SERVER_CPU, sets server_pids and url.
start_server() {
  local port name=$1 dir log=off
  port=$(free_port)
  rm -f "$work/server.log"
  case $name in
    bare) taskset -c "$SERVER_CPU" "$work/bare_hyper" --listen "127.0.0.1:$port" \
            --max-seconds 600 >"$work/server.log" 2>&1 & ;;
    bare-plain) taskset -c "$SERVER_CPU" "$work/bare_hyper" --plain --listen "127.0.0.1:$port" \
            --max-seconds 600 >"$work/server.log" 2>&1 & ;;
    jellyfish | crab)
      fiddler_crab_config "$name" "$port" >"$work/$name.toml"
      taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$work/$name.toml" \
        >"$work/server.log" 2>&1 & ;;
    jellyfish-ref)
      fiddler_crab_config jellyfish "$port" >"$work/$name.toml"
      taskset -c "$SERVER_CPU" "$work/fiddler_crab-ref" --config "$work/$name.toml" \
        >"$work/server.log" 2>&1 & ;;
    default)
      # The embedded default as shipped; its access log goes to stderr, here a file.
      taskset -c "$SERVER_CPU" "$work/fiddler_crab" --listen "127.0.0.1:$port" \
        >"$work/server.log" 2>&1 & ;;
    nginx | nginx-log)
      dir=$work/$name
      rm -rf "$dir"
      mkdir -p "$dir"
      if [ "$name" = nginx-log ]; then log=on; fi
      nginx_ping_conf "$dir" "$log" "$port"
      local cmd
      mapfile -t cmd < <(nginx_cmd "$dir")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 & ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  server_pids=($!)
  url="http://127.0.0.1:$port/ping"
  if wait_http "$url" 100 "${server_pids[0]}"; then return 0; fi
  echo "$name did not start:" >&2
  cat "$work/server.log" "$work/$name/error.log" 2>/dev/null >&2 || true
  exit 1
}

WRK_ARGS=()
# DELAY_MS > 0: each connection pauses that long after every response (wrk's Lua `delay()`), so
# every server gets about the same request rate instead of as many as it can take.
if [ "$DELAY_MS" != 0 ]; then
  echo "function delay() return $DELAY_MS end" >"$work/delay.lua"
  WRK_ARGS=(-s "$work/delay.lua")
fi
for mode in $MODES; do
  new_results "$work/results-$mode.tsv"
  args=("${WRK_ARGS[@]}")
  if [ "$mode" = close ]; then WRK_ARGS+=(-H 'Connection: close'); fi
  echo "== $mode" >&2
  for round in $(seq 1 "$ROUNDS"); do
    for name in $SERVERS; do
      wrk_measure "$name" "$round" "$work/results-$mode.tsv"
    done
  done
  WRK_ARGS=("${args[@]}")
done

{
  echo "# GET /ping benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  machine_line
  echo "Built from commit $COMMIT.$(command -v nginx >/dev/null && echo " $(nginx -v 2>&1 | sed 's/.*: //').")"
  echo "Server on CPU $SERVER_CPU (all its processes), wrk on CPU $LOADGEN_CPU; a fresh server per run; $ROUNDS rounds, servers in turn."
  echo "Server CPU per request: utime + stime of all the server's processes over the run ÷ requests wrk completed."
  echo "Anchors: log-off servers are held against nginx (access_log off), log-on ones (default, nginx-log) against nginx-log; \"same, log off\" holds default against jellyfish and nginx-log against nginx."
  for mode in $MODES; do
    echo
    if [ "$mode" = close ]; then
      echo "## A new connection per request (wrk -H 'Connection: close')"
    else
      echo "## Keep-alive"
    fi
    echo
    if [ "$DELAY_MS" != 0 ]; then
      echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency with a ${DELAY_MS} ms pause after each response per connection (Lua delay()), after a ${WARMUP} s warm-up."
    else
      echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, after a ${WARMUP} s warm-up."
    fi
    echo
    python3 benches/report.py wrk "$work/results-$mode.tsv" --servers "$SERVERS" \
      --compare 'bare:*=bare' \
      --compare 'nginx anchor:default=nginx-log,nginx-log=nginx,*=nginx' \
      --compare 'same, log off:default=jellyfish,nginx-log=nginx' \
      --label 'bare=bare hyper (examples/bare_hyper.rs)' \
      --label 'bare-plain=bare hyper, builder defaults (--plain)' \
      --label 'nginx=nginx, access_log off' \
      --label 'nginx-log=nginx, access_log to a file' \
      --label 'jellyfish=fiddler_crab, /ping jellyfish, log off' \
      --label 'jellyfish-ref=fiddler_crab REF_BIN, /ping jellyfish, log off' \
      --label 'default=fiddler_crab default config (log on)' \
      --label 'crab=fiddler_crab, /ping crab, log off'
  done
} | tee "$OUT"
echo "saved to $OUT" >&2
