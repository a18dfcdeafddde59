#!/usr/bin/env bash
# User-space instructions per GET /ping request, fiddler_crab (jellyfish, then crab) against the
# bare hyper baseline (examples/bare_hyper.rs), counted by valgrind's cachegrind. Unlike CPU time,
# an instruction count does not move with the load of a shared machine, so it shows a change of a
# few percent that benches/ping.sh's timings cannot resolve on a noisy VM. It counts user space only
# (the kernel's share, most of a loopback request, is not in it) and says nothing about cache
# misses or stalls: it complements ping.sh, it does not replace it.
#
# Each server runs under cachegrind twice: wrk for SHORT seconds, then for LONG seconds; the
# difference of the two runs' totals over the difference of their request counts is the cost of
# a request with start-up and shutdown cancelled out. Loopback only; every run ends by itself.
# Needs valgrind and wrk (Debian: apt-get install -y valgrind wrk).
#
#   bash benches/ping_instructions.sh
#
# Environment: SERVERS (default "bare jellyfish crab"; also "proxy": fiddler_crab's /ping an
# upstream endpoint (jellyfish, 8 slots, log off) in front of a bare hyper server that runs
# outside valgrind, so the count is the hop's own; "hyperproxy": examples/bare_hyper_proxy.rs,
# hyper's server and client and nothing else; "hyperplain": the same with hyper's server
# defaults (no header-read timer); "nginx-proxy": nginx as one process with proxy_pass and
# keepalive; "nginxfwd-proxy": the same doing fiddler_crab's rewrite (the client's Host,
# X-Forwarded-For, X-Forwarded-Proto); the last four in front of a bare hyper upstream outside valgrind as for "proxy";
# "default": the embedded default config, access log on, to a file; "nginx" / "nginx-log": nginx
# as one process, access_log off / to a file), SHORT / LONG (s, default 2 / 8), CONNECTIONS
# (default 8), REF_BIN (another fiddler_crab binary, run as servers "jellyfish-ref",
# "default-ref" and "proxy-ref"), CONN (keepalive, the default, or close: every request on a new
# connection, wrk -H 'Connection: close').
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${SERVERS:-"bare jellyfish crab"}
SHORT=${SHORT:-2}
LONG=${LONG:-8}
CONN=${CONN:-keepalive}
WRK_HEADER=()
case $CONN in
  keepalive) ;;
  close) WRK_HEADER=(-H "Connection: close") ;;
  *) echo "CONN is keepalive or close, not $CONN" >&2; exit 2 ;;
