#!/usr/bin/env python3
"""Benchmark: our two servers and our client against this machine's ceiling.

    python bench/bench.py              # about 2.5 minutes on 2 cores
    python bench/bench.py --skip-crowd # without the 50-client memory check
    python bench/bench.py --quick      # a few seconds: shows the bench works, numbers mean little
    python bench/bench.py --other ../before --main-only   # also another checkout's servers, side by side

The ceiling is a minimal streaming pipeline written here (file -> base64 ->
loopback socket -> strict decode -> file), with no protocol, no checks and no
pools; "+sha256" is the same pipeline whose receiving side also computes the
SHA-256 of what it decoded, the one check our client (downloads) and server
(uploads) make of every transfer.  Each case runs the four one after another,
round after round, so machine drift hits all alike; the table shows medians
over rounds, and ratios as the median of each round's ratio.  Every client runs in a process of its
own and reports its own peak RSS and CPU time; the servers' peak RSS and CPU time come
from /proc of the server and each of its workers.

A last section runs stress_test's own clients (threads in one process, as the
sweep runs them) in both --client-work modes side by side, and shows how much
of the CPU the load generator takes: the sweep should measure the servers.

Loopback only (127.0.0.1); every loop is bounded; every process started here
is stopped here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stress_test  # noqa: E402
from client_worker import FileClient  # noqa: E402
from fileshare.harness import (ServerProcess, checkout_label, child_pids, script_path, tree_cpu_seconds,  # noqa: E402
                               vm_hwm)
from fileshare.protocol import RAW_CHUNK, encode_chunk, StrictBase64Decoder  # noqa: E402
from fileshare.streaming import RECV_CHUNK, ReceiveBuffer  # noqa: E402
# Unix-only (not on Windows): imported after the package, which stops on another platform with one line.
import resource  # noqa: E402

MIB = 1024 * 1024
MB = 1e6
CLIENT_TIMEOUT = 300.0
MP = multiprocessing.get_context("fork")
IMPLEMENTATIONS = ("ceiling", "verified", "thread", "process")    # run in this order, every round
CLIENT_WORK = ("decode", "verify")


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

class ClientReport(NamedTuple):
    """What one client process reports of its transfer."""
    started: float          # time.monotonic() (system-wide)
    finished: float
    size: int               # payload bytes moved
    rss: int                # its peak resident size, bytes
    cpu_s: float            # its CPU seconds, user + system
    error: str = ""         # empty when the transfer completed and verified


@dataclass(frozen=True)
class Measurement:
    """One run of a case: several clients at once against one server (or the ceiling)."""
    seconds: float                      # wall time, first client's start to last client's end
    payload: int                        # bytes of file content moved
    client_cpu_s: float
    client_rss: int = 0
    server_cpu_s: Optional[float] = None   # None where the server is not one of ours

    @property
    def mbps(self) -> float:
        return self.payload / self.seconds / MB

    @property
    def client_ms_per_mb(self) -> float:
        return self.client_cpu_s / (self.payload / MB) * 1000

    @property
    def server_ms_per_mb(self) -> float:
        assert self.server_cpu_s is not None
        return self.server_cpu_s / (self.payload / MB) * 1000

    @property
    def generator_share(self) -> float:
        """The clients' share of the CPU that clients and server used together."""
        assert self.server_cpu_s is not None
        return self.client_cpu_s / max(self.client_cpu_s + self.server_cpu_s, 1e-9)

    @property
    def generator_machine_share(self) -> float:
        """The clients' share of all the machine's cores over the run."""
        return self.client_cpu_s / (self.seconds * (os.cpu_count() or 1))


def _client_process(run: Callable[..., int], args: tuple, barrier, results) -> None:
    try:
        barrier.wait(60)
        started = time.monotonic()
        size = run(*args)
        finished = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put(ClientReport(started, finished, size, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime))
    except Exception as exc:  # reported as a failed client
        results.put(ClientReport(0.0, 0.0, 0, 0, 0.0, f"{type(exc).__name__}: {exc}"))


