#!/usr/bin/env bash
# Proxy hop benchmark: GET /ping through a proxy to a bare hyper upstream (examples/bare_hyper.rs),
# fiddler_crab against nginx and HAProxy in the same run, under a closed-loop wrk load. Servers:
#   bare        the bare hyper upstream alone (no hop): the floor
#   fc          fiddler_crab, /ping an upstream endpoint (jellyfish, FC_WORKERS slots) → bare hyper,
#               kept-alive pool, access log off
#   fcN         the same with N slots (fc32: as many as wrk's default connections), beside fc
#   fcbuf, fcbufN
#               the same with [server] io_buffer_bytes = FC_IO_BUFFER (default 65536): larger
#               buffers per connection, so large bodies move in fewer system calls
#   fcstream, fcstreamN
#               fcbuf with [endpoint.upstream] stream_request_body = true: a request body goes up
#               as it arrives instead of being read whole first (with BODY=up:N)
#   fcref, fcrefN
#               the same with REF_BIN, another fiddler_crab binary (a build of another commit):
#               an A/B comparison in the same run
#   nginx       nginx (one worker) → bare hyper: proxy_pass to an upstream block with `keepalive`,
#               HTTP/1.1, access_log off
#   haproxy     HAProxy (1 thread) → bare hyper, `http-reuse always`, no log
#   haproxyN    the same with `maxconn N` on the server: at most N requests in flight to the
#               upstream, the rest waiting in HAProxy's queue, as fiddler_crab's N slots do
#   nginxfwd, haproxyfwd, haproxyNfwd
#               the same doing the rewrite fiddler_crab does: the client's `Host` passed on, and
#               `X-Forwarded-For` (the client's address appended) and `X-Forwarded-Proto` added
#               (nginx: proxy_set_header; HAProxy: option forwardfor, http-request set-header), so
#               the upstream parses the same request from each; with nginxfwd in SERVERS, every
#               server is held against it too
#   hyperproxy  examples/bare_hyper_proxy.rs → bare hyper: hyper's server and client and nothing
#               else (one upstream connection per client connection): the floor of a hyper proxy
#   hyperpool   the same through hyper-util's pooled legacy client (--legacy)
#   hyperplain  hyperproxy with hyper's server defaults (--plain: no header-read timer)
# Every server-side process (the proxy's processes and the upstream) pinned to CPU SERVER_CPU, wrk
# to CPU LOADGEN_CPU. Per run: requests/s, p50/p99 latency and server-side CPU microseconds per
# request (utime + stime of the proxy and the upstream over the run ÷ requests wrk completed; the
# hop's own cost is that less bare's). Servers run in turn, ROUNDS times; medians, and each held
# against bare and against nginx (the bar: fiddler_crab's hop at most nginx's). Loopback only; every
# run ends by itself. Installs wrk, nginx-light and haproxy (Debian) when missing.
#
#   bash benches/proxy.sh                           # 3 rounds of 10 s per server (about 3 minutes)
#   ROUNDS=1 DURATION=3 WARMUP=1 bash benches/proxy.sh   # a quick look
#   BODY=up:262144 CONNECTIONS=8 SERVERS="fc nginx haproxy hyperproxy" bash benches/proxy.sh
#
# Large bodies (BODY): up:N, every request a POST of N bytes, read whole by the upstream
# (bare_hyper --read-body) before its pong; down:N, every answer N bytes (bare_hyper
# --answer-bytes N). fiddler_crab's endpoint then takes POST too, with max_body_bytes N (it reads a
# request body whole before forwarding it, and streams an answer larger than 64 KiB); nginx keeps
# a request body in memory (client_body_buffer_size N, as fiddler_crab does) and an answer in
# memory too (eight 64 KiB proxy_buffers, no temporary file); HAProxy and the hyper proxy stream
# both ways as they do by default.
#
# An HTTPS upstream (UPSTREAM_TLS=true): bare hyper serves TLS (rustls, the test certificate
# crates/frontend/src/tls/fixtures/a.pem for localhost), and every proxy reaches it over TLS on
# kept-alive connections with the certificate verified against the test root ca.pem and the name
# localhost: fiddler_crab's `https://` URL with tls_ca_file and tls_server_name, nginx's
# proxy_pass https:// with proxy_ssl_verify (session reuse on, its default), HAProxy's `ssl verify
# required` server. The hyper proxy has no TLS client and is refused.
#
# Environment: ROUNDS (default 3), DURATION (s per wrk run, default 10), WARMUP (s, default 2),
# CONNECTIONS (default 32), THREADS (wrk threads, default 1), FC_WORKERS (fiddler_crab's slots,
# that is connections to the upstream, default 8), SERVER_CPU / LOADGEN_CPU (default 0 / 1),
# ACCESS_LOG (fiddler_crab's access log, default false; true is the shipped default, to the
# server's log file), NGINX_LOG (nginx's access log, its default combined format to a file: on or
# off, default on when ACCESS_LOG is true, so both run as shipped; HAProxy logs nothing either way),
# SERVERS (default "bare fc nginx nginxfwd haproxy"), UPSTREAM_TLS (above, default false), REF_BIN (for fcref), FC_IO_BUFFER (for fcbuf and fcstream), BODY (above), OUT (result file), and the quiet-machine settings of
# benches/ping.sh (IDLE_MAX, IDLE_WAIT, INTRUDERS_MAX, MAX_ATTEMPTS). See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
FC_WORKERS=${FC_WORKERS:-8}
ACCESS_LOG=${ACCESS_LOG:-false}   # true: fiddler_crab as shipped (access log on, to the server log)
NGINX_LOG=${NGINX_LOG:-$([ "$ACCESS_LOG" = true ] && echo on || echo off)}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVERS=${SERVERS:-"bare fc nginx nginxfwd haproxy"}
BODY=${BODY:-}
UPSTREAM_TLS=${UPSTREAM_TLS:-false}
if [ "$UPSTREAM_TLS" = true ] && [[ " $SERVERS " == *" hyper"* ]]; then
  echo "UPSTREAM_TLS=true: the hyper proxy has no TLS client; leave hyperproxy, hyperpool and hyperplain out" >&2
  exit 2
