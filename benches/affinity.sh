#!/usr/bin/env bash
# What `affinity_header` saves behind several servers with a prompt cache each (docs/BENCHMARKS.md
# 21.4). Two benches/cache_upstream.py servers stand in for two llama-servers: SLOTS parallel
# slots each (`-np`), each keeping the CACHE conversations it served last; a turn of a
# conversation it holds costs HIT_MS, any other MISS_MS (its history read again). By default the
# conversations in play (CLIENTS, 8) fit in the two caches together (2 × 6) but not in one: where
# affinity matters, since without it every server sees every conversation. fiddler_crab
# fronts both with one upstream endpoint, `workers` = 2 × SLOTS (their slots together):
#   least      urls = [both]: each request to the server with the fewest in flight
#   affinity   the same with affinity_header = "x-session-id"
# and nginx (one worker, kept-alive connections to both) as the anchor:
#   nginx-least        least_conn
#   nginx-hash         hash $http_x_session_id consistent (ketama: by the value's hash, whatever
#                      the load; nginx bounds no server's requests in flight)
# benches/conversations.py then holds CONVERSATIONS conversations of TURNS turns, CLIENTS at a
# time, each turn naming its conversation in X-Session-Id. Printed per round and variant: cache
# hits (the figure that matters; the latencies follow from it), non-200 answers, p50/p99 and the
# wall time. Fresh servers per variant and round. Loopback only; every run ends by itself. Installs
# nginx-light (Debian) when missing, for the nginx variants (VARIANTS without them needs none).
#
#   bash benches/affinity.sh                     # 3 rounds, about a minute
#   ROUNDS=1 CONVERSATIONS=16 bash benches/affinity.sh
#
# Environment: ROUNDS (default 3), SLOTS (default 4), CACHE (default 6), HIT_MS / MISS_MS (default
# 2 / 20), CLIENTS
# (default 8: as many conversations at once as both servers' slots), CONVERSATIONS (default 64),
# TURNS (default 8), FC_BIN (default target/release/fiddler_crab), ACCESS_LOG (fiddler_crab's access
# log, default false; true is the shipped default, to its log file), VARIANTS (default "least affinity
# nginx-least nginx-hash").
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SLOTS=${SLOTS:-4}
CACHE=${CACHE:-6}
HIT_MS=${HIT_MS:-2}
MISS_MS=${MISS_MS:-20}
CLIENTS=${CLIENTS:-8}
CONVERSATIONS=${CONVERSATIONS:-64}
TURNS=${TURNS:-8}
FC_BIN=${FC_BIN:-target/release/fiddler_crab}
ACCESS_LOG=${ACCESS_LOG:-false}
VARIANTS=${VARIANTS:-least affinity nginx-least nginx-hash}
. "$(dirname "$0")/lib.sh"
if [[ " $VARIANTS " == *" nginx-"* ]]; then ensure_cmd nginx nginx-light nginx; fi
if [ "$FC_BIN" = target/release/fiddler_crab ]; then cargo build --release --bin fiddler_crab; fi
work=$(mktemp -d /tmp/fc-affinity.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

echo "# affinity_header behind two prompt-caching servers $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "commit $(git rev-parse --short HEAD); ACCESS_LOG=$ACCESS_LOG SLOTS=$SLOTS CACHE=$CACHE HIT_MS=$HIT_MS MISS_MS=$MISS_MS CLIENTS=$CLIENTS CONVERSATIONS=$CONVERSATIONS TURNS=$TURNS"
for round in $(seq 1 "$ROUNDS"); do
  for variant in $VARIANTS; do
    a=$(free_port)
    b=$(free_port)
    python3 benches/cache_upstream.py "$a" "$SLOTS" "$HIT_MS" "$MISS_MS" "$CACHE" &
    pids+=($!)
    python3 benches/cache_upstream.py "$b" "$SLOTS" "$HIT_MS" "$MISS_MS" "$CACHE" &
    pids+=($!)
    # Both listening before fiddler_crab's first health check, or one would start unhealthy and
    # the run begin on the other alone.
    wait_http "http://127.0.0.1:$a/health" 100
    wait_http "http://127.0.0.1:$b/health" 100
    port=$(free_port)
    case $variant in
      least | affinity)
        affinity=""
        if [ "$variant" = affinity ]; then affinity='affinity_header = "x-session-id"'; fi
        cat >"$work/fc.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
access_log = $ACCESS_LOG

[[endpoint]]
path = "/chat"
methods = ["POST"]
mode = "jellyfish"
workers = $((2 * SLOTS))
queue = 1024
overflow = "reject"
[endpoint.upstream]
urls = ["http://127.0.0.1:$a", "http://127.0.0.1:$b"]
health_path = "/health"
$affinity
EOF
        "$FC_BIN" --config "$work/fc.toml" >"$work/fc.log" 2>&1 &
        proxy=$!
        pids+=("$proxy")
        wait_http "http://127.0.0.1:$port/readyz" 100 "$proxy"
        if grep -q "unhealthy" "$work/fc.log"; then
          echo "a server started unhealthy: see $work/fc.log" >&2
          exit 1
        fi
        ;;
      nginx-least | nginx-hash)
        balance="least_conn;"
        if [ "$variant" = nginx-hash ]; then balance="hash \$http_x_session_id consistent;"; fi
        rm -rf "$work/nginx"
        mkdir -p "$work/nginx"
        nginx_conf "$work/nginx" off "    upstream pair { $balance server 127.0.0.1:$a; server 127.0.0.1:$b; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location = /chat { proxy_pass http://pair; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
        location = /health { proxy_pass http://pair; }
    }" >"$work/nginx/nginx.conf"
        nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
          -g "daemon off; master_process off; worker_processes 1;" &
        proxy=$!
        pids+=("$proxy")
        wait_http "http://127.0.0.1:$port/health" 100 "$proxy"
        ;;
      *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    result=$(python3 benches/conversations.py "http://127.0.0.1:$port/chat" "$CLIENTS" \
      "$CONVERSATIONS" "$TURNS")
    echo "round $round $variant: $result"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  done
done
