# Shell helpers shared by the benchmark drivers (sourced, not run). `others` reads the caller's
# OTHERS (a pgrep -f pattern) and OTHER_NAMES (a pgrep -x pattern).

# Other benchmarks' processes (never this script's own: none of its command lines match).
others() {
  { pgrep -fa "$OTHERS"; pgrep -ax "$OTHER_NAMES"; } | grep -v "^$$ " | cut -c1-150 || true
}
# Percent of all CPUs busy over one second (from /proc/stat).
host_busy() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.0f", (y[1] - x[1]) / (y[2] - x[2]) * 100 }'
}
# Wait until no other benchmark and no build runs and the machine is nearly idle (at most
# IDLE_MAX % busy, default 15), or IDLE_WAIT seconds (default 1800) have passed.
wait_quiet() {
  local said=0 waited=0 busy
  while :; do
    busy=$(host_busy)
    if [ -z "$(others)" ] && [ "$busy" -le "${IDLE_MAX:-15}" ]; then return; fi
    if [ "$waited" -ge "${IDLE_WAIT:-1800}" ]; then
      echo "still not quiet after ${waited} s (${busy}% busy); measuring anyway" >&2
      return
    fi
    if [ $said = 0 ]; then
      echo "waiting for a quiet machine (${busy}% busy):" >&2
      others >&2
      said=1
    fi
    sleep 4
    waited=$((waited + 5))
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# fiddler_crab_config MODE PORT: the GET /ping benchmarks' config (one builtin endpoint, no access
# log), on 127.0.0.1:PORT.
fiddler_crab_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
access_log = false

[[endpoint]]
path = "/ping"
methods = ["GET", "HEAD"]
mode = "$1"
builtin = "ping"
queue = 1024
overflow = "reject"
EOF
}