fi
BODY_WAY="" BODY_BYTES=0
if [ -n "$BODY" ]; then
  BODY_WAY=${BODY%%:*}
  BODY_BYTES=${BODY#*:}
  if [[ ! $BODY_WAY =~ ^(up|down)$ || ! $BODY_BYTES =~ ^[1-9][0-9]*$ ]]; then
    echo "BODY is up:BYTES or down:BYTES, not $BODY" >&2
    exit 2
  fi
fi
mkdir -p bench-results
OUT=${OUT:-bench-results/proxy-$(date +%Y%m%d-%H%M%S).md}
# Other benchmarks' processes (their servers run from /tmp/fc-NAME.* directories).
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh|ping\.sh|workers\.sh|overflow\.sh|/fc-(ping|workers|overflow)\.'
OTHER_NAMES='wrk|cargo|rustc'

# others, wait_quiet, free_port, ensure_cmd, tree_ticks, nginx_conf, wrk_measure, ...
. "$(dirname "$0")/lib.sh"

ensure_cmd wrk wrk
if [[ " $SERVERS " == *" nginx"* ]]; then ensure_cmd nginx nginx-light nginx; fi
if [[ " $SERVERS " == *" haproxy"* ]]; then ensure_cmd haproxy haproxy; fi
cargo build --release --bin fiddler_crab --example bare_hyper --example bare_hyper_proxy
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' with uncommitted changes in src/ or crates/')"
# Private copies: a rebuild by someone else during the run cannot swap the binaries.
work=$(mktemp -d /tmp/fc-proxy.XXXXXX)
chmod 755 "$work"
cp target/release/fiddler_crab target/release/examples/bare_hyper target/release/examples/bare_hyper_proxy "$work/"
if [[ " $SERVERS " == *" fcref"* ]]; then
  cp "${REF_BIN:?fcref needs REF_BIN, another fiddler_crab binary}" "$work/fiddler_crab-ref"
