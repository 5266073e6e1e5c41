#!/usr/bin/env python3
"""Fire N clients at a file server at once and print what happened as one JSON object.

Configured by the environment, as the course's users know it, or by flags (flags win):

    STRESS_OP=download FILE_SIZE_MB=10 CLIENT_POOL=5 CLIENT_POOL_TYPE=thread python stress_test.py
    python stress_test.py --op upload --size-mb 50 --clients 50 --pool process --port 6667

The clients are cheap by default (``--client-work verify``): downloads are compared
with the known base64 text, uploads sent pre-encoded with sendfile(), so a cell
measures the server, not this load generator (fileshare/loadgen.py).
``--client-work decode`` runs clients that decode and encode like an application.

Stdout carries exactly one JSON object (keys documented in README.md); logs go
to stderr.  The exit status is 0 whenever a result was produced, even if every
client failed; 2 for invalid settings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from client_worker import ClientError, DiscardingSink, FileClient
from fileshare.cli import MAX_SECONDS, timeout_seconds
from fileshare.harness import CpuSnapshot, child_pids, cpu_use, trees_cpu_seconds
from fileshare.loadgen import CanonicalEncoding, VerifyingClient, canonical_encoding
from fileshare.store import replaced_atomically
# Unix-only (not on Windows): imported after the package, which stops on another platform with one line.
import resource  # noqa: E402

log = logging.getLogger("stress_test")

MIB = 1024 * 1024
CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "stress"
BARRIER_TIMEOUT = 120.0     # how long the clients wait for each other before giving up
CONTENT_SEED = "fileserver-stress-v1"
CLIENT_WORK = ("verify", "decode")


# ---------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    op: str
    size_mb: float
    clients: int
    pool: str
    host: str
    port: int
    timeout: float
    client_work: str = "verify"
    server_pid: Optional[int] = None        # the server's process, whose tree's cores the result reports
    idle_pids: tuple[int, ...] = ()         # servers that should be idle meanwhile (of other models, say)

    @property
    def size_bytes(self) -> int:
        return round(self.size_mb * MIB)


class SettingsError(ValueError):
    pass


def _setting(value: Optional[str], env: str, default: Optional[str]) -> str:
    if value is not None:
        return value
    return os.environ.get(env, default) if default is not None else os.environ.get(env, "")


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Run CLIENT_POOL clients against a file server at once; print one JSON result.",
        epilog="Each flag defaults to its environment variable: STRESS_OP, FILE_SIZE_MB, CLIENT_POOL, "
               "CLIENT_POOL_TYPE, SERVER_HOST, SERVER_PORT, CLIENT_WORK, SERVER_PID, IDLE_SERVER_PIDS. "
               "Exit status 2 means an invalid setting.")
    parser.add_argument("--op", help="download or upload (env STRESS_OP, default download)")
    parser.add_argument("--size-mb", help="file size in MiB, a positive number (env FILE_SIZE_MB, default 10)")
    parser.add_argument("--clients", help="how many clients run at once (env CLIENT_POOL, default 5)")
    parser.add_argument("--pool", help="thread or process (env CLIENT_POOL_TYPE, default thread)")
    parser.add_argument("--host", help="server address (env SERVER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", help="server port (env SERVER_PORT, default 6667)")
    parser.add_argument("--client-work",
                        help="verify: clients compare downloads with the known base64 text and send uploads "
                             "pre-encoded, so the server is what is measured; decode: clients decode and encode "
                             "like an application (env CLIENT_WORK, default verify)")
    parser.add_argument("--server-pid",
                        help="the server's process ID, on this machine: the result's usage then says how many cores "
                             "it and every process below it used over the timed transfer (env SERVER_PID, "
                             "default none)")
    parser.add_argument("--idle-server-pids",
                        help="comma-separated process IDs of servers meant to be idle meanwhile; their cores count "
                             "as idle_servers_cores (env IDLE_SERVER_PIDS, default none)")
    parser.add_argument("--timeout", default="120",
                        help="seconds a client waits on any read or write (default: %(default)s)")
    args = parser.parse_args(argv)

    op = _setting(args.op, "STRESS_OP", "download").strip().lower()
    if op not in ("download", "upload"):
        raise SettingsError(f"STRESS_OP must be 'download' or 'upload', not {op!r}")
    pool = _setting(args.pool, "CLIENT_POOL_TYPE", "thread").strip().lower()
    if pool not in ("thread", "process"):
        raise SettingsError(f"CLIENT_POOL_TYPE must be 'thread' or 'process', not {pool!r}")
    size_text = _setting(args.size_mb, "FILE_SIZE_MB", "10")
    try:
        size_mb = float(size_text)
    except ValueError:
        raise SettingsError(f"FILE_SIZE_MB must be a positive number, not {size_text!r}") from None
    if not (size_mb > 0 and size_mb < 1e7):
        raise SettingsError(f"FILE_SIZE_MB must be a positive number, not {size_text!r}")
    clients_text = _setting(args.clients, "CLIENT_POOL", "5")
    try:
        clients = int(clients_text)
    except ValueError:
        clients = 0
    if not 1 <= clients <= 10000:
        raise SettingsError(f"CLIENT_POOL must be a positive integer, not {clients_text!r}")
    host = _setting(args.host, "SERVER_HOST", "127.0.0.1").strip()
    if not host:
        raise SettingsError("SERVER_HOST must not be empty")
    port_text = _setting(args.port, "SERVER_PORT", "6667")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise SettingsError(f"SERVER_PORT must be a port number (1-65535), not {port_text!r}")
    try:
        timeout = timeout_seconds(args.timeout)
    except ValueError:
        raise SettingsError(f"--timeout must be a number of seconds above 0 and at most {MAX_SECONDS}, "
                            f"not {args.timeout!r}") from None
    if round(size_mb * MIB) < 1:
        raise SettingsError(f"FILE_SIZE_MB={size_text} is less than one byte")
    client_work = _setting(args.client_work, "CLIENT_WORK", "verify").strip().lower()
    if client_work not in CLIENT_WORK:
        raise SettingsError(f"CLIENT_WORK must be 'verify' or 'decode', not {client_work!r}")
    server_pids = _pids(_setting(args.server_pid, "SERVER_PID", ""), "SERVER_PID")
    if len(server_pids) > 1:
        raise SettingsError(f"SERVER_PID must be one process ID, not {len(server_pids)}")
    idle_pids = _pids(_setting(args.idle_server_pids, "IDLE_SERVER_PIDS", ""), "IDLE_SERVER_PIDS")
    return Settings(op, size_mb, clients, pool, host, port, timeout, client_work,
                    server_pids[0] if server_pids else None, idle_pids)


def _pids(text: str, env: str) -> tuple[int, ...]:
    """Process IDs, comma-separated; an empty text is none."""
    try:
        pids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        pids = (0,)
    if any(pid <= 0 for pid in pids):
        raise SettingsError(f"{env} must be {'a process ID' if env == 'SERVER_PID' else 'process IDs, comma-separated'}"
                            f" (positive integers), not {text!r}")
    return pids


# ---------------------------------------------------------------------- test content

@dataclass(frozen=True)
class TestContent:
    path: str
    size: int
    sha256: str


def test_content(size: int, cache_dir: Path = CACHE_DIR) -> TestContent:
    """Deterministic pseudo-random bytes of exactly ``size`` bytes, cached on disk.

    Every MiB comes from its own seeded generator, so the content is the same on
    any machine and Python version, and a cached copy is checked, not trusted.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"content-{size}.bin"
    digest_path = path.with_suffix(".sha256")
    try:
        expected = digest_path.read_text().strip()
        if path.stat().st_size == size:
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() == expected:
                    return TestContent(str(path), size, expected)
    except OSError:
        pass
    with replaced_atomically(path) as out:
        expected = _generate(size, out)
    with replaced_atomically(digest_path) as out:
        out.write(f"{expected}\n".encode())
    return TestContent(str(path), size, expected)


