"""Running the cases against implementations: starting and stopping them, timing, writing the results.

Our two servers, servers started from a command line and servers already
running elsewhere are reached as the sweep reaches them (the classes of
:mod:`fileshare.harness`): each in a fresh temporary folder, in a session of
its own, stopped by process group whatever happens.  Each case runs on a thread
of its own with a time budget; when the budget is spent its connections are
closed, so a silent or trickling server fails that case and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..cli import size_mib, timeout_seconds
from ..harness import SERVER_SCRIPTS, AttachedServer, ForeignServer, ServerProcess, ServerStartError
from ..server import DEFAULT_WORKERS
from .cases import CASES
from .matrix import summary_line, to_json, to_markdown
from .model import Case, CaseResult, ImplementationRun, Outcome, Verdict, breach, select
from .wire import NoReply, Probe

log = logging.getLogger("conformance")

DEFAULT_CASE_TIMEOUT = 5.0
# Our servers run with this upload limit, so case 11.2.1 costs one upload of the limit + 1 MiB,
# and case 7.1.3 (100 MiB) fits exactly.
OUR_UPLOAD_LIMIT_MIB = 100
AFTER_BUDGET = 5.0           # how long a case whose budget is spent gets to notice its closed connections
DEFAULT_NAME = "conformance"
PROTOCOL_DOC = "docs/protocol.md"


@dataclass
class Implementation:
    """One implementation to check, and what the checker knows of it."""
    name: str
    how: str
    make_server: Callable[[str], Any]      # served folder -> a ServerProcess, ForeignServer or AttachedServer
    upload_limit: Optional[int] = None     # bytes, when known
    workers: int = DEFAULT_WORKERS


def run_case(case: Case, probe: Probe) -> CaseResult:
    """Run one case on a thread of its own; however the server behaves, it ends within its budget."""
    verdicts: list[Verdict] = []
    notes: list[str] = []
    started = time.monotonic()

    def body() -> None:
        try:
            try:
                notes.append(case.run(probe) or "")
            except NoReply as exc:            # a step the case did not expect to go unanswered
                raise breach("1.2", "a reply", exc.describe()) from None
        except Verdict as verdict:
            verdicts.append(verdict)
        except Exception as exc:              # the checker's own fault: say so, blame no server
            log.exception("case %s: the checker failed", case.id)
            verdicts.append(Verdict(case.requirement, "the case to run", f"the checker failed: {exc!r}",
                                    Outcome.FAILED))
        if case.bad_input and not (verdicts and verdicts[0].outcome is Outcome.FAILED):
            try:
                probe.still_serves()
            except Verdict as verdict:
                verdicts.insert(0, verdict)

    thread = threading.Thread(target=body, name=f"case-{case.id}", daemon=True)
    thread.start()
    thread.join(max(0.0, probe.deadline - time.monotonic()) + 1.0)
    if thread.is_alive():
        probe.abort()
        thread.join(AFTER_BUDGET)
        verdicts.insert(0, breach("1.2", f"the case to end within {case.budget:g} s",
                                  "it did not (the server kept it waiting); its connections were closed"))
    probe.close_all()
    duration = time.monotonic() - started
    if verdicts:
        return CaseResult.of_verdict(case.id, verdicts[0], duration)
    return CaseResult(case.id, Outcome.OK, case.requirement, note=notes[0] if notes else "", duration_s=duration)


class Checked:
    """One implementation's server for the run: started, restarted if it dies, stopped at the end."""

    def __init__(self, impl: Implementation, base: Path, start_timeout: float) -> None:
        self.impl = impl
        self.start_timeout = start_timeout
        self.folder = base / _safe(impl.name)
        self.root = self.folder / "served"
        self.root.mkdir(parents=True)
        self.sentinel = f"cf-outside-{secrets.token_hex(4)}.txt"
        self.sentinel_content = f"planted outside the served folder {secrets.token_hex(8)}\n".encode()
        self.outside_file = base / f"outside-{_safe(impl.name)}" / self.sentinel
        self.server: Any = None

    def start(self) -> None:
        self.server = self.impl.make_server(str(self.root))
        self.server.start(self.start_timeout)

    def ensure_alive(self) -> None:
        if self.server is None:
            self.start()
            return
        if self.server.alive():
            return
        log.warning("the %s server is not running (status %s): starting a fresh one", self.impl.name,
                    self.server.returncode)
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def escape_dirs(self) -> dict[str, str]:
        """Where a name reaching outside the served folder lands: beside the folder we gave, and in
        the server's working directory (a server that serves a folder of its own there)."""
        folders = {str(self.folder): "beside the served folder"}
        workdir = getattr(self.server, "workdir", None)
        if workdir:
            folders[workdir] = "in the server's working directory"
        return folders

    def probe(self, case: Case, timeout: float) -> Probe:
        outside = [str(self.outside_file.parent), *self.escape_dirs()]
        for folder in outside:     # planted anew for every case: a server may have removed one
            os.makedirs(folder, exist_ok=True)
            Path(folder, self.sentinel).write_bytes(self.sentinel_content)
        return Probe(self.server.address, timeout, case.budget, escape_dirs=self.escape_dirs(),
                     outside_file=str(self.outside_file), outside_content=self.sentinel_content,
                     upload_limit=self.impl.upload_limit, workers=self.impl.workers, case_id=case.id)