fi
CLK_TCK=$(getconf CLK_TCK)
WRK_ARGS=()
UPSTREAM_ARGS=()
FC_METHODS=""
NGINX_BODY=""
case $BODY_WAY in
  up)
    # Made once; wrk sends the same body with every request.
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", %d)\nwrk.headers["Content-Type"] = "application/octet-stream"\n' \
      "$BODY_BYTES" >"$work/post.lua"
    WRK_ARGS=(-s "$work/post.lua")
    UPSTREAM_ARGS=(--read-body)
    FC_METHODS="methods = [\"GET\", \"HEAD\", \"POST\"]
max_body_bytes = $BODY_BYTES"
    NGINX_BODY="
            client_max_body_size $BODY_BYTES;
            client_body_buffer_size $BODY_BYTES;"
    ;;
  down)
    UPSTREAM_ARGS=(--answer-bytes "$BODY_BYTES")
    # Buffered in memory (512 KiB of buffers per request, no temporary file): nginx's best; with
    # proxy_buffering off it relays through one 4–8 KiB buffer and costs several times more.
    NGINX_BODY="
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;"
    ;;
esac
UPSTREAM_SCHEME=http
if [ "$UPSTREAM_TLS" = true ]; then
  UPSTREAM_SCHEME=https
  cp crates/frontend/src/tls/fixtures/{a.pem,a.key,ca.pem} "$work/"
  UPSTREAM_ARGS+=(--tls-cert "$work/a.pem" --tls-key "$work/a.key")
fi
trap 'stop_server; rm -rf "$work"' EXIT

# start_upstream: the bare hyper upstream on CPU $SERVER_CPU; sets upstream_pid and upstream_port.
start_upstream() {
  upstream_port=$(free_port)
  taskset -c "$SERVER_CPU" "$work/bare_hyper" --listen "127.0.0.1:$upstream_port" \
    --max-seconds 600 ${UPSTREAM_ARGS[@]+"${UPSTREAM_ARGS[@]}"} >"$work/upstream.log" 2>&1 &
  upstream_pid=$!
  if wait_http "$UPSTREAM_SCHEME://127.0.0.1:$upstream_port/ping" 100 "$upstream_pid"; then return 0; fi
  echo "the bare hyper upstream did not start:" >&2
  cat "$work/upstream.log" >&2
  return 1
}

