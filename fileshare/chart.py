"""SVG charts of a sweep's cells and of several runs side by side, with nothing but the standard library.

Charts are drawn from the cell records of a results.jsonl (``model``,
``server_workers``, ``op``, ``size_mb``, ``clients`` and the stress test's
``result``), so they can show what the CSV does not keep: the aggregate
throughput and the latencies.  Any model names work; "thread" and "process"
come first and keep their colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence
from xml.sax.saxutils import escape

from . import stats

MAIN_MODELS = ("thread", "process")
# Thread servers blue, process servers red-orange; other models (foreign servers, other runs) after.
COLOURS = {"thread": "#2166ac", "process": "#d6604d"}
OTHER_COLOURS = ["#1b7837", "#762a83", "#8c510a", "#4d4d4d", "#01665e", "#c51b7d"]
# Shapes and dashes as well as colours, so that the lines stay apart on a grey-scale print.
MARKERS = ["circle", "square", "triangle", "diamond"]
DASHES = ["", "6,3", "2,2", "8,3,2,3"]
# Runs compared side by side get colours of their own: within a compare panel a colour is a run, not a model.
RUN_COLOURS = ["#4d4d4d", "#e08214", "#1b7837", "#762a83", "#01665e", "#c51b7d"]

WIDTH = 1000
LEFT, RIGHT = 70, 20
FONT = 'font-family="sans-serif"'


def model_key(model: str) -> tuple:
    """Sort key for models: thread, process, then the rest by name."""
    return (MAIN_MODELS.index(model) if model in MAIN_MODELS else len(MAIN_MODELS), model)


def op_key(op: str) -> tuple:
    return ({"download": 0, "upload": 1}.get(op, 2), op)


def model_order(models: Iterable[str]) -> list[str]:
    return sorted(set(models), key=model_key)


def op_order(ops: Iterable[str]) -> list[str]:
    return sorted(set(ops), key=op_key)


def colour_of(model: str, models: Sequence[str]) -> str:
    if model in COLOURS:
        return COLOURS[model]
    others = [m for m in models if m not in COLOURS]
    return OTHER_COLOURS[others.index(model) % len(OTHER_COLOURS)]


def _lighter(colour: str, share: float) -> str:
    """``colour`` mixed with ``share`` of white."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * share):02x}" for c in rgb)


def _plural(count: float, word: str) -> str:
    return f"{count:g} {word}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------- scales


@dataclass
class Scale:
    """Maps values to a share of an axis (0 at the bottom, 1 at the top), linear or log."""
    low: float
    high: float
    log: bool

    def share(self, value: float) -> float:
        if self.log:
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def ticks(self) -> list[float]:
        if self.log:
            # 2 and 5 between the powers of ten only while they stay apart in a small panel.
            steps = (1, 2, 5) if self.high / self.low <= 1000 else (1,)
            found, decade = [], self.low
            while decade <= self.high * 1.0001:
                found += [decade * m for m in steps if decade * m <= self.high * 1.0001]
                decade *= 10
            return found
        step = (self.high - self.low) / 5
        return [self.low + i * step for i in range(6)]


def linear_scale(values: Iterable[float]) -> Scale:
    """From 0 to a round number above the largest value, in five round steps."""
    top = max((v for v in values if v is not None), default=0.0)
    if top <= 0:
        return Scale(0.0, 1.0, False)
    magnitude = 10 ** math.floor(math.log10(top / 5))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude * 5 >= top)
    return Scale(0.0, step * 5, False)


def log_scale(values: Iterable[float]) -> Scale:
    positive = [v for v in values if v is not None and v > 0] or [1.0]
    low = 10 ** math.floor(math.log10(min(positive)))
    high = 10 ** math.ceil(math.log10(max(positive)))
    return Scale(low, high if high > low else low * 10, True)


def _tick_text(value: float) -> str:
    return f"{value:g}" if value < 1e5 else f"{value:.0f}"


# ---------------------------------------------------------------------- drawing pieces


