#!/usr/bin/env bash
# User-space instructions per overflowed request in the flood of benches/overflow.sh (issue 11,
# item 1), counted by valgrind's cachegrind: a steadier figure than the timed CPU per overflowed
# request, which moves with the load of a shared machine and comes in whole clock ticks. It counts
# user space only (the kernel's share of a new connection is not in it): it complements
# overflow.sh, it does not replace it.
#
# examples/bench_server.rs serves the flood endpoint of overflow.sh (`sleep100` builtin, crab,
# capacity 10 req/s, queue 10, access log on, the door on, `overflow_hold_ms` 1000) under
# cachegrind while examples/loadgen.rs sends RATE requests/s open loop, each on a fresh
# connection, twice: for SHORT seconds, then for LONG seconds. The difference of the two runs'
# totals over the difference of their overflowed requests (503s and closes without a byte) is the
# cost of an overflowed request, with start-up, shutdown and the admitted requests (about 10 a
# second in both runs, so they cancel out but for the few of the extra seconds) taken out.
# Loopback only; every run ends by itself. Needs valgrind (Debian: apt-get install -y valgrind).
#
#   bash benches/flood_instructions.sh
#
# Environment: SERVERS (default "fc-ignore fc-reject": overflow = "ignore" (each overflowed
# connection held unread, then closed without a byte) and "reject" (503 + Retry-After);
# "fc-ignore-ref" / "fc-reject-ref" run REF_BENCH_SERVER, another bench_server binary, the same
# way), RATE (requests/s, default 500), SHORT / LONG (s, default 2 / 6), HOLD_MS (default 1000),
# ACCESS_LOG (default true).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${SERVERS:-"fc-ignore fc-reject"}
RATE=${RATE:-500}
SHORT=${SHORT:-2}
LONG=${LONG:-6}
HOLD_MS=${HOLD_MS:-1000}
ACCESS_LOG=${ACCESS_LOG:-true}
command -v valgrind >/dev/null || { echo "valgrind not found (Debian: apt-get install -y valgrind)" >&2; exit 1; }
cargo build --release --example bench_server --example loadgen
work=$(mktemp -d /tmp/fc-flood-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp target/release/examples/bench_server target/release/examples/loadgen "$work/"
if [ -n "${REF_BENCH_SERVER:-}" ]; then cp "$REF_BENCH_SERVER" "$work/bench_server-ref"; fi
. "$(dirname "$0")/lib.sh"

# one NAME SECONDS: prints "overflowed instructions"
one() {
  local name=$1 seconds=$2 port admin overflow bin=$work/bench_server pid i
  port=$(free_port)
  admin=$(free_port)
  case $name in
    fc-ignore | fc-ignore-ref) overflow=ignore ;;
    fc-reject | fc-reject-ref) overflow=reject ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  if [[ $name == *-ref ]]; then bin=$work/bench_server-ref; fi
  cat >"$work/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
shutdown_grace_ms = 2000
access_log = $ACCESS_LOG
overflow_hold_ms = $HOLD_MS

[[endpoint]]
path = "/sleep100"
methods = ["GET"]
builtin = "sleep100"
mode = "crab"
queue = 10
overflow = "$overflow"
queue_timeout_ms = 5000
pace_ms = 0
EOF
  # --fair-sched=yes: valgrind runs one thread at a time, and a thread spin-waiting for another
  # could otherwise keep the turn; some runs counted billions of extra instructions.
  valgrind --tool=cachegrind --cache-sim=no --fair-sched=yes --cachegrind-out-file="$work/$name.cg" \
    --log-file="$work/$name.valgrind.log" "$bin" --config "$work/$name.toml" --max-seconds 300 \
    >/dev/null 2>"$work/$name.stderr" &
  pid=$!
  for i in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$admin/healthz" 2>/dev/null; then break; fi
    sleep 0.2
  done
  "$work/loadgen" --addr "127.0.0.1:$port" --path /sleep100 --rate "$RATE" --duration "$seconds" \
    --timeout 30 --capacity-rps 10 --bar-ms 1100 --dump "$work/$name.csv" >"$work/$name.loadgen" 2>&1
  kill -INT "$pid"
  wait "$pid" || true
  echo "$(awk -F, 'NR > 1 && ($2 == "503" || $2 == "ClosedEmpty") {n++} END {print n + 0}' \
    "$work/$name.csv") $(awk '$1 == "summary:" {print $2}' "$work/$name.cg")"
}

# shellcheck disable=SC2086
mapfile -t results < <(instructions_each "overflowed request" $SERVERS)

echo "# Flood at $RATE req/s, user-space instructions per overflowed request (cachegrind) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "Built from commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src crates || echo ' with uncommitted changes'); runs of $SHORT s and $LONG s, overflow_hold_ms $HOLD_MS, access log $ACCESS_LOG."
echo
echo "| server | instructions per overflowed request |"
echo "|---|---|"
for r in "${results[@]}"; do
  set -- $r
  echo "| $1 | $2 |"
done
