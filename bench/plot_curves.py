#!/usr/bin/env python
"""Training curves of several train.py runs side by side, as one SVG (no plotting library needed).

Reads each run's WORKDIR/metrics.jsonl and draws one metric (default: the total loss) against the
step, one coloured line per run, with the runs' names in a legend.

    python bench/plot_curves.py runs/fp32 runs/bf16 --names float32 bfloat16 --output docs/bf16_loss.svg
"""

from __future__ import annotations

import argparse
import json
import os

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
WIDTH, HEIGHT, MARGIN = 640, 360, 50


def read_curve(workdir: str, metric: str) -> list[tuple[int, float]]:
    points = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if metric in row:
                points[row["step"]] = row[metric]  # a resumed run repeats steps: the last one counts
    if not points:
        raise SystemExit(f"{workdir}/metrics.jsonl has no {metric!r}")
    return sorted(points.items())


def svg(curves: dict[str, list[tuple[int, float]]], metric: str) -> str:
    steps = [s for curve in curves.values() for s, _ in curve]
    values = [v for curve in curves.values() for _, v in curve]
    x0, x1, y0, y1 = min(steps), max(steps), min(values), max(values)

    def xy(step, value):
        x = MARGIN + (step - x0) / max(x1 - x0, 1) * (WIDTH - 2 * MARGIN)
        y = HEIGHT - MARGIN - (value - y0) / max(y1 - y0, 1e-12) * (HEIGHT - 2 * MARGIN)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">step</text>',
        f'<text x="{MARGIN}" y="{MARGIN - 12}">{metric}</text>',
    ]
    for value in (y0, (y0 + y1) / 2, y1):
        y = xy(x0, value).split(",")[1]
        parts.append(f'<text x="{MARGIN - 6}" y="{y}" text-anchor="end">{value:.3g}</text>')
    for step in (x0, (x0 + x1) // 2, x1):
        x = xy(step, y0).split(",")[0]
        parts.append(f'<text x="{x}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">{step}</text>')
    for i, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(xy(s, v) for s, v in curve)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{WIDTH - MARGIN - 90}" y="{MARGIN + 16 * i}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="train.py run folders")
    parser.add_argument("--names", nargs="+", help="legend entries (default: the folder names)")
    parser.add_argument("--metric", default="loss")
    parser.add_argument("--output", required=True, help="the .svg to write")
    args = parser.parse_args()
    names = args.names or [os.path.basename(w.rstrip("/")) for w in args.workdirs]
    if len(names) != len(args.workdirs):
        parser.error(f"{len(args.workdirs)} run folders but {len(names)} --names")
    curves = {name: read_curve(w, args.metric) for name, w in zip(names, args.workdirs, strict=True)}
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(svg(curves, args.metric))
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