class Canvas:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.height = 0.0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def text(self, x: float, y: float, content: str, size: int = 12, anchor: str = "start", bold: bool = False,
             rotate: bool = False) -> None:
        extra = ' font-weight="bold"' if bold else ""
        if rotate:
            extra += f' transform="rotate(-90 {x:.1f} {y:.1f})"'
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
                 f'{escape(content)}</text>')

    def heading(self, y: float, title: str, note: str) -> float:
        self.text(LEFT - 50, y, title, size=17, bold=True)
        self.text(LEFT - 50, y + 18, note, size=12)
        return y + 40

    def axes(self, x: float, y: float, w: float, h: float, scale: Scale, label: Optional[str]) -> None:
        """Grid lines with tick values on the left of the box at (x, y), and the y axis label."""
        for tick in scale.ticks():
            ty = y + h * (1 - scale.share(tick))
            self.add(f'<line x1="{x:.1f}" x2="{x + w:.1f}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>')
            self.text(x - 4, ty + 4, _tick_text(tick), size=10, anchor="end")
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="none" stroke="#888"/>')
        if label:
            self.text(x - 40, y + h / 2, label, size=11, anchor="middle", rotate=True)

    def marker(self, shape: str, x: float, y: float, colour: str, tooltip: str = "") -> None:
        title = f"<title>{escape(tooltip)}</title>" if tooltip else ""
        if shape == "square":
            self.add(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}">{title}</rect>')
        elif shape == "triangle":
            self.add(f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} {x - 5:.1f},{y + 4:.1f}" '
                     f'fill="{colour}">{title}</polygon>')
        elif shape == "diamond":
            self.add(f'<polygon points="{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} '
                     f'{x - 5:.1f},{y:.1f}" fill="{colour}">{title}</polygon>')
        else:
            self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{colour}">{title}</circle>')

    def legend(self, y: float, entries: Sequence[tuple[str, str, str, Optional[str]]]) -> float:
        """One row of (label, colour, marker, dash) entries (dash None: a bar, no line); returns the y below it."""
        x = LEFT
        for label, colour, shape, dash in entries:
            if dash is not None:
                self.add(f'<line x1="{x:.1f}" x2="{x + 26:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
                         f'stroke-width="2" stroke-dasharray="{dash}"/>')
            self.marker(shape, x + 13, y, colour)
            self.text(x + 32, y + 4, label)
            x += 46 + 7 * len(label)
        return y + 22

    def svg(self) -> str:
        height = math.ceil(self.height)
        return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
                          f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="12">',
                          f'<rect width="{WIDTH}" height="{height}" fill="white"/>', *self.parts, "</svg>"]) + "\n"


def _result(cell: Mapping) -> Mapping:
    return cell.get("result") or {}


def aggregate_mbps(cell: Mapping) -> Optional[float]:
    value = _result(cell).get("aggregate_throughput_Bps")
    return None if value is None else value / 1e6


def sample_rates(cell: Mapping) -> list[float]:
    """Aggregate MB/s of each measured run of a cell record that had a successful client (a record from
    before repeats has its one result)."""
    samples = cell.get("samples") or ([cell["result"]] if cell.get("result") else [])
    return [s["aggregate_throughput_Bps"] / 1e6 for s in samples
            if s.get("succeed") and s.get("aggregate_throughput_Bps")]


def aggregate_interval(cell: Mapping) -> Optional[tuple[float, float]]:
    """The 95% confidence interval of a cell's mean aggregate MB/s; None with fewer than two runs."""
    summary = stats.summarize(sample_rates(cell))
    return None if summary is None else summary.ci


def per_client_Bps(result: Mapping) -> Optional[float]:
    """Throughput per client as the original computes it: file bytes of the successful clients / the sum of
    their times, i.e. the file's size / their mean time (so it agrees with "Waktu total per client")."""
    seconds = result.get("total_time_s")
    if not seconds or not result.get("succeed"):
        return None
    size = result.get("size_bytes") or round(float(result["size_mb"]) * 2 ** 20)
    return size / seconds


def per_client_mbps(cell: Mapping) -> Optional[float]:
    value = per_client_Bps(_result(cell))
    return None if value is None else value / 1e6


def latency(cell: Mapping, which: str) -> Optional[float]:
    return (_result(cell).get("latency_s") or {}).get(which)


# ---------------------------------------------------------------------- the views of one run

PointDrawer = Callable[[Canvas, float, float, float, Scale, Sequence[Mapping], Sequence[str]], None]


