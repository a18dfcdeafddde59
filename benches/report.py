#!/usr/bin/env python3
"""Tables for the benchmark drivers (benches/ping.sh, workers.sh, overflow.sh): medians over
rounds, per-round ratios to baselines with a bootstrap interval, and summaries of loadgen dumps.

    report.py wrk RESULTS --servers "a b" [--compare TITLE:MAP]... [--label NAME=TEXT]...
              [--metric cpu_us]
    report.py flood-row DUMP --duration S          # one loadgen --dump → a TSV fragment
    report.py flood RESULTS --servers "a b" [--compare TITLE:MAP]... [--label NAME=TEXT]...
              --capacity RPS --bar-ms MS
    report.py roll DUMP --at S --window S --duration S --label TEXT   # one markdown row

RESULTS is a TSV whose first line names the columns (`server` and `round` first). A comparison
MAP says which baseline each server is held against: `*=bare` (all against bare) or
`default=nginx-log,*=nginx` (a server named on the left against its own; `*` for the rest). A
round's ratio is the server's figure over its baseline's figure in the same round (the rounds run
the servers back to back, so a drift of the machine's speed cancels); the bootstrap resamples the
rounds 10,000 times (fixed seed) for a 95% interval of the ratio of the means.
"""

import argparse
import random
import statistics
import sys


