#!/usr/bin/env bash
# The HTTP/2 shut-window attack (issue 12 item 1) against the release binary: CONNS connections
# (default 40) × STREAMS streams (default 64) that set SETTINGS_INITIAL_WINDOW_SIZE = 0, never open
# it and answer PINGs, on a 1 MiB exec endpoint, held HOLD seconds (default 40: past the default
# 30 s send deadline), while a good client asks GET /ping every 100 ms. Prints the server's RSS
# before and at its peak (bar: growth ≤ 64 MiB), the streams answered 200 / 503 / neither, the
# attack connections the server closed, and the good client's answers (examples/h2_window.rs).
# Loopback only; ends by itself. EXTRA_SERVER: more [server] keys (e.g. "send_timeout_ms = 5000").
#
#   bash benches/h2_window.sh                 # about 45 s after the build
#   HOLD=3 CONNS=4 bash benches/h2_window.sh  # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-40}
STREAMS=${STREAMS:-64}
HOLD=${HOLD:-40}
EXTRA_SERVER=${EXTRA_SERVER:-}
PORT=${PORT:-18391}

cargo build --release --quiet --bin fiddler_crab --example h2_window
dir=$(mktemp -d /tmp/fc-h2window.XXXXXX)
cat > "$dir/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
access_log = false
$EXTRA_SERVER

[[endpoint]]
path = "/big"
methods = ["GET"]
queue = 4096
[endpoint.exec]
command = ["head", "-c", "1048576", "/dev/zero"]

[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"
TOML
target/release/fiddler_crab --config "$dir/config.toml" > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/ping" > /dev/null && break
  sleep 0.1
done
target/release/examples/h2_window --addr "127.0.0.1:$PORT" --conns "$CONNS" --streams "$STREAMS" \
  --hold "$HOLD" --server-pid "$server"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^fiddler_crab_(unsent|requests_unsent)' || true
