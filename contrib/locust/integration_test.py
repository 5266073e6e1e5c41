#!/usr/bin/env python3
"""The Locust integration test: the real Locust, distributed, against each of our servers.

    python contrib/locust/integration_test.py          # .ci/run runs it after the stdlib suite

It installs contrib/locust/requirements.txt into .venv-locust/ (reused while the
requirements and the Python stay the same), then, for the thread and the process
server in turn: starts the server on 127.0.0.1, runs a headless Locust master and
two workers for about 10 s with all four operations, and checks from Locust's CSV
that requests were made, that none failed, and that the server's own STATS counts
equal Locust's, request for request (the STATS requests themselves are not counted
by the server, and every request the locustfile makes, its preparation included, is
reported to Locust).  It ends with "N passed, N failed"; exit status 1 on any
failure, install failures included.

Every process it starts runs in a process group of its own and is stopped by group.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runlocust  # noqa: E402
from fileshare.client import ClientError, FileClient  # noqa: E402
from fileshare.harness import ServerProcess, ServerStartError  # noqa: E402

OPS = ("LIST", "GET", "UPLOAD", "DELETE")
MIX = "list=1,get=2,upload=1,delete=1"
SIZE_MB = "0.0625"          # 64 KiB: many requests in 10 s, each cut-off-free at the stop
USERS = 10
SERVER_WORKERS = 4


class Checks:
    def __init__(self) -> None:
        self.passed = self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"  ok    {what}", flush=True)
        else:
            self.failed += 1
            print(f"  FAIL  {what}" + (f"\n        {detail}" if detail else ""), flush=True)
        return ok


def server_counts(server: ServerProcess) -> dict:
    with FileClient(*server.address, timeout=30) as client:
        return client.stats()


def run_against(model: str, locust: Path, seconds: float, checks: Checks, scratch: Path) -> None:
    print(f"{model} server, Locust master + 2 workers, {USERS} users, {seconds:g} s, mix {MIX}:", flush=True)
    root, out = scratch / model / "files", scratch / model / "locust"
    root.mkdir(parents=True)
    with open(scratch / model / "server.log", "wb") as server_log:
        try:
            server = ServerProcess(model, root, SERVER_WORKERS, stderr=server_log).start()
        except ServerStartError as exc:
            checks.check(False, f"{model} server starts", str(exc))
            return
        with server, runlocust.LocustRun(locust, *server.address, out, USERS, seconds,
                                         options=["--op-mix", MIX, "--file-size-mb", SIZE_MB]) as run:
            before = server_counts(server)
            status = run.run()
            try:
                after = server_counts(server)
            except ClientError as exc:
                checks.check(False, "the server answers STATS after the run", str(exc))
                return
    if not checks.check(status == 0, "Locust's master exits with status 0",
                        f"exit status {status} (None: killed for time); its log ends:\n{run.log()}"):
        return
    try:
        rows = runlocust.read_stats(run.csv_prefix)
        failures = runlocust.read_failures(run.csv_prefix)
    except (OSError, KeyError, ValueError) as exc:
        checks.check(False, "Locust wrote its CSV", f"{exc}; master's log ends:\n{run.log()}")
        return
    total = next((row for row in rows if row.name == "Aggregated"), None)
    if not checks.check(total is not None and total.requests > 0, "requests were made",
                        f"rows: {rows}"):
        return
    by_op = {op: sum(row.requests for row in rows if row.type == op) for op in OPS}
    checks.check(all(by_op.values()), "all four operations ran", f"requests by operation: {by_op}")
    checks.check(total.failures == 0 and not failures, "no request failed",
                 f"{total.failures} failed: {failures[:5]}")
    served = after["succeeded"] - before["succeeded"]
    refused = after["failed"] - before["failed"]
    checks.check(served == total.requests and refused == 0,
                 f"the server's STATS equal Locust's: {served} answered, {refused} failed; Locust {total.requests}",
                 "every request is reported to Locust, so the counts must agree exactly")
    left = sorted(p.name for p in root.iterdir() if p.name.startswith("locust-"))
    checks.check(not left, "the users deleted their uploads when they stopped", f"left on the server: {left[:5]}")
    print(f"  {total.requests} requests ({', '.join(f'{op} {n}' for op, n in by_op.items())})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the pinned Locust and run it, distributed, against "
                                                 "each of our servers; ends with 'N passed, N failed'.")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each Locust run lasts (%(default)s)")
    parser.add_argument("--models", default="thread,process", help="servers to test (%(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    checks = Checks()
    print("Locust integration test (contrib/locust)", flush=True)
    try:
        locust = runlocust.ensure_locust(log=lambda line: print(line, flush=True))
    except runlocust.InstallError as exc:
        print(f"  FAIL  Locust installs from contrib/locust/requirements.txt\n        {exc}", flush=True)
        print("0 passed, 1 failed")
        return 1
    checks.check(True, f"Locust installed in {runlocust.VENV.name}/ ({time.monotonic() - started:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="locust-integration-") as scratch:
        for model in args.models.split(","):
            run_against(model.strip(), locust, args.seconds, checks, Path(scratch))
    print(f"Locust integration test took {time.monotonic() - started:.0f} s")
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
