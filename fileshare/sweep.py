"""The sweep: which cells, in which order, how many runs, and running them.

A cell is an operation, a file size, a number of clients and a server pool
size; it is measured on every model (thread, process, any ``--server-command``).
For each server pool size the servers of every model run side by side, and each
cell is measured on the models in turn, alternating ABBA (thread, process,
process, thread, ...), so that a machine whose speed drifts hits every model
alike and each pair of neighbouring runs can be compared.  The model that runs
first alternates from cell to cell, so a cold start favours none.

Each model gets at least ``min_runs`` measured runs of a cell; a short cell gets
more (up to ``max_runs``) until each model has ``min_time`` seconds of measured
time or its 95% interval is within ``tight`` of its mean.  Every run records the
CPU its server and its clients used, and what the rest of the machine used and
lost to steal meanwhile, so a disturbed run shows.

Each CSV row and JSON Lines record is written and flushed as its cell ends
(JSON Lines first, so a row in the CSV always has its record).
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import json
import logging
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, TextIO

from . import stats
from .harness import (AttachedServer, CpuSnapshot, ForeignServer, ServerProcess, ServerStartError, cpu_use,
                      kill_group, port_accepts, run_in_group, script_path)
from .report import (CSV_COLUMNS, ReportError, csv_key, csv_row, key_texts, main_pair, pair_comparison,
                     sample_rates)

log = logging.getLogger("run_experiment")

OLDEST_PYTHON = (3, 11)
# Asked of the interpreter that runs the servers and stress tests; written so that even an old Python
# answers (a version to refuse) instead of failing on syntax.
PROBE = ("import json, platform, sys, sysconfig; print(json.dumps({"
         "'version_info': list(sys.version_info[:3]), 'python': platform.python_version(), "
         "'implementation': platform.python_implementation(), 'executable': sys.executable, "
         "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
         "'gil_enabled': sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True}))")

Server = ServerProcess | AttachedServer


class ServerUnreachable(RuntimeError):
    """An attached server stopped accepting connections: the sweep cannot go on."""


# ---------------------------------------------------------------------- cells and their order

@dataclass(frozen=True)
class Cell:
    """One point of the sweep, measured on every model."""
    server_workers: int
    op: str
    size_mb: float
    clients: int

    def key(self, model: str) -> tuple[str, ...]:
        """The CSV's identifying columns of this cell on ``model``, to match rows for --resume."""
        return key_texts({"model": model, **vars(self)})

    def label(self) -> str:
        return (f"{self.op} {self.size_mb:g} MB, {self.clients} client{'s' if self.clients != 1 else ''}, "
                f"server pool of {self.server_workers}")

    @property
    def volume_mb(self) -> float:
        """What the cell moves in one run, the measure of its cost."""
        return self.size_mb * self.clients


def plan(server_workers: Sequence[int], ops: Sequence[str], sizes: Sequence[float],
         client_workers: Sequence[int]) -> list[Cell]:
    """Every cell, grouped by server pool size (its servers run side by side), then operation, size, clients."""
    return [Cell(w, o, s, c) for w in server_workers for o in ops for s in sizes for c in client_workers]


def run_order(models: Sequence[str], round_number: int, cell_number: int = 0) -> list[str]:
    """The models in the order of one round: forward and backward in turn (ABBA), and the other way
    round on every other cell, so no model always runs first or last."""
    return list(models) if (round_number + cell_number) % 2 == 0 else list(reversed(models))


@dataclass(frozen=True)
class RepeatPolicy:
    """How many measured runs each model gets of a cell."""
    min_runs: int = 3
    max_runs: int = 6
    min_time: float = 1.0       # seconds of measured (wall) time per model that end the repeats of a short cell
    tight: float = 0.05         # ... as does a 95% interval within this share of the mean
    warmup: int = 0             # runs of each model discarded before the measured ones

    def settled(self, runs: Sequence[dict]) -> bool:
        """Whether one model's runs of a cell are enough (``min_runs`` are always made first)."""
        if len(runs) >= self.max_runs:
            return True
        if len(runs) < self.min_runs:
            return False
        rates = [r for r in (_aggregate(s) for s in runs) if r is not None]
        if not rates:
            return True       # every run failed: more runs tell nothing new
        measured = sum(s.get("wall_time_s") or 0.0 for s in runs)
        width = stats.relative_half_width(stats.summarize(rates))
        return measured >= self.min_time or (width is not None and width <= self.tight)

    def expected_runs(self, wall_s: float) -> int:
        """Runs one model is expected to get of a cell whose run measures ``wall_s`` seconds (for the ETA)."""
        needed = math.ceil(self.min_time / wall_s) if wall_s > 0 else self.max_runs
        return self.warmup + max(self.min_runs, min(self.max_runs, needed))

    def as_dict(self) -> dict:
        return {"min_runs": self.min_runs, "max_runs": self.max_runs, "min_time_s": self.min_time,
                "tight": self.tight, "warmup": self.warmup, "order": "ABBA", "noise": stats.NOISE,
                "unstable_spread": stats.UNSTABLE_SPREAD, "disturbed_cores": stats.DISTURBED_CORES}


