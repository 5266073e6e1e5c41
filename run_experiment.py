#!/usr/bin/env python3
"""The main job: sweep both servers through stress_test.py and write results.csv.

    python run_experiment.py            # the full 108-cell sweep, every cell run at least 3 times per model
    python run_experiment.py --quick    # a tiny sweep, for a first try (writes results-quick.*)
    python run_experiment.py --report results.jsonl            # results.md from a finished run
    python run_experiment.py --compare a.jsonl b.jsonl         # two or more runs side by side
    python run_experiment.py --help     # every knob

This script is the command line; the sweep (cells, their order, the repeats,
running them) is fileshare/sweep.py, its statistics fileshare/stats.py, and the
reports and comparisons fileshare/report.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from fileshare import conformance
from fileshare.cli import grace_seconds, positive_int, remote_port, size_mib, timeout_seconds
from fileshare.harness import READY_TIMEOUT, SERVER_SCRIPTS
from fileshare.report import (CSV_COLUMNS, ReportError, aggregate_table, compare_summary, compare_table, load_run,
                              run_labels, uncounted_models, write_compare, write_report)
from fileshare.sweep import RepeatPolicy, ServerUnreachable, Sweep, duration, plan, probe_python

__all__ = ["CSV_COLUMNS", "DEFAULTS", "NARROWED_OUTPUT", "main"]

DEFAULTS = {"models": ["thread", "process"], "server_workers": [1, 5, 50], "ops": ["download", "upload"],
            "sizes": [10, 50, 100], "client_workers": [1, 5, 50]}
QUICK = {"models": ["thread", "process"], "server_workers": [2], "ops": ["download", "upload"],
         "sizes": [1], "client_workers": [1, 3]}
DEFAULT_OUTPUT = "results.csv"
# Where a sweep smaller than the full default writes, so a first try never overwrites the committed results.
NARROWED_OUTPUT = "results-quick.csv"


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
               "3 sizes x 3 client pools), each run at least 3 times on each model, into results.csv (about "
               "25 minutes on 2 cores). A narrower sweep (--quick or any list) writes "
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
    repeats = p.add_argument_group(
        "repeats", "Each cell is measured on every model in turn (ABBA), the servers of one pool size side by side. "
        "A short cell gets more than --repeat runs, up to --max-repeat, until each model has --min-time seconds "
        "of measured time or a 95% interval within 5% of its mean. The CSV row is each model's median run by "
        "aggregate throughput; the JSON Lines keep every run.")
    repeats.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                         help="at least N measured runs of each cell on each model; 1 is a fast look with no "
                              "interval (default: %(default)s)")
    repeats.add_argument("--max-repeat", type=positive_int, metavar="N",
                         help="at most N measured runs (default: twice --repeat; 1 with --repeat 1)")
    repeats.add_argument("--min-time", type=grace_seconds, default=1.0, metavar="SECONDS",
                         help="measured seconds per model after which a cell needs no more runs "
                              "(default: %(default)s)")
    repeats.add_argument("--warmup", type=int, choices=range(0, 10), default=0, metavar="N",
                         help="runs of each cell on each model made first and discarded (default: %(default)s)")
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
    conformance.add_arguments(p, modes)
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
                   help="accepted for older command lines: every sweep now measures each cell on every model "
                        "in turn")
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


def repeat_policy(args: argparse.Namespace) -> RepeatPolicy:
    """The repeats asked for: --repeat 1 is one run exactly; else up to --max-repeat (default twice --repeat)."""
    most = args.max_repeat or (1 if args.repeat == 1 else 2 * args.repeat)
    return RepeatPolicy(min_runs=args.repeat, max_runs=max(most, args.repeat), min_time=args.min_time,
                        warmup=args.warmup)


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
    if args.conformance or args.list_cases:
        return conformance.main(args, parser)
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
    cells = plan(lists["server_workers"], lists["ops"], lists["sizes"], lists["client_workers"])
    # SIGTERM ends the sweep like Ctrl-C: servers and stress tests are stopped, finished rows kept.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = args.root or tempfile.mkdtemp(prefix="fileserver-sweep-")
    started, status = time.monotonic(), 0
    output = Path(args.output)
    try:
        Sweep(args, cells, lists["models"], root, interpreter, repeat_policy(args), commands).run()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished rows are in {args.output}; --resume continues", file=sys.stderr)
        return 130
    except ReportError as exc:         # the files --resume should continue cannot be read
        print(f"run_experiment: {exc}", file=sys.stderr)
        return 2
    except ServerUnreachable as exc:
        print(f"run_experiment: {exc}; the sweep stopped. Finished cells are in {output}; start the server "
              "again and add --resume to run the rest (the cell it was on is not recorded)", file=sys.stderr)
        status = 3
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    try:
        run = load_run(output.with_suffix(".jsonl"))
        write_report(run, output.with_suffix(".md"), output.with_suffix(".svg"))
    except ReportError as exc:
        print(f"run_experiment: no report: {exc}", file=sys.stderr)
        return status or 2
    print(aggregate_table(run).text())
    print(f"\n{len(run.cells)} model cells in {output} ({duration(time.monotonic() - started)}); "
          f"every run in {output.with_suffix('.jsonl')}; chart in {output.with_suffix('.svg')}, "
          f"report in {output.with_suffix('.md')}")
    for model in uncounted_models(run):
        print(f"the {model} server could not report its request counts (no answer to STATS): "
              "its server columns are empty")
    return status


if __name__ == "__main__":
    sys.exit(main())
