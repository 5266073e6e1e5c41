#!/usr/bin/env python3
"""Locust beside stress_test.py: verified download MB/s against the same server, in one run.

    python contrib/locust/bench.py                    # thread server, 3 rounds: about 2 minutes
    python contrib/locust/bench.py --model process --rounds 5

Each round runs stress_test.py (10 clients, one 10 MiB download each, every byte
verified) a few times, then Locust (a headless master, 2 workers, 10 users each
downloading the same file in a closed loop for --seconds, every byte verified),
against one server started here.  Rounds interleave the two, so drift of a shared
machine hits both; each round's ratio compares runs made one right after the other.

MB/s = 10^6 bytes of file content per second.  stress_test's figure is its own
``aggregate_throughput_Bps`` (bytes / first start to last end).  Locust's is its
own table's "req/s" of the download row times the file size; Locust counts that
rate from the first *completed* request, which flatters it by up to one request per
user, so a conservative figure without those requests is shown too, and the target
(>= 0.8x stress_test) is judged on it.  Needs Locust (installed as the integration
test installs it); every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runlocust  # noqa: E402
from fileshare.harness import ServerProcess, run_in_group  # noqa: E402
from stress_test import server_name, test_content  # noqa: E402

MB = 1e6
MIB = 1024 * 1024
TARGET = 0.8


def stress_mbps(server: ServerProcess, size_mb: float, clients: int) -> float:
    """One stress_test.py run, as its users run it; its verified aggregate MB/s."""
    status, out, err = run_in_group([sys.executable, str(runlocust.REPO_ROOT / "stress_test.py"), "--op", "download",
                                     "--size-mb", f"{size_mb:g}", "--clients", str(clients), "--pool", "thread",
                                     "--host", server.host, "--port", str(server.port)], timeout=300,
                                    env=runlocust.environment_without_settings())
    if status != 0:
        raise RuntimeError(f"stress_test.py exited with status {status}: {err.strip()[-500:]}")
    result = json.loads(out)
    if result["failed"] or not result["succeed"]:
        raise RuntimeError(f"stress_test.py: {result['failed']} clients failed: {result['errors']}")
    return result["aggregate_throughput_Bps"] / MB


def locust_mbps(locust: Path, server: ServerProcess, size_mb: float, users: int, seconds: float,
                out: Path) -> tuple[float, float, int]:
    """One distributed Locust run downloading in a loop: (its MB/s, the conservative MB/s, downloads)."""
    size = round(size_mb * MIB)
    served = server_name(test_content(size))
    with runlocust.LocustRun(locust, *server.address, out, users, seconds,
                             options=["--op-mix", "get=1", "--file-size-mb", f"{size_mb:g}"]) as run:
        status = run.run()
    if status != 0:
        raise RuntimeError(f"Locust's master exited with status {status}; its log ends:\n{run.log()}")
    rows = runlocust.read_stats(run.csv_prefix)
    row = next((r for r in rows if r.type == "GET" and r.name == served), None)
    if row is None or row.failures or row.requests <= users:
        raise RuntimeError(f"Locust's downloads did not all verify, or too few ran: {rows}")
    window = row.requests / row.requests_per_second
    return row.bytes_per_second / MB, (row.requests - users) * size / window / MB, row.requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="thread", choices=("thread", "process"), help="server (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each both tools (%(default)s)")
    parser.add_argument("--stress-runs", type=int, default=5, help="stress_test runs per round (%(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each Locust run (%(default)s)")
    parser.add_argument("--size-mb", type=float, default=10.0, help="file size, MiB (%(default)s)")
    parser.add_argument("--clients", type=int, default=10, help="stress_test clients and Locust users (%(default)s)")
    parser.add_argument("--server-workers", type=int, default=10, help="the server's pool (%(default)s)")
    args = parser.parse_args(argv)
    locust = runlocust.ensure_locust(log=lambda line: print(line, file=sys.stderr, flush=True))
    load_before = os.getloadavg()
    started = time.monotonic()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="locust-bench-") as scratch:
        root = Path(scratch) / "files"
        root.mkdir()
        with open(Path(scratch) / "server.log", "wb") as server_log, \
                ServerProcess(args.model, root, args.server_workers, stderr=server_log) as server:
            stress_mbps(server, args.size_mb, args.clients)         # puts the file on the server; not counted
            for index in range(args.rounds):
                stress = [stress_mbps(server, args.size_mb, args.clients) for _ in range(args.stress_runs)]
                reported, conservative, downloads = locust_mbps(locust, server, args.size_mb, args.clients,
                                                                args.seconds, Path(scratch) / f"locust-{index}")
                rounds.append((statistics.median(stress), stress, reported, conservative, downloads))
                print(f"round {index + 1}/{args.rounds}: stress_test {statistics.median(stress):.0f} MB/s "
                      f"(runs {', '.join(f'{s:.0f}' for s in stress)}), Locust {reported:.0f} MB/s "
                      f"(conservative {conservative:.0f}, {downloads} downloads)", file=sys.stderr, flush=True)
    report(args, rounds, load_before, os.getloadavg(), time.monotonic() - started)
    return 0


def report(args: argparse.Namespace, rounds: list, load_before: tuple, load_after: tuple, seconds: float) -> None:
    ratios = [conservative / stress for stress, _, _, conservative, _ in rounds]
    print(f"Verified download MB/s (10^6 B/s of file content), {args.size_mb:g} MiB file, {args.model} server "
          f"with {args.server_workers} workers, {args.clients} clients/users; {args.rounds} interleaved rounds.")
    print(f"{'round':<6} {'stress_test':>12} {'its runs':<26} {'Locust':>8} {'conservative':>13} {'ratio':>6}")
    for index, (stress, runs, reported, conservative, downloads) in enumerate(rounds, 1):
        print(f"{index:<6} {stress:>12.0f} {', '.join(f'{s:.0f}' for s in runs):<26} {reported:>8.0f} "
              f"{conservative:>13.0f} {conservative / stress:>6.2f}")
    all_stress = [s for _, runs, _, _, _ in rounds for s in runs]
    print(f"stress_test.py, {args.clients} clients (median of each round's {args.stress_runs} runs): "
          f"median {statistics.median(r[0] for r in rounds):.0f} MB/s; single runs ranged "
          f"{min(all_stress):.0f}-{max(all_stress):.0f}")
    print(f"Locust, 2 workers x {args.clients} users, {args.seconds:g} s loops: median {statistics.median(r[2] for r in rounds):.0f}"
          f" MB/s as Locust reports it, {statistics.median(r[3] for r in rounds):.0f} conservative")
    verdict = "meets" if statistics.median(ratios) >= TARGET else "MISSES"
    print(f"Locust / stress_test (conservative, per round): median {statistics.median(ratios):.2f}x, range "
          f"{min(ratios):.2f}-{max(ratios):.2f}x: {verdict} the {TARGET}x target")
    print(f"machine load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
          f"{os.cpu_count()} cores: other work shared it; took {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
