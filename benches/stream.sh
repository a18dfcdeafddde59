#!/usr/bin/env bash
# Time to first byte of a streamed response against its producer's first chunk: how long after a
# program (exec, `stream = true`) or a fiddler_worker generator wrote its first chunk the client
# has it. The producer's first chunk is the wall-clock time at which it was written (`date
# +%s%N`; `time.time_ns()` in benches/stream_app.py); benches/ttfb.py notes when the bytes
# completing that line arrive, one connection per request, sequentially, and prints p50 / p99 /
# max in microseconds. Program start-up and the request's way in are outside the span: it is the
# streaming path alone (stdout or worker socket → producer thread → bounded channel → hyper →
# client). Server pinned to CPU 0, client to CPU 1; loopback only; ends by itself.
#
#   bash benches/stream.sh
#   REQUESTS=50 PROFILE=dev IDLE_WAIT=0 bash benches/stream.sh     # a quick smoke run
#
# Environment: REQUESTS (per endpoint, default 1000), PROFILE (cargo profile of the server build,
# default release), SERVER_CPU / CLIENT_CPU (default 0 / 1), RESULTS (directory for the table),
# IDLE_MAX / IDLE_WAIT (the quiet-machine wait of benches/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-1000}
PROFILE=${PROFILE:-release}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-bench-results/stream-$STAMP}
OTHERS='bench_server|loadgen|flood\.sh|ping\.sh|workers\.sh|overflow\.sh|adaptive\.sh|/fc-(ping|workers|overflow|adaptive)\.'
OTHER_NAMES='wrk|cargo|rustc'
mkdir -p "$RESULTS"

# others, host_busy, wait_quiet, free_port, wait_tcp: shared with the other benchmark drivers.
. "$(dirname "$0")/lib.sh"

cargo build --profile "$PROFILE" --bin fiddler_crab
case "$PROFILE" in dev) out=debug ;; *) out=$PROFILE ;; esac
# A private copy: a rebuild by someone else during the run cannot swap the binary.
work=$(mktemp -d /tmp/fc-stream.XXXXXX)
cp "target/$out/fiddler_crab" "$work/"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
root=$(pwd)
cat >"$work/stream.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
access_log = false

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
  echo "Time to first byte of a streamed response after its producer wrote its first chunk ($PROFILE build, $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  machine_line
  echo
  echo "| producer | requests | p50 (us) | p99 (us) | max (us) |"
  echo "|---|---|---|---|---|"
} >"$table"
for endpoint in exec worker; do
  wait_quiet
  taskset -c "$CLIENT_CPU" python3 benches/ttfb.py 127.0.0.1 "$port" "/$endpoint" "$REQUESTS" \
    "$endpoint" >>"$table"
done
cat "$table"
echo "saved in $table" >&2
