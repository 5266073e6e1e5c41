"""An SVG bar chart of a results.csv, with nothing but the standard library."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

# Thread servers in blues, process servers in oranges; darker = more server workers.
PALETTE = {"thread": ["#9ecae1", "#4292c6", "#08519c"], "process": ["#fdae6b", "#f16913", "#a63603"]}
PANEL_W, PANEL_H = 900, 300
MARGIN_L, MARGIN_T, GAP = 70, 60, 90


def _series(rows: Sequence[dict]) -> list[tuple[str, int]]:
    seen = {(r["Model concurrency"], int(r["Jumlah server worker pool"])) for r in rows}
    return sorted(seen, key=lambda s: (s[0] != "thread", s[1]))


def _groups(rows: Sequence[dict]) -> list[tuple[str, int]]:
    seen = {(r["Volume"], int(r["Jumlah client worker pool"])) for r in rows}
    return sorted(seen, key=lambda g: (float(g[0].split()[0]), g[1]))


def _colour(series: list[tuple[str, int]], index: int) -> str:
    model = series[index][0]
    shades = PALETTE.get(model, ["#888"])
    shade = sum(1 for other in series[:index] if other[0] == model)
    return shades[min(shade, len(shades) - 1)]


def write_chart(rows: Sequence[dict], path: str | Path) -> None:
    """Throughput per client (log scale) for every cell, one panel per operation."""
    ops = sorted({r["Operasi"] for r in rows})
    series, groups = _series(rows), _groups(rows)
    values = {(r["Operasi"], r["Volume"], int(r["Jumlah client worker pool"]), r["Model concurrency"],
               int(r["Jumlah server worker pool"])): float(r["Throughput per client"]) / 1e6
              for r in rows if r["Throughput per client"]}
    positive = [v for v in values.values() if v > 0] or [1.0]
    low = 10 ** math.floor(math.log10(min(positive)))
    high = 10 ** math.ceil(math.log10(max(positive)))
    if high <= low:
        high = low * 10
    width = MARGIN_L + PANEL_W + 260
    height = MARGIN_T + len(ops) * (PANEL_H + GAP) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{MARGIN_L}" y="28" font-size="16" font-weight="bold">Throughput per client, thread vs '
           f'process file server (MB/s, log scale)</text>']

    def y_of(value: float, top: float) -> float:
        share = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
        return top + PANEL_H * (1 - share)

    group_w = PANEL_W / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for panel, op in enumerate(ops):
        top = MARGIN_T + panel * (PANEL_H + GAP)
        out.append(f'<text x="{MARGIN_L}" y="{top - 8}" font-size="14" font-weight="bold">{escape(op)}</text>')
        decade = low
        while decade <= high * 1.0001:
            for mult in (1, 2, 5):
                tick = decade * mult
                if tick > high * 1.0001:
                    break
                y = y_of(tick, top)
                out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + PANEL_W}" y1="{y:.1f}" y2="{y:.1f}" '
                           f'stroke="#ddd"/>')
                out.append(f'<text x="{MARGIN_L - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
            decade *= 10
        for gi, (volume, clients) in enumerate(groups):
            gx = MARGIN_L + gi * group_w + group_w * 0.1
            for si, (model, workers) in enumerate(series):
                value = values.get((op, volume, clients, model, workers))
                if value is None or value <= 0:
                    continue
                y = y_of(value, top)
                colour = _colour(series, si)
                out.append(f'<rect x="{gx + si * bar_w:.1f}" y="{y:.1f}" width="{bar_w * 0.9:.1f}" '
                           f'height="{top + PANEL_H - y:.1f}" fill="{colour}">'
                           f'<title>{escape(f"{model} x{workers}, {op} {volume}, {clients} clients: {value:.1f} MB/s")}'
                           f'</title></rect>')
            label_x = MARGIN_L + (gi + 0.5) * group_w
            out.append(f'<text x="{label_x:.1f}" y="{top + PANEL_H + 16}" text-anchor="middle">{escape(volume)}</text>')
            out.append(f'<text x="{label_x:.1f}" y="{top + PANEL_H + 30}" text-anchor="middle">'
                       f'{clients} client{"s" if clients != 1 else ""}</text>')
        out.append(f'<line x1="{MARGIN_L}" x2="{MARGIN_L + PANEL_W}" y1="{top + PANEL_H}" y2="{top + PANEL_H}" '
                   f'stroke="black"/>')
    for si, (model, workers) in enumerate(series):
        y = MARGIN_T + 10 + si * 20
        colour = _colour(series, si)
        out.append(f'<rect x="{MARGIN_L + PANEL_W + 20}" y="{y}" width="14" height="14" fill="{colour}"/>')
        out.append(f'<text x="{MARGIN_L + PANEL_W + 40}" y="{y + 11}">{escape(model)} server, '
                   f'{workers} worker{"s" if workers != 1 else ""}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n", encoding="utf-8")
