#!/usr/bin/env python3
"""The main job: sweep both servers through stress_test.py and write results.csv.

    python run_experiment.py            # the full 108-cell sweep (about 6 minutes on 2 cores)
    python run_experiment.py --quick    # a tiny sweep, for a first try (writes results-quick.*)
    python run_experiment.py --report results.jsonl            # results.md from a finished run
    python run_experiment.py --compare a.jsonl b.jsonl         # two or more runs side by side
    python run_experiment.py --help     # every knob

For each server configuration (model x server workers) a fresh server is
started on a free port, the cells run one after another through
``stress_test.py``, and the server is stopped with SIGTERM.  Each CSV row is
written and flushed as soon as its cell ends; the full stress-test results and
the run's environment go to a JSON Lines file beside the CSV; a summary table,
an SVG chart and a Markdown report (fileshare/report.py) come at the end.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from fileshare.cli import positive_int, remote_port, size_mib, timeout_seconds
from fileshare.harness import (READY_TIMEOUT, SERVER_SCRIPTS, AttachedServer, ForeignServer, ServerProcess,
                               ServerStartError, run_in_group, script_path)
from fileshare.report import (CSV_COLUMNS, ReportError, aggregate_table, compare_summary, compare_table, csv_key,
                              csv_row, key_texts, load_run, run_labels, uncounted_models, write_compare,
                              write_report)

log = logging.getLogger("run_experiment")

DEFAULTS = {"models": ["thread", "process"], "server_workers": [1, 5, 50], "ops": ["download", "upload"],
            "sizes": [10, 50, 100], "client_workers": [1, 5, 50]}
QUICK = {"models": ["thread", "process"], "server_workers": [2], "ops": ["download", "upload"],
         "sizes": [1], "client_workers": [1, 3]}
DEFAULT_OUTPUT = "results.csv"
# Where a sweep smaller than the full default writes, so a first try never overwrites the committed results.
NARROWED_OUTPUT = "results-quick.csv"
OLDEST_PYTHON = (3, 11)
# Asked of the interpreter that runs the servers and stress tests; written so that even an old Python
# answers (a version to refuse) instead of failing on syntax.
PROBE = ("import json, platform, sys, sysconfig; print(json.dumps({"
         "'version_info': list(sys.version_info[:3]), 'python': platform.python_version(), "
         "'implementation': platform.python_implementation(), 'executable': sys.executable, "
         "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
         "'gil_enabled': sys._is_gil_enabled() if hasattr(sys, '_is_gil_enabled') else True}))")


@dataclass(frozen=True)
class Cell:
    model: str
    server_workers: int
    op: str
    size_mb: float
    clients: int

    def key(self) -> tuple[str, ...]:
        """The cell as the CSV's identifying columns show it, to match rows for --resume."""
        return key_texts(vars(self))

    def label(self) -> str:
        return (f"{self.model} server x{self.server_workers}, {self.op} {self.size_mb:g} MB, "
                f"{self.clients} client{'s' if self.clients != 1 else ''}")


def plan(models: list[str], server_workers: list[int], ops: list[str], sizes: list[float],
         client_workers: list[int], interleave: bool = False) -> list[Cell]:
    """The sweep, nested as the original: model, server workers, operation, size, clients.

    ``interleave`` puts the model innermost instead, so every cell runs on each model
    in turn (a fresh server each time) and a machine whose speed drifts hits all alike.
    """
    if interleave:
        return [Cell(m, w, o, s, c) for w in server_workers for o in ops for s in sizes for c in client_workers
                for m in models]
    return [Cell(m, w, o, s, c) for m in models for w in server_workers for o in ops for s in sizes
            for c in client_workers]


# ---------------------------------------------------------------------- one cell

def run_cell(cell: Cell, server: ServerProcess, pool: str, timeout: float, python: str = sys.executable,
             client_work: str = "verify") -> dict:
    """Run stress_test.py once for ``cell`` with ``python``; a stress test that hangs or crashes is a failed cell."""
    env = dict(os.environ, STRESS_OP=cell.op, FILE_SIZE_MB=f"{cell.size_mb:g}", CLIENT_POOL=str(cell.clients),
               CLIENT_POOL_TYPE=pool, SERVER_HOST=server.host, SERVER_PORT=str(server.port),
               CLIENT_WORK=client_work)
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
    log.warning("%s: %s", cell.label(), reason)
    return failed_result(cell, pool, reason, elapsed)


