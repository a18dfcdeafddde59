#!/usr/bin/env bash
# A long job beside short ones in jellyfish mode (docs/BENCHMARKS.md 21.5): an exec endpoint with
# `workers = 4` runs a program that sleeps as long as its query says. One request asks for LONG
# seconds; while it runs, SHORT requests of SHORT_MS each follow, one after another. Printed per
# build: how long the short ones took, p50 and max, and the whole run. With the pool taking the
# next batch only after the whole last one ended (the build before 0ea3a2c, as REF_BIN), every
# short request that comes while the long job runs waits for it; with the pool taking it once
# the last is handed to workers, they run on the three other workers. Loopback only; ends by
# itself.
#
#   bash benches/long_job.sh
#   REF_BIN=/tmp/fc-before bash benches/long_job.sh      # also a build of another commit
#
# Environment: LONG (s, default 3), SHORT (default 10), SHORT_MS (default 50), FC_BIN (default
# target/release/fiddler_crab), REF_BIN (optional), ACCESS_LOG (default false; true is the
# shipped default, to the server's log file).
set -euo pipefail
cd "$(dirname "$0")/.."
LONG=${LONG:-3}
SHORT=${SHORT:-10}
SHORT_MS=${SHORT_MS:-50}
FC_BIN=${FC_BIN:-target/release/fiddler_crab}
ACCESS_LOG=${ACCESS_LOG:-false}
. "$(dirname "$0")/lib.sh"
if [ "$FC_BIN" = target/release/fiddler_crab ]; then cargo build --release --bin fiddler_crab; fi
work=$(mktemp -d /tmp/fc-longjob.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

run() {
  local name=$1 bin=$2 port
  port=$(free_port)
  cat >"$work/fc.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
access_log = $ACCESS_LOG

[[endpoint]]
path = "/sleep"
mode = "jellyfish"
workers = 4
queue = 64
overflow = "reject"
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "sleep \$QUERY_STRING; echo slept"]
timeout_ms = 60000
EOF
  "$bin" --config "$work/fc.toml" >"$work/fc.log" 2>&1 &
  local fc=$!
  pids+=("$fc")
  wait_http "http://127.0.0.1:$port/status" 100 "$fc"
  python3 - "$port" "$LONG" "$SHORT" "$SHORT_MS" "$name" <<'PYEND'
import sys, threading, time, urllib.request
port, long_s, short_n, short_ms, name = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
url = f"http://127.0.0.1:{port}/sleep?"
start = time.perf_counter()
def get(q):
    with urllib.request.urlopen(url + q, timeout=120) as r:
        assert r.status == 200 and r.read() == b"slept\n"
long = threading.Thread(target=get, args=(str(long_s),))
long.start()
time.sleep(0.2)
took = []
for _ in range(short_n):
    t = time.perf_counter()
    get(str(short_ms / 1000))
    took.append((time.perf_counter() - t) * 1000)
long.join()
took.sort()
print(f"{name}: {short_n} short jobs of {short_ms:.0f} ms beside a {long_s:.0f} s one: "
      f"p50 {took[len(took) // 2]:.0f} ms, max {took[-1]:.0f} ms; whole run {time.perf_counter() - start:.2f} s")
PYEND
  kill "$fc"
  wait "$fc" 2>/dev/null || true
}

echo "# a long job beside short ones, jellyfish workers = 4 $(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git rev-parse --short HEAD); ACCESS_LOG=$ACCESS_LOG"
run this "$FC_BIN"
if [ -n "${REF_BIN:-}" ]; then run ref "$REF_BIN"; fi
