#!/usr/bin/env bash
# Flood benchmark: a crab endpoint of capacity 10 rps (sleep100: 100 ms per job, queue 20,
# overflow "ignore") under open-loop load at 1x, 5x, 20x and 50x capacity, a fresh server per
# multiple, server pinned to CPU 0 and load generator to CPU 1. Loopback only; every run stops by
# itself. Prints two markdown tables and saves them under bench-results/.
#
#   bash benches/flood.sh                                # the full run (about 2.5 minutes)
#   DURATION=3 MULTIPLES="1 50" LEAVE=0 bash benches/flood.sh   # a quick look
#   HANDLER=worker bash benches/flood.sh                 # the same on a warm worker endpoint
#
# HANDLER=worker (issue "Warm workers"): the endpoint runs the job in one warm worker process
# instead of the builtin: [endpoint.worker] `python3 -m fiddler_worker benches/sleep100_worker.py`
# (sleeps 100 ms; PYTHONPATH=python), same mode, queue and timeouts, so the same bars hold: goodput
# at least 99% of the 10 req/s capacity, admitted p99 at most (queue + 1) x job. Each run waits for
# the worker to be ready (in /status) before the load starts. The server CPU column counts bench_server only
# (the worker is a child process); there is no job log, so the "started after the client left"
# audit is empty and the LEAVE runs are skipped unless LEAVE=1 is given.
#
# Environment: DURATION (s of sending per multiple, default 10), MULTIPLES (default "1 5 20 50"),
# HANDLER (builtin | worker, default builtin), LEAVE=0 to skip the two extra "clients leave early" runs, OVERFLOW=reject to answer 503 instead
# of closing, ACCESS_LOG=false to turn the server's access log off (it is on, as shipped),
# SERVER_CPU / LOADGEN_CPU (default 0 / 1), OUT (result file). See docs/BENCHMARKS.md for what
# each column means.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
MULTIPLES=${MULTIPLES:-"1 5 20 50"}
HANDLER=${HANDLER:-builtin}
case $HANDLER in
  builtin) LEAVE=${LEAVE:-1} ;;
  worker) LEAVE=${LEAVE:-0} ;;
  *) echo "HANDLER must be builtin or worker, not $HANDLER" >&2; exit 2 ;;
esac
OVERFLOW=${OVERFLOW:-ignore}
ACCESS_LOG=${ACCESS_LOG:-true}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
QUEUE=20
JOB_MS=100
CAPACITY_RPS=10
BAR_MS=$(((QUEUE + 1) * JOB_MS))
# At least (queue + 1) x job, so no admitted job times out in the queue in the normal case.
QUEUE_TIMEOUT_MS=5000
# Far above the worst admitted latency: a client never leaves early in the normal runs.
CLIENT_TIMEOUT_S=120
# The extra runs: clients leave after this long, before most admitted jobs' turn comes; then
# the same with the endpoint's queue timeout below that patience less one job.
LEAVE_TIMEOUT_S=1
LEAVE_QUEUE_TIMEOUT_MS=850
mkdir -p bench-results
OUT=${OUT:-bench-results/flood$([ "$HANDLER" = worker ] && echo -worker)-$(date +%Y%m%d-%H%M%S).md}

cargo build --release --example bench_server --example loadgen
BIN=target/release/examples
CLK_TCK=$(getconf CLK_TCK)

# handler_lines: what runs the job: the builtin, or one warm worker process doing the same.
handler_lines() {
  if [ "$HANDLER" = worker ]; then
    cat <<EOF
[endpoint.worker]
command = ["python3", "-m", "fiddler_worker", "$PWD/benches/sleep100_worker.py"]
env = { PYTHONPATH = "$PWD/python" }
EOF
  else
    echo 'builtin = "sleep100"'
  fi
}

# config QUEUE_TIMEOUT_MS: the benchmark endpoint's config.
config() {
  cat <<EOF
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 2000
access_log = $ACCESS_LOG

[[endpoint]]
path = "/sleep100"
methods = ["GET"]
mode = "crab"
queue = $QUEUE
overflow = "$OVERFLOW"
queue_timeout_ms = $1
pace_ms = 0
$(handler_lines)
EOF
}

