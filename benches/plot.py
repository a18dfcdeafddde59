#!/usr/bin/env python3
"""Tables and an SVG figure of a benches/adaptive.sh run, with the Python standard library only.

Run with `python3 benches/plot.py --results bench-results/adaptive-STAMP --svg docs/adaptive.svg`
(benches/adaptive.sh does). For each mode it reads MODE.meta (load start, hog window, hog CPU),
MODE.poll.csv (benches/poll_status.py), MODE.requests.csv (examples/loadgen.rs --dump) and
MODE.status.json (the final /status). It prints two markdown tables on stdout (throughput and
latency by phase; what the light did and what the hog got) and draws one panel per mode: the
light as a coloured band, host CPU and CPU pressure, the endpoint's concurrency, running jobs and
queue depth, and every request's latency, with the hog's window shaded.
"""

import argparse
import csv
import json
import math
import os
import statistics
from xml.sax.saxutils import escape

LIGHT_COLOURS = {"green": "#3aa655", "yellow": "#f2c230", "red": "#d64541"}
MODE_TITLES = {
    "adaptive": "adaptive (workers 2, yellow_workers 1; red → crab)",
    "crab": "crab (one job at a time)",
    "jellyfish": "jellyfish (workers 2)",
}


def read_meta(path):
    meta = {}
    for line in open(path):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            meta[k] = v
    for k in ("t0", "hog_start", "hog_end", "hog_cpu_s", "rate", "duration", "hog_at", "hog_for"):
        meta[k] = float(meta[k])
    return meta


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_poll(path, t0):
    rows = []
    for r in csv.DictReader(open(path)):
        rows.append({
            "t": float(r["unix_s"]) - t0,
            "light": r["light"],
            "cpu": num(r["cpu"]),
            "cpu_pressure": num(r["cpu_pressure"]),
            "concurrency": num(r["concurrency"]),
            "running": num(r["running"]),
            "queue_depth": num(r["queue_depth"]),
        })
    return rows


def read_requests(path):
    return [
        {"t": float(r["scheduled_ms"]) / 1e3, "outcome": r["outcome"],
         "latency_ms": float(r["latency_ms"])}
        for r in csv.DictReader(open(path))
    ]


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def fmt(v, digits=0):
    return "–" if v is None else f"{v:.{digits}f}"


class Run:
    def __init__(self, results, mode):
        base = os.path.join(results, mode)
        self.mode = mode
        self.meta = read_meta(base + ".meta")
        self.meta_raw = {k: str(v) for k, v in self.meta.items()}
        self.poll = read_poll(base + ".poll.csv", self.meta["t0"])
        self.requests = read_requests(base + ".requests.csv")
        try:
            self.status = json.load(open(base + ".status.json"))
        except (OSError, ValueError):
            self.status = {}
        m = self.meta
        self.phases = [
            ("before hog", 0.0, m["hog_at"]),
            ("during hog", m["hog_at"], m["hog_at"] + m["hog_for"]),
            ("after hog", m["hog_at"] + m["hog_for"], m["duration"]),
        ]

    def phase(self, lo, hi):
        """Requests scheduled in [lo, hi): sent, 200s, 503s, others, goodput rps, p50, p99."""
        rs = [r for r in self.requests if lo <= r["t"] < hi]
        ok = [r["latency_ms"] for r in rs if r["outcome"] == "200"]
        rejected = sum(r["outcome"] == "503" for r in rs)
        return {
            "sent": len(rs), "ok": len(ok), "rejected": rejected,
            "other": len(rs) - len(ok) - rejected,
            "goodput": len(ok) / (hi - lo) if hi > lo else None,
            "p50": pct(ok, 50), "p99": pct(ok, 99), "max": max(ok) if ok else None,
        }

    def light_share(self, lo, hi):
        ls = [p["light"] for p in self.poll if lo <= p["t"] < hi]
        n = len(ls) or 1
        return {c: 100 * ls.count(c) / n for c in ("green", "yellow", "red")}

    def decisions(self):
        ex = ((self.status.get("endpoints") or {}).get("/hash") or {}).get("executor") or {}
        keys = ("batches_green_jellyfish", "batches_yellow_jellyfish", "batches_red_crab")
        return " / ".join(str(ex[k]) for k in keys) if all(k in ex for k in keys) else "–"


