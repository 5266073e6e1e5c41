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
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from . import stats
from .chart import (aggregate_interval, aggregate_mbps, model_key, model_order, op_key, op_order, per_client_Bps,
                    sample_rates, write_chart, write_compare_chart)
from .stats import NOISE

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
            num(per_client_Bps(result), 0), result["succeed"], result["failed"],
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


def every_run(record: Mapping[str, Any]) -> list[dict]:
    """Every run made of a cell on one model, measured and warm-up (a record from before repeats: its one result)."""
    return [*(record.get("samples") or [record["result"]]), *(record.get("warmups") or [])]


def failed_clients(record: Mapping[str, Any]) -> int:
    """Clients that failed in any run of the cell, not only in the median run the CSV shows: a client that
    got a wrong byte failed, whichever run it was in."""
    return sum(int(run.get("failed") or 0) for run in every_run(record))


def _mbps(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _times(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"x{ratio:.2f}"


# ---------------------------------------------------------------------- statistics of a cell


def model_summary(record: Optional[Mapping[str, Any]]) -> Optional[stats.Summary]:
    """Median, spread and interval of one model's aggregate MB/s over its runs of a cell."""
    return None if record is None else stats.summarize(sample_rates(record))


def pair_ratio(record_a: Mapping[str, Any], record_b: Mapping[str, Any]) -> Optional[stats.Ratio]:
    """b/a of aggregate throughput: paired by round when both models ran side by side in one measurement
    of the cell, else unpaired (files from before rounds; a cell finished by --resume on one model)."""
    def by_round(record: Mapping[str, Any]) -> dict[int, float]:
        return {s["round"]: s["aggregate_throughput_Bps"] / 1e6 for s in record.get("samples") or []
                if "round" in s and s.get("succeed") and s.get("aggregate_throughput_Bps")}
    a, b = by_round(record_a), by_round(record_b)
    shared = sorted(set(a) & set(b))
    if shared and record_a.get("measured_at") == record_b.get("measured_at"):
        return stats.paired_ratio([(a[r], b[r]) for r in shared])
    return stats.unpaired_ratio(sample_rates(record_a), sample_rates(record_b))


def verdict_text(code: str, a: str, b: str) -> str:
    return {stats.FASTER_B: f"{b} faster", stats.FASTER_A: f"{a} faster"}.get(code, code)


def interval_text(ratio: Optional[stats.Ratio]) -> str:
    """'x1.80, 95% CI x1.50 to x2.10'; with one run, the ratio and that there is no interval."""
    if ratio is None:
        return "no ratio (no run of one of them succeeded)"
    if ratio.ci is None:
        return f"x{ratio.value:.2f}, no interval (one run)"
    return f"x{ratio.value:.2f}, 95% CI x{ratio.ci[0]:.2f} to x{ratio.ci[1]:.2f}"


def pair_comparison(record_a: Mapping[str, Any], record_b: Mapping[str, Any], a: str, b: str) -> dict:
    """The ratio b/a of a cell with its interval and verdict, as the JSON Lines keep it."""
    ratio = pair_ratio(record_a, record_b)
    code = stats.verdict(ratio)
    said = "" if code == stats.NO_INTERVAL else f": {verdict_text(code, a, b)}"
    return {"of": f"{b}/{a}", **(ratio.as_dict() if ratio else {"ratio": None}), "verdict": verdict_text(code, a, b),
            "text": f"{b}/{a} {interval_text(ratio)}{said}"}


def band_text(noise: float = NOISE) -> str:
    """The noise band as the verdicts use it, in the words the report prints."""
    low, high = stats.noise_band(noise)
    return f"x{low:.2f} to x{high:.2f} (x1/{1 + noise:g} to x{1 + noise:g}: within {noise:.0%} either way)"


@dataclass
class Comparison:
    """One cell (operation, size, clients, server pool) on the main pair of models."""
    key: tuple                 # (op, size MB, clients, server pool)
    a: str
    b: str
    record_a: dict
    record_b: dict
    ratio: Optional[stats.Ratio]
    verdict: str               # a stats verdict code

    @property
    def significant(self) -> bool:
        return self.verdict in (stats.FASTER_A, stats.FASTER_B)

    def where(self) -> str:
        op, size, clients, pool = self.key
        return f"{volume(size)}, {_plural_value(clients, 'client')}, server pool of {pool}"

    def unstable(self) -> list[str]:
        """Why this cell may be unstable: a model's runs spread widely, or a run shared the machine."""
        why = []
        for model, record in ((self.a, self.record_a), (self.b, self.record_b)):
            summary = model_summary(record)
            spread = f"spread {summary.spread:.0%}" if summary is not None and summary.unstable else ""
            hit = sum(1 for s in record.get("samples") or [] if stats.disturbed(stats.noise_usage(s)))
            disturbed = f"{hit} run{'s' if hit > 1 else ''} disturbed" if hit else ""
            if spread or disturbed:
                why.append(f"{model} " + ", ".join(filter(None, (spread, disturbed))))
        return why


def comparisons(run: "Run") -> dict[tuple, Comparison]:
    """Every cell both models of the main pair ran, keyed by (operation, size, clients, server pool)."""
    pair = main_pair(run.models())
    found: dict[tuple, Comparison] = {}
    if not pair:
        return found
    a, b = pair
    for key, record_a in run.cells.items():
        if key[0] != a:
            continue
        record_b = run.cells.get((b, *key[1:]))
        if record_b is None:
            continue
        ratio = pair_ratio(record_a, record_b)
        _, pool, op, size, clients = key
        found[(op, size, clients, pool)] = Comparison((op, size, clients, pool), a, b, record_a, record_b, ratio,
                                                      stats.verdict(ratio))
    return dict(sorted(found.items(), key=lambda item: (op_key(item[0][0]), *item[0][1:])))


def runs_per_model(run: "Run") -> tuple[int, int]:
    """The fewest and the most measured runs any model had of a cell."""
    counts = [len(c.get("samples") or [c["result"]]) for c in run.cells.values()]
    return min(counts), max(counts)


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
    """Per (operation, size, clients, server pool): each model's median aggregate MB/s, the main ratio with its
    interval and verdict, whether the cell may be unstable, failures."""
    models = run.models()
    pair = main_pair(models)
    found = comparisons(run)
    groups: dict[tuple, dict[str, dict]] = {}
    for key in sorted(run.cells, key=_row_order):
        model, pool, op, size, clients = key
        groups.setdefault((op, size, clients, pool), {})[model] = run.cells[key]
    header = ["operation", "size", "clients", "server pool", *(f"{m} MB/s" for m in models), "runs"]
    header += [f"{pair[1]}/{pair[0]}", "95% CI", "verdict", "unstable?"] if pair else []
    header += [f"failed {'/'.join(models)} (all runs)"]
    rows = []
    for (op, size, clients, pool), by_model in groups.items():
        row = [op, volume(size), str(clients), str(pool)]
        row += [_mbps(aggregate_mbps(by_model[m])) if m in by_model else "-" for m in models]
        row += ["/".join(str(len(by_model[m].get("samples") or [1])) if m in by_model else "-" for m in models)]
        if pair:
            comparison = found.get((op, size, clients, pool))
            ratio = comparison.ratio if comparison else None
            row += [_times(ratio.value if ratio else None),
                    f"x{ratio.ci[0]:.2f} to x{ratio.ci[1]:.2f}" if ratio and ratio.ci else "-",
                    verdict_text(comparison.verdict, *pair) if comparison else "-",
                    "; ".join(comparison.unstable()) if comparison else ""]
        row += ["/".join(str(failed_clients(by_model[m])) if m in by_model else "-" for m in models)]
        rows.append(row)
    return Table(header, rows)


def repeats_table(run: Run) -> Table:
    """Per model and cell: the runs' aggregate MB/s (median, min, max, 95% CI of the mean, spread) and the
    cores the server, the clients and the rest of the machine used (medians over the runs)."""
    header = ["model", "server pool", "operation", "size", "clients", "runs", "median MB/s", "min", "max",
              "95% CI of the mean", "spread", "server cores", "client cores", "other cores", "steal"]
    rows = []
    for record in run.ordered():
        summary = model_summary(record)
        usage = [s.get("usage") or {} for s in record.get("samples") or []]

        def median_of(name: str) -> str:
            values = [u[name] for u in usage if u.get(name) is not None]
            return f"{statistics.median(values):.2f}" if values else "-"

        row = [record["model"], str(record["server_workers"]), record["op"], volume(record["size_mb"]),
               str(record["clients"]), str(len(record.get("samples") or [1]))]
        if summary is None:
            row += ["-"] * 5
        else:
            row += [f"{summary.median:.0f}", f"{summary.low:.0f}", f"{summary.high:.0f}",
                    f"{summary.ci[0]:.0f} to {summary.ci[1]:.0f}" if summary.ci else "-",
                    f"{summary.spread:.1%}" if summary.spread is not None else "-"]
        row += [median_of(name) for name in ("server_cores", "client_cores", "other_cores", "steal_cores")]
        rows.append(row)
    return Table(header, rows)


def cells_table(run: Run) -> Table:
    """results.csv's 12 columns, numbered in the order the sweep ran the cells."""
    return Table(CSV_COLUMNS, [[str(v) for v in csv_row(r)] for r in sorted(run.cells.values(),
                                                                         key=lambda r: r.get("row", 0))])


# ---------------------------------------------------------------------- findings


def _plural_value(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 or unit == 'MB' else 's'}"


def _cited(found: Sequence[Comparison]) -> str:
    """Significant cells, each with its interval, largest difference first."""
    ordered = sorted(found, key=lambda c: -abs(math.log(c.ratio.value)))
    return "; ".join(f"{volume(c.key[1])}, {_plural_value(c.key[2], 'client')}: {interval_text(c.ratio)}"
                     for c in ordered)


def _counts(found: Sequence[Comparison], a: str, b: str, cite: bool) -> str:
    faster_b = [c for c in found if c.verdict == stats.FASTER_B]
    faster_a = [c for c in found if c.verdict == stats.FASTER_A]
    unclear = sum(1 for c in found if c.verdict == stats.UNCLEAR)
    untested = sum(1 for c in found if c.verdict == stats.NO_INTERVAL)
    parts = [f"{b} faster in {len(faster_b)}" + (f" ({_cited(faster_b)})" if cite and faster_b else ""),
             f"{a} faster in {len(faster_a)}" + (f" ({_cited(faster_a)})" if cite and faster_a else ""),
             f"no clear difference in {unclear}"]
    if untested:
        parts.append(f"no interval in {untested}")
    return ", ".join(parts)


def method_finding(run: Run) -> str:
    """How the runs were made and what counts as a difference, from the run's own record."""
    pair = main_pair(run.models())
    fewest, most = runs_per_model(run)
    policy = run.environment.get("repeats")
    if most < 2:
        made = "`--repeat 1`" if policy else "a file from before repeated runs"
        return (f"One run per cell and model ({made}): no interval could be computed, so no difference "
                "below is called significant; the ratios in the tables are single runs.")
    runs = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    if policy:
        warmup = policy.get("warmup") or 0
        order = (f"after {warmup} discarded warm-up run{'s' if warmup > 1 else ''} of each model, "
                 if warmup else "with no warm-up run discarded, ")
        order += ("the servers of every model running side by side and the runs alternating ABBA within a "
                  "cell (the model that starts alternates from cell to cell)")
    else:
        order = "in an order this file does not record (made before paired runs)"
    text = f"Each cell ran {runs} times on each model, {order}."
    if pair:
        a, b = pair
        text += (f" The ratio {b}/{a} is that of aggregate throughput (file bytes of all successful clients / "
                 f"wall time): the geometric mean of the runs' ratios, paired round by round, with its 95% "
                 f"confidence interval (Student's t). A cell counts as a difference only when that interval excludes x1.00 "
                 f"and the ratio lies outside {band_text()}, the noise threshold; otherwise: no clear difference.")
        unpaired = [c for c in comparisons(run).values() if c.ratio is not None and not c.ratio.paired]
        if unpaired:
            shown = "; ".join(f"{c.key[0]} {c.where()}" for c in unpaired[:6]) \
                + (f", and {len(unpaired) - 6} more" if len(unpaired) > 6 else "")
            text += (f" Not paired in {_plural_value(len(unpaired), 'cell')}, whose models' runs were not made side "
                     f"by side (a cell finished by --resume on one model, or runs from before rounds): there the "
                     f"ratio is that of the models' geometric means, with Welch's interval: {shown}.")
    return text


def incomplete_finding(run: Run) -> Optional[str]:
    """Whether the sweep's last session stopped before its last cell (a later --resume that finished
    makes the file complete), in words, or None."""
    last = run.environments[-1] if run.environments else {}
    if last.get("completed") is False:
        how = "stopped early (interrupted, or a server it could not reach)"
    elif "repeats" in last and last.get("end") is None:
        how = "recorded no end (it is still running, or was killed)"
    else:
        return None
    return (f"**Incomplete sweep**: it {how} after {_plural_value(len(run.cells), 'model cell')}; the cells it "
            "did not reach are missing, and the findings below cover only those it measured. "
            "`python run_experiment.py --resume` with the same settings runs the rest.")


def findings(run: Run) -> list[str]:
    """Plain sentences with numbers, each computed from the run's cells."""
    found: list[str] = [text for text in (incomplete_finding(run),) if text]
    found.append(method_finding(run))
    pair = main_pair(run.models())
    everything = comparisons(run)
    if pair:
        a, b = pair
        for op in op_order(k[0] for k in everything):
            cells = [c for c in everything.values() if c.key[0] == op]
            pools = sorted({c.key[3] for c in cells})
            if all(c.verdict == stats.NO_INTERVAL for c in cells):
                found.append(f"**{op.capitalize()}**, {_plural_value(len(cells), 'cell')}: no verdict, since no cell "
                             "has an interval.")
                continue
            found.append(f"**{op.capitalize()}**, {_plural_value(len(cells), 'cell')}: "
                         f"{_counts(cells, a, b, cite=len(pools) == 1)}.")
            for pool in pools if len(pools) > 1 else []:
                here = [c for c in cells if c.key[3] == pool]
                found.append(f"{op.capitalize()}, server pool of {pool} ({_plural_value(len(here), 'cell')}): "
                             f"{_counts(here, a, b, cite=True)}.")
            significant = [c for c in cells if c.significant]
            if significant:
                top = max(significant, key=lambda c: abs(math.log(c.ratio.value)))
                va, vb = (model_summary(r) for r in (top.record_a, top.record_b))
                found.append(f"{op.capitalize()}, largest difference: {top.where()}: {b} {vb.median:.0f} MB/s, "
                             f"{a} {va.median:.0f} MB/s (medians of {vb.n} and {va.n} runs); "
                             f"{b}/{a} {interval_text(top.ratio)}.")
    found += _cpu_findings(run)
    found += _noise_findings(run, everything)
    found += _pool_findings(run)
    found += _failure_findings(run)
    return found


def _cpu_findings(run: Run) -> list[str]:
    """Why, not only how much: the cores each model's server and the clients used, per operation, in the
    cells with the most clients (where the servers are busiest)."""
    found = []
    for op in op_order(k[2] for k in run.cells):
        most = max(k[4] for k in run.cells if k[2] == op)
        parts, clients, windows = [], [], []
        for model in run.models():
            usage = [s.get("usage") or {} for c in run.cells.values()
                     if (c["model"], c["op"], c["clients"]) == (model, op, most) for s in c.get("samples") or []]
            cores = [u["server_cores"] for u in usage if u.get("server_cores") is not None]
            windows += [u["window_s"] for u in usage if u.get("window_s")]
            clients += [u["client_cores"] for u in usage if u.get("client_cores") is not None]
            if cores:
                parts.append(f"{model} server median {statistics.median(cores):.2f}, at most {max(cores):.2f}")
        if parts:
            window = cores_window(s for c in run.cells.values() if (c["op"], c["clients"]) == (op, most)
                                  for s in c.get("samples") or [])
            found.append(f"{op.capitalize()} with {_plural_value(most, 'client')}, cores used (CPU seconds / "
                         f"seconds, {window}, over every run of those cells): " + "; ".join(parts)
                         + (f"; the clients median {statistics.median(clients):.2f}" if clients else "")
                         + (f" (coarse: windows of a median {statistics.median(windows):.2g} s, and /proc counts "
                            "hundredths of a second)" if windows and statistics.median(windows) < stats.MIN_CPU_WINDOW_S
                            else "") + ".")
    return found


def cores_window(samples: Iterable[Mapping[str, Any]]) -> str:
    """Over what the runs' cores were measured: the timed transfer (the stress test's own window), or the
    whole stress test (files from before it had one, or runs that reported none)."""
    windows = [(s.get("usage") or {}).get("over") for s in samples if s.get("usage")]
    whole = sum(1 for w in windows if w != "transfer")
    if not whole:
        return "over the timed transfer"
    if whole == len(windows):
        return "over the whole stress test, start-up, preparation and clean-up included"
    return (f"over the timed transfer, or over the whole stress test in {whole} of {len(windows)} runs that "
            "reported no window of their own")


def _noise_findings(run: Run, everything: dict[tuple, Comparison]) -> list[str]:
    found = []
    samples = [s for c in run.cells.values() for s in c.get("samples") or []]
    measured = [u for u in map(stats.noise_usage, samples) if u]
    if measured:
        hit = [u for u in measured if stats.disturbed(u)]
        others = [u["other_cores"] for u in measured if u.get("other_cores") is not None]
        steal = [u["steal_cores"] for u in measured if u.get("steal_cores") is not None]
        found.append(f"Other load: {len(hit)} of {len(measured)} runs were disturbed (the rest of the machine, the "
                     f"idle servers included, used over {stats.DISTURBED_CORES:g} cores, or over {stats.DISTURBED_STEAL:g} cores were stolen, "
                     f"{cores_window(samples)}; over the whole stress test where the transfer lasted under "
                     f"{stats.MIN_CPU_WINDOW_S:g} s, too short for /proc's hundredths of a second)"
                     + (f"; other work used a median of {statistics.median(others):.2f} cores, at most "
                        f"{max(others):.2f}" if others else "")
                     + (f"; steal at most {max(steal):.2f} cores" if steal else "") + ".")
    unstable = [c for c in everything.values() if c.unstable()]
    if unstable:
        shown = "; ".join(f"{c.key[0]} {c.where()} ({'; '.join(c.unstable())})" for c in unstable[:6])
        found.append(f"{len(unstable)} of {len(everything)} cells may be unstable (a model's runs spread over "
                     f"{stats.UNSTABLE_SPREAD:.0%} of their mean, or a run was disturbed): {shown}"
                     + (f", and {len(unstable) - 6} more (the table's last column)" if len(unstable) > 6 else "")
                     + ".")
    env = run.environment
    first, last = env.get("calibration_start"), env.get("calibration_end")
    if first:
        text = f"Machine speed (base64 decoding): {first['base64_decode_MBps']:.0f} MB/s at the start"
        if last:
            text += f", {last['base64_decode_MBps']:.0f} MB/s at the end"
            if env.get("calibration_drift") is not None:
                text += f" (drift {env['calibration_drift']:+.1%})"
        found.append(text + ".")
    return found


def _pool_findings(run: Run) -> list[str]:
    """Each model's median aggregate MB/s at each server pool size (a description, not a test)."""
    found = []
    for op in op_order(k[2] for k in run.cells):
        for model in run.models():
            by_pool: dict[int, list[float]] = {}
            for key, cell in run.cells.items():
                rate = aggregate_mbps(cell)
                if key[0] == model and key[2] == op and rate is not None:
                    by_pool.setdefault(key[1], []).append(rate)
            if len(by_pool) < 2:
                continue
            medians = {pool: statistics.median(rates) for pool, rates in sorted(by_pool.items())}
            found.append(f"{model.capitalize()} server, {op}: median aggregate over the cells "
                         + ", ".join(f"{v:.0f} MB/s with {_plural_value(p, 'worker')}" for p, v in medians.items())
                         + " (a description across cells, not a test).")
    return found


def uncounted_models(run: Run) -> list[str]:
    """Models whose server never reported its own counts (no STATS): their server columns stay empty."""
    counted = {c["model"] for c in run.cells.values() if c["result"].get("server_succeeded") is not None}
    return [m for m in run.models() if m not in counted]


def _failure_findings(run: Run) -> list[str]:
    cells = run.cells.values()
    transfers = sum(int(r.get("clients") or c["clients"]) for c in cells for r in every_run(c))
    failing = [c for c in cells if failed_clients(c)]
    miscounted = [c for c in cells if any(r.get("server_succeeded") is not None
                                          and r["server_succeeded"] != r.get("succeed") for r in every_run(c))]
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
    policy = env.get("repeats")
    if policy:
        rows.append(["runs per cell and model", f"at least {policy['min_runs']}, up to {policy['max_runs']} for "
                     f"a cell measured under {policy['min_time_s']:g} s whose 95% CI is wider than "
                     f"±{policy['tight']:.0%} of its mean; {policy.get('warmup', 0)} warm-up run(s) discarded"])
    for name, when in (("calibration_start", "start"), ("calibration_end", "end")):
        if env.get(name):
            rows.append([f"machine speed at the {when}", f"base64 decoding {env[name]['base64_decode_MBps']:.0f} MB/s"])
    if env.get("calibration_drift") is not None:
        rows.append(["machine speed drift", f"{env['calibration_drift']:+.1%} from start to end"])
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
        "File bytes moved by all successful clients / wall time of the cell: each model's median run, the "
        "runs each model had, the ratio with its 95% confidence interval and the verdict (noise threshold: "
        f"{band_text()}), and why a cell may be unstable.", "",
        aggregate_table(run).markdown(), "",
        "## Runs of every cell", "",
        "Aggregate MB/s over each model's measured runs, and the cores (CPU seconds / seconds, "
        f"{cores_window(s for r in cells for s in r.get('samples') or [])}) the server, the clients and the rest "
        "of the machine used, and lost to steal: medians over the runs. /proc counts CPU time in hundredths of a "
        "second, so the cores of a transfer that lasts a few hundredths are coarse.", "",
        repeats_table(run).markdown(), "",
        "## Every cell (the 12 columns of the CSV: each model's median run)", "",
        cells_table(run).markdown(), "",
    ]
    markdown.write_text("\n".join(text), encoding="utf-8")


# ---------------------------------------------------------------------- several runs


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Short distinct names: the file names without .jsonl, with the folder when two are alike.

    The folder is the one the path names, not the absolute one: a file named without a folder
    keeps its bare name, so no label carries where this checkout happens to live."""
    labels = [r.path.stem for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.stem} ({r.path.parent.name})" if r.path.parent.name else r.path.stem for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}:{label}" for i, label in enumerate(labels)]
    return labels


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    return numerator / denominator if numerator and denominator else None


def _span(ratios: Sequence[float]) -> str:
    low, high = min(ratios), max(ratios)
    middle = f", median x{statistics.median(ratios):.2f}" if len(ratios) > 2 else ""
    return f"x{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"x{low:.2f} to x{high:.2f}{middle}"


def _yes_no_unknown(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


def compare_table(runs: Sequence[Run], labels: Sequence[str]) -> Table:
    """Per model and cell: each run's aggregate MB/s and failed clients, each run's ratio to the first, and
    whether the intervals of the two runs' mean MB/s overlap."""
    keys = sorted({k for r in runs for k in r.cells}, key=_row_order)
    header = ["model", "server pool", "operation", "size", "clients"]
    for label in labels:
        header += [f"{label} MB/s", f"{label} failed"]
    header += [f"{label} / {labels[0]}" for label in labels[1:]]
    header += [f"{label} overlaps {labels[0]}" for label in labels[1:]]
    rows = []
    for key in keys:
        cells = [r.cells.get(key) for r in runs]
        rates = [aggregate_mbps(c) if c else None for c in cells]
        intervals = [aggregate_interval(c) if c else None for c in cells]
        row = [key[0], str(key[1]), key[2], volume(key[3]), str(key[4])]
        for cell, rate in zip(cells, rates):
            row += [_mbps(rate), str(failed_clients(cell)) if cell else "-"]
        row += [_times(_ratio(rate, rates[0])) for rate in rates[1:]]
        row += [_yes_no_unknown(stats.overlap(i, intervals[0])) for i in intervals[1:]]
        rows.append(row)
    return Table(header, rows)


@dataclass
class Agreement:
    """One cell's ratio in two runs: whether their intervals overlap, and whether their verdicts contradict."""
    key: tuple
    first: Comparison
    other: Comparison

    @property
    def overlap(self) -> Optional[bool]:
        return stats.overlap(self.first.ratio.ci if self.first.ratio else None,
                             self.other.ratio.ci if self.other.ratio else None)

    @property
    def contradicts(self) -> bool:
        """Significant both times, with opposite winners."""
        return self.first.significant and self.other.significant and self.first.verdict != self.other.verdict


def agreements(first: Run, other: Run) -> list[Agreement]:
    """The cells the main pair ran in both runs, each with how the two runs agree."""
    a, b = comparisons(first), comparisons(other)
    return [Agreement(key, a[key], b[key]) for key in a if key in b]


def agreement_table(runs: Sequence[Run], labels: Sequence[str]) -> Optional[Table]:
    """Per cell: the main ratio with its interval and verdict in the first run and in each other run."""
    pair = main_pair(runs[0].models())
    if not pair:
        return None
    header = ["operation", "size", "clients", "server pool", f"{labels[0]} {pair[1]}/{pair[0]}"]
    for label in labels[1:]:
        header += [f"{label} {pair[1]}/{pair[0]}", "intervals overlap", "contradiction"]
    by_run = [{ag.key: ag for ag in agreements(runs[0], run)} for run in runs[1:]]
    firsts = comparisons(runs[0])
    rows = []
    for key, first in firsts.items():
        op, size, clients, pool = key
        row = [op, volume(size), str(clients), str(pool), _verdict_cell(first)]
        for found in by_run:
            ag = found.get(key)
            row += ["-", "-", "-"] if ag is None else [_verdict_cell(ag.other), _yes_no_unknown(ag.overlap),
                                                       "**yes**" if ag.contradicts else "no"]
        rows.append(row)
    return Table(header, rows)


def _verdict_cell(comparison: Comparison) -> str:
    return f"{interval_text(comparison.ratio)}: {verdict_text(comparison.verdict, comparison.a, comparison.b)}"


def compare_summary(runs: Sequence[Run], labels: Sequence[str]) -> list[str]:
    """Per run against the first: how many cells agree (ratio intervals overlap), the contradictions, and
    per operation and model the spread of the ratio of each run's MB/s to the first's."""
    lines = []
    first = runs[0]
    for run, label in zip(runs[1:], labels[1:]):
        found = agreements(first, run)
        judged = [ag for ag in found if ag.overlap is not None]
        if judged:
            agree = sum(1 for ag in judged if ag.overlap)
            lines.append(f"{label} and {labels[0]} agree in {agree} of {len(judged)} cells "
                         f"({agree / len(judged):.0%}): their ratio intervals overlap.")
        elif found:
            lines.append(f"{label} and {labels[0]}: no ratio interval to compare (runs with one run per cell).")
        same = sum(1 for ag in judged if ag.first.verdict == ag.other.verdict)
        if judged:
            lines.append(f"The verdict is the same in {same} of {len(judged)} cells.")
        contradictions = [ag for ag in found if ag.contradicts]
        if contradictions:
            many = len(contradictions) != 1
            lines.append(f"**{len(contradictions)} cell{'s' if many else ''} contradict{'' if many else 's'}** "
                         "(a significant difference each way): "
                         + "; ".join(f"{ag.key[0]} {ag.first.where()}: {labels[0]} {_verdict_cell(ag.first)}, "
                                     f"{label} {_verdict_cell(ag.other)}" for ag in contradictions) + ".")
        elif judged:
            lines.append("No cell contradicts (no difference is significant one way in one run and the other way "
                         "in the other).")
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
    agreement = agreement_table(runs, labels)
    chart_link = chart.name if chart.parent == markdown.parent else str(chart)
    text = [
        "# Runs side by side: " + " vs ".join(labels), "",
        "Aggregate throughput (file bytes moved by all successful clients / wall time, MB/s = 10^6 B/s) and "
        f"failed clients of each cell, and each run's ratio to {labels[0]}. A cell missing in a run shows `-`.", "",
        runs_table(runs, labels).markdown(), "",
        "## Summary", "", *(f"* {line}" for line in compare_summary(runs, labels)), "",
        *(["## Do the runs agree?", "",
           f"Per cell, the ratio with its 95% CI and verdict in each run (noise threshold {band_text()}). Two runs "
           "agree on a cell when their intervals overlap; they contradict when each finds a significant "
           "difference, in opposite directions.", "", agreement.markdown(), ""] if agreement else []),
        f"![Aggregate throughput, run by run]({chart_link})", "",
        "## Every cell", "", compare_table(runs, labels).markdown(), "",
    ]
    markdown.write_text("\n".join(text), encoding="utf-8")