# start_server NAME: the upstream, then the proxy in front of it (none for bare), both on CPU
# $SERVER_CPU; sets server_pids (both) and url.
start_server() {
  local name=$1 port dir cmd slots
  start_upstream || return 1
  server_pids=("$upstream_pid")
  if [ "$name" = bare ]; then
    url="$UPSTREAM_SCHEME://127.0.0.1:$upstream_port/ping"
    return 0
  fi
  port=$(free_port)
  rm -f "$work/server.log"
  case $name in
    fc | fc[0-9]* | fcref | fcref[0-9]* | fcbuf | fcbuf[0-9]* | fcstream | fcstream[0-9]*)
      local bin=$work/fiddler_crab
      slots=${name#fc}
      if [[ $slots == ref* ]]; then
        bin=$work/fiddler_crab-ref
        slots=${slots#ref}
      fi
      slots=${slots#buf}
      slots=${slots#stream}
      slots=${slots:-$FC_WORKERS}
      fc_proxy_config "$port" "$upstream_port" "$slots" "$ACCESS_LOG" "$FC_METHODS" >"$work/fc.toml"
      if [[ $name == fcbuf* || $name == fcstream* ]]; then
        sed -i "s/^access_log = .*/&\nio_buffer_bytes = ${FC_IO_BUFFER:-65536}/" "$work/fc.toml"
      fi
      if [[ $name == fcstream* ]]; then
        echo "stream_request_body = true" >>"$work/fc.toml"
      fi
      if [ "$UPSTREAM_TLS" = true ]; then
        sed -i "s|^url = \"http://|url = \"https://|" "$work/fc.toml"
        printf 'tls_ca_file = "%s"\ntls_server_name = "localhost"\n' "$work/ca.pem" >>"$work/fc.toml"
      fi
      taskset -c "$SERVER_CPU" "$bin" --config "$work/fc.toml" \
        >"$work/server.log" 2>&1 &
      ;;
    nginx | nginxfwd)
      dir=$work/nginx
      rm -rf "$dir"
      mkdir -p "$dir"
      local forward=""
      if [ "$name" = nginxfwd ]; then
        forward="
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;"
      fi
      local tls=""
      if [ "$UPSTREAM_TLS" = true ]; then
        tls="
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_trusted_certificate $work/ca.pem;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;"
      fi
      nginx_conf "$dir" "$NGINX_LOG" "    upstream bare { server 127.0.0.1:$upstream_port; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location = /ping {
            proxy_pass $UPSTREAM_SCHEME://bare;$tls
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";$forward$NGINX_BODY
        }
    }" >"$dir/nginx.conf"
      mapfile -t cmd < <(nginx_cmd "$dir")
      taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/server.log" 2>&1 &
      ;;
    haproxy | haproxy[0-9]* | haproxyfwd)
      local maxconn="" forward="" conns=${name#haproxy}
      if [[ $conns == *fwd ]]; then
        conns=${conns%fwd}
        forward="
    option forwardfor
    http-request set-header X-Forwarded-Proto http"
      fi
      if [ -n "$conns" ]; then maxconn=" maxconn $conns"; fi
      if [ "$UPSTREAM_TLS" = true ]; then
        maxconn="$maxconn ssl verify required ca-file $work/ca.pem sni str(localhost) verifyhost localhost alpn http/1.1"
      fi
      {
        haproxy_head "timeout http-request 10s" "http-reuse always"
        cat <<EOF
frontend hop
    bind 127.0.0.1:$port$forward
    default_backend bare

backend bare
    server upstream 127.0.0.1:$upstream_port$maxconn
EOF
      } >"$work/haproxy.cfg"
      taskset -c "$SERVER_CPU" haproxy -db -f "$work/haproxy.cfg" >"$work/server.log" 2>&1 &
      ;;
    hyperproxy | hyperpool | hyperplain)
      taskset -c "$SERVER_CPU" "$work/bare_hyper_proxy" --listen "127.0.0.1:$port" \
        --upstream "127.0.0.1:$upstream_port" --max-seconds 600 \
        $(case $name in hyperpool) echo --legacy ;; hyperplain) echo --plain ;; esac) \
        >"$work/server.log" 2>&1 &
      ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  server_pids+=($!)
  url="http://127.0.0.1:$port/ping"
  if wait_http "$url" 100 "${server_pids[1]}"; then return 0; fi
  echo "$name did not start:" >&2
  cat "$work/server.log" "$work/nginx/error.log" 2>/dev/null >&2 || true
  return 1
}