def tables(runs):
    out = []
    out.append("| mode | phase | sent | 200 | 503 | other | goodput rps | p50 ms | p99 ms | max ms |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        phases = [("whole run", 0.0, run.meta["duration"])] + run.phases
        for name, lo, hi in phases:
            p = run.phase(lo, hi)
            label = f"**{run.mode}**" if name == "whole run" else run.mode
            out.append(
                f"| {label} | {name} | {p['sent']} | {p['ok']} | {p['rejected']} | {p['other']} | "
                f"{fmt(p['goodput'], 1)} | {fmt(p['p50'])} | {fmt(p['p99'])} | {fmt(p['max'])} |")
    out.append("")
    out.append("| mode | light during hog: green / yellow / red % | light after hog (to end of polling) | "
               "first red after hog start s | first green after hog end s | back to green for good after hog end s | "
               "host CPU during hog, mean % | "
               "hog CPU s (of 2 × window) | adaptive batches green / yellow / red | other work, % of a CPU |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        m = run.meta
        hs, he = m["hog_start"] - m["t0"], m["hog_end"] - m["t0"]
        during = run.light_share(hs, he)
        end = max((p["t"] for p in run.poll), default=he)
        after = run.light_share(he, end + 1)
        first_red = next((p["t"] - hs for p in run.poll if p["t"] >= hs and p["light"] == "red"), None)
        first_green = next((p["t"] - he for p in run.poll if p["t"] >= he and p["light"] == "green"), None)
        # Back to green for good: the first poll after the hog from which the light stays green
        # (later than the first green when the server's own catching up stalls the CPU again).
        green_at = None
        for p in run.poll:
            if p["t"] < he:
                continue
            if p["light"] == "green":
                green_at = p["t"] if green_at is None else green_at
            else:
                green_at = None
        cpus = [p["cpu"] for p in run.poll if hs <= p["t"] < he and p["cpu"] is not None]
        out.append(
            f"| {run.mode} | {during['green']:.0f} / {during['yellow']:.0f} / {during['red']:.0f} | "
            f"{after['green']:.0f} / {after['yellow']:.0f} / {after['red']:.0f} | "
            f"{fmt(first_red, 2)} | {fmt(first_green, 1)} | {fmt(None if green_at is None else green_at - he, 1)} | "
            f"{fmt(100 * statistics.mean(cpus) if cpus else None)} | "
            f"{m['hog_cpu_s']:.1f} of {2 * (he - hs):.1f} | {run.decisions()} | "
            f"{run.meta_raw.get('other_cpu_pct', '–')} |")
    return "\n".join(out)


class Svg:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=11, anchor="start", colour="#222", weight="normal"):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'fill="{colour}" font-weight="{weight}">{escape(s)}</text>')

    def rect(self, x, y, w, h, fill, opacity=1.0, stroke="none"):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
                 f'fill="{fill}" fill-opacity="{opacity}" stroke="{stroke}"/>')

    def line(self, x1, y1, x2, y2, colour="#999", width=1.0, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                 f'stroke="{colour}" stroke-width="{width}"{d}/>')

    def polyline(self, points, colour, width=1.5, dash=None, step=False):
        if step:
            stepped = []
            for i, (x, y) in enumerate(points):
                if i:
                    stepped.append((x, stepped[-1][1]))
                stepped.append((x, y))
            points = stepped
        if len(points) < 2:
            return
        d = f' stroke-dasharray="{dash}"' if dash else ""
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.add(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                 f'stroke-width="{width}"{d}/>')

    def render(self):
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">\n'
                f'<rect width="100%" height="100%" fill="white"/>\n')
        return head + "\n".join(self.parts) + "\n</svg>\n"