def _generate(size: int, out: Any) -> str:
    digest = hashlib.sha256()
    for index, start in enumerate(range(0, size, MIB)):
        block = random.Random(f"{CONTENT_SEED}:{index}").randbytes(min(MIB, size - start))
        digest.update(block)
        if out is not None:
            out.write(block)
    return digest.hexdigest()


def server_name(content: TestContent) -> str:
    return f"stress-{content.size}-{content.sha256[:12]}.bin"


# ---------------------------------------------------------------------- one client

@dataclass
class ClientOutcome:
    ok: bool
    started: float = 0.0       # time.monotonic() when the transfer began (system-wide clock)
    seconds: float = 0.0
    bytes: int = 0
    error_kind: str = ""
    error: str = ""
    unconfirmed: bool = False  # an upload the server did not confirm with a SHA-256: read it back


@dataclass
class ClientJob:
    op: str
    host: str
    port: int
    timeout: float
    name: str                  # file to download, or name to upload under
    content: TestContent
    encoding: Optional[CanonicalEncoding] = None   # set: the cheap client (verify); None: decode


_barrier: Any = None


def _set_barrier(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def run_client(job: ClientJob) -> ClientOutcome:
    """One client: wait for the others, then transfer once and check every byte."""
    try:
        _barrier.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        return ClientOutcome(False, time.monotonic(), error_kind="other",
                             error="the clients could not all start together (barrier broken)")
    started = time.monotonic()
    try:
        with VerifyingClient(job.host, job.port, timeout=job.timeout) as client:
            if job.encoding is not None and job.op == "download":
                result = client.get_verified(job.name, job.encoding)
            elif job.encoding is not None:
                result = client.upload_encoded(job.name, job.encoding)
            elif job.op == "download":
                result = client.get(job.name, DiscardingSink())
            else:
                result = client.upload(job.content.path, job.name, known_sha256=job.content.sha256)
        seconds = time.monotonic() - started
        if result.bytes != job.content.size or result.sha256 != job.content.sha256:
            return ClientOutcome(False, started, seconds, result.bytes, "corrupt",
                                 f"got {result.bytes} bytes with SHA-256 {result.sha256[:16]}..., "
                                 f"expected {job.content.size} bytes with {job.content.sha256[:16]}...")
        unconfirmed = job.op == "upload" and not result.server_confirmed
        return ClientOutcome(True, started, seconds, result.bytes, unconfirmed=unconfirmed)
    except ClientError as exc:
        return ClientOutcome(False, started, time.monotonic() - started, 0, exc.kind, str(exc))
    except Exception as exc:  # a bug or the unexpected: still one failed client, not a crash
        return ClientOutcome(False, started, time.monotonic() - started, 0, "other", f"{type(exc).__name__}: {exc}")


def run_clients(jobs: list[ClientJob], pool: str, mark: Callable[[], None] = lambda: None) -> list[ClientOutcome]:
    """Run every job at once in a pool of ``len(jobs)`` threads or processes.

    ``mark`` is called twice, bracketing the timed part: once every client waits at the barrier (just
    before this thread releases them), and once the last has finished (the client processes still
    alive, so their CPU time can be read)."""
    count = len(jobs)
    if pool == "thread":
        barrier = threading.Barrier(count + 1)
        _set_barrier(barrier)
        with concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="client") as executor:
            futures = [executor.submit(run_client, job) for job in jobs]
            _release(barrier, futures, mark)
            outcomes = [future.result() for future in futures]
            mark()
            return outcomes
    # Fork: every worker starts on the first submit, each takes exactly one job
    # (all block at the barrier until every job is taken), and nothing is pickled but the job.
    mp = multiprocessing.get_context("fork")
    barrier = mp.Barrier(count + 1)
    with concurrent.futures.ProcessPoolExecutor(count, mp_context=mp, initializer=_set_barrier,
                                                initargs=(barrier,)) as executor:
        futures = [executor.submit(run_client, job) for job in jobs]
        _release(barrier, futures, mark)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as exc:   # a client process died
                outcomes.append(ClientOutcome(False, error_kind="other", error=f"client process failed: {exc}"))
        mark()
        return outcomes


