#!/usr/bin/env python3
"""Benchmark: small requests (LIST, GET of 1 KiB) on both servers, beside a minimal reference server.

    python bench/small_requests.py                    # about 1.5 minutes on 2 cores
    python bench/small_requests.py --quick            # a few seconds: shows the bench works
    python bench/small_requests.py --other ../before  # also another checkout's servers, side by side

Each cell drives N connections (5 or 50) from one selector loop in this
process, closed loop: a connection sends its next request as soon as its reply
has arrived whole, kept alive or on a fresh connection per request.  Every reply
is compared byte for byte with one checked at the start (the JSON decoded, the
names or the file's content compared), so a wrong byte is an error, never a
reply.  Latency runs from the request's first byte (its connect, per
connection) to its reply's last; replies/s counts the replies that arrived in
the measured window, after a short warm-up.

The reference server is written here: a process per core, each a
single-threaded selector loop doing the same work per request (listing the
folder, or reading and encoding the file) with no pool, no hand-over and no
fairness: roughly the ceiling of a Python server on this machine.

Every implementation runs every cell, round after round, one right after the
other, so drift of a shared machine hits all alike; the tables show medians of
the rounds, and each ratio is the median of the rounds' ratios with their range
(how noisy the machine was).  Loopback only (127.0.0.1); every loop is bounded
in time; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fileshare.harness import ServerProcess, checkout_label  # noqa: E402
from stress_test import percentile  # noqa: E402

TERMINATOR = b"\r\n\r\n"
FILE_NAMES = [f"small-{index:02d}.bin" for index in range(10)]
GET_NAME = FILE_NAMES[0]
REQUESTS = {"LIST": b"LIST" + TERMINATOR, "GET 1 KiB": b"GET " + GET_NAME.encode() + TERMINATOR}
MODES = ("keep-alive", "per-connection")
NO_LINGER = struct.pack("ii", 1, 0)     # close with a reset: no TIME_WAIT, so ports are never used up
WAIT_TARGET_S = 0.050                   # issue 20: at p99, no connection waits longer with 50 of them
OWN = ("thread", "process")


# ---------------------------------------------------------------------- the reference server

def _reference_reply(root: str, request: bytes) -> bytes:
    command, _, argument = request.decode("utf-8").partition(" ")
    if command == "LIST":
        return json.dumps({"status": "OK", "data": sorted(os.listdir(root))}).encode() + TERMINATOR
    with open(os.path.join(root, argument), "rb") as f:
        content = base64.b64encode(f.read())
    return (b'{"status": "OK", "data_namafile": ' + json.dumps(argument).encode() + b', "data_file": "'
            + content + b'"}' + TERMINATOR)


def _reference_loop(listener: socket.socket, root: str) -> None:
    """One process of the reference server: accept, read requests, answer, until killed."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue        # another process took it
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
                buffer = pending[conn] + data
                while data and (end := buffer.find(TERMINATOR)) >= 0:
                    conn.setblocking(True)
                    conn.sendall(_reference_reply(root, buffer[:end]))
                    conn.setblocking(False)
                    buffer = buffer[end + len(TERMINATOR):]
            except OSError:     # the client reset it (the bench drops connections at a cell's end)
                data = b""
            if not data:
                selector.unregister(conn)
                del pending[conn]
                conn.close()
                continue
            pending[conn] = buffer


class ReferenceServer:
    """``processes`` forked selector loops sharing one listener."""

    def __init__(self, root: str, processes: int) -> None:
        self.root, self.processes = root, processes
        self.pids: list[int] = []
        self.port = 0

    def start(self) -> "ReferenceServer":
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        for _ in range(self.processes):
            pid = os.fork()
            if pid == 0:
                try:
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    _reference_loop(listener, self.root)
                finally:
                    os._exit(0)
            self.pids.append(pid)
        listener.close()
        return self

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.pids = []


# ---------------------------------------------------------------------- the client

