#!/usr/bin/env bash
# Context switches per proxied request (docs/BENCHMARKS.md 12.4): GET /ping through fiddler_crab
# (upstream endpoint, FC_WORKERS slots, access log off) and through nginx (proxy_pass, keepalive),
# each to a bare hyper upstream, proxy and upstream pinned to CPU SERVER_CPU, wrk -c32 on
# LOADGEN_CPU for DURATION s after a 1 s warm-up. Prints, per thread of the proxy and of the
# upstream, voluntary and involuntary context switches per request (from /proc/PID/task/*/status),
# and the user and system CPU µs per request of the proxy and of the upstream (utime and stime of
# /proc/PID/task/*/stat). With SYSCALLS=1 and `perf` (Debian: linux-perf) also the system calls
# per request of each (perf's syscall tracepoints; needs root or perf_event_paranoid <= -1).
# With SEGMENTS=1 and `nstat` (Debian: iproute2), also the TCP segments per request the machine
# sent while wrk ran, all of them on loopback, and how many were pure acknowledgements or delayed
# ones (nstat counts the whole machine: run it on an otherwise quiet one).
# Loopback only; ends by itself. Needs wrk and nginx (Debian: apt-get install -y wrk nginx-light).
#
#   bash benches/proxy_switches.sh
#   FC_WORKERS=32 bash benches/proxy_switches.sh
#   SYSCALLS=1 ROUNDS=3 bash benches/proxy_switches.sh   # three rounds, system calls too
#   SEGMENTS=1 SERVERS="fc32 hyperproxy nginx" bash benches/proxy_switches.sh   # TCP segments too
#   FC_BIN=/tmp/fc-other SERVERS="fc fc-ref nginx" bash benches/proxy_switches.sh
#       # fc-ref runs target/release/fiddler_crab, fc runs FC_BIN: two builds in the same run
#   SERVERS="fc fc32 hyperproxy nginx" bash benches/proxy_switches.sh
#       # fcN: FC_BIN with N slots; hyperproxy: examples/bare_hyper_proxy.rs, the hyper floor
#
# Environment: FC_WORKERS (slots, default 8), DURATION (s, default 3), ROUNDS (default 1),
# SYSCALLS (0/1), SEGMENTS (0/1), FC_BIN (the fiddler_crab binary "fc" runs, default target/release/fiddler_crab),
# SERVERS (default "fc nginx"; "fc-ref" is target/release/fiddler_crab; "fcN" FC_BIN with N slots;
# "hyperproxy" the bare hyper proxy), SPIN_NS (the bare hyper proxy spins this many ns of user
# CPU per request, default 0: a stand-in for more work per request), SERVER_CPU, LOADGEN_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
FC_WORKERS=${FC_WORKERS:-8}
FC_BIN=${FC_BIN:-target/release/fiddler_crab}
SERVERS=${SERVERS:-fc nginx}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-1}
SYSCALLS=${SYSCALLS:-0}
SEGMENTS=${SEGMENTS:-0}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
. "$(dirname "$0")/lib.sh"
ensure_cmd wrk wrk
ensure_cmd nginx nginx-light nginx
cargo build --release --bin fiddler_crab --example bare_hyper --example bare_hyper_proxy
work=$(mktemp -d /tmp/fc-switches.XXXXXX)
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT


SYSCALL_EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex,syscalls:sys_enter_write
CLK_TCK=$(getconf CLK_TCK)

# switches PID...: "process-thread voluntary involuntary" for every thread of the PIDs.
switches() {
  local p t
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      printf '%s-%s %s %s\n' "$p" "$(tr ' ' _ <"$t/comm")" \
        "$(awk '$1 == "voluntary_ctxt_switches:" {print $2}' "$t/status")" \
        "$(awk '$1 == "nonvoluntary_ctxt_switches:" {print $2}' "$t/status")"
    done
  done
}

