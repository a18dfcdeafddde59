#!/usr/bin/env bash
# GET /ping benchmark: fiddler_crab (release binary; /ping builtin in jellyfish mode, then the
# same endpoint in crab mode) against a bare hyper 1 server (examples/bare_hyper.rs), under a
# closed-loop wrk load. Server pinned to CPU 0, wrk to CPU 1. Per run: requests/s, p50/p99
# latency (wrk --latency), and server CPU microseconds per request: the utime + stime delta of
# /proc/PID/stat over the wrk run divided by the requests wrk completed. The servers are run in
# turn, ROUNDS times, and each figure's median is reported; against bare, also the median of each
# round's ratio to that round's bare run, and the ratio of the mean CPU per request over the
# rounds with a bootstrap 95% interval (the figure to hold against a bar on a noisy machine). Loopback only; every run ends by
# itself. Needs wrk (Debian: apt-get install -y wrk).
#
#   bash benches/ping.sh                          # 3 rounds of 10 s per server (about 2 minutes)
#   ROUNDS=1 DURATION=3 bash benches/ping.sh      # a quick look
#
# Environment: ROUNDS (default 3), DURATION (s per wrk run, default 10), WARMUP (s, default 2),
# CONNECTIONS (default 32), THREADS (wrk threads, default 1), DELAY_MS (default 0; when set, each
# connection pauses that many ms after every response, so that every server gets about the same
# request rate rather than as many as it can take), SERVER_CPU / LOADGEN_CPU (default
# 0 / 1), SERVERS (default "bare jellyfish crab"; also "bare-plain": hyper's builder defaults, and
# "jellyfish-ref": the fiddler_crab binary REF_BIN, for before/after comparisons),
# OUT (result file), IDLE_MAX (% busy the machine may be before a run, default 15), IDLE_WAIT (s
# to wait for that at most, default 1800). Before each measurement the script waits until no other
# benchmark or build (bench_server, loadgen, flood.sh, adaptive.sh, wrk, cargo, rustc) runs and the
# machine is nearly idle, and repeats a run during which one started or during which other work
# took more than INTRUDERS_MAX % (default 3) of either CPU (the server's CPU less the server; wrk's
# CPU less wrk). See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
DELAY_MS=${DELAY_MS:-0}
THREADS=${THREADS:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVERS=${SERVERS:-"bare jellyfish crab"}
mkdir -p bench-results
OUT=${OUT:-bench-results/ping-$(date +%Y%m%d-%H%M%S).md}
OTHERS='bench_server|loadgen|flood\.sh|adaptive\.sh'
# Process names of load generators and builds.
OTHER_NAMES='wrk|cargo|rustc'

command -v wrk >/dev/null || { echo "wrk not found (Debian: apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --bin fiddler_crab --example bare_hyper
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src crates 2>/dev/null || echo ' with uncommitted changes in src/ or crates/')"
# Private copies: a rebuild by someone else during the run cannot swap the binaries.
work=$(mktemp -d /tmp/fc-ping.XXXXXX)
cp target/release/fiddler_crab target/release/examples/bare_hyper "$work/"
# REF_BIN: another fiddler_crab build (say, the previous commit's) to run as server
# "jellyfish-ref", so a change is measured against what it changes in the same run.
if [ -n "${REF_BIN:-}" ]; then cp "$REF_BIN" "$work/fiddler_crab-ref"; fi
CLK_TCK=$(getconf CLK_TCK)
# DELAY_MS > 0: each connection pauses that long after every response (wrk's Lua `delay()`), so
# every server gets about the same request rate instead of as many as it can take.
WRK_SCRIPT=()
if [ "$DELAY_MS" != 0 ]; then
  echo "function delay() return $DELAY_MS end" >"$work/delay.lua"
  WRK_SCRIPT=(-s "$work/delay.lua")
fi

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_server; rm -rf "$work"' EXIT

# others, host_busy, wait_quiet, free_port, fiddler_crab_config: shared with the other drivers.
. "$(dirname "$0")/lib.sh"

# start_server NAME: starts it on CPU $SERVER_CPU, sets server_pid and url.
start_server() {
  local port
  port=$(free_port)
  case $1 in
    bare) taskset -c "$SERVER_CPU" "$work/bare_hyper" --listen "127.0.0.1:$port" \
            --max-seconds 300 >"$work/server.log" 2>&1 & ;;
    bare-plain) taskset -c "$SERVER_CPU" "$work/bare_hyper" --plain --listen "127.0.0.1:$port" \
            --max-seconds 300 >"$work/server.log" 2>&1 & ;;
    jellyfish | crab)
      fiddler_crab_config "$1" "$port" >"$work/$1.toml"
      taskset -c "$SERVER_CPU" "$work/fiddler_crab" --config "$work/$1.toml" \
        >"$work/server.log" 2>&1 & ;;
    jellyfish-ref)
      fiddler_crab_config jellyfish "$port" >"$work/$1.toml"
      taskset -c "$SERVER_CPU" "$work/fiddler_crab-ref" --config "$work/$1.toml" \
        >"$work/server.log" 2>&1 & ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
  server_pid=$!
  url="http://127.0.0.1:$port/ping"
  local i
  for i in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$url" 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  echo "$1 did not start:" >&2
  cat "$work/server.log" >&2
  exit 1
}