# wait_ready ADDR: with HANDLER=worker, until /status shows the endpoint's worker ready, at most
# 30 s. (Not /readyz: it also says not ready on a red light, which a busy machine may show.)
wait_ready() {
  local i
  [ "$HANDLER" = worker ] || return 0
  for i in $(seq 1 300); do
    if python3 -c 'import json, sys, urllib.request
status = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
sys.exit(0 if status["endpoints"]["/sleep100"]["handler"]["ready"] >= 1 else 1)' \
      "http://$1/status" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "the endpoint did not become ready:" >&2
  cat "$server_log" >&2
  exit 1
}

server_pid=""
server_log=$(mktemp)
run_out=$(mktemp)
job_log=$(mktemp)
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_server; rm -f "$server_log" "$run_out" "$job_log"' EXIT
# Only the builtin writes a job log (the worker's jobs run in another process).
job_log_args=()
if [ "$HANDLER" = builtin ]; then job_log_args=(--job-log "$job_log"); fi

table1=()
table2=()

# run_one LABEL MULTIPLE CLIENT_TIMEOUT_S QUEUE_TIMEOUT_MS
run_one() {
  local label=$1 multiple=$2 client_timeout=$3 queue_timeout_ms=$4 addr="" i
  : >"$server_log"
  taskset -c "$SERVER_CPU" "$BIN/bench_server" --config-text "$(config "$queue_timeout_ms")" \
    --max-seconds 600 "${job_log_args[@]}" >"$server_log" 2>&1 &
  server_pid=$!
  for i in $(seq 1 100); do
    addr=$(sed -n 's/^bench_server listening on //p' "$server_log")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "bench_server did not start:" >&2
    cat "$server_log" >&2
    exit 1
  fi
  wait_ready "$addr"
  sleep 0.5 # let the server settle before the "before" sample
  echo "== $label: $((multiple * CAPACITY_RPS)) rps for ${DURATION} s against $addr (server pid $server_pid)" >&2
  taskset -c "$LOADGEN_CPU" "$BIN/loadgen" --addr "$addr" --path /sleep100 \
    --rate "$((multiple * CAPACITY_RPS))" --duration "$DURATION" --timeout "$client_timeout" \
    --server-pid "$server_pid" --clk-tck "$CLK_TCK" --capacity-rps "$CAPACITY_RPS" \
    --bar-ms "$BAR_MS" --label "$label" "${job_log_args[@]}" --rows >"$run_out"
  grep -v '^TABLE' "$run_out" >&2
  table1+=("$(sed -n 's/^TABLE1 //p' "$run_out")")
  table2+=("$(sed -n 's/^TABLE2 //p' "$run_out")")
  stop_server
}

for m in $MULTIPLES; do
  run_one "${m}×" "$m" "$CLIENT_TIMEOUT_S" "$QUEUE_TIMEOUT_MS"
done
if [ "$LEAVE" = 1 ]; then
  # Clients give up long before an admitted job's turn (about 2.1 s) comes.
  run_one "50×, clients leave at ${LEAVE_TIMEOUT_S} s" 50 "$LEAVE_TIMEOUT_S" "$QUEUE_TIMEOUT_MS"
  # The same clients, with the queue timeout set below their patience minus one job.
  run_one "50×, clients leave at ${LEAVE_TIMEOUT_S} s, queue_timeout_ms ${LEAVE_QUEUE_TIMEOUT_MS}" \
    50 "$LEAVE_TIMEOUT_S" "$LEAVE_QUEUE_TIMEOUT_MS"
fi

headers=$("$BIN/loadgen" --headers)
{
  echo "# Flood benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)."
  echo "Endpoint: crab, $([ "$HANDLER" = worker ] && echo "one warm worker (fiddler_worker, benches/sleep100_worker.py)" || echo "builtin sleep100") (${JOB_MS} ms), queue ${QUEUE}, overflow ${OVERFLOW}, queue_timeout_ms ${QUEUE_TIMEOUT_MS} (unless the row says otherwise);"
  echo "capacity ${CAPACITY_RPS} rps; ${DURATION} s of open-loop load per row; bar for admitted p99: ${BAR_MS} ms."
  echo "Server on CPU ${SERVER_CPU}, loadgen on CPU ${LOADGEN_CPU}; a fresh server per row; access log ${ACCESS_LOG} (to a file)."
  echo "Latency bars: p99 ÷ bar uses the nominal job time; the last column uses the job time the server measured."
  echo
  echo "$headers" | sed -n 's/^TABLE1 //p'
  printf '%s\n' "${table1[@]}"
  echo
  echo "$headers" | sed -n 's/^TABLE2 //p'
  printf '%s\n' "${table2[@]}"
} | tee "$OUT"
echo "saved to $OUT" >&2