for round in $(seq 1 "$ROUNDS"); do
for name in $SERVERS; do
  port=$(free_port)
  start_bare_upstream "$work/upstream.log" "$SERVER_CPU"
  pids+=("$up")
  if [ "$name" = hyperproxy ]; then
    taskset -c "$SERVER_CPU" target/release/examples/bare_hyper_proxy --listen "127.0.0.1:$port" \
      --upstream "127.0.0.1:$up_port" --max-seconds 120 --spin-ns "${SPIN_NS:-0}" \
      >"$work/hyperproxy.log" 2>&1 &
  elif [ "$name" = fc ] || [ "$name" = fc-ref ] || [[ $name == fc[0-9]* ]]; then
    bin=$FC_BIN
    if [ "$name" = fc-ref ]; then bin=target/release/fiddler_crab; fi
    slots=$FC_WORKERS
    if [[ $name == fc[0-9]* ]]; then slots=${name#fc}; fi
    fc_proxy_config "$port" "$up_port" "$slots" >"$work/fc.toml"
    taskset -c "$SERVER_CPU" "$bin" --config "$work/fc.toml" >"$work/fc.log" 2>&1 &
  else
    start_nginx_proxy "$work/nginx" "$port" "$up_port" "$SERVER_CPU"
  fi
  proxy=$!
  pids+=("$proxy")
  wait_http "http://127.0.0.1:$port/ping" 100 "$proxy"
  taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d1s "http://127.0.0.1:$port/ping" >/dev/null
  switches "$proxy" "$up" | sort >"$work/before"
  cpu0=($(thread_ticks 14 "$proxy") $(thread_ticks 15 "$proxy") $(thread_ticks 14 "$up") $(thread_ticks 15 "$up"))
  if [ "$SEGMENTS" = 1 ]; then nstat -n; fi
  perfs=()
  if [ "$SYSCALLS" = 1 ]; then
    perf stat -e "$SYSCALL_EVENTS" -p "$proxy" -o "$work/perf.proxy" -- sleep "$DURATION" &
    perfs+=($!)
    perf stat -e "$SYSCALL_EVENTS" -p "$up" -o "$work/perf.upstream" -- sleep "$DURATION" &
    perfs+=($!)
  fi
  requests=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$port/ping" |
    sed -n 's/^ *\([0-9]*\) requests in .*/\1/p')
  if [ "$SEGMENTS" = 1 ]; then nstat -z >"$work/nstat"; fi
  switches "$proxy" "$up" | sort >"$work/after"
  cpu1=($(thread_ticks 14 "$proxy") $(thread_ticks 15 "$proxy") $(thread_ticks 14 "$up") $(thread_ticks 15 "$up"))
  for p in "${perfs[@]}"; do wait "$p" || true; done
  kill "$proxy" "$up"
  wait "$proxy" "$up" 2>/dev/null || true
  echo "== $name, round $round ($requests requests; FC_WORKERS=$FC_WORKERS): per request"
  join "$work/before" "$work/after" | awk -v r="$requests" '{v = $4 - $2; n = $5 - $3;
    if (v + n > 0) printf "%-28s context switches: voluntary %.3f  involuntary %.3f\n", $1, v / r, n / r}'
  awk -v r="$requests" -v hz="$CLK_TCK" -v pu=$((cpu1[0] - cpu0[0])) -v ps=$((cpu1[1] - cpu0[1])) \
    -v uu=$((cpu1[2] - cpu0[2])) -v us=$((cpu1[3] - cpu0[3])) 'BEGIN { k = 1e6 / hz / r;
    printf "CPU µs: proxy user %.1f system %.1f, upstream user %.1f system %.1f, total %.1f\n",
      pu * k, ps * k, uu * k, us * k, (pu + ps + uu + us) * k }'
  if [ "$SEGMENTS" = 1 ]; then
    awk -v r="$requests" '{ n[$1] = $2 } END {
      printf "TCP segments (whole machine): sent %.3f, received %.3f, pure acks %.4f, delayed acks %.4f\n",
        n["TcpOutSegs"] / r, n["TcpInSegs"] / r, n["TcpExtTCPPureAcks"] / r, n["TcpExtDelayedACKs"] / r }' "$work/nstat"
  fi
  if [ "$SYSCALLS" = 1 ]; then
    for side in proxy upstream; do
      echo "system calls, $side:$(syscall_counts "$work/perf.$side" "$requests")"
    done
  fi
done
done