def run_clients(run: Callable[..., int], port: int, op: str, source: str, folder: str, clients: int,
                *extra: object, server_pid: Optional[int] = None) -> Measurement:
    """Start ``clients`` client processes together; measure them (and the server at ``server_pid``)."""
    barrier, results = MP.Barrier(clients), MP.Queue()
    procs = [MP.Process(target=_client_process, args=(run, (port, op, source, folder, i, *extra), barrier, results))
             for i in range(clients)]
    server_before = tree_cpu_seconds(server_pid) if server_pid else None
    for p in procs:
        p.start()
    reports: list[ClientReport] = [results.get(timeout=CLIENT_TIMEOUT + 60) for _ in procs]
    server_cpu = tree_cpu_seconds(server_pid) - server_before if server_pid and server_before is not None else None
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    errors = [r.error for r in reports if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, e.g. {errors[0]}")
    return Measurement(seconds=max(r.finished for r in reports) - min(r.started for r in reports),
                       payload=sum(r.size for r in reports), client_cpu_s=sum(r.cpu_s for r in reports),
                       client_rss=max(r.rss for r in reports), server_cpu_s=server_cpu)


def run_ceiling(op: str, source: str, folder: str, clients: int, verify: bool = False) -> Measurement:
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
    parser.add_argument("--cell-clients", type=int, default=5,
                        help="stress_test thread clients in the load-generator section (default: %(default)s)")
    parser.add_argument("--cell-rounds", type=int, default=3,
                        help="rounds of the load-generator section (default: %(default)s)")
    parser.add_argument("--skip-crowd", action="store_true",
                        help="skip the memory check with 50 clients in one process (about a minute)")
    parser.add_argument("--other", metavar="CHECKOUT",
                        help="another checkout of this toolkit (e.g. a git worktree of an older commit) whose two "
                             "servers run beside ours in the main cases, driven by our client")
    parser.add_argument("--main-only", action="store_true",
                        help="only the main cases: no scaling, load-generator or crowd sections")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: 1 round, 4 MiB files, scaling over 1/2/4 MiB and 1/2/5 clients, "
                             "no crowd check; shows that the bench works, its numbers mean little")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.cell_rounds, args.size_mb, args.skip_crowd = 1, 1, 4, True
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
        others: dict[str, ServerProcess] = {}
        try:
            if args.other:
                label = checkout_label(args.other)
                others = {f"{label} {model}": ServerProcess(model, served, args.workers, checkout=args.other,
                                                            extra_args=["--log-level", "WARNING"]).start()
                          for model in ("thread", "process")}
            results: dict[tuple, list[Measurement]] = {}
            cases = [(op, n) for op in ("download", "upload") for n in (1, args.clients)]
            for round_no in range(args.rounds):
                for op, clients in cases:
                    for impl in (*IMPLEMENTATIONS, *others):
                        if impl in ("ceiling", "verified"):
                            r = run_ceiling(op, main_file, scratch, clients, verify=impl == "verified")
                        else:
                            server = servers.get(impl) or others[impl]
                            r = run_clients(_our_client, server.port, op, main_file, scratch, clients,
                                            server_pid=server.pid)
                        results.setdefault((op, clients, impl), []).append(r)
                        _clean(scratch, set())
                        _clean(served, keep)
                print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            if args.main_only:
                report_main(args, results)
            else:
                scaling = measure_scaling(servers, served, scratch, keep, sizes, crowds)
                cells = measure_load_generator(servers, args.size_mb, args.cell_clients, args.cell_rounds)
                report(args, results, scaling, servers)
                report_load_generator(args, cells)
                if not args.skip_crowd:
                    report_crowd(args.size_mb)
            if others:
                report_other(args, results, list(others))
        finally:
            for server in (*servers.values(), *others.values()):
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
                out[(model, op, "size", size)] = r.seconds
                _clean(scratch, set())
                _clean(served, keep)
            for clients in crowds:
                r = run_clients(_our_client, server.port, op, os.path.join(served, f"file-{sizes[0]}.bin"),
                                scratch, clients)
                out[(model, op, "clients", clients)] = r.seconds
                _clean(scratch, set())
                _clean(served, keep)
    return out


