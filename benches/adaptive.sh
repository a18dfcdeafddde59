#!/usr/bin/env bash
# Adaptive mode under a CPU hog: an exec endpoint doing CPU-heavy work (sha256 of 20 MB of zeros,
# about 70 ms of one core) under an open-loop load at a fixed rate (examples/loadgen.rs), served in
# turn by fiddler_crab in adaptive mode (workers 2, yellow_workers 1), fixed crab, and fixed
# jellyfish (workers 2). Halfway through each run a CPU hog starts (two shell busy loops, one
# pinned to each CPU) for HOG_FOR seconds. GET /status is polled every 250 ms
# (benches/poll_status.py): the light, its inputs, the endpoint's concurrency, running jobs and
# queue depth. The traffic light runs in every mode (it only steers adaptive endpoints), so each
# run shows what it said. Then benches/plot.py prints the tables and draws docs/adaptive.svg.
# Server (and so its children) pinned to CPU 0, load generator and poller to CPU 1. Loopback
# only; every run ends by itself.
#
#   bash benches/adaptive.sh                          # three runs of about 55 s each
#   DURATION=12 HOG_AT=4 HOG_FOR=5 MODES=adaptive bash benches/adaptive.sh   # a quick look
#
# Environment: RATE (requests/s, default 8), DURATION (s of load, default 40), HOG_AT (s into the
# load, default 20), HOG_FOR (s, default 15), TAIL (s of polling after the load, default 10),
# JOB_BYTES (bytes hashed per job, default 20000000), MODES (default "adaptive crab jellyfish"),
# SERVER_CPU / LOADGEN_CPU (default 0 / 1), RESULTS (directory for the raw files), SVG (default
# docs/adaptive.svg), IDLE_MAX (% busy the machine may be before a run, default 15), IDLE_WAIT
# (s to wait for that at most, default 1800), OTHER_MAX (default 5). Before each run the script
# waits until no other benchmark or build (bench_server, loadgen, flood.sh, ping.sh, workers.sh,
# overflow.sh and their servers, wrk, cargo, rustc) runs and the machine is nearly idle; it
# repeats a run (five tries) if one ran meanwhile or
# if CPU time that none of the run's processes used (all CPUs' busy time less the server and its
# jobs, the hog, the load generator and the poller) exceeds OTHER_MAX % of one CPU. See
# docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-8}
DURATION=${DURATION:-40}
HOG_AT=${HOG_AT:-20}
HOG_FOR=${HOG_FOR:-15}
TAIL=${TAIL:-10}
JOB_BYTES=${JOB_BYTES:-20000000}
MODES=${MODES:-"adaptive crab jellyfish"}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-bench-results/adaptive-$STAMP}
SVG=${SVG:-docs/adaptive.svg}
OTHERS='bench_server|loadgen|flood\.sh|ping\.sh|workers\.sh|overflow\.sh|/fc-(ping|workers|overflow)\.'
# Process names of load generators and builds.
OTHER_NAMES='wrk|cargo|rustc'
if [ $((HOG_AT + HOG_FOR)) -gt "$DURATION" ]; then
  echo "HOG_AT + HOG_FOR must not exceed DURATION" >&2
  exit 2
fi
mkdir -p "$RESULTS"

cargo build --release --bin fiddler_crab --example loadgen
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' with uncommitted changes in src/ or crates/')"
# Private copies: a rebuild by someone else during the run cannot swap the binaries. The
# directory's name matches none of the patterns in OTHERS.
work=$(mktemp -d /tmp/fc-adaptive.XXXXXX)
cp target/release/fiddler_crab "$work/"
cp target/release/examples/loadgen "$work/lg"
CLK_TCK=$(getconf CLK_TCK)

server_pid=""
hogs=()
stop_all() {
  local p
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
  hogs=()
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_all; rm -rf "$work"' EXIT

# others, host_busy, wait_quiet, free_port: shared with the other benchmark drivers.
. "$(dirname "$0")/lib.sh"

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# utime + stime of a process and of its children it has waited for (the exec jobs), in ticks.
cpu_ticks_with_children() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
# Busy clock ticks of all CPUs (/proc/stat).
host_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# config MODE PORT
config() {
  local pool=""
  case $1 in
    adaptive) pool=$'workers = 2\nyellow_workers = 1' ;;
    jellyfish) pool='workers = 2' ;;
  esac
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
access_log = false

[[endpoint]]
path = "/hash"
methods = ["GET"]
mode = "$1"
$pool
queue = 100
overflow = "reject"
queue_timeout_ms = 20000

[endpoint.exec]
command = ["sh", "-c", "head -c $JOB_BYTES /dev/zero | sha256sum"]
timeout_ms = 20000
EOF
}