esac
CONNECTIONS=${CONNECTIONS:-8}
command -v valgrind >/dev/null || { echo "valgrind not found (Debian: apt-get install -y valgrind)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (Debian: apt-get install -y wrk)" >&2; exit 1; }
cargo build --release --bin fiddler_crab --example bare_hyper --example bare_hyper_proxy
work=$(mktemp -d /tmp/fc-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp target/release/fiddler_crab target/release/examples/bare_hyper target/release/examples/bare_hyper_proxy "$work/"
if [ -n "${REF_BIN:-}" ]; then cp "$REF_BIN" "$work/fiddler_crab-ref"; fi
. "$(dirname "$0")/lib.sh"

# one NAME SECONDS: prints "requests instructions"
one() {
  local name=$1 seconds=$2 port cmd pid requests upstream_pid=""
  port=$(free_port)
  case $name in
    proxy | proxy-ref)
      local upstream_port bin=$work/fiddler_crab
      upstream_port=$(free_port)
      "$work/bare_hyper" --listen "127.0.0.1:$upstream_port" --max-seconds 300 >/dev/null 2>&1 &
      upstream_pid=$!
      fc_proxy_config "$port" "$upstream_port" 8 >"$work/proxy.toml"
      if [ "$name" = proxy-ref ]; then bin=$work/fiddler_crab-ref; fi
      cmd=("$bin" --config "$work/proxy.toml") ;;
    hyperproxy | hyperplain | nginx-proxy | nginxfwd-proxy)
      local upstream_port
      upstream_port=$(free_port)
      "$work/bare_hyper" --listen "127.0.0.1:$upstream_port" --max-seconds 300 >/dev/null 2>&1 &
      upstream_pid=$!
      case $name in
        nginx-proxy | nginxfwd-proxy)
          rm -rf "${work:?}/$name"
          mapfile -t cmd < <(nginx_proxy_cmd "$work/$name" "$port" "$upstream_port" \
            "$([ "$name" = nginxfwd-proxy ] && echo fwd)") ;;
        *)
          cmd=("$work/bare_hyper_proxy" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$upstream_port" --max-seconds 300)
          if [ "$name" = hyperplain ]; then cmd+=(--plain); fi ;;
      esac ;;
    bare) cmd=("$work/bare_hyper" --listen "127.0.0.1:$port" --max-seconds 300) ;;
    jellyfish | crab) fiddler_crab_config "$name" "$port" >"$work/$name.toml"
      cmd=("$work/fiddler_crab" --config "$work/$name.toml") ;;
    jellyfish-ref) fiddler_crab_config jellyfish "$port" >"$work/$name.toml"
      cmd=("$work/fiddler_crab-ref" --config "$work/$name.toml") ;;
    default) cmd=("$work/fiddler_crab" --listen "127.0.0.1:$port") ;;
    default-ref) cmd=("$work/fiddler_crab-ref" --listen "127.0.0.1:$port") ;;
    nginx | nginx-log)
      local dir=$work/$name log=off
      rm -rf "$dir"
      mkdir -p "$dir"
      if [ "$name" = nginx-log ]; then log=on; fi
      nginx_ping_conf "$dir" "$log" "$port"
      # One process (no master): cachegrind follows the process that serves.
      cmd=("$(command -v nginx)" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
        -g "daemon off; master_process off; worker_processes 1;") ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  # The server's own stderr (the default config's access log) goes to a file, as in ping.sh.
  # --fair-sched=yes: valgrind runs one thread at a time, and a thread spin-waiting for another
  # could otherwise keep the turn; some runs counted billions of extra instructions.
  valgrind --tool=cachegrind --cache-sim=no --fair-sched=yes --cachegrind-out-file="$work/$name.cg" \
    --log-file="$work/$name.valgrind.log" "${cmd[@]}" >/dev/null 2>"$work/$name.stderr" &
  pid=$!
  local i
  for i in $(seq 1 100); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "http://127.0.0.1:$port/ping" 2>/dev/null; then break; fi
    sleep 0.2
  done
  requests=$(wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" ${WRK_HEADER[@]+"${WRK_HEADER[@]}"} "http://127.0.0.1:$port/ping" |
    sed -n 's/^ *\([0-9]*\) requests in .*/\1/p')
  kill -INT "$pid"
  wait "$pid" || true
  if [ -n "$upstream_pid" ]; then kill "$upstream_pid" 2>/dev/null; wait "$upstream_pid" 2>/dev/null || true; fi
  echo "$requests $(awk '$1 == "summary:" {print $2}' "$work/$name.cg")"
}

# shellcheck disable=SC2086
mapfile -t results < <(instructions_each "request" $SERVERS)

echo "# GET /ping, user-space instructions per request (cachegrind) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "Built from commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src crates || echo ' with uncommitted changes'); wrk -t1 -c$CONNECTIONS ($CONN), runs of $SHORT s and $LONG s."
echo
echo "| server | instructions per request | × bare |"
echo "|---|---|---|"
base=""
for r in "${results[@]}"; do
  set -- $r
  [ "$1" = bare ] && base=$2
done
for r in "${results[@]}"; do
  set -- $r
  if [ -n "$base" ]; then ratio=$(awk -v a="$2" -v b="$base" 'BEGIN { printf "%.3f×", a / b }'); else ratio="–"; fi
  echo "| $1 | $2 | $ratio |"
done
