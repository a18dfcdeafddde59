#!/usr/bin/env bash
# System calls per `GET /ping` (docs/BENCHMARKS.md 13.2): fiddler_crab on its embedded default
# (access log on) and nginx with its access log, each pinned to CPU SERVER_CPU, under wrk -c32 on
# LOADGEN_CPU, a new connection per request (CONN=close, the default) or keep-alive
# (CONN=keepalive). Counts every system call, and the ones a request makes, with perf's syscall
# tracepoints over DURATION s after a 1 s warm-up, divided by the requests wrk completed. The
# counting slows both servers, so a run that counts prints no CPU time; with COUNT=0 nothing is
# counted and each run prints its user and system CPU µs per request instead (utime and stime of
# the server's threads, /proc/PID/task/*/stat, as benches/ping.sh sums them).
# Loopback only; ends by itself. Needs wrk, nginx and perf (Debian: wrk nginx-light linux-perf)
# and root or perf_event_paranoid <= -1.
#
#   bash benches/ping_syscalls.sh
#   CONN=keepalive ROUNDS=3 bash benches/ping_syscalls.sh
#   COUNT=0 ROUNDS=5 DURATION=5 bash benches/ping_syscalls.sh   # user and system time instead
set -euo pipefail
cd "$(dirname "$0")/.."
CONN=${CONN:-close}
DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-1}
COUNT=${COUNT:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
. "$(dirname "$0")/lib.sh"
ensure_cmd wrk wrk
ensure_cmd nginx nginx-light nginx
if [ "$COUNT" = 1 ] && ! command -v perf >/dev/null 2>&1; then
  echo "perf is needed (Debian: apt-get install -y linux-perf)" >&2
  exit 2
fi
cargo build --release --bin fiddler_crab
work=$(mktemp -d /tmp/fc-syscalls.XXXXXX)
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
HEADER=()
if [ "$CONN" = close ]; then HEADER=(-H 'Connection: close'); fi
EVENTS=raw_syscalls:sys_enter
for call in accept4 recvfrom read writev write sendto epoll_wait epoll_ctl close shutdown setsockopt futex; do
  EVENTS+=",syscalls:sys_enter_$call"
done

CLK_TCK=$(getconf CLK_TCK)

for round in $(seq 1 "$ROUNDS"); do
  for name in default nginx-log; do
    port=$(free_port)
    if [ "$name" = default ]; then
      taskset -c "$SERVER_CPU" target/release/fiddler_crab --listen "127.0.0.1:$port" \
        >"$work/server.log" 2>&1 &
    else
      rm -rf "$work/nginx"
      mkdir -p "$work/nginx"
      nginx_ping_conf "$work/nginx" on "$port"
      mapfile -t cmd < <(nginx_cmd "$work/nginx")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 &
    fi
    server=$!
    pids+=("$server")
    wait_http "http://127.0.0.1:$port/ping" 100 "$server"
    taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d1s "${HEADER[@]}" "http://127.0.0.1:$port/ping" >/dev/null
    # Every process of the server (nginx: master and worker).
    all=("$server" $(pgrep -P "$server" || true))
    if [ "$COUNT" = 1 ]; then
      targets=$(echo "${all[@]}" | tr ' ' ',')
      perf stat -e "$EVENTS" -p "$targets" -o "$work/perf" -- sleep "$DURATION" &
      counting=$!
    fi
    user0=$(thread_ticks 14 "${all[@]}")
    system0=$(thread_ticks 15 "${all[@]}")
    requests=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"${DURATION}s" "${HEADER[@]}" \
      "http://127.0.0.1:$port/ping" | sed -n 's/^ *\([0-9]*\) requests in .*/\1/p')
    user=$(($(thread_ticks 14 "${all[@]}") - user0))
    system=$(($(thread_ticks 15 "${all[@]}") - system0))
    if [ "$COUNT" = 1 ]; then wait "$counting" || true; fi
    kill "$server"
    wait "$server" 2>/dev/null || true
    if [ "$COUNT" = 0 ]; then
      awk -v r="$requests" -v hz="$CLK_TCK" -v u="$user" -v s="$system" \
        -v label="$name, round $round, CONN=$CONN ($requests requests)" 'BEGIN { k = 1e6 / hz / r;
        printf "%s: CPU µs per request: user %.1f system %.1f total %.1f\n", label, u * k, s * k, (u + s) * k }'
      continue
    fi
    echo "$name, round $round, CONN=$CONN ($requests requests): system calls per request:$(syscall_counts "$work/perf" "$requests" 1)"
  done
done