def check(impl: Implementation, cases: Sequence[Case], timeout: float, start_timeout: float,
          base: Path) -> ImplementationRun:
    """Every case against one implementation, on a server of its own."""
    run = ImplementationRun(impl.name, impl.how)
    started = time.monotonic()
    checked = Checked(impl, base, start_timeout)
    try:
        for case in cases:
            try:
                checked.ensure_alive()
            except ServerStartError as exc:
                run.start_error = run.start_error or f"the server did not start: {exc}"
                run.results[case.id] = CaseResult(case.id, Outcome.FAILED, case.requirement,
                                                  "a server to check", run.start_error)
                continue
            probe = checked.probe(case, timeout)
            result = run_case(case, probe)
            try:
                probe.cleanup()
            except NoReply:
                pass
            run.results[case.id] = _without(str(base), result)
            log.info("%s %s %s (%.2f s)%s", impl.name, case.id, result.outcome.value, result.duration_s,
                     f": {result.actual}" if result.outcome is not Outcome.OK else "")
    finally:
        checked.stop()
        run.duration_s = time.monotonic() - started
    return run


def write_outputs(runs: Sequence[ImplementationRun], cases: Sequence[Case], meta: dict,
                  output: Optional[str]) -> tuple[Path, Path]:
    """conformance.json and conformance.md in the current folder, or beside ``output`` (its stem)."""
    stem = Path(output).with_suffix("") if output else Path(DEFAULT_NAME)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(to_json(runs, cases, meta), indent=1, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    md_path.write_text(to_markdown(runs, cases, meta), encoding="utf-8")
    return json_path, md_path


# ---------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser, modes: Any) -> None:
    """The conformance options of run_experiment.py; ``modes`` is its group of mutually exclusive modes."""
    modes.add_argument("--conformance", action="store_true",
                       help=f"no sweep: check thread, process and every --server-command / --attach server "
                            f"against {PROTOCOL_DOC}, case by case; write conformance.json and conformance.md "
                            "(beside --output if given); exit status 1 if any implementation FAILED a case")
    group = parser.add_argument_group("conformance", "Options of --conformance (--models picks implementations; "
                                      "--server-command, --server-port, --attach, --server-start-timeout, "
                                      "--python and one --server-workers value apply as for the sweep).")
    group.add_argument("--cases", metavar="PATTERNS",
                       help="comma-separated case ids or patterns, e.g. '3.*,7.1' (default: every case)")
    group.add_argument("--list-cases", action="store_true", help="print the cases (those --cases selects) and exit")
    group.add_argument("--case-timeout", type=timeout_seconds, default=DEFAULT_CASE_TIMEOUT, metavar="SECONDS",
                       help="how long a case waits for a reply before the server counts as silent "
                            "(default: %(default)s)")
    group.add_argument("--upload-limit-mb", type=size_mib, metavar="MIB",
                       help="the upload limit of --server-command / --attach servers, for case 11.2.1 (default: "
                            f"unknown, not tried; ours run with {OUR_UPLOAD_LIMIT_MIB})")


def implementations(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Implementation]:
    """What --models, --server-command and --attach ask to check (usage errors exit via ``parser``)."""
    commands = dict(args.server_command)
    if len(commands) != len(args.server_command):
        parser.error("each --server-command needs a NAME of its own")
    if set(commands) & set(SERVER_SCRIPTS):
        parser.error("a --server-command NAME may not be thread or process: choose another name")
    if args.server_workers and len(args.server_workers) != 1:
        parser.error("--conformance takes one --server-workers value")
    workers = args.server_workers[0] if args.server_workers else DEFAULT_WORKERS
    limit = int(args.upload_limit_mb * 1024 * 1024) if args.upload_limit_mb else None
    known = [*SERVER_SCRIPTS, *commands]
    attached_name = None
    if args.attach:
        unknown = [m for m in (args.models or []) if m not in known]
        if len(unknown) > 1:
            parser.error(f"--attach names one server, but --models names {unknown}")
        attached_name = unknown[0] if unknown else "attached"
        known.append(attached_name)
    chosen = args.models or known
    missing = [m for m in chosen if m not in known]
    if missing:
        parser.error(f"unknown model {missing[0]!r}: choose thread, process or a NAME defined by --server-command")
    our_args = ["--log-level", "WARNING", "--max-upload-mb", str(OUR_UPLOAD_LIMIT_MIB)]
    found = []
    for name in chosen:
        if name in SERVER_SCRIPTS:
            found.append(Implementation(
                name, f"{SERVER_SCRIPTS[name].name} --workers {workers} {' '.join(our_args)}",
                lambda root, name=name: ServerProcess(name, root, workers, extra_args=our_args,
                                                      python=args.python),
                OUR_UPLOAD_LIMIT_MIB * 1024 * 1024, workers))
        elif name in commands:
            found.append(Implementation(
                name, _as_typed(commands[name]),
                lambda root, name=name: ForeignServer(name, commands[name], root, workers, port=args.server_port),
                limit, workers))
        else:
            host, port = args.attach
            found.append(Implementation(name, f"attached at {host}:{port}",
                                        lambda root, name=name: AttachedServer(name, host, port, workers),
                                        limit, workers))
    return found


def list_cases(cases: Sequence[Case]) -> str:
    return "\n".join(f"{c.id:<8} {c.requirement:<5} {c.level:<6} {c.title}" + ("  [bad input]" if c.bad_input else "")
                     for c in cases)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``run_experiment.py --conformance`` (and ``--list-cases``)."""
    cases = select(CASES, args.cases)
    if not cases:
        parser.error(f"--cases {args.cases!r} selects no case; --list-cases shows them")
    if args.list_cases:
        print(list_cases(cases))
        return 0
    impls = implementations(args, parser)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = Path(tempfile.mkdtemp(prefix="fileshare-conformance-"))
    started, wall = datetime.now(timezone.utc), time.monotonic()
    runs: list[ImplementationRun] = []
    interrupted = False
    try:
        for impl in impls:
            log.info("checking %s: %s", impl.name, impl.how)
            runs.append(check(impl, cases, args.case_timeout, args.server_start_timeout, base))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        shutil.rmtree(base, ignore_errors=True)
    meta = {"protocol": PROTOCOL_DOC, "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - wall, 3), "case_timeout_s": args.case_timeout,
            "completed": not interrupted, "argv": sys.argv[1:]}
    json_path, md_path = write_outputs(runs, cases, meta, args.output)
    for run in runs:
        print(summary_line(run))
    print(f"\n{len(cases)} cases x {len(runs)} implementations in {meta['duration_s']:.1f} s; "
          f"matrix in {md_path}, details in {json_path}")
    if interrupted:
        print("interrupted: the results so far are written", file=sys.stderr)
        return 130
    return 1 if any(run.failed for run in runs) else 0


def _without(temporary: str, result: CaseResult) -> CaseResult:
    """``result`` with the run's temporary folder written TMP: its random path means nothing later."""
    for field_name in ("expected", "actual", "note"):
        setattr(result, field_name, getattr(result, field_name).replace(temporary, "TMP"))
    return result


def _as_typed(command: Sequence[str]) -> str:
    """The command for a report: files below the current folder relative, as a user gives them."""
    here = os.getcwd() + os.sep
    return shlex.join(os.path.relpath(w) if os.path.isabs(w) and w.startswith(here) else w for w in command)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "server"