def failed_result(cell: Cell, pool: str, reason: str, elapsed: float = 0.0) -> dict:
    """A result for a cell whose clients never reported: every one of them counts as failed."""
    return {"op": cell.op, "size_mb": cell.size_mb, "clients": cell.clients, "pool": pool,
            "succeed": 0, "failed": cell.clients, "total_time_s": None, "throughput_Bps": None,
            "errors": {"other": {"count": cell.clients, "example": reason}},
            "server_succeeded": None, "server_failed": None, "elapsed_s": elapsed}


def representative(samples: list[dict]) -> dict:
    """The median sample by throughput per client, so every figure in a row comes from one real run."""
    if len(samples) == 1:
        return samples[0]
    ranked = sorted(samples, key=lambda s: (s.get("throughput_Bps") is not None, s.get("throughput_Bps") or 0))
    return ranked[(len(ranked) - 1) // 2]


# ---------------------------------------------------------------------- output

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


def environment(interpreter: dict) -> dict:
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
            "commit": commit, "dirty": dirty, "argv": sys.argv[1:]}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _finish_environment(jsonl: Path, written: str, duration: float, completed: bool) -> None:
    """Fill in the end of the sweep on its environment line (the one this session wrote)."""
    lines = jsonl.read_text(encoding="utf-8").split("\n")
    if written not in lines:
        return
    record = dict(json.loads(written), end=_now(), duration_s=round(duration, 3), completed=completed)
    lines[lines.index(written)] = json.dumps(record)
    partial = jsonl.with_name(jsonl.name + ".part")
    partial.write_text("\n".join(lines), encoding="utf-8")
    os.replace(partial, jsonl)       # all or nothing: the file is never left half rewritten