FC_LABELS=()
for name in $SERVERS; do
  case $name in
    fcbuf) FC_LABELS+=(--label "$name=fiddler_crab upstream endpoint ($FC_WORKERS slots), io_buffer_bytes ${FC_IO_BUFFER:-65536} → bare hyper") ;;
    fcbuf[0-9]*) FC_LABELS+=(--label "$name=fiddler_crab upstream endpoint (${name#fcbuf} slots), io_buffer_bytes ${FC_IO_BUFFER:-65536} → bare hyper") ;;
    fcstream) FC_LABELS+=(--label "$name=fiddler_crab upstream endpoint ($FC_WORKERS slots), io_buffer_bytes ${FC_IO_BUFFER:-65536}, stream_request_body → bare hyper") ;;
    fcstream[0-9]*) FC_LABELS+=(--label "$name=fiddler_crab upstream endpoint (${name#fcstream} slots), io_buffer_bytes ${FC_IO_BUFFER:-65536}, stream_request_body → bare hyper") ;;
    fcref) FC_LABELS+=(--label "$name=REF_BIN's fiddler_crab upstream endpoint ($FC_WORKERS slots) → bare hyper") ;;
    fcref[0-9]*) FC_LABELS+=(--label "$name=REF_BIN's fiddler_crab upstream endpoint (${name#fcref} slots) → bare hyper") ;;
    fc[0-9]*) FC_LABELS+=(--label "$name=fiddler_crab upstream endpoint (${name#fc} slots) → bare hyper") ;;
    haproxy[0-9]*fwd) FC_LABELS+=(--label "$name=HAProxy, http-reuse always, maxconn $(n=${name#haproxy}; echo "${n%fwd}"), forwarding headers → bare hyper") ;;
    haproxy[0-9]*) FC_LABELS+=(--label "$name=HAProxy, http-reuse always, maxconn ${name#haproxy} → bare hyper") ;;
  esac
done
# Held against nginx doing the same rewrite too, when it ran.
if [[ " $SERVERS " == *" nginxfwd "* ]]; then
  FC_LABELS+=(--compare 'nginx doing the same rewrite:*=nginxfwd')
fi

new_results "$work/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do
    wrk_measure "$name" "$round" "$work/results.tsv"
  done
done

{
  case $BODY_WAY in
    up) what="POST /ping with $BODY_BYTES bytes → bare hyper, which reads them all" ;;
    down) what="GET /ping → bare hyper, answered with $BODY_BYTES bytes" ;;
    *) what="GET /ping → bare hyper" ;;
  esac
  if [ "$UPSTREAM_TLS" = true ]; then what="$what, the upstream in TLS"; fi
  echo "# Proxy hop benchmark ($what) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  machine_line
  echo "Built from commit $COMMIT.$(command -v nginx >/dev/null && echo " $(nginx -v 2>&1 | sed 's/.*: //').")$(command -v haproxy >/dev/null && echo " $(haproxy -v | head -1 | cut -d' ' -f1-3).")"
  echo "Every server-side process (proxy and upstream) on CPU $SERVER_CPU, wrk on CPU $LOADGEN_CPU; a fresh proxy and upstream per run; $ROUNDS rounds, servers in turn, medians."
  echo "Server CPU per request: utime + stime of the proxy's processes and the bare hyper upstream over the run ÷ requests wrk completed; the hop's cost is that less bare's."
  echo
  echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, after a ${WARMUP} s warm-up; fiddler_crab (fc) with $FC_WORKERS slots, access log $([ "$ACCESS_LOG" = true ] && echo "on (the shipped default)" || echo off); nginx's access log $NGINX_LOG; HAProxy logs nothing."
  echo
  python3 benches/report.py wrk "$work/results.tsv" --servers "$SERVERS" \
    --compare 'bare:*=bare' \
    --compare 'nginx:*=nginx' \
    --label 'bare=bare hyper alone (no hop)' \
    --label "fc=fiddler_crab upstream endpoint ($FC_WORKERS slots) → bare hyper" \
    "${FC_LABELS[@]}" \
    --label 'nginx=nginx proxy_pass, keepalive → bare hyper' \
    --label 'haproxy=HAProxy, http-reuse always → bare hyper' \
    --label 'nginxfwd=nginx as nginx, forwarding headers (Host, X-Forwarded-For, X-Forwarded-Proto) → bare hyper' \
    --label 'haproxyfwd=HAProxy as haproxy, forwarding headers (option forwardfor, X-Forwarded-Proto) → bare hyper' \
    --label 'hyperproxy=bare hyper proxy (hyper server + client, nothing else) → bare hyper' \
    --label 'hyperpool=bare hyper proxy, hyper-util pooled client → bare hyper' \
    --label 'hyperplain=bare hyper proxy, server defaults (no header timer) → bare hyper'
} | tee "$OUT"
echo "saved to $OUT" >&2
