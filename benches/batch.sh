#!/usr/bin/env bash
# Dynamic batching benchmark (issue "Dynamic batching"): the scikit-learn iris example
# (examples/iris/app.py, a vectorised handle_batch) behind fiddler_crab under overload, at
# max_batch 1 (no batching), 8 and 32:
#   batch1   one crab endpoint POST /predict, one worker process, max_batch = 1
#   batch8   the same with max_batch = 8 and max_batch_wait_ms = $BATCH_WAIT_MS
#   batch32  the same with max_batch = 32 and max_batch_wait_ms = $BATCH_WAIT_MS
# Overload: wrk keeps $CONNECTIONS requests in flight (default 64) against one worker, so the queue
# never runs dry and batches fill; the queue holds 1024 and overflows with 503 (counted as non-2xx).
# Each request classifies one flower ({"features": [4 numbers]}). Per run: requests/s, p50/p99,
# server CPU per request (fiddler_crab and its worker: utime + stime ÷ requests), non-2xx; a fresh
# server per run, settings in turn, ROUNDS times, medians, and per-round ratios to max_batch 1.
# Every server-side process on CPU $SERVER_CPU, wrk on CPU $LOADGEN_CPU.
#
# Loopback only; every run ends by itself. Installs wrk (Debian) when missing, and scikit-learn
# into the repository's .venv (gitignored) through scripts/venv.sh.
#
#   bash benches/batch.sh                          # 3 rounds × 10 s per setting (about 2 minutes)
#   ROUNDS=1 DURATION=2 WARMUP=0 IDLE_MAX=100 IDLE_WAIT=0 INTRUDERS_MAX=100 MAX_ATTEMPTS=1 \
#     bash benches/batch.sh                        # a smoke run (numbers meaningless)
#
# Environment: ROUNDS (default 3), DURATION (s, default 10), WARMUP (s, default 2; 0 for none),
# CONNECTIONS (default 64), THREADS (default 1), SETTINGS (default "batch1 batch8 batch32"; any
# batchN with N in 1..1024), BATCH_WAIT_MS (default 2), FIDDLER_CRAB (a binary to use instead of
# building the release one; for smoke runs only), SERVER_CPU / LOADGEN_CPU (default 0 / 1), OUT,
# IDLE_MAX, IDLE_WAIT, INTRUDERS_MAX, MAX_ATTEMPTS (as in benches/ping.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
SETTINGS=${SETTINGS:-"batch1 batch8 batch32"}
BATCH_WAIT_MS=${BATCH_WAIT_MS:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
mkdir -p bench-results
OUT=${OUT:-bench-results/batch-$(date +%Y%m%d-%H%M%S).md}
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh|ping\.sh|overflow\.sh|workers\.sh|/fc-(ping|workers|overflow)\.'
OTHER_NAMES='wrk|cargo|rustc'

. "$(dirname "$0")/lib.sh"

ensure_cmd wrk wrk
bash scripts/venv.sh >&2
PYTHON=$PWD/.venv/bin/python3
"$PYTHON" -c 'import sklearn' || { echo "scikit-learn is missing from .venv" >&2; exit 1; }
if [ -z "${FIDDLER_CRAB:-}" ]; then
  cargo build --release --bin fiddler_crab
  FIDDLER_CRAB=target/release/fiddler_crab
fi
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates python examples/iris 2>/dev/null || echo ' with uncommitted changes')"
work=$(mktemp -d /tmp/fc-batch.XXXXXX)
cp "$FIDDLER_CRAB" "$work/fiddler_crab"
CLK_TCK=$(getconf CLK_TCK)
trap 'stop_server; rm -rf "$work"' EXIT
cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"features": [5.1, 3.5, 1.4, 0.2]}'
wrk.headers["Content-Type"] = "application/json"
EOF
WRK_ARGS=(-s "$work/post.lua")

# batch_config N PORT: the iris endpoint with max_batch N on 127.0.0.1:PORT.
batch_config() {
  local batching=""
  if [ "$1" -gt 1 ]; then
    batching="max_batch = $1
max_batch_wait_ms = $BATCH_WAIT_MS"
  fi
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
access_log = false

[[endpoint]]
path = "/predict"
methods = ["POST"]
mode = "crab"
queue = 1024
overflow = "reject"
expected_wait_admission = false
$batching

[endpoint.worker]
command = ["$PYTHON", "-m", "fiddler_worker", "examples/iris/app.py"]
env = { PYTHONPATH = "python", OMP_NUM_THREADS = "1", OPENBLAS_NUM_THREADS = "1" }
ready_timeout_ms = 120000
EOF
}

# start_server NAME: starts it on CPU $SERVER_CPU; sets server_pids, url, addr. Returns 1 (having
# said why) if it did not start.
start_server() {
  local name=$1 port n
  n=${name#batch}
  case $n in '' | *[!0-9]*) echo "unknown setting $name (batchN)" >&2; exit 2 ;; esac
  port=$(free_port)
  addr=127.0.0.1:$port
  url="http://$addr/predict"
  batch_config "$n" "$port" >"$work/batch.toml"
  taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$work/batch.toml" >"$work/server.log" 2>&1 &
  server_pids=($!)
  # The model trains in setup(); wait until a prediction answers.
  local i
  for i in $(seq 1 600); do
    if curl -fs -o /dev/null -H 'Content-Type: application/json' \
      -d '{"features": [5.1, 3.5, 1.4, 0.2]}' "$url" 2>/dev/null; then
      return 0
    fi
    kill -0 "${server_pids[0]}" 2>/dev/null || break
    sleep 0.2
  done
  echo "skipping $name: it did not answer $url:" >&2
  tail -20 "$work/server.log" | sed 's/^/    /' >&2 || true
  return 1
}

labels=()
for s in $SETTINGS; do
  if [ "${s#batch}" -gt 1 ]; then
    labels+=(--label "$s=max_batch ${s#batch}, wait $BATCH_WAIT_MS ms")
  else
    labels+=(--label "$s=max_batch ${s#batch}")
  fi
done

results=$work/results.tsv
new_results "$results"
active=$SETTINGS
for round in $(seq 1 "$ROUNDS"); do
  for name in $active; do
    if ! wrk_measure "$name" "$round" "$results"; then
      active=$(tr ' ' '\n' <<<"$active" | grep -vx "$name" | tr '\n' ' ')
    fi
  done
done

{
  echo "# Dynamic batching benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  machine_line
  echo "Built from commit $COMMIT. $("$PYTHON" -c 'import sklearn, numpy; print("scikit-learn", sklearn.__version__ + ", numpy", numpy.__version__)'); $(python3 --version)."
  echo "examples/iris/app.py (logistic regression, one flower per request), one worker process in crab mode; every server-side process on CPU $SERVER_CPU, wrk on CPU $LOADGEN_CPU."
  echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (POST, one flower) after a ${WARMUP} s warm-up; a fresh server per run; $ROUNDS rounds, settings in turn."
  echo "Server CPU per request: utime + stime of fiddler_crab and its worker over the run ÷ requests wrk completed."
  echo
  first=${SETTINGS%% *}
  python3 benches/report.py wrk "$results" --servers "$SETTINGS" \
    --compare "max_batch ${first#batch}:*=$first" "${labels[@]}"
} | tee "$OUT"
echo "saved to $OUT" >&2