def run_stress_cell(server: ServerProcess, op: str, size_mb: float, clients: int, client_work: str) -> Measurement:
    """One sweep cell's timed part as stress_test runs it: its thread clients, here in this process
    (so their CPU time is this process's), after stress_test's own preparation."""
    settings = stress_test.Settings(op, size_mb, clients, "thread", server.host, server.port, CLIENT_TIMEOUT,
                                    client_work, server_pid=server.pid)
    jobs = stress_test.prepare(settings)
    window = stress_test.TimedWindow(settings)
    outcomes = stress_test.run_clients(jobs, "thread", window.mark)
    client_cpu, server_cpu = window.client_cpu_seconds(), window.server_cpu_seconds()
    stress_test.clean_up(settings, jobs, outcomes)
    summary = stress_test.summarize(settings, outcomes, None, None, client_cpu)
    if summary["failed"]:
        raise RuntimeError(f"{summary['failed']} stress_test clients failed: {summary['errors']}")
    return Measurement(summary["wall_time_s"], sum(o.bytes for o in outcomes), client_cpu, server_cpu_s=server_cpu)


def measure_load_generator(servers: dict, size_mb: float, clients: int, rounds: int) -> dict[tuple, list[Measurement]]:
    """Both client-work modes side by side, round after round, against both servers."""
    out: dict[tuple, list[Measurement]] = {}
    for round_no in range(rounds):
        for op in ("download", "upload"):
            for model, server in servers.items():
                for work in CLIENT_WORK:
                    out.setdefault((op, model, work), []).append(run_stress_cell(server, op, size_mb, clients, work))
        print(f"load-generator round {round_no + 1}/{rounds} done", file=sys.stderr, flush=True)
    return out


def median_ratio(results: dict, case: tuple, impl: str, base: str) -> float:
    """Median over rounds of impl / base, each ratio from runs made one right after the other,
    so drift of the machine between rounds cancels out."""
    return statistics.median(r.mbps / b.mbps for r, b in zip(results[(*case, impl)], results[(*case, base)]))


def report(args: argparse.Namespace, results: dict, scaling: dict, servers: dict) -> None:
    report_main(args, results)
    report_servers(args, results, scaling, servers)


