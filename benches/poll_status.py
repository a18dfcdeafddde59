#!/usr/bin/env python3
"""Poll a fiddler_crab server's GET /status at a fixed period and write one CSV line per poll.

Run with `python3 benches/poll_status.py --url http://127.0.0.1:PORT/status --path /hash
--seconds 50 --out poll.csv` (benches/adaptive.sh does). Polls are jittered around the period so
that they do not lock in phase with a fixed-rate load (at 8 rps and a 250 ms period they would
otherwise see the same moment of every job cycle). Columns: unix_s (wall clock of the
poll), light, the light's inputs (cpu 0-1, mem_headroom 0-1, cpu_pressure and mem_pressure as
PSI `some avg10` percent, sample_age_ms, stale), and the endpoint's concurrency (jobs its
executor may run at once now), running, queue_depth and counters. Standard library only;
loopback only; ends by itself after --seconds. A failed poll writes a line with light "error".
"""

import argparse
import csv
import json
import random
import sys
import time
import urllib.parse
import urllib.request

COLUMNS = [
    "unix_s", "light", "cpu", "mem_headroom", "cpu_pressure", "mem_pressure", "sample_age_ms",
    "stale", "concurrency", "running", "queue_depth", "admitted", "completed", "overflowed",
    "timed_out", "failed",
]


def poll(url, path, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        doc = json.load(resp)
    light = doc.get("light") or {}
    inputs = light.get("inputs") or {}
    ep = (doc.get("endpoints") or {}).get(path) or {}
    counters = ep.get("counters") or {}
    return {
        "light": light.get("light", ""),
        "cpu": inputs.get("cpu", ""),
        "mem_headroom": inputs.get("mem_headroom", ""),
        "cpu_pressure": inputs.get("cpu_pressure", ""),
        "mem_pressure": inputs.get("mem_pressure", ""),
        "sample_age_ms": light.get("sample_age_ms", ""),
        "stale": light.get("stale", ""),
        "concurrency": ep.get("concurrency", ""),
        "running": ep.get("running", ""),
        "queue_depth": ep.get("queue_depth", ""),
        "admitted": counters.get("admitted", ""),
        "completed": counters.get("completed", ""),
        "overflowed": counters.get("overflowed", ""),
        "timed_out": counters.get("timed_out", ""),
        "failed": counters.get("failed", ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the server's /status URL (loopback)")
    ap.add_argument("--path", required=True, help="endpoint whose line to record")
    ap.add_argument("--seconds", type=float, required=True, help="how long to poll")
    ap.add_argument("--every", type=float, default=0.25, help="mean poll period, s (default 0.25)")
    ap.add_argument("--jitter", type=float, default=0.2,
                    help="each poll moves by up to ± this fraction of the period (default 0.2), "
                         "so that polls do not lock in phase with a fixed-rate load")
    ap.add_argument("--out", required=True, help="CSV file to write")
    args = ap.parse_args()
    host = urllib.parse.urlsplit(args.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"poll_status polls loopback addresses only, not {host}")
    if not 0 < args.seconds <= 3600 or not 0.01 <= args.every <= 60 or not 0 <= args.jitter < 0.5:
        sys.exit("--seconds must be in (0, 3600], --every in [0.01, 60], --jitter in [0, 0.5)")
    start = time.monotonic()
    n = 0
    with open(args.out, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=COLUMNS)
        out.writeheader()
        while True:
            due = start + (n + random.uniform(-args.jitter, args.jitter)) * args.every
            if due - start > args.seconds:
                break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            now = time.time()
            try:
                row = poll(args.url, args.path, timeout=max(args.every, 1.0))
            except Exception:  # a poll that fails is recorded, and polling goes on
                row = {"light": "error"}
            row["unix_s"] = f"{now:.3f}"
            out.writerow(row)
            f.flush()
            n += 1


if __name__ == "__main__":
    main()