def _grid(canvas: Canvas, top: float, cells: Sequence[Mapping], scale: Scale, y_label: str,
          draw: PointDrawer) -> float:
    """One small panel per (operation, size) row and server pool size column; x = clients."""
    ops = op_order(c["op"] for c in cells)
    sizes = sorted({c["size_mb"] for c in cells})
    pools = sorted({c["server_workers"] for c in cells})
    clients = sorted({c["clients"] for c in cells})
    models = model_order(c["model"] for c in cells)
    gap_x, panel_h, gap_y = 55, 150, 62
    panel_w = (WIDTH - LEFT - RIGHT - gap_x * (len(pools) - 1)) / len(pools)
    step = panel_w / len(clients)
    y = top
    for op in ops:
        for size in sizes:
            row = [c for c in cells if c["op"] == op and c["size_mb"] == size]
            if not row:
                continue
            for col, pool in enumerate(pools):
                x = LEFT + col * (panel_w + gap_x)
                canvas.text(x + panel_w / 2, y - 6, f"{op} {size:g} MB, server pool of {pool}", size=12,
                            anchor="middle", bold=True)
                canvas.axes(x, y, panel_w, panel_h, scale, y_label if col == 0 else None)
                for i, count in enumerate(clients):
                    canvas.text(x + (i + 0.5) * step, y + panel_h + 14, str(count), size=11, anchor="middle")
                canvas.text(x + panel_w / 2, y + panel_h + 29, "clients at once", size=11, anchor="middle")
                here = [c for c in row if c["server_workers"] == pool]
                draw(canvas, x, y, panel_h, scale, here, models)
            y += panel_h + gap_y
    return y - gap_y + 40


def _x_of(all_clients: Sequence[int], x: float, panel_w: float) -> dict[int, float]:
    step = panel_w / len(all_clients)
    return {count: x + (i + 0.5) * step for i, count in enumerate(all_clients)}


