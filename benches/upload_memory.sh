#!/usr/bin/env bash
# Memory held by queued uploads (docs/BENCHMARKS.md 18.1): CONNECTIONS clients (default 64) each
# POST BYTES (default 1 MiB) in a loop to a fiddler_crab upstream endpoint with one slot and a
# queue of 64, in front of a serial upstream that reads each body and takes JOB_MS (default 100)
# per request (benches/slow_upstream.py --read-body): nearly every request waits in the queue.
# Two configs, one after the other: the body read whole before admission (the default) and
# `stream_request_body = true` (the body left in the client's connection until the request runs).
# Per config: requests answered and their statuses (wrk), fiddler_crab's peak resident memory
# (VmHWM) and its largest sampled RSS, and the largest sampled memory of the machine's TCP sockets
# (/proc/net/sockstat `mem`, pages × 4096, every socket on the machine: the clients' send buffers
# too). Loopback only; each run stops after DURATION s (default 10). Needs wrk (Debian: wrk).
#
#   bash benches/upload_memory.sh
#   CONNECTIONS=32 BYTES=4194304 bash benches/upload_memory.sh
#
# Environment: CONNECTIONS, BYTES, JOB_MS, DURATION, ROUNDS (default 1), SERVER_CPU / LOADGEN_CPU
# (default 0 / 1).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-64}
BYTES=${BYTES:-1048576}
JOB_MS=${JOB_MS:-100}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
. "$(dirname "$0")/lib.sh"
ensure_cmd wrk wrk
cargo build --release --bin fiddler_crab
work=$(mktemp -d /tmp/fc-upload.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
  "$BYTES" >"$work/post.lua"

kib() { echo $(($1 / 1024)); }
tcp_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }

echo "| config | requests answered | non-2xx | fiddler_crab peak RSS (VmHWM), KiB | largest sampled RSS, KiB | largest sampled TCP socket memory, KiB |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for config in whole streamed; do
    up_port=$(free_port)
    python3 benches/slow_upstream.py --port "$up_port" --job-ms "$JOB_MS" --read-body \
      --max-seconds $((DURATION + 30)) >"$work/upstream.log" 2>&1 &
    pids+=("$!")
    wait_tcp 127.0.0.1 "$up_port" 100 "$!"
    port=$(free_port)
    cat >"$work/fc.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
access_log = false
max_connections = $((CONNECTIONS + 16))

[[endpoint]]
path = "/up"
methods = ["POST"]
mode = "jellyfish"
workers = 1
queue = 64
overflow = "reject"
expected_wait_admission = false
queue_timeout_ms = 600000
max_body_bytes = $BYTES
[endpoint.upstream]
url = "http://127.0.0.1:$up_port"
timeout_ms = 600000
CONF
    if [ "$config" = streamed ]; then echo "stream_request_body = true" >>"$work/fc.toml"; fi
    taskset -c "$SERVER_CPU" target/release/fiddler_crab --config "$work/fc.toml" >"$work/fc.log" 2>&1 &
    fc=$!
    pids+=("$fc")
    wait_tcp 127.0.0.1 "$port" 100 "$fc"
    taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 60s -s "$work/post.lua" \
      "http://127.0.0.1:$port/up" >"$work/wrk.txt" 2>&1 &
    load=$!
    rss_max=0 tcp_max=0
    while kill -0 "$load" 2>/dev/null; do
      rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$fc/status")
      tcp=$(($(tcp_mem_pages) * 4))
      ((rss > rss_max)) && rss_max=$rss
      ((tcp > tcp_max)) && tcp_max=$tcp
      sleep 0.2
    done
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$fc/status")
    answered=$(awk '/requests in/ { print $1 }' "$work/wrk.txt")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$work/wrk.txt")
    echo "| $config | ${answered:-0} | ${non2xx:-0} | $hwm | $rss_max | $tcp_max |"
    kill "$fc" 2>/dev/null || true
    wait "$fc" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pids=()
    wait 2>/dev/null || true
  done
done
echo "($CONNECTIONS clients, $BYTES-byte bodies, one slot, queue 64, upstream $JOB_MS ms per request, $DURATION s per run; $(git rev-parse --short HEAD))"
