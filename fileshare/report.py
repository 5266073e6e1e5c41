"""Reading a sweep's results.jsonl back: tables, findings computed from the numbers, a Markdown
report, and several runs side by side.

A results.jsonl holds an environment line per sweep session (a resumed sweep
has several) and one line per cell: ``model``, ``server_workers``, ``op``,
``size_mb``, ``clients``, ``client_pool``, the representative stress test
``result`` and every ``samples`` run.  Everything here is computed from those
lines, so a report says what the data says and nothing written by hand.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .chart import aggregate_mbps, model_key, model_order, op_key, op_order, write_chart, write_compare_chart

# A ratio within 10% of 1 is a tie: two runs of the same cell on a shared 2-core machine differ that much.
NOISE = 0.10

CSV_COLUMNS = [
    "Nomor", "Model concurrency", "Operasi", "Volume", "Jumlah client worker pool", "Jumlah server worker pool",
    "Waktu total per client", "Throughput per client", "Jumlah client sukses", "Jumlah client gagal",
    "Jumlah server sukses", "Jumlah server gagal",
]
# What identifies a row: the CSV columns that name a cell, each with the cell record field it shows.
KEY_FIELDS = {"Model concurrency": "model", "Operasi": "op", "Volume": "size_mb",
              "Jumlah client worker pool": "clients", "Jumlah server worker pool": "server_workers"}

Key = tuple  # (model, server workers, op, size MB, clients): how cells of two runs are matched


class ReportError(Exception):
    """A results file that cannot be read; the message says which and why."""


def volume(size_mb: float) -> str:
    return f"{size_mb:g} MB"


def key_texts(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """A cell's identifying CSV columns, as the CSV shows them (``fields`` has the KEY_FIELDS names)."""
    return tuple(volume(fields[name]) if name == "size_mb" else str(fields[name]) for name in KEY_FIELDS.values())


def csv_key(row: Sequence[str]) -> tuple[str, ...]:
    """The identifying columns of a CSV row, comparable with :func:`key_texts`."""
    return tuple(row[CSV_COLUMNS.index(column)] for column in KEY_FIELDS)