def write_chart(cells: Sequence[Mapping], path: str | Path, subtitle: str = "") -> None:
    """Aggregate throughput, latency and throughput per client of every cell, in one SVG."""
    cells = [c for c in cells if c.get("type", "cell") == "cell"]
    canvas = Canvas()
    if not cells:
        canvas.text(LEFT, 40, "No cells to show", size=16, bold=True)
        canvas.height = 80
        Path(path).write_text(canvas.svg(), encoding="utf-8")
        return
    models = model_order(c["model"] for c in cells)
    clients = sorted({c["clients"] for c in cells})
    pools = sorted({c["server_workers"] for c in cells})
    panel_w = (WIDTH - LEFT - RIGHT - 55 * (len(pools) - 1)) / len(pools)
    style = {m: (colour_of(m, models), MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)])
             for i, m in enumerate(models)}
    legend = [(f"{m} server", *style[m]) for m in models]
    note = f" {subtitle}" if subtitle else ""

    def lines(canvas: Canvas, x: float, y: float, h: float, scale: Scale, here: Sequence[Mapping],
              models: Sequence[str]) -> None:
        xs = _x_of(clients, x, panel_w)
        for model in models:
            colour, shape, dash = style[model]
            points = sorted((c["clients"], aggregate_mbps(c)) for c in here
                            if c["model"] == model and aggregate_mbps(c) is not None)
            coords = [(xs[n], y + h * (1 - scale.share(v))) for n, v in points]
            if len(coords) > 1:
                canvas.add(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in coords)}" fill="none" '
                           f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
            intervals = {c["clients"]: aggregate_interval(c) for c in here if c["model"] == model}
            for (n, v), (px, py) in zip(points, coords):
                interval = intervals.get(n)
                if interval is not None:
                    ends = [y + h * (1 - min(max(scale.share(max(e, 0.0)), 0.0), 1.0)) for e in interval]
                    canvas.add(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{ends[0]:.1f}" y2="{ends[1]:.1f}" '
                               f'stroke="{colour}" stroke-width="1.5"/>')
                    for end in ends:
                        canvas.add(f'<line x1="{px - 4:.1f}" x2="{px + 4:.1f}" y1="{end:.1f}" y2="{end:.1f}" '
                                   f'stroke="{colour}" stroke-width="1.5"/>')
                said = "" if interval is None else f" (95% CI of the mean {interval[0]:.0f} to {interval[1]:.0f})"
                canvas.marker(shape, px, py, colour, f"{model}, {_plural(n, 'client')}: {v:.0f} MB/s in total{said}")

    def whiskers(canvas: Canvas, x: float, y: float, h: float, scale: Scale, here: Sequence[Mapping],
                 models: Sequence[str]) -> None:
        xs = _x_of(clients, x, panel_w)
        spread = min(panel_w / len(clients) * 0.6, 60) / max(len(models), 1)
        for mi, model in enumerate(models):
            colour, shape, _ = style[model]
            for c in here:
                p50, p99 = latency(c, "p50"), latency(c, "p99")
                if c["model"] != model or p50 is None or p50 <= 0:
                    continue
                px = xs[c["clients"]] + (mi - (len(models) - 1) / 2) * spread
                y50 = y + h * (1 - scale.share(p50))
                if p99 is not None and p99 > 0:
                    y99 = y + h * (1 - scale.share(p99))
                    canvas.add(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y50:.1f}" y2="{y99:.1f}" '
                               f'stroke="{colour}" stroke-width="1.5"/>')
                    canvas.add(f'<line x1="{px - 4:.1f}" x2="{px + 4:.1f}" y1="{y99:.1f}" y2="{y99:.1f}" '
                               f'stroke="{colour}" stroke-width="1.5"/>')
                canvas.marker(shape, px, y50, colour, f"{model}, {_plural(c['clients'], 'client')}: p50 {p50:.3g} s, "
                              f"p99 {p99 if p99 is None else f'{p99:.3g}'} s")

    y = canvas.heading(30, "Aggregate throughput: what the server moves in total",
                       "File bytes of all successful clients / wall time, MB/s (10^6 B/s), linear scale. Dot: the "
                       f"median run; whisker: 95% CI of the mean over the runs.{note}")
    y = canvas.legend(y, legend) + 16
    tops = [aggregate_mbps(c) for c in cells] + [i[1] for i in map(aggregate_interval, cells) if i is not None]
    y = _grid(canvas, y, cells, linear_scale(tops), "total MB/s", lines)
    y = canvas.heading(y + 10, "Latency: seconds one client waits for its transfer",
                       "Dot: median (p50) over the cell's clients; whisker up to p99. Log scale.")
    y = canvas.legend(y, legend) + 16
    y = _grid(canvas, y, cells, log_scale([latency(c, "p50") for c in cells] + [latency(c, "p99") for c in cells]),
              "seconds (log)", whiskers)
    y = canvas.heading(y + 10, "Throughput per client",
                       "File bytes of successful clients / the sum of their times (median run), log scale. "
                       "Bars darker for larger server pools.")
    canvas.height = _per_client_bars(canvas, y, cells, models) + 10
    Path(path).write_text(canvas.svg(), encoding="utf-8")


def _per_client_bars(canvas: Canvas, top: float, cells: Sequence[Mapping], models: Sequence[str]) -> float:
    """Bars of throughput per client for every (size, clients) group, one panel per operation."""
    pools = sorted({c["server_workers"] for c in cells})
    series = [(m, w) for m in models for w in pools]
    colours = {}
    for m in models:
        for i, w in enumerate(pools):
            colours[(m, w)] = _lighter(colour_of(m, models), 0.6 * (len(pools) - 1 - i) / max(len(pools) - 1, 1))
    groups = sorted({(c["size_mb"], c["clients"]) for c in cells})
    values = {(c["op"], c["size_mb"], c["clients"], c["model"], c["server_workers"]): per_client_mbps(c)
              for c in cells}
    entries = [(f"{m} x{w}", colours[(m, w)], "square", None) for m, w in series]
    y = top
    for start in range(0, len(entries), 6):
        y = canvas.legend(y, entries[start:start + 6])
    return _bars(canvas, y + 16, op_order(c["op"] for c in cells),
                 [[f"{size:g} MB", _plural(n, "client")] for size, n in groups],
                 [colours[s] for s in series],
                 lambda op, gi, si: values.get((op, *groups[gi], *series[si])),
                 log_scale(values.values()), "MB/s per client (log)",
                 lambda op, gi, si, v: f"{series[si][0]} x{series[si][1]}, {op} {groups[gi][0]:g} MB, "
                                       f"{_plural(groups[gi][1], 'client')}: {v:.1f} MB/s per client")