def read_rows(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    if not lines:
        return []
    head = lines[0]
    return [dict(zip(head, l)) for l in lines[1:]]


def parse_map(spec):
    """`TITLE:a=b,*=c` → (TITLE, {a: b, *: c})."""
    title, _, pairs = spec.partition(":")
    mapping = {}
    for pair in pairs.split(","):
        if "=" in pair:
            k, v = pair.split("=", 1)
            mapping[k.strip()] = v.strip()
    return title, mapping


def base_of(mapping, name):
    return mapping.get(name, mapping.get("*"))


def by_round(rows, name, col):
    out = {}
    for r in rows:
        if r["server"] == name:
            try:
                out[r["round"]] = float(r[col])
            except (KeyError, ValueError):
                pass
    return out


def ratios(rows, name, base, col):
    """Per-round ratios name/base of column col (rounds where both ran and base > 0)."""
    a, b = by_round(rows, name, col), by_round(rows, base, col)
    return [a[k] / b[k] for k in a if k in b and b[k] > 0]


def mean_ratio_ci(rows, name, base, col):
    a, b = by_round(rows, name, col), by_round(rows, base, col)
    keys = [k for k in a if k in b]
    if not keys or sum(b[k] for k in keys) <= 0:
        return None

    def ratio(ks):
        d = sum(b[k] for k in ks)
        return sum(a[k] for k in ks) / d if d > 0 else float("nan")

    rng = random.Random(1)
    boot = sorted(ratio(rng.choices(keys, k=len(keys))) for _ in range(10000))
    return ratio(keys), boot[250], boot[9749]


def med(rows, name, col):
    vals = list(by_round(rows, name, col).values())
    return statistics.median(vals) if vals else float("nan")


def ratio_cells(rows, name, base, col, higher_is="cost"):
    """(ratio of medians, median of per-round ratios (min–max), ratio of means [95%])."""
    if base is None or not by_round(rows, base, col):
        return ["–", "–", "–"]
    mb = med(rows, base, col)
    rom = f"{med(rows, name, col) / mb:.2f}×" if mb > 0 else "–"
    pr = ratios(rows, name, base, col)
    per = f"**{statistics.median(pr):.2f}×** ({min(pr):.2f}–{max(pr):.2f})" if pr else "–"
    ci = mean_ratio_ci(rows, name, base, col)
    mean = f"**{ci[0]:.3f}×** [{ci[1]:.3f}–{ci[2]:.3f}]" if ci else "–"
    suffix = f" vs {base}" if base != name else ""
    return [rom + suffix, per, mean]


def table(header, lines):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for l in lines:
        print("| " + " | ".join(l) + " |")


def cmd_wrk(a):
    rows = read_rows(a.results)
    labels = dict(l.split("=", 1) for l in a.label)
    names = [n for n in a.servers.split() if any(r["server"] == n for r in rows)]
    compares = [parse_map(c) for c in a.compare]
    metric = a.metric
    header = ["server", "req/s", "p50 µs", "p99 µs", f"server CPU µs/{'req' if metric == 'cpu_us' else 'attempt'}"]
    # Overflow runs: how many attempts and overflowed requests per second, and the CPU per
    # overflowed one (every server CPU second over them, the admitted requests' included).
    rates = metric == "cpu_attempt_us"
    if rates:
        header += ["attempts/s", "overflowed/s", "server CPU µs/overflowed"]
    for title, _ in compares:
        header += [f"× {title}: ratio of medians", f"× {title}: median of per-round ratios (min–max)",
                   f"× {title}: ratio of means [95% interval]", f"req/s ÷ {title}"]
    header += ["server CPU % of a core", "other work on the two CPUs, max %", "non-2xx",
               "socket errors connect/read/write/timeout", f"CPU µs per run"]
    lines = []
    for n in names:
        rs = [r for r in rows if r["server"] == n]
        line = [labels.get(n, n), f"{med(rows, n, 'rps'):.0f}", f"{med(rows, n, 'p50_us'):.0f}",
                f"{med(rows, n, 'p99_us'):.0f}", f"{med(rows, n, metric):.2f}"]
        if rates:
            line += [f"{med(rows, n, 'attempts_per_s'):.1f}", f"{med(rows, n, 'overflowed_per_s'):.1f}",
                     f"{med(rows, n, 'cpu_overflowed_us'):.2f}"]
        for _, mapping in compares:
            base = base_of(mapping, n)
            line += ratio_cells(rows, n, base, metric)
            pr = ratios(rows, n, base, "rps") if base else []
            line.append(f"{statistics.median(pr):.2f}" if pr else "–")
        errs = "/".join(str(sum(int(r[c]) for r in rs))
                        for c in ("err_connect", "err_read", "err_write", "err_timeout"))
        line += [f"{med(rows, n, 'busy_pct'):.0f}", str(max(int(r["others_pct"]) for r in rs)),
                 str(sum(int(r["non2xx"]) for r in rs)), errs, " / ".join(r[metric] for r in rs)]
        lines.append(line)
    missing = [n for n in a.servers.split() if n not in names]
    table(header, lines)
    if missing:
        print(f"\nNot measured (did not start): {', '.join(missing)}.")


def load_dump(path):
    out = []
    with open(path) as f:
        next(f, None)
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 3:
                out.append((float(parts[0]), parts[1], float(parts[2])))
    return out


def pct(vals, p):
    """Nearest-rank percentile."""
    if not vals:
        return float("nan")
    s = sorted(vals)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def cmd_flood_row(a):
    recs = load_dump(a.dump)
    window_ms = a.duration * 1000
    ok = [lat for sched, o, lat in recs if o == "200"]
    in_window = sum(1 for sched, o, lat in recs if o == "200" and sched + lat <= window_ms)
    s503 = sum(1 for _, o, _ in recs if o == "503")
    closed = sum(1 for _, o, _ in recs if o in ("ClosedEmpty", "ResetEmpty"))
    other = len(recs) - len(ok) - s503 - closed
    fields = [len(recs), len(ok), s503, closed, other, s503 + closed, f"{in_window / a.duration:.2f}",
              f"{pct(ok, 50):.0f}", f"{pct(ok, 99):.0f}", f"{max(ok) if ok else float('nan'):.0f}"]
    print("\t".join(str(f) for f in fields))


FLOOD_COLUMNS = ("sent ok s503 closed other overflowed goodput_rps adm_p50_ms adm_p99_ms adm_max_ms "
                 "front_cpu_s all_cpu_s front_us_per_overflow all_us_per_overflow others_pct").split()


def cmd_flood(a):
    rows = read_rows(a.results)
    labels = dict(l.split("=", 1) for l in a.label)
    names = [n for n in a.servers.split() if any(r["server"] == n for r in rows)]
    compares = [parse_map(c) for c in a.compare]
    col = "front_us_per_overflow"
    header = ["server", "sent", "200", "503", "closed, no byte", "other", "goodput rps (% of cap)",
              "admitted p50 ms", "admitted p99 ms (÷ bar)", "max ms",
              "front CPU µs per overflowed", "all server-side CPU µs per overflowed"]
    for title, _ in compares:
        header += [f"front CPU/overflow × {title}: median of per-round ratios (min–max)",
                   f"× {title}: ratio of means [95% interval]"]
    header += ["other work, max %", "front CPU µs/overflow per run"]
    lines = []
    for n in names:
        rs = [r for r in rows if r["server"] == n]
        m = lambda c: med(rows, n, c)
        total = lambda c: sum(int(r[c]) for r in rs)
        good = m("goodput_rps")
        line = [labels.get(n, n), str(total("sent")), str(total("ok")), str(total("s503")),
                str(total("closed")), str(total("other")),
                f"{good:.2f} ({good / a.capacity * 100:.0f}%)", f"{m('adm_p50_ms'):.0f}",
                f"{m('adm_p99_ms'):.0f} ({m('adm_p99_ms') / a.bar_ms:.2f})", f"{m('adm_max_ms'):.0f}",
                f"{m(col):.1f}", f"{m('all_us_per_overflow'):.1f}"]
        for _, mapping in compares:
            line += ratio_cells(rows, n, base_of(mapping, n), col)[1:]
        line += [str(max(int(r["others_pct"]) for r in rs)), " / ".join(r[col] for r in rs)]
        lines.append(line)
    table(header, lines)
    missing = [n for n in a.servers.split() if n not in names]
    if missing:
        print(f"\nNot measured (did not start): {', '.join(missing)}.")


def cmd_roll(a):
    recs = load_dump(a.dump)
    at, end = a.at * 1000, (a.at + a.window) * 1000
    cells = [a.label]
    for lo, hi in ((0, at), (at, end), (end, a.duration * 1000)):
        win = [(o, lat) for sched, o, lat in recs if lo <= sched < hi]
        ok = [lat for o, lat in win if o == "200"]
        errors = len(win) - len(ok)
        kinds = sorted({o for o, _ in win if o != "200"})
        cells += [str(len(win)), f"{errors}" + (f" ({', '.join(kinds)})" if kinds else ""),
                  f"{pct(ok, 50):.1f}", f"{pct(ok, 99):.1f}"]
    print("| " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wrk")
    w.add_argument("results")
    w.add_argument("--servers", required=True)
    w.add_argument("--compare", action="append", default=[])
    w.add_argument("--label", action="append", default=[])
    w.add_argument("--metric", default="cpu_us", choices=["cpu_us", "cpu_attempt_us"])
    w.set_defaults(fn=cmd_wrk)
    fr = sub.add_parser("flood-row")
    fr.add_argument("dump")
    fr.add_argument("--duration", type=float, required=True)
    fr.set_defaults(fn=cmd_flood_row)
    f = sub.add_parser("flood")
    f.add_argument("results")
    f.add_argument("--servers", required=True)
    f.add_argument("--compare", action="append", default=[])
    f.add_argument("--label", action="append", default=[])
    f.add_argument("--capacity", type=float, default=10.0)
    f.add_argument("--bar-ms", type=float, default=1100.0)
    f.set_defaults(fn=cmd_flood)
    r = sub.add_parser("roll")
    r.add_argument("dump")
    r.add_argument("--at", type=float, required=True)
    r.add_argument("--window", type=float, required=True)
    r.add_argument("--duration", type=float, required=True)
    r.add_argument("--label", required=True)
    r.set_defaults(fn=cmd_roll)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
