#!/usr/bin/env python3
"""Benchmark: our two servers and our client against this machine's ceiling.

    python bench/bench.py              # about 2.5 minutes on 2 cores
    python bench/bench.py --skip-crowd # without the 50-client memory check

The ceiling is a minimal streaming pipeline written here (file -> base64 ->
loopback socket -> strict decode -> file), with no protocol, no checks and no
pools; "+sha256" is the same pipeline whose receiving side also computes the
SHA-256 of what it decoded, the one check our client (downloads) and server
(uploads) make of every transfer.  Each case runs the four one after another,
round after round, so machine drift hits all alike; the table shows medians
over rounds, and ratios as the median of each round's ratio.  Every client runs in a process of its
own and reports its own peak RSS; the servers' peak RSS comes from
/proc/PID/status (VmHWM) of the server and each of its workers.

Loopback only (127.0.0.1); every loop is bounded; every process started here
is stopped here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_worker import FileClient  # noqa: E402
from fileshare.harness import ServerProcess, child_pids, script_path, vm_hwm  # noqa: E402
from fileshare.protocol import RAW_CHUNK, encode_chunk, StrictBase64Decoder  # noqa: E402
from fileshare.streaming import RECV_CHUNK, ReceiveBuffer  # noqa: E402

MIB = 1024 * 1024
MB = 1e6
CLIENT_TIMEOUT = 300.0
MP = multiprocessing.get_context("fork")
IMPLEMENTATIONS = ("ceiling", "verified", "thread", "process")    # run in this order, every round


# ---------------------------------------------------------------------- ceiling

def _ceiling_send_file(sock: socket.socket, path: str) -> None:
    with open(path, "rb") as f:
        while raw := f.read(RAW_CHUNK):
            sock.sendall(encode_chunk(raw))
    sock.shutdown(socket.SHUT_WR)


def _ceiling_receive_file(sock: socket.socket, path: str, verify: bool) -> int:
    """Receive and decode to ``path``; with ``verify``, also SHA-256 what was decoded
    (the check our client and server make of every transfer, compared with nothing)."""
    decoder = StrictBase64Decoder()
    digest = hashlib.sha256() if verify else None
    received = ReceiveBuffer()      # the same receive path as ours: no allocation per receive
    with open(path, "wb") as out:
        while data := received.receive(sock, decoder.aligned(RECV_CHUNK)):
            decoded = decoder.feed(data)
            out.write(decoded)
            if digest is not None:
                digest.update(decoded)
    decoder.finish()
    return decoder.decoded_bytes


def _ceiling_server(listener: socket.socket, op: str, source: str, folder: str, connections: int,
                    verify: bool) -> None:
    """Serve ``connections`` connections, each in a forked process, then exit."""
    children = []
    for index in range(connections):
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            try:
                if op == "download":
                    _ceiling_send_file(conn, source)
                else:
                    _ceiling_receive_file(conn, os.path.join(folder, f"ceiling-up-{index}.bin"), verify)
                    conn.sendall(b"k")
            finally:
                os._exit(0)
        conn.close()
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


def _ceiling_client(port: int, op: str, source: str, folder: str, index: int, verify: bool) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        if op == "download":
            return _ceiling_receive_file(sock, os.path.join(folder, f"ceiling-down-{index}.bin"), verify)
        with open(source, "rb") as f:
            while raw := f.read(RAW_CHUNK):
                sock.sendall(encode_chunk(raw))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
        return os.path.getsize(source)


# ---------------------------------------------------------------------- our client

_known_sha256: dict[str, str] = {}


def known_sha256(path: str) -> str:
    """The digest of a bench file, computed once (as stress_test knows its content's)."""
    if path not in _known_sha256:
        with open(path, "rb") as f:
            _known_sha256[path] = hashlib.file_digest(f, "sha256").hexdigest()
    return _known_sha256[path]


def _our_client(port: int, op: str, source: str, folder: str, index: int) -> int:
    """Our client as stress_test uses it: every transfer verified by SHA-256."""
    with FileClient("127.0.0.1", port, timeout=CLIENT_TIMEOUT) as client:
        if op == "download":
            result = client.get(os.path.basename(source), os.path.join(folder, f"down-{index}.bin"))
        else:
            result = client.upload(source, f"up-{os.getpid()}-{index}.bin", known_sha256=known_sha256(source))
        if result.sha256 != known_sha256(source):
            raise RuntimeError(f"{op} of {source}: SHA-256 mismatch")
        return result.bytes


# ---------------------------------------------------------------------- running clients

def _client_process(run: Callable[..., int], args: tuple, barrier, results) -> None:
    try:
        barrier.wait(60)
        started = time.monotonic()
        size = run(*args)
        finished = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put((started, finished, size, usage.ru_maxrss * 1024, "", usage.ru_utime + usage.ru_stime))
    except Exception as exc:  # reported as a failed client
        results.put((0.0, 0.0, 0, 0, f"{type(exc).__name__}: {exc}", 0.0))


def run_clients(run: Callable[..., int], port: int, op: str, source: str, folder: str, clients: int,
                *extra: object) -> dict:
    """Start ``clients`` client processes together; return payload MB/s over the wall time."""
    barrier, results = MP.Barrier(clients), MP.Queue()
    procs = [MP.Process(target=_client_process, args=(run, (port, op, source, folder, i, *extra), barrier, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=CLIENT_TIMEOUT + 60) for _ in procs]
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    errors = [o[4] for o in outcomes if o[4]]
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, e.g. {errors[0]}")
    wall = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    moved = sum(o[2] for o in outcomes)
    return {"seconds": wall, "mbps": moved / wall / MB, "client_rss": max(o[3] for o in outcomes),
            "client_cpu_ns_per_byte": sum(o[5] for o in outcomes) / moved * 1e9}


def run_ceiling(op: str, source: str, folder: str, clients: int, verify: bool = False) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = MP.Process(target=_ceiling_server, args=(listener, op, source, folder, clients, verify))
    server.start()
    listener.close()
    try:
        return run_clients(_ceiling_client, port, op, source, folder, clients, verify)
    finally:
        server.join(60)
        if server.is_alive():
            server.kill()
            server.join()


# ---------------------------------------------------------------------- measuring servers

def peak_rss(pid: int) -> int:
    """Largest VmHWM of ``pid`` and its children (the server and its workers), in bytes."""
    peak = 0
    for p in [pid, *child_pids(pid)]:
        try:
            peak = max(peak, vm_hwm(p))
        except (OSError, LookupError):
            pass
    return peak


def _clean(folder: str, keep: set[str]) -> None:
    for name in os.listdir(folder):
        if name not in keep:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def make_file(path: str, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for start in range(0, size, MIB):
            f.write(block[: min(MIB, size - start)])


# ---------------------------------------------------------------------- the benchmark

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case (default: %(default)s)")
    parser.add_argument("--size-mb", type=int, default=100, help="file size for the main cases (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="'several clients' (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=5, help="server pool size (default: %(default)s)")
    parser.add_argument("--skip-crowd", action="store_true",
                        help="skip the memory check with 50 clients in one process (about a minute)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: 1 round, 4 MiB files, scaling over 1/2/4 MiB and 1/2/5 clients, "
                             "no crowd check; shows that the bench works, its numbers mean little")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.size_mb, args.skip_crowd = 1, 4, True
        sizes, crowds = [1, 2, 4], (1, 2, 5)
    else:
        sizes, crowds = sorted({10, 50, args.size_mb}), (1, 5, 50)

    with tempfile.TemporaryDirectory(prefix="fileserver-bench-") as tmp:
        served, scratch = os.path.join(tmp, "served"), os.path.join(tmp, "scratch")
        os.makedirs(served)
        os.makedirs(scratch)
        for size in sizes:
            make_file(os.path.join(served, f"file-{size}.bin"), size * MIB)
            known_sha256(os.path.join(served, f"file-{size}.bin"))   # before the clients fork
        keep = set(os.listdir(served))
        main_file = os.path.join(served, f"file-{args.size_mb}.bin")
        servers = {model: ServerProcess(model, served, args.workers, extra_args=["--log-level", "WARNING"]).start()
                   for model in ("thread", "process")}
        try:
            results: dict[tuple, list[dict]] = {}
            cases = [(op, n) for op in ("download", "upload") for n in (1, args.clients)]
            for round_no in range(args.rounds):
                for op, clients in cases:
                    for impl in IMPLEMENTATIONS:
                        if impl in ("ceiling", "verified"):
                            r = run_ceiling(op, main_file, scratch, clients, verify=impl == "verified")
                        else:
                            r = run_clients(_our_client, servers[impl].port, op, main_file, scratch, clients)
                        results.setdefault((op, clients, impl), []).append(r)
                        _clean(scratch, set())
                        _clean(served, keep)
                print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            scaling = measure_scaling(servers, served, scratch, keep, sizes, crowds)
            report(args, results, scaling, servers)
            if not args.skip_crowd:
                report_crowd(args.size_mb)
        finally:
            for server in servers.values():
                server.stop()
    return 0


def measure_scaling(servers: dict, served: str, scratch: str, keep: set[str], sizes: list[int],
                    crowds: tuple[int, ...]) -> dict:
    """Seconds for one transfer of each size, and for ``crowds`` clients moving the smallest size each."""
    out: dict[tuple, float] = {}
    for model, server in servers.items():
        for op in ("download", "upload"):
            for size in sizes:
                r = run_clients(_our_client, server.port, op, os.path.join(served, f"file-{size}.bin"), scratch, 1)
                out[(model, op, "size", size)] = r["seconds"]
                _clean(scratch, set())
                _clean(served, keep)
            for clients in crowds:
                r = run_clients(_our_client, server.port, op, os.path.join(served, f"file-{sizes[0]}.bin"),
                                scratch, clients)
                out[(model, op, "clients", clients)] = r["seconds"]
                _clean(scratch, set())
                _clean(served, keep)
    return out


def median_ratio(results: dict, case: tuple, impl: str, base: str) -> float:
    """Median over rounds of impl / base, each ratio from runs made one right after the other,
    so drift of the machine between rounds cancels out."""
    return statistics.median(r["mbps"] / b["mbps"] for r, b in zip(results[(*case, impl)], results[(*case, base)]))


def report(args: argparse.Namespace, results: dict, scaling: dict, servers: dict) -> None:
    print(f"\nPayload MB/s (10^6 B/s of file content), {args.size_mb} MiB files, median of {args.rounds} rounds, "
          f"server pools of {args.workers}; several = {args.clients} client processes.")
    print("ceiling: the minimal pipeline; +sha256: the same, its receiving side also hashing what it decoded "
          "(the check our client and server make).  Ratios: median of each round's ratio.")
    header = f"{'case':<20} {'ceiling':>8} {'+sha256':>8} {'thread':>8} {'process':>8} {'thr/ceil':>9} " \
             f"{'proc/ceil':>9} {'thr/+sha':>9} {'proc/+sha':>9} {'client RSS MiB':>15}"
    print(header)
    print("-" * len(header))
    for case in [(op, n) for op in ("download", "upload") for n in (1, args.clients)]:
        med = {impl: statistics.median(r["mbps"] for r in results[(*case, impl)]) for impl in IMPLEMENTATIONS}
        ratios = [median_ratio(results, case, impl, base)
                  for base in ("ceiling", "verified") for impl in ("thread", "process")]
        rss = max(r["client_rss"] for impl in ("thread", "process") for r in results[(*case, impl)])
        op, clients = case
        label = f"{op}, {clients} client{'s' if clients > 1 else ''}"
        print(f"{label:<20} " + " ".join(f"{med[impl]:8.1f}" for impl in IMPLEMENTATIONS) + " "
              + " ".join(f"{ratio:9.2f}" for ratio in ratios) + f" {rss / MIB:15.1f}")
    print("\nPeak RSS of the servers (VmHWM, largest of the server and its workers):")
    for model, server in servers.items():
        print(f"  {model:<8} {peak_rss(server.pid) / MIB:6.1f} MiB")
    print("\nHow time grows (one run each; linear means the per-MB and per-client columns stay flat):")
    print(f"  {'server':<8} {'op':<8} {'file size':>10} {'seconds':>8} {'ms per MB':>10}")
    for model in servers:
        for op in ("download", "upload"):
            for size in sorted({k[3] for k in scaling if k[:3] == (model, op, "size")}):
                seconds = scaling[(model, op, "size", size)]
                print(f"  {model:<8} {op:<8} {size:>7} MB {seconds:8.3f} {seconds / size * 1000:10.2f}")
    crowds = sorted({k[3] for k in scaling if k[2] == "clients"})
    each = min(k[3] for k in scaling if k[2] == "size")
    print(f"\n  {'server':<8} {'op':<8} {'clients':>10} {'seconds':>8} {'ms per client':>14}   ({each} MB each)")
    for model in servers:
        for op in ("download", "upload"):
            for clients in crowds:
                seconds = scaling[(model, op, "clients", clients)]
                print(f"  {model:<8} {op:<8} {clients:>10} {seconds:8.3f} {seconds / clients * 1000:14.1f}")


def report_crowd(size_mb: int) -> None:
    """Memory with many transfers in one process: stress_test's 50 thread clients against the
    thread server, whose one process then serves all 50 connections."""
    print(f"\nMemory with 50 transfers in one process (stress_test, thread client pool, {size_mb} MB each, "
          f"thread server with 50 workers):")
    with tempfile.TemporaryDirectory(prefix="fileserver-crowd-") as root, \
            ServerProcess("thread", root, 50, extra_args=["--log-level", "WARNING"]) as crowd_server:
        for op in ("download", "upload"):
            env = dict(os.environ, STRESS_OP=op, FILE_SIZE_MB=str(size_mb), CLIENT_POOL="50",
                       CLIENT_POOL_TYPE="thread", SERVER_HOST=crowd_server.host, SERVER_PORT=str(crowd_server.port))
            proc = subprocess.Popen([sys.executable, str(script_path("stress_test.py"))], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            out = proc.stdout.read()
            _, _, usage = os.wait4(proc.pid, 0)      # this child's own peak, not the bench's
            proc.returncode = 0
            result = json.loads(out)
            print(f"  {op:<8} clients ok/failed {result['succeed']}/{result['failed']}, "
                  f"stress_test peak RSS {usage.ru_maxrss / 1024:5.1f} MiB, "
                  f"server peak RSS so far {peak_rss(crowd_server.pid) / MIB:5.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