def _aggregate(sample: dict) -> Optional[float]:
    value = sample.get("aggregate_throughput_Bps")
    return value if value and sample.get("succeed") else None


def representative(samples: list[dict]) -> dict:
    """The median run by aggregate throughput (the lower of the middle two of an even number), so every
    figure of a CSV row comes from one real run; runs with no successful client rank lowest."""
    ranked = sorted(samples, key=lambda s: (_aggregate(s) is not None, _aggregate(s) or 0))
    return ranked[(len(ranked) - 1) // 2]


# ---------------------------------------------------------------------- one run

def run_cell(cell: Cell, model: str, server: Server, pool: str, timeout: float, python: str = sys.executable,
             client_work: str = "verify", server_pid: Optional[int] = None, idle_pids: Sequence[int] = ()) -> dict:
    """Run stress_test.py once for ``cell`` with ``python``; a stress test that hangs or crashes is a failed run.

    With ``server_pid`` (and the ``idle_pids`` of the servers of the other models) the stress test
    reports the cores each used over its timed transfer."""
    env = dict(os.environ, STRESS_OP=cell.op, FILE_SIZE_MB=f"{cell.size_mb:g}", CLIENT_POOL=str(cell.clients),
               CLIENT_POOL_TYPE=pool, SERVER_HOST=server.host, SERVER_PORT=str(server.port),
               CLIENT_WORK=client_work, SERVER_PID=str(server_pid or ""),
               IDLE_SERVER_PIDS=",".join(map(str, idle_pids)))
    started = time.monotonic()
    code, out, err = run_in_group([python, str(script_path("stress_test.py"))], timeout, env)
    elapsed = time.monotonic() - started
    if code == 0:
        try:
            result = json.loads(out)
            result["elapsed_s"] = elapsed
            return result
        except ValueError:
            reason = f"stress_test printed no JSON result: {out[:200]!r}"
    elif code is None:
        reason = f"stress_test did not finish within {timeout:g} s and was killed"
    else:
        reason = f"stress_test exited with status {code}: {err.strip().splitlines()[-1:] or ''}"
    log.warning("%s server, %s: %s", model, cell.label(), reason)
    return failed_result(cell, pool, reason, elapsed)


def failed_result(cell: Cell, pool: str, reason: str, elapsed: float = 0.0) -> dict:
    """A result for a run whose clients never reported: every one of them counts as failed."""
    return {"op": cell.op, "size_mb": cell.size_mb, "clients": cell.clients, "pool": pool,
            "succeed": 0, "failed": cell.clients, "total_time_s": None, "throughput_Bps": None,
            "wall_time_s": None, "aggregate_throughput_Bps": None,
            "errors": {"other": {"count": cell.clients, "example": reason}},
            "server_succeeded": None, "server_failed": None, "elapsed_s": elapsed}


def _local(server: Server) -> bool:
    return isinstance(server, ServerProcess) and server.proc is not None


def _server_pids(servers: dict[str, Server]) -> dict[str, int]:
    """The servers whose processes this machine can see, by model."""
    return {m: s.pid for m, s in servers.items() if _local(s)}


def _reaped_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------- the machine

def calibrate(seconds: float = 0.15, block: int = 2 ** 20) -> dict:
    """This machine's speed now: MB of base64 text decoded per second (the median of five short rounds,
    and the best of them), to compare the start of a sweep with its end.  What else runs on the
    machine shows here: on two hyperthreads of one core a busy neighbour halves it."""
    text = base64.b64encode(os.urandom(block * 3 // 4))
    rates = []
    base64.b64decode(text)          # untimed: the first round would also pay for the memory it touches first
    for _ in range(5):
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds / 5:
            base64.b64decode(text)
            done += len(text)
        rates.append(done / (time.perf_counter() - started) / 1e6)
    return {"base64_decode_MBps": round(sorted(rates)[2], 1), "best_MBps": round(max(rates), 1), "at": _now()}


def probe_python(python: str) -> dict:
    """Ask ``python`` what it is; raise ValueError with a sentence for a person if it cannot serve."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ValueError(f"cannot run {python}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        version = tuple(facts.pop("version_info"))
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        said = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["nothing"])[-1]
        raise ValueError(f"{python} is not a Python interpreter (asked for its version, it said: {said[:120]})") \
            from None
    if version < OLDEST_PYTHON:
        raise ValueError(f"{python} is Python {'.'.join(map(str, version))}; the servers need "
                         f"{'.'.join(map(str, OLDEST_PYTHON))} or newer")
    return facts


def environment(interpreter: dict, policy: RepeatPolicy) -> dict:
    """The run's setting; ``interpreter`` (from probe_python) is the one that runs servers and stress tests."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=script_path("."), capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=script_path("."),
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"type": "environment", **interpreter, "runner_python": platform.python_version(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "memory_bytes": _memory_bytes(), "start": _now(), "end": None, "duration_s": None,
            "commit": commit, "dirty": dirty, "argv": sys.argv[1:], "repeats": policy.as_dict()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------- existing output (--resume)

def _csv_line_ok(line: str) -> bool:
    rows = list(csv.reader([line]))
    return len(rows) == 1 and (rows[0] == CSV_COLUMNS or len(rows[0]) == len(CSV_COLUMNS) and rows[0][0].isdigit())


def _json_line_ok(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def repair_tail(path: Path, line_ok: Callable[[str], bool]) -> Optional[str]:
    """Make ``path`` end with a whole line before more is appended to it.

    A last line without its newline (a hand edit, or a write cut short) is either
    whole (``line_ok``): the newline is added; or cut: it is removed, since a cut
    line was never a finished row and its cell runs again.  Returns what was done,
    for the person running the sweep, or None when nothing needed doing.
    """
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    last = data[start:].decode("utf-8", "replace")
    if line_ok(last):
        with open(path, "ab") as f:
            f.write(b"\n")
        return f"{path}: its last line had no newline; added one"
    with open(path, "r+b") as f:
        f.truncate(start)
    return f"{path}: its last line was cut short ({last[:40]!r}...); removed it, and its cell runs again"


def check_jsonl(path: Path) -> None:
    """Refuse (ReportError with a sentence) a JSON Lines file with a damaged line before its end."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if line.strip() and not _json_line_ok(line):
                raise ReportError(f"{path} line {number} is not a record this tool wrote; "
                                  "fix or remove it, or choose another --output")


def read_done(path: Path, client_pool: str, client_work: str = "verify") -> tuple[set, int]:
    """Cells already in an existing CSV (for --resume) and the last row number.

    The CSV has no column for the clients' kind (pool type and work), so the JSON
    Lines beside it tell which made each row; rows made by other clients are not
    this sweep's.
    """
    done, last = set(), 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if next(reader, None) != CSV_COLUMNS:
            raise ReportError(f"{path} does not have the expected columns; "
                              "remove it or choose another --output")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(CSV_COLUMNS) or not row[0].isdigit():
                raise ReportError(f"{path} line {line} is not a row this tool wrote; "
                                  "fix or remove it, or choose another --output")
            done.add(csv_key(row))
            last = max(last, int(row[0]))
    kinds = _client_kinds(path.with_suffix(".jsonl"))
    if done and kinds != {(client_pool, client_work)}:
        found = ", ".join(f"client pool type {pool} with --client-work {work}" for pool, work in sorted(kinds)) \
            or "unknown clients (no JSON Lines beside it)"
        raise ReportError(f"{path} was made with {found}, not client pool type {client_pool} with "
                          f"--client-work {client_work}; choose another --output to keep both")
    return done, last


def _client_kinds(jsonl: Path) -> set[tuple[str, str]]:
    """(client pool type, client work) of every cell; cells from before --client-work decoded."""
    kinds = set()
    try:
        with open(jsonl, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("type") == "cell":
                    kinds.add((record.get("client_pool"), record.get("client_work", "decode")))
    except OSError:
        pass
    return kinds


def _finish_environment(jsonl: Path, written: str, extra: dict) -> None:
    """Fill in the end of the sweep on its environment line (the one this session wrote)."""
    lines = jsonl.read_text(encoding="utf-8").split("\n")
    if written not in lines:
        return
    lines[lines.index(written)] = json.dumps(dict(json.loads(written), end=_now(), **extra))
    partial = jsonl.with_name(jsonl.name + ".part")
    partial.write_text("\n".join(lines), encoding="utf-8")
    os.replace(partial, jsonl)       # all or nothing: the file is never left half rewritten


def _write_json(f: TextIO, record: dict) -> str:
    line = json.dumps(record)
    f.write(line + "\n")
    f.flush()
    return line


# ---------------------------------------------------------------------- progress

class Progress:
    """Elapsed time and an ETA that learns the cost of a run from the runs made so far.

    A run is taken to cost a fixed part (starting the stress test, preparing,
    cleaning up) plus its measured time, which grows with the data it moves;
    both are fitted, per operation once that operation has run (an upload costs
    more per MB than a download), to the runs measured so far, and each
    remaining cell is expected to get the runs the repeat policy would give it.
    """

    def __init__(self, policy: RepeatPolicy, models: int) -> None:
        self.policy, self.models = policy, models
        self.started = time.monotonic()
        self.seen: list[tuple[str, float, float, float]] = []    # (op, MB moved, elapsed s, measured wall s)

    def add(self, cell: Cell, samples: Iterable[dict]) -> None:
        for s in samples:
            self.seen.append((cell.op, cell.volume_mb, s.get("elapsed_s") or 0.0, s.get("wall_time_s") or 0.0))

    @staticmethod
    def _fit(rows: Sequence[tuple[float, float]], grows: bool) -> tuple[float, float]:
        """(fixed, per MB) of seconds = fixed + per_mb * MB, by least squares; when every row moved the
        same amount, all fixed, or all per MB if the quantity ``grows`` with the data."""
        xs, ys = [x for x, _ in rows], [y for _, y in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        if spread == 0:
            return (0.0, my / max(mx, 1e-9)) if grows else (my, 0.0)
        slope = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / spread, 0.0)
        return max(my - slope * mx, 0.0), slope

    def cost(self, cell: Cell) -> tuple[float, float]:
        """Expected (seconds of one run, measured seconds of one run) of ``cell``."""
        rows = [r for r in self.seen if r[0] == cell.op] or self.seen
        overhead = self._fit([(v, max(e - w, 0.0)) for _, v, e, w in rows], grows=False)
        wall = self._fit([(v, w) for _, v, _, w in rows], grows=True)
        measured = wall[0] + wall[1] * cell.volume_mb
        return overhead[0] + overhead[1] * cell.volume_mb + measured, measured

    def eta(self, remaining: Sequence[Cell]) -> Optional[float]:
        if not self.seen:
            return None
        total = 0.0
        for cell in remaining:
            run, measured = self.cost(cell)
            total += self.models * self.policy.expected_runs(measured) * run
        return total

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, remaining: Sequence[Cell]) -> str:
        eta = self.eta(remaining)
        text = f"elapsed {duration(self.elapsed())}, ETA {'-' if eta is None else duration(eta)}"
        unseen = sorted({c.op for c in remaining} - {op for op, *_ in self.seen})
        return text + (f" (guessed: no {' or '.join(unseen)} has run yet)" if unseen and eta is not None else "")


# ---------------------------------------------------------------------- the sweep

class Sweep:
    """Runs the cells of ``plan`` on every model and writes the CSV and JSON Lines; see the module's text."""

    def __init__(self, args: argparse.Namespace, cells: list[Cell], models: list[str], root: str,
                 interpreter: dict, policy: RepeatPolicy, commands: dict[str, list[str]] | None = None) -> None:
        self.args, self.cells, self.models, self.root = args, cells, models, root
        self.interpreter, self.policy = interpreter, policy
        self.commands = commands or {}      # model name -> command line of a server of anyone's making
        self.output = Path(args.output)
        self.jsonl = self.output.with_suffix(".jsonl")
        self.servers: dict[str, Server] = {}
        self.start_errors: dict[str, str] = {}
        self.measured_at = ""

    def run(self) -> None:
        env = environment(self.interpreter, self.policy)   # before the files are opened: they make the tree look dirty
        done, number = set(), 0
        if self.args.resume and self.output.exists():
            for path, line_ok in ((self.jsonl, _json_line_ok), (self.output, _csv_line_ok)):
                said = repair_tail(path, line_ok) if path.exists() else None
                if said:
                    print(f"resume: {said}", file=sys.stderr)
            check_jsonl(self.jsonl)
            done, number = read_done(self.output, self.args.client_pool_type, self.args.client_work)
        todo = [(cell, [m for m in self.models if cell.key(m) not in done]) for cell in self.cells]
        todo = [(cell, models) for cell, models in todo if models]
        if done:
            print(f"resuming: {len(self.cells) - len(todo)} of {len(self.cells)} cells already in {self.output}",
                  file=sys.stderr)
        append = self.args.resume and self.output.exists()
        self.output.parent.mkdir(parents=True, exist_ok=True)
        env["calibration_start"] = calibrate()
        started, completed = time.monotonic(), False
        with open(self.output, "a" if append else "w", newline="", encoding="utf-8") as csv_file, \
                open(self.jsonl, "a" if append else "w", encoding="utf-8") as jsonl_file:
            writer = csv.writer(csv_file, lineterminator="\n")
            if not append:
                writer.writerow(CSV_COLUMNS)
                csv_file.flush()
            written = _write_json(jsonl_file, env)
            try:
                self._sweep(todo, number, writer, csv_file, jsonl_file)
                completed = True
            finally:
                jsonl_file.close()
                end = calibrate()
                first = env["calibration_start"]["base64_decode_MBps"]
                _finish_environment(self.jsonl, written, {
                    "duration_s": round(time.monotonic() - started, 3), "completed": completed,
                    "calibration_end": end,
                    "calibration_drift": round(end["base64_decode_MBps"] / first - 1, 4) if first else None})

    def _sweep(self, todo: list[tuple[Cell, list[str]]], number: int, writer: "csv._writer", csv_file: TextIO,
               jsonl_file: TextIO) -> None:
        progress = Progress(self.policy, len(self.models))
        try:
            for index, (cell, models) in enumerate(todo):
                runs, warmups = self._measure(cell, models, index)
                for model in models:
                    number += 1
                    record = self._record(number, cell, model, runs, warmups[model])
                    _write_json(jsonl_file, record)      # first: a CSV row always has its record
                    writer.writerow(csv_row(record))
                    csv_file.flush()
                progress.add(cell, [s for m in models for s in runs[m] + warmups[m]])
                print(f"[{index + 1}/{len(todo)}] {self._line(cell, models, runs)} | "
                      f"{progress.line([c for c, _ in todo[index + 1:]])}", file=sys.stderr, flush=True)
        finally:
            self._stop_servers()

    def _measure(self, cell: Cell, models: list[str], index: int) -> tuple[dict[str, list], dict[str, list]]:
        """Warm-up runs (discarded), then rounds of every model in ABBA order until the policy is content."""
        runs: dict[str, list[dict]] = {m: [] for m in models}
        warmups: dict[str, list[dict]] = {m: [] for m in models}
        if self.servers and next(iter(self.servers.values())).workers != cell.server_workers:
            self._stop_servers()          # a new pool size: its servers start side by side
        self.start_errors.clear()         # a server that would not start gets one more try per cell
        self.measured_at = _now()         # names the rounds: only runs of one measurement are pairs
        for number in range(self.policy.warmup):
            for model in run_order(models, number, index):
                warmups[model].append(self._run_one(cell, model))
        number = 0
        while not all(self.policy.settled(runs[m]) for m in models):
            for model in run_order(models, self.policy.warmup + number, index):    # ABBA on from the warm-ups
                sample = self._run_one(cell, model)
                sample["round"] = number
                runs[model].append(sample)
            number += 1
        return runs, warmups

    def _record(self, number: int, cell: Cell, model: str, runs: dict[str, list], warmups: list[dict]) -> dict:
        samples = runs[model]
        record = {"type": "cell", "row": number, "model": model, "server_workers": cell.server_workers,
                  "op": cell.op, "size_mb": cell.size_mb, "clients": cell.clients,
                  "client_pool": self.args.client_pool_type, "client_work": self.args.client_work,
                  "result": representative(samples), "samples": samples, "warmups": warmups,
                  "measured_at": self.measured_at}
        summary = stats.summarize(sample_rates(record))
        record["stats"] = summary.as_dict() if summary else None
        pair = main_pair(list(runs))
        if pair and model in pair:
            record["comparison"] = pair_comparison(*({"samples": runs[m]} for m in pair), *pair)
        return record

    def _line(self, cell: Cell, models: list[str], runs: dict[str, list]) -> str:
        parts = []
        for model in models:
            rep = representative(runs[model])
            rate = rep.get("aggregate_throughput_Bps")
            failed = sum(s["failed"] for s in runs[model])
            parts.append(f"{model} {'-' if rate is None else f'{rate / 1e6:.0f}'} MB/s"
                         + (f" ({failed} failed clients)" if failed else ""))
        count = len(runs[models[0]])
        text = f"{cell.label()}: " + ", ".join(parts) + f" ({count} run{'s' if count != 1 else ''}" \
            + (" each)" if len(models) > 1 else ")")
        pair = main_pair(models)
        if pair:
            text += "; " + pair_comparison(*({"samples": runs[m]} for m in pair), *pair)["text"]
        return text

    # ------------------------------------------------------------------ servers

    def _run_one(self, cell: Cell, model: str) -> dict:
        server = self._server(model, cell.server_workers)
        if isinstance(server, AttachedServer) and not port_accepts(server.host, server.port):
            raise ServerUnreachable(f"the server at {server.host}:{server.port} does not accept connections")
        if not server.alive():
            return failed_result(cell, self.args.client_pool_type,
                                 self.start_errors.get(model) or "the server was not running")
        pids = _server_pids(self.servers)
        before = CpuSnapshot.take(pids, _reaped_children_cpu)
        result = run_cell(cell, model, server, self.args.client_pool_type, self.args.timeout, self.args.python,
                          self.args.client_work, pids.get(model), [p for m, p in pids.items() if m != model])
        # The stress test's own window is its timed transfer; this one is its whole process (start-up,
        # preparation, clean-up), kept for runs that reported no window of their own (a failed run).
        result["usage_whole_run"] = dict(cpu_use(before, CpuSnapshot.take(pids, _reaped_children_cpu), model),
                                         over="stress_test")
        if not result.get("usage"):
            result["usage"] = result["usage_whole_run"]
        if isinstance(server, AttachedServer):
            if result.get("failed") and not port_accepts(server.host, server.port):
                raise ServerUnreachable(f"the server at {server.host}:{server.port} stopped accepting "
                                        f"connections during {cell.label()}")
        elif not server.alive():
            log.warning("the %s server died during %s (status %s); a fresh one takes the next runs",
                        model, cell.label(), server.proc.returncode if server.proc else None)
            result.setdefault("notes", []).append("the server died during this cell")
            self._stop_server(model)
        return result

    def _server(self, model: str, workers: int) -> Server:
        server = self.servers.get(model)
        if server is not None and (server.alive() or model in self.start_errors):
            return server
        self._stop_server(model)
        fixed = self.args.server_port if model in self.commands else None
        if fixed:
            # Two servers cannot listen on one fixed port: the other one steps aside while this one runs.
            for other in [m for m in self.servers if m in self.commands]:
                self._stop_server(other)
        # Known before it starts, so that Ctrl-C while it starts still stops it.
        server = self.servers[model] = self._new_server(model, workers)
        self.start_errors.pop(model, None)
        try:
            server.start(self.args.server_start_timeout)
        except ServerStartError as exc:
            log.error("%s", exc)          # not alive: its runs are recorded as failed
            self.start_errors[model] = f"the server did not start: {exc}"
        return server

    def _new_server(self, model: str, workers: int) -> Server:
        if self.args.attach:
            host, port = self.args.attach
            return AttachedServer(model, host, port, workers)
        if model in self.commands:
            return ForeignServer(model, self.commands[model], self.root, workers, port=self.args.server_port)
        return ServerProcess(model, self.root, workers, extra_args=["--log-level", "WARNING"],
                             python=self.args.python)

    def _stop_server(self, model: str) -> None:
        server = self.servers.get(model)
        if server is not None:
            code = server.stop()
            del self.servers[model]       # only once stopped: an interrupted stop leaves it to _stop_servers
            if code not in (0, None) and not (isinstance(server, ForeignServer) and code == -signal.SIGTERM):
                log.warning("the %s server exited with status %s", model, code)

    def _stop_servers(self) -> None:
        """Stop every server.  A second Ctrl-C (or SIGTERM) while they stop kills the rest at once, whole
        process groups, rather than leaving them running: they are in sessions of their own, so no
        terminal signal reaches them."""
        try:
            for model in list(self.servers):
                self._stop_server(model)
        except KeyboardInterrupt:
            for server in self.servers.values():
                if server.proc is not None:
                    kill_group(server.proc)
            self.servers.clear()
            raise

