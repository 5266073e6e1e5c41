"""Locust installed and run from a script: the integration test's and the bench's common part.

* :func:`ensure_locust` installs contrib/locust/requirements.txt into a virtual
  environment under the checkout (``.venv-locust/``, ignored by git), or reuses
  it when it was made from the same requirements by the same Python.
* :class:`LocustRun` runs a headless master and N workers on 127.0.0.1 against a
  server, each in a process group of its own, stopped by group however the run
  ends, every wait bounded; :func:`read_stats` reads the master's CSV back.

Standard library only (it runs before Locust is there); the toolkit never imports it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fileshare.harness import free_port, kill_group  # noqa: E402

REQUIREMENTS = HERE / "requirements.txt"
LOCUSTFILE = HERE / "locustfile.py"
VENV = REPO_ROOT / ".venv-locust"
STAMP = VENV / "requirements.sha256"      # what the environment was made from
INSTALL_TIMEOUT = 600.0
STOP_GRACE = 10.0            # seconds a Locust process gets after SIGTERM before its group is killed


class InstallError(RuntimeError):
    """Locust could not be installed; ``str(error)`` says what to do."""


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _fingerprint(requirements: Path) -> str:
    """The requirements and the interpreter they were installed for."""
    return hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()


def ensure_locust(venv: Path = VENV, requirements: Path = REQUIREMENTS, log=print) -> Path:
    """The ``locust`` program of a virtual environment made from ``requirements``; install it if needed."""
    locust = venv / "bin" / "locust"
    wanted = _fingerprint(requirements)
    stamp = venv / STAMP.name
    try:
        if stamp.read_text().strip() == wanted and locust.exists() and _runs(_venv_python(venv), "import locust"):
            return locust
    except OSError:
        pass
    log(f"installing {requirements.relative_to(REPO_ROOT) if requirements.is_relative_to(REPO_ROOT) else requirements}"
        f" into {venv} ...")
    shutil.rmtree(venv, ignore_errors=True)
    _install_step([sys.executable, "-m", "venv", str(venv)], "making the virtual environment")
    _install_step([str(_venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                   "-r", str(requirements)], f"pip install -r {requirements.name}")
    if not _runs(_venv_python(venv), "import locust"):
        raise InstallError(f"Locust was installed into {venv} but does not import; remove {venv} and run again")
    stamp.write_text(wanted + "\n")
    return locust


def _runs(python: Path, code: str) -> bool:
    try:
        return subprocess.run([str(python), "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _install_step(command: Sequence[str], doing: str) -> None:
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{doing} took over {INSTALL_TIMEOUT:g} s; is PyPI reachable?") from None
    except OSError as exc:
        raise InstallError(f"{doing}: cannot run {command[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = "\n    ".join(line[:300] for line in (done.stderr or done.stdout).strip().splitlines()[-8:])
        raise InstallError(f"{doing} failed (exit status {done.returncode}); PyPI must be reachable, or pip's "
                           f"cache hold the packages. pip said:\n    {said}")


# ---------------------------------------------------------------------- a distributed run

@dataclass(frozen=True)
class Row:
    """One row of Locust's ``_stats.csv``."""
    type: str
    name: str
    requests: int
    failures: int
    average_size: float           # bytes per request
    requests_per_second: float

    @property
    def bytes_per_second(self) -> float:
        return self.requests_per_second * self.average_size


def read_stats(prefix: Path) -> list[Row]:
    """The rows of ``<prefix>_stats.csv``; the total is the row named ``Aggregated``."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return [Row(r["Type"], r["Name"], int(r["Request Count"]), int(r["Failure Count"]),
                    float(r["Average Content Size"]), float(r["Requests/s"])) for r in csv.DictReader(f)]


def read_failures(prefix: Path) -> list[dict]:
    with open(f"{prefix}_failures.csv", newline="") as f:
        return list(csv.DictReader(f))


class LocustRun:
    """A headless master and ``workers`` workers on 127.0.0.1; ``with`` stops them however it ends."""

    def __init__(self, locust: Path, host: str, port: int, out: Path, users: int, seconds: float,
                 workers: int = 2, options: Sequence[str] = (), stop_timeout: float = 10.0) -> None:
        self.out, self.seconds, self.stop_timeout = out, seconds, stop_timeout
        master_port = free_port()
        common = [str(locust), "-f", str(LOCUSTFILE)]
        self.master_command = [*common, "--master", "--headless", "--master-bind-host", "127.0.0.1",
                               "--master-bind-port", str(master_port), "--expect-workers", str(workers),
                               "--expect-workers-max-wait", "60", "--host", f"{host}:{port}",
                               "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s",
                               "--stop-timeout", f"{stop_timeout:g}", "--csv", str(out / "locust"),
                               "--only-summary", *options]
        self.worker_command = [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
        self.workers = workers
        self.procs: list[subprocess.Popen] = []

    @property
    def csv_prefix(self) -> Path:
        return self.out / "locust"

    def _start(self, command: list[str], log_name: str) -> subprocess.Popen:
        with open(self.out / log_name, "wb") as log:
            # A child inherits the file; this process need not keep it open.
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=str(REPO_ROOT), env=environment_without_settings(), start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self) -> int | None:
        """Start everything, wait for the master to finish; its exit status, None if it had to be killed."""
        self.out.mkdir(parents=True, exist_ok=True)
        master = self._start(self.master_command, "master.log")
        for index in range(self.workers):
            self._start(self.worker_command, f"worker-{index}.log")
        # Workers connect, the test runs, users finish their request (stop timeout), stats come in.
        limit = 60 + self.seconds + self.stop_timeout + 30
        try:
            master.wait(limit)
        except subprocess.TimeoutExpired:
            return None
        for worker in self.procs[1:]:      # they quit when the master tells them
            try:
                worker.wait(max(1.0, self.stop_timeout + 10))
            except subprocess.TimeoutExpired:
                pass
        return master.returncode

    def log(self, name: str = "master.log", lines: int = 15) -> str:
        try:
            text = (self.out / name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM each process group still running, a bounded wait, then SIGKILL to every group."""
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_group(proc)       # whatever it left in its group
            if proc.poll() is None:
                proc.wait(10)

    def __enter__(self) -> "LocustRun":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def environment_without_settings() -> dict:
    """This environment less the variables the locustfile reads: the command line decides."""
    return {k: v for k, v in os.environ.items() if k not in ("FILE_SIZE_MB",) and not k.startswith("LOCUST_")}