cpu_busy_ticks() { # busy clock ticks of CPU $1 (/proc/stat)
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

cpu_ticks() { # utime + stime of a process, in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

to_us() { # wrk latency such as 812.00us, 1.23ms, 2.00s → microseconds
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /s$/) print n * 1000000; else print n }'
}

results="$work/results.tsv"
: >"$results"
# measure NAME ROUND: one warm-up and one measured wrk run against a fresh server.
measure() {
  local name=$1 round=$2 before after t0 t1 core0 core1 lg0 lg1 wrk_cpu wrk_out requests rps p50
  local p99 errors cpu_us intruders lg_intruders attempt=0
  while :; do
    attempt=$((attempt + 1))
    wait_quiet
    start_server "$name"
    taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "${WRK_SCRIPT[@]}" \
      "$url" >/dev/null
    before=$(cpu_ticks "$server_pid")
    core0=$(cpu_busy_ticks "$SERVER_CPU")
    lg0=$(cpu_busy_ticks "$LOADGEN_CPU")
    t0=$(date +%s.%N)
    wrk_out=$(taskset -c "$LOADGEN_CPU" /usr/bin/time -f 'WRK_CPU %U %S' \
      wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${WRK_SCRIPT[@]}" "$url" 2>&1)
    t1=$(date +%s.%N)
    lg1=$(cpu_busy_ticks "$LOADGEN_CPU")
    core1=$(cpu_busy_ticks "$SERVER_CPU")
    after=$(cpu_ticks "$server_pid")
    stop_server
    # Whatever else ran on the server's CPU and on wrk's CPU meanwhile, % of the wall time.
    intruders=$(awk -v c=$((core1 - core0 - after + before)) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
      'BEGIN { v = c / hz / (t1 - t0) * 100; printf "%.0f", v < 0 ? 0 : v }')
    wrk_cpu=$(awk '$1 == "WRK_CPU" {print $2 + $3}' <<<"$wrk_out")
    lg_intruders=$(awk -v c=$((lg1 - lg0)) -v w="$wrk_cpu" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
      'BEGIN { v = (c / hz - w) / (t1 - t0) * 100; printf "%.0f", v < 0 ? 0 : v }')
    if [ "$attempt" -ge 10 ]; then
      echo "$name round $round: still disturbed after $attempt attempts; keeping this one" >&2
      break
    elif [ -n "$(others)" ]; then
      echo "another benchmark or build started during $name round $round; repeating it" >&2
    elif [ "$intruders" -gt "${INTRUDERS_MAX:-3}" ] || [ "$lg_intruders" -gt "${INTRUDERS_MAX:-3}" ]; then
      echo "other work took ${intruders}% of CPU $SERVER_CPU and ${lg_intruders}% of CPU" \
        "$LOADGEN_CPU during $name round $round; repeating it" >&2
    else
      break
    fi
  done
  requests=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' <<<"$wrk_out")
  rps=$(sed -n 's/^Requests\/sec: *//p' <<<"$wrk_out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$wrk_out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$wrk_out")")
  errors=$(sed -n 's/^ *Non-2xx or 3xx responses: *//p' <<<"$wrk_out")
  errors=${errors:-0}
  cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  local busy
  # Of the wall time between the two CPU samples (wrk's start-up and exit included).
  busy=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
    'BEGIN { printf "%.0f", t / hz / (t1 - t0) * 100 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$requests" "$rps" "$p50" \
    "$p99" "$cpu_us" "$busy" "$errors" "$((intruders > lg_intruders ? intruders : lg_intruders))" \
    >>"$results"
  echo "$name round $round: $rps req/s, p50 ${p50} us, p99 ${p99} us, ${cpu_us} CPU-us/req," \
    "server CPU ${busy}% of one core, non-2xx $errors, others on CPU $SERVER_CPU / $LOADGEN_CPU: ${intruders}% / ${lg_intruders}%" >&2
}

for round in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do
    measure "$name" "$round"
  done
done

{
  echo "# GET /ping benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)."
  echo "Built from commit $COMMIT."
  if [ "$DELAY_MS" != 0 ]; then
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency with a ${DELAY_MS} ms pause after each response per connection (Lua delay()), after a ${WARMUP} s warm-up, keep-alive;"
  else
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency (after a ${WARMUP} s warm-up), keep-alive;"
  fi
  echo "server on CPU $SERVER_CPU, wrk on CPU $LOADGEN_CPU; a fresh server per run; $ROUNDS rounds, servers in turn."
  echo
  python3 - "$results" "$SERVERS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
names = sys.argv[2].split()
label = {
    "bare": "bare hyper (examples/bare_hyper.rs)",
    "bare-plain": "bare hyper, builder defaults (--plain)",
    "jellyfish": "fiddler_crab, /ping jellyfish",
    "jellyfish-ref": "fiddler_crab REF_BIN, /ping jellyfish",
    "crab": "fiddler_crab, /ping crab",
}
med = {}
for n in names:
    rs = [r for r in rows if r[0] == n]
    col = lambda i: statistics.median(float(r[i]) for r in rs)
    med[n] = dict(rps=col(3), p50=col(4), p99=col(5), cpu=col(6), busy=col(7),
                  errors=sum(int(r[8]) for r in rs), runs=[r[6] for r in rs],
                  intruders=max(int(r[9]) for r in rs))
base = med.get("bare")
# The machine's speed drifts (a shared VM): a round's runs are back to back, so the ratio of
# each round's run to the same round's bare run cancels most of the drift. Its median is the
# figure to hold against the bar; the ratio of the medians is shown too.
import random
def mean_ratio_ci(n):
    """Mean CPU per request over the rounds, divided by bare's over the same rounds, with a
    bootstrap 95% interval (rounds resampled 10,000 times, fixed seed)."""
    by_round = {r[1]: float(r[6]) for r in rows if r[0] == n}
    bare = {r[1]: float(r[6]) for r in rows if r[0] == "bare"}
    keys = [k for k in by_round if k in bare]
    if not keys:
        return None
    ratio = lambda ks: sum(by_round[k] for k in ks) / sum(bare[k] for k in ks)
    rng = random.Random(1)
    boot = sorted(ratio(rng.choices(keys, k=len(keys))) for _ in range(10000))
    return ratio(keys), boot[250], boot[9749]
def paired(n):
    by_round = {r[1]: float(r[6]) for r in rows if r[0] == n}
    bare = {r[1]: float(r[6]) for r in rows if r[0] == "bare"}
    ratios = [by_round[k] / bare[k] for k in by_round if k in bare and bare[k] > 0]
    return ratios
print("| server | req/s | p50 µs | p99 µs | server CPU µs/req | × bare CPU/req (ratio of medians) | × bare, median of per-round ratios (min–max) | × bare, ratio of means [95% bootstrap interval] | req/s ÷ bare | server CPU % of a core | other work on the two CPUs, max % | non-2xx | CPU µs/req per run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    m = med[n]
    ratio = f"{m['cpu'] / base['cpu']:.2f}×" if base else "–"
    pr = paired(n) if base else []
    per_round = f"**{statistics.median(pr):.2f}×** ({min(pr):.2f}–{max(pr):.2f})" if pr else "–"
    ci = mean_ratio_ci(n) if base else None
    mean_ratio = f"**{ci[0]:.3f}×** [{ci[1]:.3f}–{ci[2]:.3f}]" if ci else "–"
    rps_ratio = f"{m['rps'] / base['rps']:.2f}" if base else "–"
    print(f"| {label.get(n, n)} | {m['rps']:.0f} | {m['p50']:.0f} | {m['p99']:.0f} | {m['cpu']:.2f} | "
          f"{ratio} | {per_round} | {mean_ratio} | {rps_ratio} | {m['busy']:.0f} | {m['intruders']} | {m['errors']} | {' / '.join(m['runs'])} |")
EOF
} | tee "$OUT"
echo "saved to $OUT" >&2
