#!/usr/bin/env bash
# Kept-alive connections closed by the other side: what `keepalive_timeout_ms` saves
# (docs/BENCHMARKS.md 20.1). Many servers close a connection that has been idle for a while
# (uvicorn, Node and llama-server after 5 s, gunicorn's threaded workers after 2 s). A request
# written into such a connection as it closes may have been read, so fiddler_crab never sends it
# again, and the client gets 502. With a limit below the server's own, the connection is replaced
# before the server closes it.
#
# Per round, two fiddler_crab servers side by side, the same but for their limits:
#   off       keepalive_timeout_ms = 3600000 on both tables (the limit out of the way: how
#             fiddler_crab sent requests before the key existed; a health check lost on a
#             kept-alive connection is still made again on a fresh one, as it is since 2e6696b)
#   on        [endpoint.upstream] keepalive_timeout_ms = UPSTREAM_KEEPALIVE_MS (default 800) and
#             [endpoint.worker] keepalive_timeout_ms left at its default (1000)
# each with three endpoints:
#   /u        an upstream endpoint to benches/idle_close_upstream.py, which closes a connection
#             idle IDLE seconds (default 1)
#   /h        the same upstream behind `health_path`, polled every HEALTH_MS (default 1000):
#             every time a check fails the endpoint refuses requests until the next one passes
#   /w        a worker endpoint: gunicorn `-k gthread --keep-alive IDLE` on the worker socket
#             (benches/hello_wsgi.py)
# Each server's /u and /w get REQUESTS requests (default 25), one after another, GAP seconds
# apart (default IDLE), each on a fresh client connection; its /h is left to its health checks
# over the same time. Printed per round and in total: the answers that were not 200 on /u and
# /w, and the times /h went unhealthy (`upstream unhealthy` in the server's log). The race
# depends on how the gaps meet the servers' own timers, so counts vary between rounds.
# Loopback only; every round ends by itself (REQUESTS × GAP seconds plus start-up).
#
#   bash benches/keepalive.sh                    # 3 rounds, about 2 minutes
#   ROUNDS=1 REQUESTS=10 bash benches/keepalive.sh
#
# The table is saved to OUT (default bench-results/keepalive-DATE.md).
#
# Environment: ROUNDS (3), REQUESTS (25), IDLE (1, whole seconds: gunicorn takes no fraction),
# GAP (IDLE), HEALTH_MS (1000), UPSTREAM_KEEPALIVE_MS (800), FC_BIN (default: a release build of
# this tree). Needs gunicorn in .venv (made by scripts/venv.sh when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-25}
IDLE=${IDLE:-1}
GAP=${GAP:-$IDLE}
HEALTH_MS=${HEALTH_MS:-1000}
UPSTREAM_KEEPALIVE_MS=${UPSTREAM_KEEPALIVE_MS:-800}
if [[ ! $IDLE =~ ^[1-9][0-9]*$ ]]; then
  echo "IDLE is whole seconds (gunicorn's --keep-alive), not $IDLE" >&2
  exit 2
fi
if [ -z "${FC_BIN:-}" ]; then
  cargo build --release --bin fiddler_crab >&2
  FC_BIN=$PWD/target/release/fiddler_crab
fi
ensure_gunicorn