def _memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


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
            raise SystemExit(f"run_experiment: {path} does not have the expected columns; "
                             "remove it or choose another --output")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(CSV_COLUMNS) or not row[0].isdigit():
                raise SystemExit(f"run_experiment: {path} line {line} is not a row this tool wrote; "
                                 "fix or remove it, or choose another --output")
            done.add(csv_key(row))
            last = max(last, int(row[0]))
    kinds = _client_kinds(path.with_suffix(".jsonl"))
    if done and kinds != {(client_pool, client_work)}:
        found = ", ".join(f"client pool type {pool} with --client-work {work}" for pool, work in sorted(kinds)) \
            or "unknown clients (no JSON Lines beside it)"
        raise SystemExit(f"run_experiment: {path} was made with {found}, not client pool type {client_pool} with "
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------- the sweep

Server = ServerProcess | AttachedServer


class Sweep:
    def __init__(self, args: argparse.Namespace, cells: list[Cell], root: str, interpreter: dict,
                 commands: dict[str, list[str]] | None = None) -> None:
        self.args, self.cells, self.root, self.interpreter = args, cells, root, interpreter
        self.commands = commands or {}      # model name -> command line of a server of anyone's making
        self.output = Path(args.output)
        self.jsonl = self.output.with_suffix(".jsonl")
        self.server: Server | None = None
        self.start_error = ""

    def run(self) -> int:
        env = environment(self.interpreter)   # before the output files are opened: they would make the tree look dirty
        done, number = (read_done(self.output, self.args.client_pool_type, self.args.client_work)
                        if self.args.resume and self.output.exists() else (set(), 0))
        todo = [c for c in self.cells if c.key() not in done]
        if done:
            print(f"resuming: {len(self.cells) - len(todo)} of {len(self.cells)} cells already in {self.output}",
                  file=sys.stderr)
        append = bool(done) or (self.args.resume and self.output.exists())
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output, "a" if append else "w", newline="", encoding="utf-8") as csv_file, \
                open(self.jsonl, "a" if append else "w", encoding="utf-8") as jsonl_file:
            writer = csv.writer(csv_file, lineterminator="\n")
            if not append:
                writer.writerow(CSV_COLUMNS)
                csv_file.flush()
            written = _write_json(jsonl_file, env)
            started, completed = time.monotonic(), False
            try:
                self._sweep(todo, number, writer, csv_file, jsonl_file)
                completed = True
            finally:
                jsonl_file.close()
                _finish_environment(self.jsonl, written, time.monotonic() - started, completed)
        return 0

    def _sweep(self, todo: list[Cell], number: int, writer: "csv._writer", csv_file: TextIO,
               jsonl_file: TextIO) -> None:
        started = time.monotonic()
        weights = [c.size_mb * c.clients + 5 for c in todo]    # rough cost, for the ETA only
        spent_weight = 0.0
        try:
            for index, cell in enumerate(todo):
                self._ensure_server(cell)
                samples = [self._run_one(cell) for _ in range(self.args.repeat)]
                result = representative(samples)
                number += 1
                record = {"type": "cell", "row": number, "model": cell.model,
                          "server_workers": cell.server_workers, "op": cell.op, "size_mb": cell.size_mb,
                          "clients": cell.clients, "client_pool": self.args.client_pool_type,
                          "client_work": self.args.client_work, "result": result,
                          "samples": samples}
                writer.writerow(csv_row(record))
                csv_file.flush()
                _write_json(jsonl_file, record)
                spent_weight += weights[index]
                elapsed = time.monotonic() - started
                eta = elapsed / spent_weight * (sum(weights) - spent_weight)
                rate = result.get("throughput_Bps")
                print(f"[{index + 1}/{len(todo)}] {cell.label()}: {result['succeed']} ok, {result['failed']} failed, "
                      f"{'-' if rate is None else f'{rate / 1e6:.1f}'} MB/s per client, server "
                      f"{result.get('server_succeeded')}/{result.get('server_failed')} ok/failed | "
                      f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}", file=sys.stderr, flush=True)
        finally:
            self._stop_server()

    def _run_one(self, cell: Cell) -> dict:
        assert self.server is not None
        if not self.server.alive():
            return failed_result(cell, self.args.client_pool_type, self.start_error or "the server was not running")
        result = run_cell(cell, self.server, self.args.client_pool_type, self.args.timeout, self.args.python,
                          self.args.client_work)
        if not self.server.alive():
            log.warning("the %s server died during %s (status %s); a fresh one takes the next cells",
                        cell.model, cell.label(), self.server.proc.returncode if self.server.proc else None)
            result.setdefault("notes", []).append("the server died during this cell")
            self._stop_server()
        return result

    def _ensure_server(self, cell: Cell) -> None:
        if self.server is not None and self.server.alive() and \
                (self.server.model, self.server.workers) == (cell.model, cell.server_workers):
            return
        self._stop_server()
        # Known before it starts, so that Ctrl-C while it starts still stops it.
        self.server = self._new_server(cell)
        self.start_error = ""
        try:
            self.server.start(self.args.server_start_timeout)
        except ServerStartError as exc:
            log.error("%s", exc)          # not alive: its cells are recorded as failed
            self.start_error = f"the server did not start: {exc}"

    def _new_server(self, cell: Cell) -> Server:
        if self.args.attach:
            host, port = self.args.attach
            return AttachedServer(cell.model, host, port, cell.server_workers)
        if cell.model in self.commands:
            return ForeignServer(cell.model, self.commands[cell.model], self.root, cell.server_workers,
                                 port=self.args.server_port)
        return ServerProcess(cell.model, self.root, cell.server_workers, extra_args=["--log-level", "WARNING"],
                             python=self.args.python)

    def _stop_server(self) -> None:
        if self.server is not None:
            code = self.server.stop()
            if code not in (0, None) and not (isinstance(self.server, ForeignServer) and code == -signal.SIGTERM):
                log.warning("the %s server exited with status %s", self.server.model, code)
            self.server = None


def _write_json(f: TextIO, record: dict) -> str:
    line = json.dumps(record)
    f.write(line + "\n")
    f.flush()
    return line


# ---------------------------------------------------------------------- command line