def _release(barrier: Any, futures: list[concurrent.futures.Future], mark: Callable[[], None]) -> None:
    """Wait until every client waits at ``barrier`` (this thread is its last party), ``mark``, and let them
    go.  A client that ended without reaching it (its process died) breaks the barrier for the others at
    once, as does waiting longer than BARRIER_TIMEOUT: they fail, each saying why."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    clients = barrier.parties - 1
    while barrier.n_waiting < clients and time.monotonic() < deadline and not any(f.done() for f in futures):
        time.sleep(0.001)
    mark()
    if barrier.n_waiting < clients:
        barrier.abort()
        return
    try:
        barrier.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        pass       # the clients report it


# ---------------------------------------------------------------------- the run

def prepare_download(settings: Settings, content: TestContent, encoding: Optional[CanonicalEncoding] = None) -> str:
    """Make sure the server holds exactly ``content``; upload it when it does not.

    With the content's ``encoding`` the check and the upload are the cheap ones, which
    keeps a sweep's preparation short too.  Each request has a connection of its own,
    since some servers answer one request per connection.
    """
    name = server_name(content)
    try:
        with VerifyingClient(settings.host, settings.port, timeout=settings.timeout) as client:
            if encoding is not None:
                client.get_verified(name, encoding)
                return name
            held = client.get(name, DiscardingSink())
        if held.sha256 == content.sha256:
            return name
        log.info("the server's %s differs from the test content: uploading it again", name)
    except ClientError as exc:
        if exc.kind not in ("server", "corrupt"):
            raise
        log.info("the server's %s is missing or differs from the test content (%s): uploading it", name, exc)
    with VerifyingClient(settings.host, settings.port, timeout=settings.timeout) as client:
        if encoding is not None:
            client.upload_encoded(name, encoding)
        else:
            client.upload(content.path, name)
    return name


def server_counts(settings: Settings) -> tuple[Optional[dict], Optional[str]]:
    """The server's request counters, or None and why it could not report them (no STATS, say)."""
    try:
        with FileClient(settings.host, settings.port, timeout=min(settings.timeout, 30)) as client:
            return client.stats(), None
    except ClientError as exc:
        return None, f"the server could not report its request counts (STATS: {exc})"


