#!/usr/bin/env python3
"""Benchmark: what checking every byte costs a download client, beside a client that only receives.

    python bench/receive_floor.py            # 3 rounds, 5 clients x 100 MiB, process server x5; ~20 s
    python bench/receive_floor.py --quick    # a few seconds

Both kinds of client run as stress_test runs them (threads of one process, one
connection each, all at once) against the same server, alternating round by
round.  "receive only" sends the GET and receives the reply into one buffer,
checking nothing but where it ends: no client that moves every byte can cost
less.  "verify" is stress_test's cheap client (fileshare/loadgen.py), which
compares every byte with the expected base64 text.  Printed: MB/s of payload,
the clients' CPU milliseconds per MB (user + system, getrusage of this
process) and their share of the machine (all cores) over the run.

Loopback only (127.0.0.1); every loop is bounded; the server started here is
stopped here.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stress_test  # noqa: E402
from fileshare.harness import ServerProcess  # noqa: E402
from fileshare.loadgen import CanonicalEncoding, VerifyingClient, canonical_encoding  # noqa: E402
from fileshare.protocol import TERMINATOR, build_request  # noqa: E402
# Unix-only (not on Windows): imported after the package, which stops on another platform with one line.
import resource  # noqa: E402

TIMEOUT = 120.0
RECEIVE = 256 * 1024


def receive_only(port: int, name: str, expected: CanonicalEncoding) -> None:
    """GET ``name`` and receive the whole reply; stop at the terminator after the content's length."""
    buffer = bytearray(RECEIVE)
    total, tail = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(build_request("GET", name))
        while True:
            received = sock.recv_into(buffer)
            if not received:
                raise ConnectionError(f"closed after {total} bytes")
            total += received
            # The terminator may straddle two receives: keep the last bytes seen.
            tail = (tail + buffer[max(0, received - len(TERMINATOR)):received])[-len(TERMINATOR):]
            if total > expected.size and tail == TERMINATOR:
                return


def verify(port: int, name: str, expected: CanonicalEncoding) -> None:
    with VerifyingClient("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.get_verified(name, expected)


def measure(client: Callable[[int, str, CanonicalEncoding], None], clients: int, port: int, name: str,
            expected: CanonicalEncoding) -> tuple[float, float, float]:
    """(MB/s, client CPU ms per MB, share of the machine) of ``clients`` downloads at once."""
    errors: list[BaseException] = []

    def one() -> None:
        try:
            client(port, name, expected)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - started
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"a client failed: {errors[:1] or 'timed out'}")
    mb = clients * expected.content_size / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return mb / wall, cpu / mb * 1000, cpu / wall / (os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both clients (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=5, help="downloads at once (default: %(default)s)")
    parser.add_argument("--size-mb", type=int, default=100, help="file size in MiB (default: %(default)s)")
    parser.add_argument("--model", choices=["thread", "process"], default="process",
                        help="server (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=5, help="server pool size (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 MiB: shows the bench works")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.size_mb = 1, 2
    content = stress_test.test_content(args.size_mb * 1024 * 1024)
    expected = canonical_encoding(content.path, content.sha256)
    kinds = {"receive only": receive_only, "verify": verify}
    results: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="fileserver-floor-") as root, \
            ServerProcess(args.model, root, args.workers, extra_args=["--log-level", "WARNING"]) as server:
        settings = stress_test.Settings("download", args.size_mb, args.clients, "thread", "127.0.0.1",
                                        server.port, TIMEOUT, "verify")
        name = stress_test.prepare_download(settings, content, expected)
        for _ in range(args.rounds):
            for kind, client in kinds.items():
                results[kind].append(measure(client, args.clients, server.port, name, expected))
    print(f"{args.clients} thread clients x {args.size_mb} MiB downloads, {args.model} server x{args.workers}, "
          f"medians of {args.rounds} rounds")
    print(f"{'client':<14} {'MB/s':>7} {'client ms CPU/MB':>17} {'share of machine':>17}")
    for kind, rows in results.items():
        mbps, ms, share = (statistics.median(row[i] for row in rows) for i in range(3))
        print(f"{kind:<14} {mbps:7.0f} {ms:17.2f} {share:17.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
