#!/usr/bin/env python3
"""Draws docs/bench.svg from benchmark output lines (standard library only).

Usage: scripts/chart.py [INPUT] [OUTPUT]   (defaults: docs/bench.txt docs/bench.svg)

Input lines look like `BENCH VARIANT key=value ...` as printed by
benches/pipe_bench.rs and benches/bench_*.rs; `ratio`, `summary` and
anything else are ignored. Repeated lines for the same benchmark and variant
(pipe_bench.sh runs each several times) are reduced to their median.

Each benchmark becomes one group of horizontal bars: every variant's speed
relative to the baseline (epoll for pipe_bench, tokio for the rest), on a
log scale, so 1.0 is "as fast as the baseline" and longer is better. The
metric is the first `*_per_s` field; for latency benchmarks it is
`median_us`, inverted (baseline / variant) so that longer is still better.
"""

import math
import re
import statistics
import sys
from xml.sax.saxutils import escape

COLORS = {
    "ringloop": "#d9480f",
    "ringloop-edge": "#a61e4d",
    "ringloop-ops": "#862e9c",
    "ringloop-async": "#f59f00",
    "ringloop-async-ops": "#e8590c",
    "ringloop-async-multi": "#5c940d",
    "epoll": "#495057",
    "epoll-edge": "#868e96",
    "uring-raw": "#adb5bd",
    "uring-raw-fixed": "#ced4da",
    "uring-raw-edge": "#dee2e6",
    "tokio": "#1c7ed6",
}


def parse(lines):
    """Returns {group: {variant: [(metric, value, lower_is_better)]}} in input order."""
    groups = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[1] in ("ratio",) or parts[0] in ("summary",):
            continue
        bench, variant = parts[0], parts[1]
        if not re.fullmatch(r"[a-z][a-z0-9-]*", bench):
            continue
        if variant.startswith("pipes="):
            # pipe_bench: VARIANT pipes=N active=A writes=W ...
            fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            variant = bench
            bench = "pipe_bench n={} a={} w={}".format(
                fields.get("pipes"), fields.get("active"), fields.get("writes")
            )
        else:
            fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        metric = next((k for k in fields if k.endswith("_per_s")), None)
        lower = False
        if metric is None and "median_us" in fields:
            metric, lower = "median_us", True
        if metric is None:
            continue
        try:
            value = float(fields[metric])
        except ValueError:
            continue
        groups.setdefault(bench, {}).setdefault(variant, []).append((metric, value, lower))
    return groups


def reduce(groups):
    """Median per (group, variant); returns [(group, metric, lower, [(variant, value, rel)])]."""
    out = []
    for bench, variants in groups.items():
        baseline = "epoll" if bench.startswith("pipe_bench") else "tokio"
        med = {v: statistics.median(x[1] for x in vals) for v, vals in variants.items()}
        metric, _, lower = next(iter(variants.values()))[0]
        base = med.get(baseline)
        if not base:
            continue
        rows = []
        order = [
            "ringloop",
            "ringloop-edge",
            "ringloop-ops",
            "ringloop-async",
            "ringloop-async-ops",
            "ringloop-async-multi",
            "epoll",
            "epoll-edge",
            "uring-raw",
            "uring-raw-fixed",
            "uring-raw-edge",
            "tokio",
        ]
        for v in sorted(med, key=lambda v: order.index(v) if v in order else 99):
            rel = (base / med[v]) if lower else (med[v] / base)
            rows.append((v, med[v], rel))
        out.append((bench, metric, lower, baseline, rows))
    return out


def fmt_value(v, metric):
    if metric.endswith("_us"):
        return "{:.1f} µs".format(v)
    if v >= 1e6:
        return "{:.2f} M/s".format(v / 1e6)
    if v >= 1e3:
        return "{:.0f} k/s".format(v / 1e3)
    return "{:.0f}/s".format(v)


def svg(data, title):
    width, left, right = 1060, 270, 240
    bar_h, gap, group_gap, top = 16, 3, 22, 70
    lo, hi = 0.1, 200.0  # log-scale range of the relative speed
    plot_w = width - left - right

    def x_of(rel):
        rel = min(max(rel, lo), hi)
        return left + plot_w * (math.log10(rel) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    height = top + sum(len(rows) * (bar_h + gap) + group_gap for *_, rows in data) + 40
    e = []
    e.append(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">'.format(w=width, h=height)
    )
    e.append('<rect width="100%" height="100%" fill="white"/>')
    e.append('<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>'.format(left, escape(title)))
    e.append(
        '<text x="{}" y="42" fill="#555">speed relative to the baseline (epoll for pipe_bench, '
        'tokio otherwise); log scale, longer is better</text>'.format(left)
    )
    grid_bottom = height - 30
    for tick in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100):
        x = x_of(tick)
        color, w = ("#000", 1.5) if tick == 1 else ("#ddd", 1)
        e.append('<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="{3}" stroke-width="{4}"/>'.format(
            x, top - 8, grid_bottom, color, w))
        e.append('<text x="{:.1f}" y="{}" text-anchor="middle" fill="#555">{}x</text>'.format(
            x, grid_bottom + 14, tick))
    y = top
    for bench, metric, lower, baseline, rows in data:
        label = "{} ({}{})".format(bench, metric, ", lower is better" if lower else "")
        e.append('<text x="{}" y="{}" font-weight="bold" text-anchor="end">{}</text>'.format(
            left - 8, y + bar_h - 3, escape(bench)))
        e.append('<text x="{}" y="{}" fill="#777" text-anchor="end" font-size="10">{}</text>'.format(
            left - 8, y + 2 * bar_h, escape(metric + (" (lower is better)" if lower else ""))))
        for variant, value, rel in rows:
            x0, x1 = x_of(lo), x_of(rel)
            color = COLORS.get(variant, "#868e96")
            e.append('<rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="{}"><title>{}</title></rect>'.format(
                x0, y, max(x1 - x0, 1), bar_h, color, escape(label)))
            e.append('<text x="{:.1f}" y="{}" fill="#222">{} {:.2f}x ({})</text>'.format(
                x1 + 4, y + bar_h - 4, escape(variant), rel, escape(fmt_value(value, metric))))
            y += bar_h + gap
        y += group_gap
    e.append("</svg>")
    return "\n".join(e) + "\n"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "docs/bench.txt"
    dst = sys.argv[2] if len(sys.argv) > 2 else "docs/bench.svg"
    with open(src, encoding="utf-8") as f:
        data = reduce(parse(f))
    if not data:
        sys.exit("no benchmark lines with a baseline found in " + src)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(svg(data, "ringloop benchmarks"))
    print("wrote {} ({} benchmarks)".format(dst, len(data)))


if __name__ == "__main__":
    main()