def percentile(values: list[float], share: float) -> Optional[float]:
    """Nearest-rank percentile: a value some client really measured."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 100))
    return ordered[int(rank) - 1]


def client_cpu_seconds(pool: str) -> float:
    """CPU seconds used so far by the clients of ``pool``: this process (thread clients), and for process
    clients every process below it too.  This process's and reaped children's come from getrusage, to the
    microsecond (a short run's clients use less than a clock tick), the live ones' from /proc."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    if pool == "thread":
        return me.ru_utime + me.ru_stime
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = trees_cpu_seconds(child_pids(os.getpid()))
    return me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime + sum(live.values())


class TimedWindow:
    """CPU snapshots bracketing the timed part: the server's processes, the idle servers', the clients'
    (this process and those below it) and the machine's, for the result's ``usage``."""

    SERVER = "server"

    def __init__(self, settings: Settings) -> None:
        self.watched = {f"idle {pid}": pid for pid in settings.idle_pids}
        if settings.server_pid is not None:
            self.watched[self.SERVER] = settings.server_pid
        self.pool = settings.pool
        self.snapshots: list[CpuSnapshot] = []

    def mark(self) -> None:
        self.snapshots.append(CpuSnapshot.take(self.watched, lambda: client_cpu_seconds(self.pool)))

    def usage(self) -> Optional[dict]:
        """Cores used over the window (see fileshare.harness.cpu_use), or None unless it was bracketed."""
        if len(self.snapshots) != 2:
            return None
        use = cpu_use(*self.snapshots, self.SERVER)
        return dict(use, over="transfer") if use else None

    def client_cpu_seconds(self) -> Optional[float]:
        if len(self.snapshots) != 2:
            return None
        return round(max(0.0, self.snapshots[1].clients - self.snapshots[0].clients), 4)

    def server_cpu_seconds(self) -> Optional[float]:
        """CPU seconds of the server's processes over the window, or None without a server PID (or window)."""
        if len(self.snapshots) != 2 or any(self.SERVER not in s.servers for s in self.snapshots):
            return None
        return max(0.0, self.snapshots[1].servers[self.SERVER] - self.snapshots[0].servers[self.SERVER])


def summarize(settings: Settings, outcomes: list[ClientOutcome], before: Optional[dict],
              after: Optional[dict], client_cpu_s: Optional[float] = None) -> dict:
    good = [o for o in outcomes if o.ok]
    times = [o.seconds for o in good]
    errors: dict[str, dict] = {}
    for outcome in outcomes:
        if not outcome.ok:
            entry = errors.setdefault(outcome.error_kind, {"count": 0, "example": outcome.error})
            entry["count"] += 1
    measured = [o for o in outcomes if o.started]
    wall = (max(o.started + o.seconds for o in measured) - min(o.started for o in measured)) if measured else 0.0
    total_bytes = sum(o.bytes for o in good)
    server_ok = server_failed = None
    if before is not None and after is not None:
        server_ok = after["succeeded"] - before["succeeded"]
        server_failed = after["failed"] - before["failed"]
    return {
        "op": settings.op,
        "size_mb": settings.size_mb,
        "size_bytes": settings.size_bytes,
        "clients": settings.clients,
        "pool": settings.pool,
        "client_work": settings.client_work,
        "host": settings.host,
        "port": settings.port,
        "succeed": len(good),
        "failed": len(outcomes) - len(good),
        "total_time_s": statistics.fmean(times) if times else None,
        # As the original: bytes of the successful clients / the sum of their times (not a mean of rates,
        # which overstates what clients get when they queue).
        "throughput_Bps": total_bytes / sum(times) if good and sum(times) > 0 else None,
        "wall_time_s": wall,
        "aggregate_throughput_Bps": total_bytes / wall if wall > 0 else None,
        "latency_s": {"min": min(times, default=None), "p50": percentile(times, 50),
                      "p90": percentile(times, 90), "p99": percentile(times, 99),
                      "max": max(times, default=None)},
        "errors": errors,
        "server_succeeded": server_ok,
        "server_failed": server_failed,
        "client_cpu_s": client_cpu_s,
        "python": platform.python_version(),
    }


def prepare(settings: Settings) -> list[ClientJob]:
    """Everything before the timed part: the content (and its encoding), the server's copy, the jobs."""
    content = test_content(settings.size_bytes)
    encoding = canonical_encoding(content.path, content.sha256) if settings.client_work == "verify" else None
    if settings.op == "download":
        try:
            name = prepare_download(settings, content, encoding)
        except ClientError as exc:
            # No server, or one that cannot take the file: every client would fail alike,
            # so they still run, and each reports the real error it meets.
            log.warning("could not prepare the server: %s", exc)
            name = server_name(content)
        names = [name] * settings.clients
    else:
        run_id = f"{os.getpid()}-{int(time.time())}"
        names = [f"stress-upload-{run_id}-{i}.bin" for i in range(settings.clients)]
    return [ClientJob(settings.op, settings.host, settings.port, settings.timeout, name, content, encoding)
            for name in names]


def clean_up(settings: Settings, jobs: list[ClientJob], outcomes: list[ClientOutcome]) -> list[str]:
    """After the timed part: check unconfirmed uploads, then delete what the clients uploaded.

    Returns notes on what could not be removed."""
    if settings.op != "upload":
        return []
    _read_back_unconfirmed(settings, jobs, outcomes)
    return _delete_uploads(settings, jobs, outcomes)


def run(settings: Settings) -> dict:
    jobs = prepare(settings)
    before, no_counts = server_counts(settings)
    window = TimedWindow(settings)
    outcomes = run_clients(jobs, settings.pool, window.mark)
    after, no_counts = server_counts(settings) if before is not None else (None, no_counts)
    notes = [no_counts] if no_counts else []
    notes += clean_up(settings, jobs, outcomes)
    result = summarize(settings, outcomes, before, after, window.client_cpu_seconds())
    result["usage"] = window.usage()
    if notes:
        result["notes"] = notes
    return result


def _read_back_unconfirmed(settings: Settings, jobs: list[ClientJob], outcomes: list[ClientOutcome]) -> None:
    """A server that answers a bare OK (no SHA-256) is checked by downloading what it stored.

    Done after the timed part, so it costs the measurement nothing; a mismatch
    turns that client into a failure, since the server does not hold what it sent.
    """
    for job, outcome in zip(jobs, outcomes):
        if not (outcome.ok and outcome.unconfirmed):
            continue
        try:
            with FileClient(settings.host, settings.port, timeout=settings.timeout) as client:
                stored = client.get(job.name, DiscardingSink())
            if stored.sha256 == job.content.sha256:
                continue
            error = f"the server stored {stored.bytes} bytes with SHA-256 {stored.sha256[:16]}..., not what was sent"
        except ClientError as exc:
            error = f"reading the upload back failed: {exc}"
        outcome.ok, outcome.error_kind, outcome.error = False, "corrupt", error


def _delete_uploads(settings: Settings, jobs: list[ClientJob], outcomes: list[ClientOutcome]) -> list[str]:
    """Remove what the clients uploaded; say once, as a note, what could not be removed.

    A connection per file, since some servers answer one request per connection;
    some have no DELETE at all.  An ERROR for an upload that failed is fine (it
    may have stored nothing); after a connection failure the rest is not tried.
    """
    left: list[str] = []
    reason, unreachable = "", False
    for job, outcome in zip(jobs, outcomes):
        if unreachable:
            left.append(job.name)
            continue
        try:
            with FileClient(settings.host, settings.port, timeout=settings.timeout) as client:
                client.delete(job.name)
        except ClientError as exc:
            if exc.kind == "server" and not outcome.ok:
                continue
            left.append(job.name)
            reason, unreachable = reason or str(exc), exc.kind != "server"
    if not left:
        return []
    shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    note = f"cleanup could not remove {len(left)} uploaded test file(s) from the server ({reason}): {shown}"
    log.warning("%s", note)
    return [note]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("STRESS_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"stress_test: {exc}", file=sys.stderr)
        return 2
    result = run(settings)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
