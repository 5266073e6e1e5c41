#!/usr/bin/env python3
"""Benchmark: fresh requests beside a crowd of idle, trickling and keep-alive connections.

    python bench/idle.py              # both servers, --workers 5; about 10 seconds
    python bench/idle.py --quick      # a small crowd, a few seconds: shows the bench works

For each server it opens the crowd first and keeps it open throughout: N
connections that never send a byte, M that trickle an UPLOAD's name one byte a
second (a head that never completes), and K keep-alive clients idle after one
LIST.  Beside them it makes L LISTs on fresh connections one after another
(each timed from connect to reply, our client library) while another process
downloads a file with GET and checks its SHA-256; then it reads the server's
peak RSS (VmHWM of the server and each worker).  The numbers are latencies on a
shared machine: read them as "answered at once" versus "waited for a worker",
not as exact figures.

Loopback only (127.0.0.1); every loop is bounded; every process started here is
stopped here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_worker import ClientError, DiscardingSink, FileClient  # noqa: E402
from fileshare.harness import ServerProcess, child_pids, vm_hwm  # noqa: E402
# Unix-only (not on Windows): imported after the package, which stops on another platform with one line.
import resource  # noqa: E402

log = logging.getLogger("bench.idle")
MIB = 1024 * 1024
MP = multiprocessing.get_context("fork")


def raise_open_file_limit() -> int:
    """This process holds the whole crowd's client sockets: raise its soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))]


class Tricklers(threading.Thread):
    """Connections that each send one more byte of an UPLOAD's name every second."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        super().__init__(name="tricklers", daemon=True)
        self.head = b"UPLOAD " + b"n" * 200         # no space after the name: never a complete head
        self.socks = [socket.create_connection(address, timeout=5) for _ in range(count)]
        self.stop = threading.Event()
        self.cut = 0                                 # connections the server closed (its head deadline)

    def run(self) -> None:
        for index in range(len(self.head)):          # bounded: one byte a second, at most 207 s
            for sock in list(self.socks):
                try:
                    sock.send(self.head[index:index + 1])
                except OSError:
                    self.socks.remove(sock)
                    sock.close()
                    self.cut += 1
            if self.stop.wait(1.0):
                return

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for sock in self.socks:
            sock.close()


def _download(port: int, name: str, expected: str, results) -> None:
    try:
        with FileClient("127.0.0.1", port, timeout=120) as client:
            result = client.get(name, DiscardingSink())
        results.put({"ok": result.sha256 == expected, "bytes": result.bytes, "seconds": result.seconds})
    except ClientError as exc:
        results.put({"ok": False, "error": str(exc)})


def measure(model: str, args: argparse.Namespace, root: str, name: str, digest: str) -> dict:
    with tempfile.TemporaryFile() as stderr, \
            ServerProcess(model, root, args.workers, stderr=stderr) as server:     # started, and stopped at the end
        port = server.port
        log.info("%s: opening %d silent, %d trickling and %d keep-alive connections",
                 model, args.silent, args.tricklers, args.keep_alive)
        silent = [socket.create_connection(server.address, timeout=5) for _ in range(args.silent)]
        tricklers = Tricklers(server.address, args.tricklers)
        tricklers.start()
        keep_alive = [FileClient("127.0.0.1", port, timeout=30) for _ in range(args.keep_alive)]
        try:
            for client in keep_alive:
                client.list()
            time.sleep(args.settle)                  # let the tricklers get going
            results = MP.Queue()
            downloader = MP.Process(target=_download, args=(port, name, digest, results), daemon=True)
            downloader.start()
            latencies, failures = [], 0
            for _ in range(args.lists):
                started = time.perf_counter()
                try:
                    with FileClient("127.0.0.1", port, timeout=30) as client:
                        client.list()
                    latencies.append(time.perf_counter() - started)
                except ClientError as exc:
                    failures += 1
                    log.warning("%s: a fresh LIST failed: %s", model, exc)
            download = results.get(timeout=180)
            downloader.join(10)
            with FileClient("127.0.0.1", port, timeout=30) as client:
                stats = client.stats()
            peak = max(vm_hwm(pid) for pid in [server.pid, *child_pids(server.pid)])
        finally:
            for client in keep_alive:
                client.close()
            tricklers.close()
            for sock in silent:
                sock.close()
    ms = [1000 * s for s in latencies]
    return {
        "model": model, "workers": args.workers, "silent": args.silent, "tricklers": args.tricklers,
        "keep_alive": args.keep_alive, "lists": args.lists, "list_failures": failures,
        "list_ms": {key: round(value, 2) for key, value in
                    (("p50", nearest_rank(ms, 0.5)), ("p99", nearest_rank(ms, 0.99)), ("max", max(ms)))}
        if ms else None,
        "get_mib": args.get_mb, "get_ok": download.get("ok", False),
        "get_MBps": round(download["bytes"] / download["seconds"] / 1e6, 1) if download.get("ok") else None,
        "server_peak_rss_mib": round(peak / MIB, 1), "connections_accepted": stats["connections"],
        "tricklers_cut": tricklers.cut,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Prints one JSON object per server on stdout; progress on stderr.")
    parser.add_argument("--models", default="thread,process", help="servers to measure (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=5, help="server pool size (default: %(default)s)")
    parser.add_argument("--silent", type=int, default=1000, help="connections that never send (default: %(default)s)")
    parser.add_argument("--tricklers", type=int, default=50,
                        help="connections trickling a request head, a byte a second (default: %(default)s)")
    parser.add_argument("--keep-alive", type=int, default=20,
                        help="keep-alive clients idle after one LIST (default: %(default)s)")
    parser.add_argument("--lists", type=int, default=100, help="LISTs on fresh connections (default: %(default)s)")
    parser.add_argument("--get-mb", type=int, default=20, help="MiB of the file downloaded beside (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the crowd runs before measuring (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small crowd and file: a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.silent, args.tricklers, args.keep_alive, args.lists, args.get_mb, args.settle = 50, 5, 5, 20, 2, 1.0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    limit = raise_open_file_limit()
    needed = args.silent + args.tricklers + args.keep_alive + 64
    if limit < needed:
        print(f"error: this process may open {limit} files; the crowd needs {needed}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as root:
        name = "big.bin"
        digest = hashlib.sha256()
        with open(os.path.join(root, name), "wb") as f:
            for _ in range(args.get_mb):
                block = os.urandom(MIB)
                digest.update(block)
                f.write(block)
        for model in args.models.split(","):
            print(json.dumps(measure(model, args, root, name, digest.hexdigest())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