mkdir -p bench-results
OUT=${OUT:-bench-results/keepalive-$(date -u +%Y%m%d-%H%M%S).md}
exec > >(tee "$OUT")

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  if [ ${#PIDS[@]} -gt 0 ]; then STOP_GRACE=3 stop_tree "${PIDS[@]}"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# endpoint PATH SLOTS: the head of a GET endpoint, jellyfish with SLOTS slots.
endpoint() {
  printf '[[endpoint]]\npath = "%s"\nmethods = ["GET"]\nmode = "jellyfish"\nworkers = %s\n' "$1" "$2"
}

# config UPSTREAM_PORT UPSTREAM_KEEPALIVE WORKER_KEEPALIVE_LINE: the three endpoints.
config() {
  local path
  for path in /u /h; do
    endpoint "$path" 2
    printf '[endpoint.upstream]\nurl = "http://127.0.0.1:%s"\nkeepalive_timeout_ms = %s\n' "$1" "$2"
    if [ $path = /h ]; then
      printf 'health_path = "/health"\nhealth_interval_ms = %s\n' "$HEALTH_MS"
    fi
    echo
  done
  endpoint /w 1
  cat <<XEOF
[endpoint.worker]
command = ["sh", "-c", "exec '$GUNICORN' --chdir '$PWD/benches' -k gthread --threads 2 --keep-alive $IDLE --bind unix:\$FIDDLER_WORKER_SOCKET --log-level warning hello_wsgi:app"]
$3
XEOF
}

# Python's GAP-apart driver: REQUESTS GETs to each PATH at once (a thread per path), each on a
# fresh connection; prints "path status count" lines.
drive() {
  python3 - "$@" <<'XEOF'
import collections, http.client, sys, threading, time
port, n, gap, paths = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
seen = {p: collections.Counter() for p in paths}
def run(path):
    for _ in range(n):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            seen[path][r.status] += 1
            c.close()
        except OSError as e:
            seen[path]["error"] += 1
        time.sleep(gap)
threads = [threading.Thread(target=run, args=(p,)) for p in paths]
for t in threads: t.start()
for t in threads: t.join()
for p in paths:
    for status, count in sorted(seen[p].items(), key=str):
        print(p, status, count)
XEOF
}

declare -A TOTAL
printf '%-5s %-4s %8s %8s %8s %16s\n' round set "/u 502" "/w 502" "/h down" "non-200 (u, w)"
for round in $(seq 1 "$ROUNDS"); do
  declare -A PORT=() LOG=() DRIVE=()
  PIDS=() DRIVERS=()
  for set in off on; do
    up_port=$(free_port)
    python3 benches/idle_close_upstream.py "$up_port" "$IDLE" &
    PIDS+=($!)
    wait_tcp 127.0.0.1 "$up_port" 100 "$!"
    PORT[$set]=$(free_port)
    if [ $set = off ]; then
      config "$up_port" 3600000 "keepalive_timeout_ms = 3600000"
    else
      config "$up_port" "$UPSTREAM_KEEPALIVE_MS" ""
    fi >"$WORK/$set.toml"
    printf '[server]\nlisten = "127.0.0.1:%s"\naccess_log = false\n\n' "${PORT[$set]}" |
      cat - "$WORK/$set.toml" >"$WORK/$set.full.toml"
    LOG[$set]=$WORK/$set-$round.log
    "$FC_BIN" --config "$WORK/$set.full.toml" >"${LOG[$set]}" 2>&1 &
    PIDS+=($!)
    if ! wait_http "http://127.0.0.1:${PORT[$set]}/w" 150 "$!"; then
      echo "fiddler_crab ($set) did not serve /w; its log:" >&2
      cat "${LOG[$set]}" >&2
      exit 1
    fi
  done
  # The health checks count from here: the start-up's are left out.
  for set in off on; do
    DRIVE[$set]=$WORK/$set-$round.drive
    skip=$(grep -c "upstream unhealthy" "${LOG[$set]}" || true)
    echo "$skip" >"$WORK/$set-$round.skip"
    drive "${PORT[$set]}" "$REQUESTS" "$GAP" /u /w >"${DRIVE[$set]}" &
    DRIVERS+=($!)
  done
  wait "${DRIVERS[@]}"
  for set in off on; do
    u502=$(awk '$1 == "/u" && $2 == "502" {print $3}' "${DRIVE[$set]}")
    w502=$(awk '$1 == "/w" && $2 == "502" {print $3}' "${DRIVE[$set]}")
    bad_u=$(awk '$1 == "/u" && $2 != "200" {s += $3} END {print s + 0}' "${DRIVE[$set]}")
    bad_w=$(awk '$1 == "/w" && $2 != "200" {s += $3} END {print s + 0}' "${DRIVE[$set]}")
    down=$(($(grep -c "upstream unhealthy" "${LOG[$set]}" || true) - $(cat "$WORK/$set-$round.skip")))
    printf '%-5s %-4s %8s %8s %8s %16s\n' "$round" "$set" "${u502:-0}" "${w502:-0}" "$down" "$bad_u, $bad_w"
    TOTAL[$set.u]=$((${TOTAL[$set.u]:-0} + ${u502:-0}))
    TOTAL[$set.w]=$((${TOTAL[$set.w]:-0} + ${w502:-0}))
    TOTAL[$set.h]=$((${TOTAL[$set.h]:-0} + down))
  done
  STOP_GRACE=3 stop_tree "${PIDS[@]}"
  PIDS=()
done
echo
echo "fiddler_crab: $FC_BIN ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ', modified'))"
echo "In $ROUNDS rounds of $REQUESTS requests per endpoint, $GAP s apart, against servers closing" \
  "connections idle $IDLE s (health every $HEALTH_MS ms):"
for set in off on; do
  printf '  %-4s /u %s x 502, /w %s x 502, /h unhealthy %s times\n' "$set" \
    "${TOTAL[$set.u]}" "${TOTAL[$set.w]}" "${TOTAL[$set.h]}"
done
