#!/usr/bin/env bash
# Time to first byte of a streamed response against its producer's first chunk: how long after a
# program (exec, `stream = true`) or a fiddler_worker generator wrote its first chunk the client
# has it. The producer's first chunk is the wall-clock time at which it was written (`date
# +%s%N`; `time.time_ns()` in benches/stream_app.py); benches/ttfb.py notes when the bytes
# completing that line arrive, one connection per request, sequentially, and prints p50 / p99 /
# max in microseconds. Program start-up and the request's way in are outside the span: it is the
# streaming path alone (stdout or worker socket → producer thread → bounded channel → hyper →
# client).
#
# The same for a model server's token stream through a proxy (issue 10's llama-server case):
# benches/sse_upstream.py answers `text/event-stream`, chunked, its first chunk the time it was
# written (2 ms after its head), and is read
#   direct      without a proxy: the floor
#   upstream    through fiddler_crab, an upstream endpoint (jellyfish, 4 slots; the relay on the
#               connection's task)
#   nginx       through nginx (one worker), `proxy_buffering off`, kept-alive upstream
#   haproxy     through HAProxy (one thread), `http-reuse always`
# and its whole answers (`GET /whole`: `Content-Length`, the body written 2 ms after the head),
# from the body's write to its arrival: `whole-direct`, `whole-upstream`, `whole-nginx`,
# `whole-haproxy`; and every token of a fast stream (`GET /tokens`: 20 chunks 1 ms apart, each
# stamped), from each token's write to its arrival: `tokens-direct`, `tokens-upstream`,
# `tokens-nginx`, `tokens-haproxy` (TOKEN_REQUESTS streams, default 50). The upstream leaves Nagle's algorithm on, as Python's http.server and
# cpp-httplib (by default) do: a proxy that delays its acknowledgement of the head on a
# kept-alive connection makes it hold the rest back (docs/BENCHMARKS.md 20.2).
# Servers, the upstream and the proxies pinned to CPU 0, the client to CPU 1; loopback only; ends
# by itself. Installs nginx-light and haproxy (Debian) when missing.
#
#   bash benches/stream.sh
#   REQUESTS=50 PROFILE=dev IDLE_WAIT=0 bash benches/stream.sh     # a quick smoke run
#
# Environment: REQUESTS (per row, default 1000), PROFILE (cargo profile of the server build,
# default release), SERVER_CPU / CLIENT_CPU (default 0 / 1), RESULTS (directory for the table),
# ROWS (default: every row above), TOKEN_REQUESTS (streams per tokens row, default 50), FC_BIN (a fiddler_crab binary to run instead of this tree's
# build: another commit's, for the rows through it), ACCESS_LOG (fiddler_crab's access log: false,
# the default here, or true, as shipped, to the server's log), IDLE_MAX / IDLE_WAIT (the
# quiet-machine wait of benches/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-1000}
PROFILE=${PROFILE:-release}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROWS=${ROWS:-"exec worker direct upstream nginx haproxy whole-direct whole-upstream whole-nginx whole-haproxy tokens-direct tokens-upstream tokens-nginx tokens-haproxy"}
TOKEN_REQUESTS=${TOKEN_REQUESTS:-50}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-bench-results/stream-$STAMP}
OTHERS='bench_server|loadgen|flood\.sh|ping\.sh|workers\.sh|overflow\.sh|adaptive\.sh|/fc-(ping|workers|overflow|adaptive)\.'
OTHER_NAMES='wrk|cargo|rustc'
mkdir -p "$RESULTS"

# others, host_busy, wait_quiet, free_port, wait_tcp: shared with the other benchmark drivers.
. "$(dirname "$0")/lib.sh"

if [[ " $ROWS " == *"nginx "* ]]; then ensure_cmd nginx nginx-light nginx; fi
if [[ " $ROWS " == *"haproxy "* ]]; then ensure_cmd haproxy haproxy; fi
# A private copy: a rebuild by someone else during the run cannot swap the binary.
work=$(mktemp -d /tmp/fc-stream.XXXXXX)
if [ -n "${FC_BIN:-}" ]; then
  cp "$FC_BIN" "$work/fiddler_crab"
else
  cargo build --profile "$PROFILE" --bin fiddler_crab
  case "$PROFILE" in dev) out=debug ;; *) out=$PROFILE ;; esac
  cp "target/$out/fiddler_crab" "$work/"
fi
server_pid=""
anchor_pids=()
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ ${#anchor_pids[@]} -gt 0 ]; then STOP_GRACE=3 stop_tree "${anchor_pids[@]}"; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The token stream's upstream, and the anchors in front of it.
sse_port=$(free_port)
taskset -c "$SERVER_CPU" python3 benches/sse_upstream.py --port "$sse_port" --max-seconds 3600 \
  >"$work/sse.log" 2>&1 &
anchor_pids+=($!)
wait_tcp 127.0.0.1 "$sse_port" 100 "$!" || { cat "$work/sse.log" >&2; exit 1; }
nginx_port=$(free_port)
haproxy_port=$(free_port)
if [[ " $ROWS " == *"nginx "* ]]; then
  mkdir -p "$work/nginx"
  nginx_conf "$work/nginx" off "    upstream sse { server 127.0.0.1:$sse_port; keepalive 16; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
    }" >"$work/nginx/nginx.conf"
  mapfile -t cmd < <(nginx_cmd "$work/nginx")
  taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/nginx.log" 2>&1 &
  anchor_pids+=($!)
  wait_tcp 127.0.0.1 "$nginx_port" 100 "$!" || { cat "$work/nginx.log" "$work/nginx/error.log" >&2; exit 1; }