def csv_row(record: Mapping[str, Any]) -> list:
    """The 12 CSV columns of a cell record."""
    result = record["result"]

    def num(value: Optional[float], digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    def count(value: Optional[int]) -> str:
        return "" if value is None else str(value)

    return [record["row"], *key_texts(record), num(result.get("total_time_s"), 4),
            num(result.get("throughput_Bps"), 0), result["succeed"], result["failed"],
            count(result.get("server_succeeded")), count(result.get("server_failed"))]


def cell_key(record: Mapping[str, Any]) -> Key:
    return (record["model"], int(record["server_workers"]), record["op"], float(record["size_mb"]),
            int(record["clients"]))


def _row_order(key: Key) -> tuple:
    """Tables list cells by operation, size, clients, server pool, then model."""
    model, pool, op, size, clients = key
    return (op_key(op), size, clients, pool, model_key(model))


@dataclass
class Run:
    path: Path
    environments: list[dict] = field(default_factory=list)
    cells: dict[Key, dict] = field(default_factory=dict)       # the last record of each cell

    @property
    def environment(self) -> dict:
        return self.environments[0] if self.environments else {}

    def models(self) -> list[str]:
        return model_order(k[0] for k in self.cells)

    def ordered(self) -> list[dict]:
        return [self.cells[k] for k in sorted(self.cells, key=_row_order)]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    run = Run(path)
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record.get("type")
                    if kind == "environment":
                        run.environments.append(record)
                    elif kind == "cell":
                        run.cells[cell_key(record)] = record
                except (ValueError, AttributeError, KeyError, TypeError) as exc:
                    raise ReportError(f"{path} line {number} is not a record run_experiment wrote ({exc})") from None
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not run.cells:
        raise ReportError(f"{path} holds no cell results; give the .jsonl a sweep wrote")
    return run


def main_pair(models: Sequence[str]) -> Optional[tuple[str, str]]:
    """The two models a run is about: thread and process when both are there, else the first two."""
    ordered = model_order(models)
    return (ordered[0], ordered[1]) if len(ordered) >= 2 else None


def failed_clients(record: Mapping[str, Any]) -> int:
    return int(record["result"].get("failed") or 0)


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    return numerator / denominator if numerator and denominator else None


def _mbps(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _times(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"x{ratio:.2f}"


# ---------------------------------------------------------------------- tables


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def text(self) -> str:
        widths = [max(len(str(r[i])) for r in [self.header, *self.rows]) for i in range(len(self.header))]
        lines = ["  ".join(str(v).rjust(w) for v, w in zip(r, widths)) for r in [self.header, *self.rows]]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines)


def aggregate_table(run: Run) -> Table:
    """Per (operation, size, clients, server pool): each model's aggregate MB/s, the main ratio, failures."""
    models = run.models()
    pair = main_pair(models)
    groups: dict[tuple, dict[str, dict]] = {}
    for key in sorted(run.cells, key=_row_order):
        model, pool, op, size, clients = key
        groups.setdefault((op, size, clients, pool), {})[model] = run.cells[key]
    header = ["operation", "size", "clients", "server pool", *(f"{m} MB/s" for m in models)]
    header += [f"{pair[1]}/{pair[0]}"] if pair else []
    header += [f"failed {'/'.join(models)}"]
    rows = []
    for (op, size, clients, pool), by_model in groups.items():
        rates = {m: aggregate_mbps(by_model[m]) if m in by_model else None for m in models}
        row = [op, volume(size), str(clients), str(pool), *(_mbps(rates[m]) for m in models)]
        row += [_times(_ratio(rates[pair[1]], rates[pair[0]]))] if pair else []
        row += ["/".join(str(failed_clients(by_model[m])) if m in by_model else "-" for m in models)]
        rows.append(row)
    return Table(header, rows)


def cells_table(run: Run) -> Table:
    """results.csv's 12 columns, numbered in the order the sweep ran the cells."""
    return Table(CSV_COLUMNS, [[str(v) for v in csv_row(r)] for r in sorted(run.cells.values(),
                                                                         key=lambda r: r.get("row", 0))])


# ---------------------------------------------------------------------- findings


def _span(ratios: Sequence[float]) -> str:
    low, high = min(ratios), max(ratios)
    middle = f", median x{statistics.median(ratios):.2f}" if len(ratios) > 2 else ""
    return f"x{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"x{low:.2f} to x{high:.2f}{middle}"


def _by(pairs: Sequence[tuple[Key, float]], position: int, unit: str) -> str:
    """Median ratio for each value of one key position, e.g. per number of clients."""
    values = sorted({k[position] for k, _ in pairs})
    return ", ".join(f"{_plural_value(v, unit)} x{statistics.median(r for k, r in pairs if k[position] == v):.2f}"
                     for v in values)


def _plural_value(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 or unit == 'MB' else 's'}"


def findings(run: Run) -> list[str]:
    """Plain sentences with numbers, each computed from the run's cells."""
    found: list[str] = []
    cells = run.cells
    models = run.models()
    pair = main_pair(models)
    ops = op_order(k[2] for k in cells)
    if pair:
        a, b = pair
        found.append(f"Ratios below are {b}/{a} of the aggregate throughput (file bytes of all successful "
                     f"clients / wall time) of the same cell; within {NOISE:.0%} of x1.00 counts as a tie.")
        for op in ops:
            pairs = []
            for key, cell in cells.items():
                if key[0] == a and key[2] == op:
                    other = cells.get((b, *key[1:]))
                    ratio = _ratio(aggregate_mbps(other), aggregate_mbps(cell)) if other else None
                    if ratio is not None:
                        pairs.append((key, ratio))
            if not pairs:
                continue
            b_wins = [r for _, r in pairs if r > 1 + NOISE]
            a_wins = [r for _, r in pairs if r < 1 / (1 + NOISE)]
            ties = len(pairs) - len(b_wins) - len(a_wins)
            parts = [f"{b} moves more in {len(b_wins)}" + (f" ({_span(b_wins)})" if b_wins else ""),
                     f"{a} in {len(a_wins)}" + (f" ({b}/{a} {_span(a_wins)})" if a_wins else ""),
                     f"they tie in {ties}"]
            found.append(f"**{op.capitalize()}**, {len(pairs)} cells: {parts[0]}, {parts[1]}, {parts[2]}.")
            spread = [f"{title}: {_by(pairs, position, unit)}" for title, position, unit in
                      (("by clients at once", 4, "client"), ("by server pool size", 1, "worker"), ("by size", 3, "MB"))
                      if len({k[position] for k, _ in pairs}) > 1]
            if spread:
                found.append(f"{op.capitalize()}, median {b}/{a} " + "; ".join(spread) + ".")
            key, ratio = max(pairs, key=lambda p: max(p[1], 1 / p[1]))
            if max(ratio, 1 / ratio) <= 1 + NOISE:
                continue
            va, vb = aggregate_mbps(cells[key]), aggregate_mbps(cells[(b, *key[1:])])
            found.append(f"{op.capitalize()}, largest difference: {volume(key[3])}, "
                         f"{_plural_value(key[4], 'client')}, server pool of {key[1]}: {b} {vb:.0f} MB/s, "
                         f"{a} {va:.0f} MB/s ({b}/{a} x{ratio:.2f}).")
    found += _pool_findings(run, ops, models)
    found += _failure_findings(run)
    return found


def _pool_findings(run: Run, ops: Sequence[str], models: Sequence[str]) -> list[str]:
    """The effect of server pool size: each model's median aggregate MB/s at each pool size."""
    found = []
    for op in ops:
        for model in models:
            by_pool: dict[int, list[float]] = {}
            for key, cell in run.cells.items():
                rate = aggregate_mbps(cell)
                if key[0] == model and key[2] == op and rate is not None:
                    by_pool.setdefault(key[1], []).append(rate)
            if len(by_pool) < 2:
                continue
            medians = {pool: statistics.median(rates) for pool, rates in sorted(by_pool.items())}
            fewest, most = min(medians), max(medians)
            best = max(medians, key=medians.get)
            found.append(f"{model.capitalize()} server, {op}: median aggregate "
                         + ", ".join(f"{v:.0f} MB/s with {_plural_value(p, 'worker')}" for p, v in medians.items())
                         + f"; the best pool size is {best}, and {most} workers give x{medians[most] / medians[fewest]:.2f}"
                           f" of what {fewest} give{'s' if fewest == 1 else ''}.")
    return found


def uncounted_models(run: Run) -> list[str]:
    """Models whose server never reported its own counts (no STATS): their server columns stay empty."""
    counted = {c["model"] for c in run.cells.values() if c["result"].get("server_succeeded") is not None}
    return [m for m in run.models() if m not in counted]


def _failure_findings(run: Run) -> list[str]:
    cells = run.cells.values()
    transfers = sum(int(c["clients"]) for c in cells)
    failing = [c for c in cells if failed_clients(c)]
    miscounted = [c for c in cells if c["result"].get("server_succeeded") is not None
                  and c["result"]["server_succeeded"] != c["result"].get("succeed")]
    unreported = sum(1 for c in cells if c["result"].get("server_succeeded") is None)
    if not failing:
        text = f"No client failed: {transfers} client transfers in {len(run.cells)} cells, every byte verified."
    else:
        by_model = {m: sum(failed_clients(c) for c in failing if c["model"] == m)
                    for m in model_order(c["model"] for c in failing)}
        worst = sorted(failing, key=lambda c: -failed_clients(c))[:5]
        text = (f"{sum(by_model.values())} of {transfers} client transfers failed, in {len(failing)} of "
                f"{len(run.cells)} cells (" + ", ".join(f"{m}: {n}" for m, n in by_model.items()) + "); most in "
                + "; ".join(f"{c['model']} x{c['server_workers']} {c['op']} {volume(c['size_mb'])} "
                            f"{c['clients']} clients: {failed_clients(c)} failed" for c in worst) + ".")
    if miscounted:
        text += f" In {len(miscounted)} cells the server's own count of successes differs from the clients'."
    elif len(run.cells) > unreported:
        text += " In every cell the server reported, its count of successful requests equals the clients' successes."
    if unreported:
        text += f" {unreported} cells have no server count (the server could not report it)."
    for model in uncounted_models(run):
        text += f" The {model} server could not report its request counts (no STATS), so its cells have none."
    return [text]


# ---------------------------------------------------------------------- the Markdown report


def environment_table(run: Run) -> Table:
    env = run.environment
    start = env.get("start") or env.get("date")
    gil = env.get("gil_enabled")
    rows = [
        ["interpreter", f"{env.get('implementation', '?')} {env.get('python', '?')}"
                        + (f" ({env['executable']})" if env.get("executable") else "")],
        ["free-threaded build", _yes_no(env.get("free_threaded"))],
        ["GIL enabled", _yes_no(gil)],
        ["CPUs", str(env.get("cpu_count", "?"))],
        ["memory", f"{env['memory_bytes'] / 2 ** 30:.1f} GiB" if env.get("memory_bytes") else "?"],
        ["platform", str(env.get("platform", "?"))],
        ["commit", (env.get("commit") or "?")[:12] + (" (with uncommitted changes)" if env.get("dirty") else "")],
        ["client pool type", ", ".join(sorted({str(c.get("client_pool")) for c in run.cells.values()}))],
        ["client work", client_work(run)],
        ["sweep start", str(start or "?")],
    ]
    if env.get("end"):
        rows.append(["sweep end", f"{env['end']} ({env.get('duration_s', 0):.0f} s)"])
    if len(run.environments) > 1:
        rows.append(["sessions", f"{len(run.environments)} (the sweep was resumed; the first session is shown)"])
    rows.append(["command", "python run_experiment.py " + " ".join(env.get("argv") or [])])
    return Table(["", "value"], rows)


def _yes_no(value: Optional[bool]) -> str:
    return "not recorded" if value is None else ("yes" if value else "no")


def write_report(run: Run, markdown: Path, chart: Path) -> None:
    """The Markdown report of one run, with its chart written beside it."""
    cells = run.ordered()
    write_chart(cells, chart, f"{len(cells)} cells.")
    chart_link = chart.name if chart.parent == markdown.parent else str(chart)
    text = [
        f"# Thread pool vs process pool file server: {run.path.name}",
        "",
        f"Computed from `{run.path.name}` by `python run_experiment.py --report {run.path.name}`: "
        f"{len(cells)} cells. MB/s means 10^6 bytes per second; sizes are MiB (1,048,576 bytes).",
        "",
        "## Environment", "", environment_table(run).markdown(), "",
        "## Findings", "", *(f"* {line}" for line in findings(run)), "",
        "## Charts", "",
        "Aggregate throughput (what the server moves in total), latency per client (median with a p99 "
        "whisker) and throughput per client, for every cell.", "",
        f"![Aggregate throughput, latency and throughput per client]({chart_link})", "",
        "## Aggregate throughput (MB/s)", "",
        "File bytes moved by all successful clients / wall time of the cell.", "",
        aggregate_table(run).markdown(), "",
        "## Every cell (the 12 columns of the CSV)", "",
        cells_table(run).markdown(), "",
    ]
    markdown.write_text("\n".join(text), encoding="utf-8")


# ---------------------------------------------------------------------- several runs


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Short distinct names: the file names without .jsonl, with the folder when two are alike."""
    labels = [r.path.stem for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.stem} ({r.path.resolve().parent.name})" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}:{label}" for i, label in enumerate(labels)]
    return labels


def compare_table(runs: Sequence[Run], labels: Sequence[str]) -> Table:
    """Per cell: each run's aggregate MB/s and failed clients, and each run's ratio to the first."""
    keys = sorted({k for r in runs for k in r.cells}, key=_row_order)
    header = ["model", "server pool", "operation", "size", "clients"]
    for label in labels:
        header += [f"{label} MB/s", f"{label} failed"]
    header += [f"{label} / {labels[0]}" for label in labels[1:]]
    rows = []
    for key in keys:
        cells = [r.cells.get(key) for r in runs]
        rates = [aggregate_mbps(c) if c else None for c in cells]
        row = [key[0], str(key[1]), key[2], volume(key[3]), str(key[4])]
        for cell, rate in zip(cells, rates):
            row += [_mbps(rate), str(failed_clients(cell)) if cell else "-"]
        row += [_times(_ratio(rate, rates[0])) for rate in rates[1:]]
        rows.append(row)
    return Table(header, rows)


def compare_summary(runs: Sequence[Run], labels: Sequence[str]) -> list[str]:
    """Per operation and model, the median ratio of each run to the first over the cells both have."""
    lines = []
    first = runs[0]
    for run, label in zip(runs[1:], labels[1:]):
        shared = [k for k in first.cells if k in run.cells]
        missing = len(set(first.cells) ^ set(run.cells))
        for op in op_order(k[2] for k in shared):
            for model in model_order(k[0] for k in shared):
                ratios = [r for k in shared if k[0] == model and k[2] == op
                          for r in [_ratio(aggregate_mbps(run.cells[k]), aggregate_mbps(first.cells[k]))]
                          if r is not None]
                if ratios:
                    lines.append(f"{label} / {labels[0]}, {model} server, {op}: {_span(ratios)} over "
                                 f"{_plural_value(len(ratios), 'cell')}.")
        failed = [sum(failed_clients(c) for c in r.cells.values()) for r in (first, run)]
        lines.append(f"Failed clients: {labels[0]} {failed[0]}, {label} {failed[1]}."
                     + (f" {missing} cells are in only one of the two." if missing else ""))
    return lines


def _interpreter(run: Run) -> str:
    env = run.environment
    flags = []
    if env.get("free_threaded"):
        flags.append("free-threaded")
    if env.get("gil_enabled") is False:
        flags.append("GIL off")
    return f"{env.get('implementation', '?')} {env.get('python', '?')}" + (f" ({', '.join(flags)})" if flags else "")


def client_work(run: Run) -> str:
    """What the run's clients did with the content; cells from before --client-work decoded."""
    return ", ".join(sorted({str(c.get("client_work", "decode")) for c in run.cells.values()}))


def runs_table(runs: Sequence[Run], labels: Sequence[str]) -> Table:
    rows = [[label, str(r.path), _interpreter(r), str(r.environment.get("cpu_count", "?")),
             (r.environment.get("commit") or "?")[:10], str(r.environment.get("start") or r.environment.get("date", "?")),
             client_work(r), str(len(r.cells))] for r, label in zip(runs, labels)]
    return Table(["run", "file", "interpreter", "CPUs", "commit", "start", "client work", "cells"], rows)


def write_compare(runs: Sequence[Run], labels: Sequence[str], markdown: Path, chart: Path) -> None:
    write_compare_chart(labels, [r.cells for r in runs], chart)
    chart_link = chart.name if chart.parent == markdown.parent else str(chart)
    text = [
        "# Runs side by side: " + " vs ".join(labels), "",
        "Aggregate throughput (file bytes moved by all successful clients / wall time, MB/s = 10^6 B/s) and "
        f"failed clients of each cell, and each run's ratio to {labels[0]}. A cell missing in a run shows `-`.", "",
        runs_table(runs, labels).markdown(), "",
        "## Summary", "", *(f"* {line}" for line in compare_summary(runs, labels)), "",
        f"![Aggregate throughput, run by run]({chart_link})", "",
        "## Every cell", "", compare_table(runs, labels).markdown(), "",
    ]
    markdown.write_text("\n".join(text), encoding="utf-8")