def checked_reply(port: int, name: str, root: str) -> bytes:
    """One reply of ``name``'s request, checked by its meaning: what every later reply must equal."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(REQUESTS[name])
        reply = b""
        while not reply.endswith(TERMINATOR):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"{name}: the server closed the connection before its reply ended")
            reply += chunk
    value = json.loads(reply[:-len(TERMINATOR)])
    if name == "LIST":
        good = value.get("data") == sorted(FILE_NAMES)
    else:
        with open(os.path.join(root, GET_NAME), "rb") as f:
            good = base64.b64decode(value.get("data_file", "")) == f.read()
    if value.get("status") != "OK" or not good:
        raise RuntimeError(f"{name}: wrong reply {reply[:200]!r}")
    return reply


@dataclass
class Cell:
    """What one run of one case measured."""
    seconds: float
    latencies: list[float] = field(default_factory=list)   # of the replies in the measured window
    unanswered: list[float] = field(default_factory=list)  # how long each request open at the end had waited
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def latency_ms(self, share: float) -> float:
        """Percentile of the latencies, requests still open at the end counted with their wait so far
        (a lower bound: a connection no worker took shows as waiting the whole cell)."""
        value = percentile(self.latencies + self.unanswered, share)
        return float("nan") if value is None else value * 1000

    @property
    def longest_wait_ms(self) -> float:
        """The longest any request waited, answered or not: a starved connection shows here."""
        return max(self.latencies + self.unanswered, default=float("nan")) * 1000


class _Connection:
    __slots__ = ("sock", "received", "sent_at")

    def __init__(self, sock: socket.socket, sent_at: float) -> None:
        self.sock, self.received, self.sent_at = sock, b"", sent_at


def drive(port: int, request: bytes, expected: bytes, connections: int, keep_alive: bool,
          seconds: float, warm_up: float) -> Cell:
    """Keep ``connections`` requests going for ``warm_up`` + ``seconds``; measure the last ``seconds``."""
    selector = selectors.DefaultSelector()
    address = ("127.0.0.1", port)

    def send_new() -> None:
        sent_at = time.perf_counter()
        sock = socket.create_connection(address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.send(request)
        selector.register(sock, selectors.EVENT_READ, _Connection(sock, sent_at))

    def drop(conn: _Connection) -> None:
        selector.unregister(conn.sock)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, NO_LINGER)
        conn.sock.close()

    start = time.perf_counter()
    measured_from, end = start + warm_up, start + warm_up + seconds
    cell = Cell(seconds)
    for _ in range(connections):
        send_new()
    try:
        while (now := time.perf_counter()) < end:
            for key, _ in selector.select(end - now):
                conn = key.data
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                conn.received += data
                if data and len(conn.received) < len(expected):
                    continue
                done = time.perf_counter()
                whole = conn.received == expected
                if not whole:
                    cell.errors += 1
                elif done >= measured_from and done < end:
                    cell.latencies.append(done - conn.sent_at)
                if keep_alive and whole:
                    conn.received, conn.sent_at = b"", done
                    conn.sock.send(request)
                else:
                    drop(conn)
                    send_new()
        # A request still unanswered has waited at least this long: without it, connections
        # that never got a worker would not show in the latencies at all.
        cell.unanswered = [end - key.data.sent_at for key in selector.get_map().values()
                           if key.data.sent_at < end]
    finally:
        for key in list(selector.get_map().values()):
            drop(key.data)
        selector.close()
    return cell


# ---------------------------------------------------------------------- the benchmark

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="measured seconds of each cell, after a warm-up of a fifth of it (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=5, help="server pool size (default: %(default)s)")
    parser.add_argument("--connections", default="5,50",
                        help="comma-separated numbers of connections (default: %(default)s)")
    parser.add_argument("--other", metavar="CHECKOUT",
                        help="another checkout of this toolkit (e.g. a git worktree of an older commit) whose two "
                             "servers run beside ours")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: 1 round of 0.2 s cells; shows that the bench works, its numbers mean little")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 0.2, 1
    counts = [int(n) for n in args.connections.split(",")]
    other = checkout_label(args.other) if args.other else None
    impls = ["reference", *OWN, *([f"{other} {model}" for model in OWN] if other else [])]

    with tempfile.TemporaryDirectory(prefix="fileserver-small-") as root:
        for name in FILE_NAMES:
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(1024))
        servers: dict[str, object] = {}
        ports: dict[str, int] = {}
        try:
            servers["reference"] = ReferenceServer(root, os.cpu_count() or 1).start()
            for impl in impls[1:]:
                model = impl.split()[-1]
                servers[impl] = ServerProcess(model, root, args.workers, extra_args=["--log-level", "WARNING"],
                                              checkout=args.other if impl.startswith(f"{other} ") else None).start()
            ports = {impl: server.port for impl, server in servers.items()}     # type: ignore[attr-defined]
            expected = {(impl, name): checked_reply(ports[impl], name, root) for impl in impls for name in REQUESTS}
            cases = [(mode, name, n) for mode in MODES for name in REQUESTS for n in counts]
            results: dict[tuple, list[Cell]] = {}
            for round_no in range(args.rounds):
                for mode, name, n in cases:
                    for impl in impls:
                        cell = drive(ports[impl], REQUESTS[name], expected[(impl, name)], n, mode == "keep-alive",
                                     args.seconds, args.seconds / 5)
                        results.setdefault((mode, name, n, impl), []).append(cell)
                print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for server in servers.values():
                server.stop()                                                   # type: ignore[attr-defined]
    report(args, impls, cases, results, other)
    return 1 if any(cell.errors for cells in results.values() for cell in cells) else 0


def ratio_text(results: dict, case: tuple, impl: str, base: str) -> str:
    """Median of the rounds' ratios impl/base, with their range."""
    ratios = [a.rate / b.rate for a, b in zip(results[(*case, impl)], results[(*case, base)]) if b.rate]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(args: argparse.Namespace, impls: list[str], cases: list[tuple], results: dict,
           other: Optional[str]) -> None:
    print(f"\nSmall requests: replies/s, p50 and p99 latency in ms (medians of {args.rounds} rounds of "
          f"{args.seconds:g} s), server pools of {args.workers}; one client process, closed loop.")
    print("reference: a minimal server written in the bench (a selector loop per core, no pool).  max: the "
          "longest wait of any request in any round, those still unanswered at the end included.")
    width = max(len(impl) for impl in impls)
    header = f"{'mode':<15} {'request':<10} {'conns':>5}  {'server':<{width}} {'replies/s':>10} " \
             f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"
    print(header)
    print("-" * len(header))
    for case in cases:
        mode, name, n = case
        for impl in impls:
            cells = results[(*case, impl)]
            print(f"{mode:<15} {name:<10} {n:>5}  {impl:<{width}} "
                  f"{statistics.median(c.rate for c in cells):10.0f} "
                  f"{statistics.median(c.latency_ms(50) for c in cells):8.2f} "
                  f"{statistics.median(c.latency_ms(99) for c in cells):8.2f} "
                  f"{max(c.longest_wait_ms for c in cells):8.1f} "
                  f"{sum(c.errors for c in cells):7d}")
    print("\nRatios of replies/s: median of the rounds' ratios (lowest-highest round).")
    pairs = [("process", "thread"), ("process", "reference"), ("thread", "reference")]
    if other:
        pairs += [("process", f"{other} process"), ("thread", f"{other} thread")]
    header = f"{'mode':<15} {'request':<10} {'conns':>5}  " + " ".join(f"{a + ' / ' + b:>26}" for a, b in pairs)
    print(header)
    print("-" * len(header))
    for case in cases:
        mode, name, n = case
        print(f"{mode:<15} {name:<10} {n:>5}  " + " ".join(f"{ratio_text(results, case, a, b):>26}"
                                                         for a, b in pairs))
    print("\nTargets (issue 20):")
    for name in REQUESTS:
        case = ("keep-alive", name, 5)
        if (*case, "process") not in results:
            continue
        print(f"  5 keep-alive connections, {name}: process / thread {ratio_text(results, case, 'process', 'thread')}"
              f" (target >= 0.9)" + (f"; process / {other} process "
                                      f"{ratio_text(results, case, 'process', f'{other} process')} (target >= 0.8 "
                                      f"against bcd0cb6, the design before the accept loop)"
                                      if other else ""))
    for mode in MODES:
        for name in REQUESTS:
            for model in OWN:
                cells = results.get((mode, name, 50, model))
                if cells:
                    p99 = statistics.median(c.latency_ms(99) for c in cells)
                    reference = statistics.median(c.latency_ms(99) for c in results[(mode, name, 50, "reference")])
                    print(f"  50 connections, {mode}, {name}, {model}: p99 {p99:.1f} ms (target <= "
                          f"{WAIT_TARGET_S * 1000:g} ms) {'met' if p99 <= WAIT_TARGET_S * 1000 else 'NOT met'}; "
                          f"the reference server's p99 beside it {reference:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