def _list_of(kind: type, allowed: Optional[set] = None):
    def parse(text: str) -> list:
        values = []
        for part in text.split(","):
            value = kind(part.strip())
            if allowed is not None and value not in allowed:
                raise ValueError(part)
            if kind in (int, float) and not value > 0:
                raise ValueError(part)
            values.append(value)
        if not values:
            raise ValueError(text)
        return values
    parse.__name__ = f"comma-separated list of {kind.__name__}" + (f" from {sorted(allowed)}" if allowed else "")
    return parse


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Sweep the thread-pool and process-pool file servers with stress_test.py and write results.csv; "
                    "or report on, or compare, finished runs.",
        epilog="Default: the full original sweep of 108 cells (2 models x 3 server pools x 2 operations x "
               "3 sizes x 3 client pools) into results.csv. A narrower sweep (--quick or any list) writes "
               f"{NARROWED_OUTPUT} unless --output says otherwise. Lists are comma-separated, e.g. --sizes 10,50.")
    p.add_argument("--models", type=_list_of(str),
                   help="server models: thread, process and NAMEs of --server-command (default: thread,process "
                        "and every --server-command)")
    p.add_argument("--server-workers", type=_list_of(int), help="server pool sizes (default: 1,5,50)")
    p.add_argument("--client-workers", type=_list_of(int), help="concurrent clients (default: 1,5,50)")
    p.add_argument("--ops", type=_list_of(str, {"download", "upload"}), help="operations (default: download,upload)")
    p.add_argument("--sizes", type=_list_of(size_mib), help="file sizes in MB (default: 10,50,100)")
    p.add_argument("--client-pool-type", choices=["thread", "process"], default="thread",
                   help="how stress_test runs its clients (default: %(default)s)")
    p.add_argument("--client-work", choices=["verify", "decode"], default="verify",
                   help="what stress_test's clients do with the content: verify compares it with the known "
                        "base64 text (cheap, so the server is measured); decode decodes and encodes like an "
                        "application (default: %(default)s)")
    p.add_argument("--output", help=f"CSV to write; the JSON Lines, SVG and Markdown go beside it (default: "
                                    f"{DEFAULT_OUTPUT} for the full sweep, {NARROWED_OUTPUT} for any other; with "
                                    "--compare: the Markdown to write, default compare.md)")
    p.add_argument("--timeout", type=timeout_seconds, default=300.0,
                   help="seconds one stress test may take before it is killed and its clients count as "
                        "failed (default: %(default)s)")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="run each cell N times; the CSV row is the median run by throughput, the JSON Lines "
                        "keep every run (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="skip the cells already in --output, append the rest")
    p.add_argument("--quick", action="store_true", help="a tiny sweep (1 MB, 1 and 3 clients) for a first try")
    p.add_argument("--root", help="folder the servers serve during the sweep (default: a temporary folder)")
    p.add_argument("--python", default=sys.executable, metavar="PATH",
                   help="interpreter (3.11 or newer) that runs the servers and stress tests, e.g. a free-threaded "
                        "python3.14t (default: the one running this script)")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--report", metavar="JSONL",
                       help="no sweep: write a Markdown report (and its SVG) of a finished run beside the file")
    modes.add_argument("--compare", nargs="+", metavar="JSONL",
                       help="no sweep: two or more finished runs side by side, printed and written as Markdown "
                            "and SVG (per cell: aggregate MB/s, failed clients, ratio to the first run)")
    foreign = p.add_argument_group(
        "other implementations",
        "Measure any server that speaks the protocol, beside ours. A --server-command server gets MAX_WORKERS, "
        "SERVER_PORT and FILES_DIR in its environment and a fresh temporary folder as its working directory; it "
        "is ready when it prints 'listening on HOST:PORT' or when its port accepts connections.")
    foreign.add_argument("--server-command", action="append", default=[], metavar="NAME=COMMAND",
                         type=server_command,
                         help="a model NAME started by COMMAND (split like a shell command, run without a shell; "
                              "arguments naming an existing file here are made absolute); repeatable")
    foreign.add_argument("--server-port", type=remote_port, metavar="PORT",
                         help="the port --server-command servers listen on, for servers that ignore SERVER_PORT "
                              "(default: a free port, passed as SERVER_PORT)")
    foreign.add_argument("--server-start-timeout", type=timeout_seconds, default=READY_TIMEOUT, metavar="SECONDS",
                         help="how long a server may take to start before its cells fail (default: %(default)s)")
    foreign.add_argument("--attach", type=host_port, metavar="HOST:PORT",
                         help="sweep the clients against one server already running there, never started or "
                              "stopped here; label it with --models NAME and a single --server-workers N")
    p.add_argument("--interleave", action="store_true",
                   help="run each cell on every model in turn (a fresh server each time), so a machine whose "
                        "speed drifts hits every model alike")
    return p


def server_command(text: str) -> tuple[str, list[str]]:
    """NAME=COMMAND for --server-command, the command split like a shell command."""
    name, sep, command = text.partition("=")
    name = name.strip()
    if not sep or not name or "," in name or name.split() != [name]:
        raise ValueError(text)
    words = shlex.split(command)
    if not words:
        raise ValueError(text)
    # It runs in a temporary folder: a file named relative to here must still be found.
    return name, [os.path.abspath(word) if os.path.isfile(word) else word for word in words]


