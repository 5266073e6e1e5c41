"""The harness of the sweep, the tests and the bench: our own processes, started and watched.

Servers of anyone's making (:class:`ForeignServer`) are started and stopped the
same way, and one running elsewhere (:class:`AttachedServer`) is only addressed.

Every child is started in a session (process group) of its own, so that it and
whatever it forks can be stopped together by group id, never by name.  The
readers of /proc (Linux) that tell what those processes are doing live here too,
and only here.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from .server import REPO_ROOT

SERVER_SCRIPTS = {
    "thread": REPO_ROOT / "file_server_multithreadpool.py",
    "process": REPO_ROOT / "file_server_multiprocesspool.py",
}
READY_TIMEOUT = 30.0


class ServerStartError(RuntimeError):
    pass


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal ``proc``'s process group (it leads one: started with start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ServerProcess:
    """One file server running as a child; ``with`` stops it however the block ends."""

    def __init__(self, model: str, root: str | os.PathLike, workers: int, host: str = "127.0.0.1",
                 extra_args: Sequence[str] = (), stderr: Any = None, env: Mapping[str, str] | None = None,
                 python: str = sys.executable, checkout: str | os.PathLike | None = None) -> None:
        """``python`` is the interpreter that runs the server (run_experiment's --python);
        ``checkout``, another checkout of this toolkit whose server scripts to run (the benches'
        before/after comparisons)."""
        if model not in SERVER_SCRIPTS:
            raise ValueError(f"unknown server model {model!r}; choose from {sorted(SERVER_SCRIPTS)}")
        self.model, self.workers = model, workers
        script = SERVER_SCRIPTS[model] if checkout is None else Path(checkout) / SERVER_SCRIPTS[model].name
        self.command = [python, str(script), "--host", host, "--port", "0",
                        "--workers", str(workers), "--root", os.fspath(root), *extra_args]
        self.stderr, self.env = stderr, env
        self.proc: subprocess.Popen | None = None
        self.host, self.port = host, 0
        self.extra_stdout = b""      # anything printed after the readiness line, as far as it was read

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def start(self, ready_timeout: float = READY_TIMEOUT) -> "ServerProcess":
        """Start the server and wait for its ``listening on HOST:PORT`` line."""
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        line, self.extra_stdout = _read_line(self.proc, ready_timeout)
        if not line.startswith("listening on "):
            code = self.proc.poll()
            self.stop()
            raise ServerStartError(f"{self.model} server did not announce readiness within {ready_timeout:g} s "
                                   f"(exit status {code}, said {line!r})")
        self.host, _, port = line[len("listening on "):].strip().rpartition(":")
        self.port = int(port)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then kill the whole group; return the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.wait(10)
        # A worker the server failed to reap would still be in its group: take it down too.
        kill_group(proc)
        if proc.stdout:
            proc.stdout.close()
        return proc.returncode

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


READY_LINE = re.compile(rb"^listening on (.*):(\d+)\r?\n", re.MULTILINE)   # a whole line: the port is complete
GROUP_GONE_TIMEOUT = 10.0   # how long a stopped server's group may take to vanish (and free its port)


class ForeignServer(ServerProcess):
    """A server of anyone's making, started from a command line (no shell).

    It gets MAX_WORKERS, SERVER_PORT and FILES_DIR in its environment and a fresh
    temporary folder as its working directory (removed when it stops).  It is ready
    when it prints ``listening on HOST:PORT`` or, since it may print nothing, when
    its port accepts a connection.  Its stdout and stderr go to unnamed temporary
    files, so a chatty server never blocks on a full pipe, and what it said is kept
    for the error message if it fails to start.  It is stopped by process group,
    SIGTERM then SIGKILL, since its workers may outlive a signal to their parent.
    """

    def __init__(self, model: str, command: Sequence[str], root: str | os.PathLike, workers: int,
                 port: int | None = None, host: str = "127.0.0.1", env: Mapping[str, str] | None = None) -> None:
        if not command:
            raise ValueError(f"the {model} server needs a command")
        self.model, self.workers, self.command = model, workers, list(command)
        self.root, self.fixed_port = os.fspath(root), port
        self.base_env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen | None = None
        self.host, self.port = host, port or 0
        self.workdir: str | None = None
        self._stdout = self._stderr = None

    def start(self, ready_timeout: float = READY_TIMEOUT) -> "ForeignServer":
        """Start the command and wait, at most ``ready_timeout`` seconds, until it serves."""
        self.port = self.fixed_port or free_port(self.host)
        if self.fixed_port and port_accepts(self.host, self.port):
            raise ServerStartError(f"{self.model} server: port {self.port} already accepts connections before "
                                   "the server starts; stop whatever listens there (ss -ltnp) and try again")
        env = dict(self.base_env, MAX_WORKERS=str(self.workers), SERVER_PORT=str(self.port), FILES_DIR=self.root)
        self.workdir = tempfile.mkdtemp(prefix=f"fileserver-{_safe(self.model)}-")
        self._stdout, self._stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.command, stdout=self._stdout, stderr=self._stderr,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=env, start_new_session=True)
        except OSError as exc:
            self.stop()
            raise ServerStartError(f"{self.model} server: cannot run {self.command[0]!r}: {exc.strerror or exc}") \
                from None
        try:
            self._wait_ready(ready_timeout)
        except ServerStartError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self._stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            announced = READY_LINE.search(os.pread(self._stdout.fileno(), 4096, 0))
            if announced:
                host = announced.group(1).decode("utf-8", "replace").strip("[]")
                if host not in ("", "0.0.0.0", "::"):       # a wildcard address is reached through ours
                    self.host = host
                self.port = int(announced.group(2))
                return
            if self.proc.poll() is not None:
                raise ServerStartError(f"{self.model} server exited with status {self.proc.returncode} before "
                                       f"it served; it said: {self.said() or 'nothing'}")
            if port_accepts(self.host, self.port):
                return
            if time.monotonic() >= deadline:
                raise ServerStartError(f"{self.model} server did not print 'listening on HOST:PORT' nor accept "
                                       f"connections on {self.host}:{self.port} within {timeout:g} s; it said: "
                                       f"{self.said() or 'nothing'}")
            time.sleep(0.1)

    def said(self, limit: int = 600) -> str:
        """The end of what the server wrote to stderr (else stdout), on one line."""
        for output in (self._stderr, self._stdout):
            if output is None:
                continue
            size = os.fstat(output.fileno()).st_size
            text = os.pread(output.fileno(), limit, max(0, size - limit)).decode("utf-8", "replace")
            if text.strip():
                return " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to the whole group, wait up to ``timeout``, then SIGKILL; wait until the group is gone."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(proc)
            proc.wait(10)
            # A fixed port is free again only once every worker of the group is gone.
            deadline = time.monotonic() + GROUP_GONE_TIMEOUT
            while process_group_pids(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for output in (self._stdout, self._stderr):
            if output is not None:
                output.close()
        self._stdout = self._stderr = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return None if proc is None else proc.returncode


class AttachedServer:
    """A server already running elsewhere (another machine, say): never started or stopped here."""

    proc = None

    def __init__(self, model: str, host: str, port: int, workers: int) -> None:
        self.model, self.host, self.port, self.workers = model, host, port, workers

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def returncode(self) -> None:
        return None

    def start(self, ready_timeout: float = READY_TIMEOUT) -> "AttachedServer":
        return self

    def alive(self) -> bool:
        return True       # only its clients can tell: a server that is gone fails them with 'refused'

    def stop(self, timeout: float = 20.0) -> None:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual small race: it may be taken before it is used)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts a TCP connection on ``host:port`` (the connection is closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def _read_line(proc: subprocess.Popen, timeout: float) -> tuple[str, bytes]:
    """One line of ``proc``'s stdout ('' if none comes within ``timeout``) and what followed it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data and len(data) < 4096:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    line, _, rest = bytes(data).partition(b"\n")
    return line.decode("utf-8", "replace").rstrip("\r"), rest


def run_in_group(command: Sequence[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, str]:
    """Run ``command`` in a process group of its own; kill the group on timeout or interrupt.

    Returns (exit status or None if it was killed for time, stdout, stderr).
    """
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return None, out, err
    finally:
        if proc.poll() is None:      # interrupted (Ctrl-C) or failed: take the whole group down
            kill_group(proc)
            proc.wait()
        kill_group(proc)             # forked clients outliving their parent


def checkout_label(path: str | os.PathLike) -> str:
    """Another checkout's short commit, to name its servers in a table (its folder name if git cannot tell)."""
    try:
        done = subprocess.run(["git", "-C", os.fspath(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return Path(path).name
    return done.stdout.strip() or Path(path).name


def script_path(name: str) -> Path:
    return REPO_ROOT / name


# ---------------------------------------------------------------------- /proc readers (Linux)

def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def child_pids(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (zombies included)."""
    return sorted(p for p in _all_pids() if _parent_of(p) == pid)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``: children, grandchildren and so on."""
    return _below(pid, {p: _parent_of(p) for p in _all_pids()})


def _below(pid: int, parents: Mapping[int, int | None]) -> set[int]:
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def process_group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) PIDs in process group ``pgid``."""
    found = []
    for candidate in _all_pids():
        fields = _stat_fields(candidate)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(candidate)
    return sorted(found)


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks (tells a PID from a reuse of it)."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs (not a zombie) and, if given, has start time ``started``."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def reaped(pid: int) -> bool:
    """True once ``pid``'s parent has collected it: unlike a zombie, it is gone from /proc."""
    return not os.path.exists(f"/proc/{pid}")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every process below it so far, reaped ones included
    (each in its parent's cumulative times, so nothing counts twice); a process that is gone counts
    nothing.  Below, not only children: a server's workers may be grandchildren (a forkserver, a
    command started through a wrapper)."""
    return trees_cpu_seconds([pid]).get(pid, 0.0)


def trees_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """:func:`tree_cpu_seconds` of each of ``pids`` that still runs (a PID that is gone is left out),
    from one pass over /proc, so that a snapshot of several trees is quick and nearly instantaneous."""
    parents = {p: _parent_of(p) for p in _all_pids()}
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        if pid not in parents:
            continue
        total = 0
        for p in [pid, *_below(pid, parents)]:
            fields = _stat_fields(p)
            if fields is not None:
                total += sum(int(x) for x in fields[11:15])     # utime, stime, cutime, cstime
        found[pid] = total / ticks
    return found


def status_fields(pid: int) -> dict[str, str]:
    """/proc/PID/status as a mapping of field name to its text."""
    with open(f"/proc/{pid}/status") as f:
        return {name: value.strip() for name, _, value in (line.partition(":") for line in f) if value}


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes (VmHWM in /proc/PID/status)."""
    try:
        return int(status_fields(pid)["VmHWM"].split()[0]) * 1024
    except KeyError:
        raise LookupError(f"no VmHWM for pid {pid}") from None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ('' once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def open_descriptors(pid: int) -> int:
    """How many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds the whole machine has spent (all cores) since boot, as (busy, stolen): busy is user,
    nice, system, irq and softirq time; stolen is time a hypervisor gave to other machines.  None
    without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


# ---------------------------------------------------------------------- cores used over a window

@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the machine's (busy, stolen), each watched server's process tree, and the clients'."""
    at: float
    machine: Optional[tuple[float, float]]
    servers: dict[str, float]
    clients: float

    @classmethod
    def take(cls, servers: Mapping[str, int], clients: Callable[[], float]) -> "CpuSnapshot":
        """Now, for ``servers`` (name -> PID of the process whose tree is the server; one that is gone
        is left out) and the ``clients`` (a function returning their CPU seconds so far)."""
        trees = trees_cpu_seconds(set(servers.values()))
        return cls(time.monotonic(), machine_cpu_seconds(),
                   {name: trees[pid] for name, pid in servers.items() if pid in trees}, clients())


def cpu_use(before: CpuSnapshot, after: CpuSnapshot, measured: str) -> dict:
    """Cores used between two snapshots (CPU seconds / wall seconds) by the ``measured`` server, the
    clients, the other (idle) servers, everything else on the machine, and lost to steal.  Without
    the measured server (one running elsewhere) its cores and the rest of the machine's are None:
    what the machine did cannot be split."""
    window = after.at - before.at
    if window <= 0:
        return {}
    servers = {m: max(0.0, after.servers[m] - before.servers[m]) for m in after.servers if m in before.servers}
    clients = max(0.0, after.clients - before.clients)
    use = {"window_s": round(window, 4), "client_cores": round(clients / window, 3),
           "server_cores": round(servers[measured] / window, 3) if measured in servers else None,
           # the servers of the other models, idle meanwhile: a busy one would disturb the run
           "idle_servers_cores": round(sum(v for m, v in servers.items() if m != measured) / window, 3)}
    if before.machine and after.machine:
        busy, steal = (after.machine[i] - before.machine[i] for i in (0, 1))
        known = measured in servers
        use["other_cores"] = round(max(0.0, busy - clients - sum(servers.values())) / window, 3) if known else None
        use["steal_cores"] = round(max(0.0, steal) / window, 3)
    return use