other_cpu_pct=0
run_mode() {
  local mode=$1 port status_url poller lg t0 hog_start hog_end hog_ticks=0 p i
  local host0 host1 server0 server1 wall0 wall1 lg_s poll_s
  wait_quiet
  port=$(free_port)
  config "$mode" "$port" >"$RESULTS/$mode.toml"
  taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$RESULTS/$mode.toml" \
    >"$RESULTS/$mode.server.log" 2>&1 &
  server_pid=$!
  status_url="http://127.0.0.1:$port/status"
  for i in $(seq 1 100); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$status_url" 2>/dev/null && break
    sleep 0.1
  done
  # Let the light take a few samples of the quiet machine.
  sleep 3
  echo "== $mode: $RATE rps of GET /hash for ${DURATION} s, hog from ${HOG_AT} s for ${HOG_FOR} s" >&2
  host0=$(host_ticks)
  server0=$(cpu_ticks_with_children "$server_pid")
  wall0=$(date +%s.%N)
  taskset -c "$LOADGEN_CPU" /usr/bin/time -o "$work/poll.time" -f '%U %S' python3 benches/poll_status.py --url "$status_url" --path /hash \
    --seconds $((DURATION + TAIL + 1)) --out "$RESULTS/$mode.poll.csv" &
  poller=$!
  sleep 1
  t0=$(date +%s.%N)
  taskset -c "$LOADGEN_CPU" /usr/bin/time -o "$work/lg.time" -f '%U %S' "$work/lg" --addr "127.0.0.1:$port" --path /hash --rate "$RATE" \
    --duration "$DURATION" --timeout 30 --drain-limit 30 --server-pid "$server_pid" \
    --clk-tck "$CLK_TCK" --capacity-rps "$RATE" --dump "$RESULTS/$mode.requests.csv" \
    >"$RESULTS/$mode.loadgen.txt" 2>&1 &
  lg=$!
  sleep "$HOG_AT"
  hog_start=$(date +%s.%N)
  for cpu in 0 1; do
    taskset -c "$cpu" sh -c 'while :; do :; done' &
    hogs+=($!)
  done
  sleep "$HOG_FOR"
  for p in "${hogs[@]}"; do hog_ticks=$((hog_ticks + $(cpu_ticks "$p"))); done
  for p in "${hogs[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  hogs=()
  hog_end=$(date +%s.%N)
  wait "$lg" || echo "loadgen failed; see $RESULTS/$mode.loadgen.txt" >&2
  wait "$poller" || true
  host1=$(host_ticks)
  server1=$(cpu_ticks_with_children "$server_pid")
  wall1=$(date +%s.%N)
  lg_s=$(awk '{print $1 + $2}' "$work/lg.time" 2>/dev/null || echo 0)
  poll_s=$(awk '{print $1 + $2}' "$work/poll.time" 2>/dev/null || echo 0)
  # CPU that none of this run's processes used (other work, and interrupts), % of one CPU.
  other_cpu_pct=$(awk -v h=$((host1 - host0)) -v s=$((server1 - server0)) -v g="$hog_ticks" \
    -v l="$lg_s" -v p="$poll_s" -v hz="$CLK_TCK" -v w0="$wall0" -v w1="$wall1" \
    'BEGIN { v = ((h - s - g) / hz - l - p) / (w1 - w0) * 100; printf "%.0f", v < 0 ? 0 : v }')
  echo "   other work during the run: ${other_cpu_pct}% of one CPU" >&2
  python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" \
    "$status_url" >"$RESULTS/$mode.status.json"
  stop_all
  cat >"$RESULTS/$mode.meta" <<EOF
mode=$mode
t0=$t0
hog_start=$hog_start
hog_end=$hog_end
hog_cpu_s=$(awk -v t="$hog_ticks" -v hz="$CLK_TCK" 'BEGIN { print t / hz }')
rate=$RATE
duration=$DURATION
hog_at=$HOG_AT
hog_for=$HOG_FOR
job_bytes=$JOB_BYTES
other_cpu_pct=$other_cpu_pct
EOF
  grep -v '^TABLE' "$RESULTS/$mode.loadgen.txt" | sed 's/^/  /' >&2 || true
}

for mode in $MODES; do
  for attempt in 1 2 3 4 5; do
    run_mode "$mode"
    # A build or benchmark that ran meanwhile spoils the run: do it again (five tries).
    if [ -n "$(others)" ]; then
      echo "another benchmark or build ran during the $mode run; repeating it" >&2
      others >&2
    elif [ "$other_cpu_pct" -gt "${OTHER_MAX:-5}" ]; then
      echo "other work took ${other_cpu_pct}% of a CPU during the $mode run; repeating it" >&2
    else
      break
    fi
  done
done

{
  echo "# Adaptive under a CPU hog $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)."
  echo "Built from commit $COMMIT."
  echo "GET /hash: sh -c 'head -c $JOB_BYTES /dev/zero | sha256sum'; $RATE rps open loop for ${DURATION} s;"
  echo "hog (2 busy loops, one per CPU) from ${HOG_AT} s to $((HOG_AT + HOG_FOR)) s; server on CPU $SERVER_CPU, loadgen and poller on CPU $LOADGEN_CPU."
  echo
  python3 benches/plot.py --results "$RESULTS" --modes "$MODES" --svg "$SVG"
} | tee "$RESULTS/summary.md"
echo "raw files in $RESULTS; figure in $SVG" >&2