def report_other(args: argparse.Namespace, results: dict, others: list[str]) -> None:
    """Our servers beside another checkout's, case by case: MB/s and the rounds' ratios."""
    print(f"\nBeside another checkout's servers (same client, same rounds): MB/s medians; ours / theirs "
          f"as the median of each round's ratio (lowest-highest round).")
    print(f"{'case':<20} {'server':<8} {'ours':>8} {'theirs':>8} {'ours / theirs':>22}")
    for case in [(op, n) for op in ("download", "upload") for n in (1, args.clients)]:
        op, clients = case
        label = f"{op}, {clients} client{'s' if clients > 1 else ''}"
        for other in others:
            model = other.split()[-1]
            ratios = [r.mbps / o.mbps for r, o in zip(results[(*case, model)], results[(*case, other)])]
            print(f"{label:<20} {model:<8} {statistics.median(r.mbps for r in results[(*case, model)]):8.1f} "
                  f"{statistics.median(r.mbps for r in results[(*case, other)]):8.1f} "
                  f"{statistics.median(ratios):>8.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


def report_main(args: argparse.Namespace, results: dict) -> None:
    print(f"\nPayload MB/s (10^6 B/s of file content), {args.size_mb} MiB files, median of {args.rounds} rounds, "
          f"server pools of {args.workers}; several = {args.clients} client processes.")
    print("ceiling: the minimal pipeline; +sha256: the same, its receiving side also hashing what it decoded "
          "(the check our client and server make).  Ratios: median of each round's ratio.")
    header = f"{'case':<20} {'ceiling':>8} {'+sha256':>8} {'thread':>8} {'process':>8} {'thr/ceil':>9} " \
             f"{'proc/ceil':>9} {'thr/+sha':>9} {'proc/+sha':>9} {'client RSS MiB':>15}"
    print(header)
    print("-" * len(header))
    for case in [(op, n) for op in ("download", "upload") for n in (1, args.clients)]:
        med = {impl: statistics.median(r.mbps for r in results[(*case, impl)]) for impl in IMPLEMENTATIONS}
        ratios = [median_ratio(results, case, impl, base)
                  for base in ("ceiling", "verified") for impl in ("thread", "process")]
        rss = max(r.client_rss for impl in ("thread", "process") for r in results[(*case, impl)])
        op, clients = case
        label = f"{op}, {clients} client{'s' if clients > 1 else ''}"
        print(f"{label:<20} " + " ".join(f"{med[impl]:8.1f}" for impl in IMPLEMENTATIONS) + " "
              + " ".join(f"{ratio:9.2f}" for ratio in ratios) + f" {rss / MIB:15.1f}")
    print("\nCPU time per MB of payload (ms; medians), our servers driven by our decoding client as above; "
          "clients % = the clients' share of the CPU that clients and server used:")
    print(f"{'case':<20} {'thread: server':>15} {'client':>7} {'clients %':>10}   "
          f"{'process: server':>15} {'client':>7} {'clients %':>10}")
    for case in [(op, n) for op in ("download", "upload") for n in (1, args.clients)]:
        columns = []
        for impl in ("thread", "process"):
            runs = results[(*case, impl)]
            columns.append(f"{statistics.median(r.server_ms_per_mb for r in runs):15.2f} "
                           f"{statistics.median(r.client_ms_per_mb for r in runs):7.2f} "
                           f"{100 * statistics.median(r.generator_share for r in runs):9.0f}%")
        op, clients = case
        label = f"{op}, {clients} client{'s' if clients > 1 else ''}"
        print(f"{label:<20} " + "   ".join(columns))


def report_servers(args: argparse.Namespace, results: dict, scaling: dict, servers: dict) -> None:
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


def report_load_generator(args: argparse.Namespace, cells: dict[tuple, list[Measurement]]) -> None:
    print(f"\nLoad generator: stress_test's {args.cell_clients} thread clients x {args.size_mb} MiB in one process "
          f"(as the sweep runs them), server pools of {args.workers}, medians of {args.cell_rounds} rounds.")
    print(f"CPU time per MB of payload in ms.  clients % of used: the clients' share of the CPU that clients "
          f"and server used; % of machine: of all {os.cpu_count()} cores over the run.  "
          f"x decode: MB/s over the decoding clients' (median of each round's ratio).")
    header = f"{'op':<9} {'server':<8} {'clients':<8} {'MB/s':>7} {'x decode':>9} {'server ms/MB':>13} " \
             f"{'client ms/MB':>13} {'clients % of used':>18} {'% of machine':>13}"
    print(header)
    print("-" * len(header))
    for op, model, work in cells:
        runs = cells[(op, model, work)]
        ratio = statistics.median(r.mbps / d.mbps for r, d in zip(runs, cells[(op, model, "decode")]))
        print(f"{op:<9} {model:<8} {work:<8} {statistics.median(r.mbps for r in runs):7.1f} {ratio:9.2f} "
              f"{statistics.median(r.server_ms_per_mb for r in runs):13.2f} "
              f"{statistics.median(r.client_ms_per_mb for r in runs):13.2f} "
              f"{100 * statistics.median(r.generator_share for r in runs):17.0f}% "
              f"{100 * statistics.median(r.generator_machine_share for r in runs):12.0f}%")


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