server_command.__name__ = "NAME=COMMAND"


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(text)
    return host, remote_port(port)


host_port.__name__ = "HOST:PORT"


def _check_models(parser: argparse.ArgumentParser, args: argparse.Namespace, models: list[str],
                  commands: dict[str, list[str]]) -> None:
    if len(commands) != len(args.server_command):
        parser.error("each --server-command needs a NAME of its own")
    taken = sorted(set(commands) & set(SERVER_SCRIPTS))
    if taken:
        parser.error(f"--server-command NAME {taken[0]!r} is one of our own models; choose another name")
    if args.attach:
        if not args.models or len(args.models) != 1 or not args.server_workers or len(args.server_workers) != 1:
            parser.error("--attach measures one server: label it with --models NAME and --server-workers N "
                         "(one value each)")
        if commands:
            parser.error("--attach starts nothing: it cannot be used with --server-command")
        return
    unknown = [m for m in models if m not in SERVER_SCRIPTS and m not in commands]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}: choose thread, process or a NAME defined by --server-command")


def output_for(args: argparse.Namespace, lists: dict[str, list]) -> str:
    """The CSV to write: what --output says, else results.csv only for the full default sweep."""
    if args.output:
        return args.output
    full = all(set(lists[name]) == set(values) for name, values in DEFAULTS.items())
    return DEFAULT_OUTPUT if full else NARROWED_OUTPUT


def report(jsonl: Path) -> int:
    run = load_run(jsonl)
    markdown, chart = jsonl.with_suffix(".md"), jsonl.with_suffix(".svg")
    write_report(run, markdown, chart)
    print(aggregate_table(run).text())
    print(f"\nreport in {markdown}, chart in {chart}")
    return 0


def compare(paths: list[str], output: Optional[str]) -> int:
    if len(paths) < 2:
        raise ReportError("--compare needs two or more .jsonl files")
    runs = [load_run(Path(path)) for path in paths]
    labels = run_labels(runs)
    markdown = Path(output or "compare.md").with_suffix(".md")
    chart = markdown.with_suffix(".svg")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    write_compare(runs, labels, markdown, chart)
    print(compare_table(runs, labels).text())
    print("\n" + "\n".join(compare_summary(runs, labels)))
    print(f"\ncomparison in {markdown}, chart in {chart}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        if args.report:
            return report(Path(args.report))
        if args.compare:
            return compare(args.compare, args.output)
    except ReportError as exc:
        print(f"run_experiment: {exc}", file=sys.stderr)
        return 2
    try:
        interpreter = probe_python(args.python)
    except ValueError as exc:
        print(f"run_experiment: --python: {exc}", file=sys.stderr)
        return 2
    base = QUICK if args.quick else DEFAULTS
    commands = dict(args.server_command)
    lists = {name: getattr(args, name) or base[name] for name in DEFAULTS}
    if not args.models:
        lists["models"] = base["models"] + list(commands)
    _check_models(parser, args, lists["models"], commands)
    args.output = output_for(args, lists)
    cells = plan(lists["models"], lists["server_workers"], lists["ops"], lists["sizes"], lists["client_workers"],
                 args.interleave)
    # SIGTERM ends the sweep like Ctrl-C: servers and stress tests are stopped, finished rows kept.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = args.root or tempfile.mkdtemp(prefix="fileserver-sweep-")
    started = time.monotonic()
    try:
        Sweep(args, cells, root, interpreter, commands).run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished rows are in {args.output}; --resume continues", file=sys.stderr)
        return 130
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    output = Path(args.output)
    run = load_run(output.with_suffix(".jsonl"))
    write_report(run, output.with_suffix(".md"), output.with_suffix(".svg"))
    print(aggregate_table(run).text())
    print(f"\n{len(run.cells)} cells in {output} ({_duration(time.monotonic() - started)}); "
          f"every run in {output.with_suffix('.jsonl')}; chart in {output.with_suffix('.svg')}, "
          f"report in {output.with_suffix('.md')}")
    for model in uncounted_models(run):
        print(f"the {model} server could not report its request counts (no answer to STATS): "
              "its server columns are empty")
    return 0


if __name__ == "__main__":
    sys.exit(main())