def draw(runs, path):
    left, right, width = 70, 95, 1000
    plot_w = width - left - right
    band_h, cpu_h, jobs_h, lat_h, gap = 12, 90, 80, 110, 22
    panel_h = 28 + band_h + 6 + cpu_h + gap + jobs_h + gap + lat_h + 36
    height = 50 + panel_h * len(runs) + 30
    svg = Svg(width, height)
    m0 = runs[0].meta
    t_min = -1.0
    t_max = max(max((p["t"] for p in r.poll), default=m0["duration"]) for r in runs)
    t_max = max(t_max, m0["duration"])

    def x(t):
        return left + (min(max(t, t_min), t_max) - t_min) / (t_max - t_min) * plot_w

    svg.text(width / 2, 22, f"GET /hash ({m0['rate']:.0f} rps, open loop) with a CPU hog on both "
             f"CPUs from {m0['hog_at']:.0f} s to {m0['hog_at'] + m0['hog_for']:.0f} s", 14,
             "middle", weight="bold")
    svg.text(width / 2, 38, "band: the traffic light (polled every 250 ms) · shaded: the hog · "
             "x: seconds since the load started", 11, "middle", "#555")

    y0 = 50
    for run in runs:
        m = run.meta
        hs, he = m["hog_start"] - m["t0"], m["hog_end"] - m["t0"]
        svg.text(left, y0 + 16, MODE_TITLES.get(run.mode, run.mode), 13, weight="bold")
        # The light band.
        by = y0 + 24
        polls = run.poll
        for i, p in enumerate(polls):
            t1 = polls[i + 1]["t"] if i + 1 < len(polls) else p["t"] + 0.25
            svg.rect(x(p["t"]), by, x(t1) - x(p["t"]) + 0.3, band_h,
                     LIGHT_COLOURS.get(p["light"], "#bbbbbb"))
        svg.text(left - 6, by + 10, "light", 10, "end", "#555")

        def frame(top, h, label, y_max, ticks, right_label=None):
            svg.rect(x(hs), top, x(he) - x(hs), h, "#888888", 0.15)
            svg.rect(left, top, plot_w, h, "none", stroke="#ccc")
            for v in ticks:
                yy = top + h - v / y_max * h
                svg.line(left, yy, left + plot_w, yy, "#eee")
                svg.text(left - 6, yy + 4, f"{v:g}", 10, "end", "#555")
            svg.text(14, top + h / 2, label, 10, "start", "#333")
            if right_label:
                svg.text(left + plot_w + 6, top + 10, right_label, 10, "start", "#333")

        # Host CPU and CPU pressure, 0-100.
        top = by + band_h + 6
        frame(top, cpu_h, "CPU %", 100, [0, 50, 100])
        def yv(v, top, h, y_max):
            return top + h - min(v, y_max) / y_max * h
        svg.polyline([(x(p["t"]), yv(100 * p["cpu"], top, cpu_h, 100))
                      for p in polls if p["cpu"] is not None], "#1f5fa8")
        svg.polyline([(x(p["t"]), yv(p["cpu_pressure"], top, cpu_h, 100))
                      for p in polls if p["cpu_pressure"] is not None], "#8e44ad", 1.2, "4 3")
        svg.text(left + plot_w + 6, top + 22, "host CPU", 10, "start", "#1f5fa8")
        svg.text(left + plot_w + 6, top + 36, "CPU PSI", 10, "start", "#8e44ad")
        svg.text(left + plot_w + 6, top + 48, "avg10", 10, "start", "#8e44ad")

        # Concurrency, running jobs, queue depth.
        top = top + cpu_h + gap
        q_max = max([p["queue_depth"] or 0 for p in polls] + [2])
        j_max = max(4, 2 * math.ceil(q_max / 2))
        frame(top, jobs_h, "jobs", j_max, sorted({0, j_max // 2, j_max}))
        svg.polyline([(x(p["t"]), yv(p["queue_depth"], top, jobs_h, j_max))
                      for p in polls if p["queue_depth"] is not None], "#999999", 1.2, step=True)
        svg.polyline([(x(p["t"]), yv(p["running"], top, jobs_h, j_max))
                      for p in polls if p["running"] is not None], "#2c3e50", 1.2, step=True)
        svg.polyline([(x(p["t"]), yv(p["concurrency"], top, jobs_h, j_max))
                      for p in polls if p["concurrency"] is not None], "#e67e22", 2.2, step=True)
        svg.text(left + plot_w + 6, top + 10, "concurrency", 10, "start", "#e67e22")
        svg.text(left + plot_w + 6, top + 24, "running", 10, "start", "#2c3e50")
        svg.text(left + plot_w + 6, top + 38, "queued", 10, "start", "#999999")

        # Latency of every request, by its scheduled send time, log scale.
        top = top + jobs_h + gap
        lo_ms, hi_ms = 50.0, 30000.0

        def yl(ms):
            v = min(max(ms, lo_ms), hi_ms)
            return top + lat_h - (math.log10(v) - math.log10(lo_ms)) / (
                math.log10(hi_ms) - math.log10(lo_ms)) * lat_h

        svg.rect(x(hs), top, x(he) - x(hs), lat_h, "#888888", 0.15)
        svg.rect(left, top, plot_w, lat_h, "none", stroke="#ccc")
        for v in (100, 1000, 10000):
            svg.line(left, yl(v), left + plot_w, yl(v), "#eee")
            svg.text(left - 6, yl(v) + 4, f"{v // 1000} s" if v >= 1000 else f"{v} ms", 10, "end",
                     "#555")
        svg.text(14, top + lat_h / 2, "latency", 10, "start", "#333")
        for r in run.requests:
            cx, cy = x(r["t"]), yl(r["latency_ms"])
            if r["outcome"] == "200":
                svg.add(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="1.6" fill="#1f5fa8" '
                        f'fill-opacity="0.7"/>')
            else:
                colour = "#d64541" if r["outcome"] == "503" else "#000000"
                svg.add(f'<path d="M{cx - 2:.1f},{cy - 2:.1f}L{cx + 2:.1f},{cy + 2:.1f}'
                        f'M{cx - 2:.1f},{cy + 2:.1f}L{cx + 2:.1f},{cy - 2:.1f}" '
                        f'stroke="{colour}" stroke-width="1"/>')
        svg.text(left + plot_w + 6, top + 10, "200", 10, "start", "#1f5fa8")
        svg.text(left + plot_w + 6, top + 24, "503", 10, "start", "#d64541")
        svg.text(left + plot_w + 6, top + 38, "other", 10, "start", "#000")

        # Time axis.
        axis_y = top + lat_h
        step = 5 if t_max <= 60 else 10
        for t in range(0, int(t_max) + 1, step):
            svg.line(x(t), axis_y, x(t), axis_y + 4, "#555")
            svg.text(x(t), axis_y + 15, f"{t}", 10, "middle", "#555")
        svg.text(left + plot_w, axis_y + 28, "s", 10, "end", "#555")
        y0 += panel_h

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(svg.render())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="directory written by benches/adaptive.sh")
    ap.add_argument("--modes", default="adaptive crab jellyfish", help="modes, in panel order")
    ap.add_argument("--svg", default="docs/adaptive.svg", help="SVG file to write")
    args = ap.parse_args()
    runs = [Run(args.results, mode) for mode in args.modes.split()]
    print(tables(runs))
    draw(runs, args.svg)


if __name__ == "__main__":
    main()