fi
if [[ " $ROWS " == *"haproxy "* ]]; then
  {
    haproxy_head "http-reuse always"
    cat <<CFG
frontend stream
    bind 127.0.0.1:$haproxy_port
    default_backend sse

backend sse
    server upstream 127.0.0.1:$sse_port
CFG
  } >"$work/haproxy.cfg"
  taskset -c "$SERVER_CPU" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  anchor_pids+=($!)
  wait_tcp 127.0.0.1 "$haproxy_port" 100 "$!" || { cat "$work/haproxy.log" >&2; exit 1; }
fi

port=$(free_port)
root=$(pwd)
cat >"$work/stream.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
access_log = ${ACCESS_LOG:-false}

[[endpoint]]
path = "/exec"
mode = "jellyfish"
workers = 1
[endpoint.exec]
command = ["sh", "-c", "date +%s%N; echo end"]
stream = true

[[endpoint]]
path = "/worker"
mode = "jellyfish"
workers = 1
[endpoint.worker]
command = ["python3", "-m", "fiddler_worker", "$root/benches/stream_app.py"]
env = { PYTHONPATH = "$root/python" }

[[endpoint]]
path = "/upstream"
mode = "jellyfish"
workers = 4
[endpoint.upstream]
url = "http://127.0.0.1:$sse_port"

[[endpoint]]
path = "/tokens"
mode = "jellyfish"
workers = 4
[endpoint.upstream]
url = "http://127.0.0.1:$sse_port"

[[endpoint]]
path = "/whole"
mode = "jellyfish"
workers = 4
[endpoint.upstream]
url = "http://127.0.0.1:$sse_port"
TOML

taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$work/stream.toml" 2>"$work/server.log" &
server_pid=$!
wait_tcp 127.0.0.1 "$port" 100 "$server_pid" || { cat "$work/server.log" >&2; exit 1; }
# The worker accepts once it has started: wait for its first answer.
for _ in $(seq 1 100); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' \
    "http://127.0.0.1:$port/worker" 2>/dev/null; then break; fi
  sleep 0.1
done

table="$RESULTS/stream.md"
{
  echo "Time to first byte of a streamed response after its producer wrote its first chunk (${FC_BIN:-$PROFILE build, $(git rev-parse --short HEAD 2>/dev/null || echo unknown)}; fiddler_crab's access log ${ACCESS_LOG:-false})."
  machine_line
  echo
  echo "| producer | requests | p50 (us) | p99 (us) | max (us) |"
  echo "|---|---|---|---|---|"
} >"$table"
for row in $ROWS; do
  case $row in
    exec) target=("$port" /exec "exec, stream = true") ;;
    worker) target=("$port" /worker "warm worker, generator") ;;
    direct) target=("$sse_port" /v1 "token stream, no proxy (the floor)") ;;
    upstream) target=("$port" /upstream "token stream through fiddler_crab (upstream endpoint)") ;;
    nginx) target=("$nginx_port" /v1 "token stream through nginx (proxy_buffering off)") ;;
    haproxy) target=("$haproxy_port" /v1 "token stream through HAProxy") ;;
    whole-direct) target=("$sse_port" /whole "whole answer, no proxy (the floor)") ;;
    whole-upstream) target=("$port" /whole "whole answer through fiddler_crab (upstream endpoint)") ;;
    whole-nginx) target=("$nginx_port" /whole "whole answer through nginx") ;;
    whole-haproxy) target=("$haproxy_port" /whole "whole answer through HAProxy") ;;
    tokens-direct) target=("$sse_port" /tokens "every token, no proxy (the floor)") ;;
    tokens-upstream) target=("$port" /tokens "every token through fiddler_crab (upstream endpoint)") ;;
    tokens-nginx) target=("$nginx_port" /tokens "every token through nginx") ;;
    tokens-haproxy) target=("$haproxy_port" /tokens "every token through HAProxy") ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  wait_quiet
  case $row in
    tokens-*) taskset -c "$CLIENT_CPU" python3 benches/ttfb.py 127.0.0.1 "${target[0]}" \
      "${target[1]}" "$TOKEN_REQUESTS" "${target[2]}" --every-token >>"$table" ;;
    *) taskset -c "$CLIENT_CPU" python3 benches/ttfb.py 127.0.0.1 "${target[0]}" "${target[1]}" \
      "$REQUESTS" "${target[2]}" >>"$table" ;;
  esac
done
cat "$table"
echo "saved in $table" >&2