def _bars(canvas: Canvas, top: float, panels: Sequence[str], groups: Sequence[Sequence[str]],
          colours: Sequence[str], value: Callable[[str, int, int], Optional[float]], scale: Scale, y_label: str,
          tooltip: Callable[[str, int, int, float], str]) -> float:
    """Grouped bars, one panel per name in ``panels``; returns the y below the last panel."""
    panel_w, panel_h = WIDTH - LEFT - RIGHT, 220
    group_w = panel_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(colours), 1)
    y = top
    for panel in panels:
        canvas.text(LEFT, y - 6, panel, size=13, bold=True)
        canvas.axes(LEFT, y, panel_w, panel_h, scale, y_label)
        for gi, label in enumerate(groups):
            gx = LEFT + gi * group_w + group_w * 0.1
            for si, colour in enumerate(colours):
                v = value(panel, gi, si)
                if v is None or v <= 0:
                    continue
                by = y + panel_h * (1 - min(scale.share(v), 1.0))
                canvas.add(f'<rect x="{gx + si * bar_w:.1f}" y="{by:.1f}" width="{bar_w * 0.9:.1f}" '
                           f'height="{y + panel_h - by:.1f}" fill="{colour}"><title>{escape(tooltip(panel, gi, si, v))}'
                           f'</title></rect>')
            for li, line in enumerate(label):
                canvas.text(LEFT + (gi + 0.5) * group_w, y + panel_h + 14 + 13 * li, line,
                            size=9 if len(groups) > 20 else 10 if len(groups) > 12 else 11, anchor="middle")
        y += panel_h + 30 + 13 * max((len(g) for g in groups), default=1)
    return y


# ---------------------------------------------------------------------- several runs side by side


def write_compare_chart(labels: Sequence[str], runs: Sequence[Mapping[tuple, Mapping]], path: str | Path) -> None:
    """Aggregate MB/s of every cell in each run, side by side; one panel per operation and model.

    ``runs`` maps (model, server workers, op, size MB, clients) to a cell record, one mapping per run.
    """
    keys = {k for run in runs for k in run}
    models = model_order(k[0] for k in keys)
    canvas = Canvas()
    y = canvas.heading(30, "Aggregate throughput, run by run",
                       "File bytes of all successful clients / wall time, MB/s (10^6 B/s), linear scale. "
                       "A missing bar: the cell is not in that run or no client succeeded.")
    colours = [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(len(labels))]
    entries = [(label, colours[i], "square", None) for i, label in enumerate(labels)]
    for start in range(0, len(entries), 5):
        y = canvas.legend(y, entries[start:start + 5])
    panels = [f"{op}, {model} server" for op in op_order(k[2] for k in keys) for model in models
              if any(k[2] == op and k[0] == model for k in keys)]
    where = {f"{op}, {model} server": (op, model) for op in op_order(k[2] for k in keys) for model in models}
    groups = sorted({(k[3], k[4], k[1]) for k in keys})
    scale = linear_scale(aggregate_mbps(cell) for run in runs for cell in run.values())

    def value(panel: str, gi: int, si: int) -> Optional[float]:
        op, model = where[panel]
        size, clients, pool = groups[gi]
        cell = runs[si].get((model, pool, op, size, clients))
        return None if cell is None else aggregate_mbps(cell)

    canvas.height = _bars(canvas, y + 16, panels, [[f"{s:g}MB", f"{n}cl", f"x{w}"] for s, n, w in groups], colours,
                          value, scale, "total MB/s",
                          lambda panel, gi, si, v: f"{labels[si]}: {panel}, {groups[gi][0]:g} MB, "
                                                   f"{_plural(groups[gi][1], 'client')}, server pool of "
                                                   f"{groups[gi][2]}: {v:.0f} MB/s") + 20
    canvas.text(LEFT, canvas.height - 12, "Groups: size, clients at once (cl), server pool size (x).", size=11)
    Path(path).write_text(canvas.svg(), encoding="utf-8")

