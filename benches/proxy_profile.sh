#!/usr/bin/env bash
# Where a proxied request's CPU goes (docs/BENCHMARKS.md 14): GET /ping through fiddler_crab
# (upstream endpoint, FC_WORKERS slots, access log off), nginx (proxy_pass, keepalive) and HAProxy
# (http-reuse always), each to a bare hyper upstream; proxy and upstream pinned to CPU SERVER_CPU,
# wrk -c32 on LOADGEN_CPU. While wrk runs, `perf record -e cpu-clock` samples the proxy and the
# upstream for SAMPLE s; the samples, split by process and by where they fell (the kernel, the
# program itself, libc), are turned into µs per request (samples ÷ frequency ÷ requests wrk
# completed while perf ran). Sampling at FREQ Hz slows both sides alike; compare the columns,
# not the totals with benches/proxy.sh. With TOP=N, also each proxy's N costliest user-space
# symbols. Loopback only; ends by itself. Needs root (or perf_event_paranoid <= -1), perf
# (Debian: linux-perf), wrk, nginx-light and haproxy.
#
#   bash benches/proxy_profile.sh
#   ROUNDS=3 TOP=15 bash benches/proxy_profile.sh
#
# Environment: ROUNDS (default 1), SAMPLE (s, default 4), FREQ (Hz, default 10000), FC_WORKERS
# (default 8), FC_BIN (default target/release/fiddler_crab), SERVERS (default "fc nginx haproxy"),
# TOP (default 0), SERVER_CPU / LOADGEN_CPU (default 0 / 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
SAMPLE=${SAMPLE:-4}
FREQ=${FREQ:-10000}
FC_WORKERS=${FC_WORKERS:-8}
FC_BIN=${FC_BIN:-target/release/fiddler_crab}
SERVERS=${SERVERS:-fc nginx haproxy}
TOP=${TOP:-0}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
. "$(dirname "$0")/lib.sh"
ensure_cmd wrk wrk
ensure_cmd perf linux-perf
if [[ " $SERVERS " == *" nginx "* ]]; then ensure_cmd nginx nginx-light nginx; fi
if [[ " $SERVERS " == *" haproxy "* ]]; then ensure_cmd haproxy haproxy; fi
cargo build --release --bin fiddler_crab --example bare_hyper
work=$(mktemp -d /tmp/fc-profile.XXXXXX)
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# proxy NAME PORT UPSTREAM_PORT: start the proxy on CPU $SERVER_CPU; prints its pid.
proxy() {
  local name=$1 port=$2 up_port=$3
  case $name in
    fc)
      fc_proxy_config "$port" "$up_port" "$FC_WORKERS" >"$work/fc.toml"
      taskset -c "$SERVER_CPU" "$FC_BIN" --config "$work/fc.toml" >"$work/fc.log" 2>&1 &
      ;;
    nginx)
      start_nginx_proxy "$work/nginx" "$port" "$up_port" "$SERVER_CPU"
      ;;
    haproxy)
      printf 'global\n    maxconn 4096\n    nbthread 1\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout http-request 10s\n    http-reuse always\nfrontend hop\n    bind 127.0.0.1:%s\n    default_backend bare\nbackend bare\n    server upstream 127.0.0.1:%s\n' \
        "$port" "$up_port" >"$work/haproxy.cfg"
      taskset -c "$SERVER_CPU" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
      ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  echo $!
}

for round in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do
    port=$(free_port)
    start_bare_upstream "$work/upstream.log" "$SERVER_CPU"
    pids+=("$up")
    pp=$(proxy "$name" "$port" "$up_port")
    pids+=("$pp")
    wait_http "http://127.0.0.1:$port/ping" 100 "$pp"
    taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d1s "http://127.0.0.1:$port/ping" >/dev/null
    # wrk runs longer than perf samples; requests are counted over the sampled seconds.
    taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"$((SAMPLE + 2))s" "http://127.0.0.1:$port/ping" \
      >"$work/wrk.out" &
    load=$!
    sleep 1
    perf record -q -F "$FREQ" -e cpu-clock -o "$work/perf.data" -p "$pp,$up" -- sleep "$SAMPLE" \
      >/dev/null 2>&1
    wait "$load"
    # perf reports threads: which are whose.
    proxy_tids=$(ls /proc/"$pp"/task | tr '\n' ' ')
    up_tids=$(ls /proc/"$up"/task | tr '\n' ' ')
    kill -TERM "$pp" "$up" 2>/dev/null || true
    wait "$pp" "$up" 2>/dev/null || true
    total=$(sed -n 's/^ *\([0-9]*\) requests in \([0-9.]*\)s.*/\1 \2/p' "$work/wrk.out")
    requests=$(awk -v s="$SAMPLE" '{ printf "%d", $1 / $2 * s }' <<<"$total")
    echo "== $name, round $round ($requests requests while sampled; FC_WORKERS=$FC_WORKERS): µs per request"
    perf report -i "$work/perf.data" --no-children --sort pid,dso -g none -q -n 2>/dev/null |
      awk -v r="$requests" -v f="$FREQ" -v proxy=" $proxy_tids" -v up=" $up_tids" '
        { split($3, p, ":"); t = " " p[1] " ";
          who = index(proxy, t) ? "proxy" : index(up, t) ? "upstream" : "other";
          where = ($4 == "[kernel.kallsyms]") ? "kernel" : "user";
          us[who " " where] += $2 / f / r * 1e6 }
        END { printf "proxy: kernel %.2f user %.2f    upstream: kernel %.2f user %.2f    total %.2f\n",
                us["proxy kernel"], us["proxy user"], us["upstream kernel"], us["upstream user"],
                us["proxy kernel"] + us["proxy user"] + us["upstream kernel"] + us["upstream user"] }'
    if [ "$TOP" -gt 0 ]; then
      perf report -i "$work/perf.data" --no-children --tid "$(tr ' ' ',' <<<"${proxy_tids% }")" \
        --sort sym -g none -q -n 2>/dev/null |
        grep -v '\[k\]' | head -n "$TOP" |
        awk -v r="$requests" -v f="$FREQ" '{ n = $2; $1 = ""; $2 = ""; printf "  %6.3f µs  %s\n", n / f / r * 1e6, $0 }' || true
    fi
  done
done
