"""What a Locust user of the file server does, without Locust.

The locustfile beside this module is a thin adapter: it reads Locust's options,
keeps one :class:`FileServerSession` per simulated user and fires one Locust
request event per :class:`Sample`.  Everything that needs no Locust lives here,
so the standard-library test suite can test it against a real server:

* the server's address as Locust names a target (``HOST:PORT``, ``tcp://`` allowed);
* the operation mix (task weights) and the file size;
* the test content: stress_test's deterministic content, so workers on any host
  agree on what a correct reply is, and its canonical base64 for the cheap
  verifying client (fileshare/loadgen.py);
* upload names, one per worker process and user, so nothing collides;
* the error mapping: every failure is a :class:`ClientError` whose ``kind`` is
  what Locust reports as the failure.

Standard library only; imported by path (the toolkit never imports contrib/).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fileshare.cli import remote_port, size_mib, timeout_seconds  # noqa: E402
from fileshare.client import DEFAULT_PORT, ClientError  # noqa: E402
from fileshare.loadgen import CanonicalEncoding, VerifyingClient, canonical_encoding  # noqa: E402
from stress_test import MIB, TestContent, server_name, test_content  # noqa: E402

OPS = ("list", "get", "upload", "delete")
DEFAULT_MIX = "list=1,get=4,upload=1,delete=1"
DEFAULT_SIZE_MB = "10"          # stress_test's default: FILE_SIZE_MB means the same in both
DEFAULT_TIMEOUT = 60.0
MAX_WEIGHT = 1000               # each weight becomes that many entries in Locust's task list
UPLOAD_PREFIX = "locust-"
UPLOAD_ROW = f"{UPLOAD_PREFIX}*.bin"   # one row in Locust's table for every user's upload name
LIST_ROW = "(served folder)"
PREPARE = "prepare: "                 # rows of the requests that put the test file on the server
READ_BACK = "read back: "             # rows of downloads checking an upload the server did not confirm


class SettingError(ValueError):
    """A setting that cannot work; ``str(error)`` says which and why."""


# ---------------------------------------------------------------------- settings

def parse_host(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``tcp://`` prefix and a trailing ``/`` allowed; ``[v6]:PORT``; no port: 6667)."""
    address = text.strip()
    if not address:
        raise SettingError("no server given: pass --host HOST:PORT, the file server's address")
    if address.lower().startswith("tcp://"):
        address = address[len("tcp://"):]
    address = address.rstrip("/")
    if "://" in address:
        raise SettingError(f"host {text!r}: the file server speaks its own protocol over TCP; "
                           "give HOST:PORT or tcp://HOST:PORT")
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise SettingError(f"host {text!r}: an IPv6 address goes in brackets, as [::1]:6667")
        port_text = rest[1:] if rest else ""
    elif address.count(":") > 1:
        raise SettingError(f"host {text!r}: an IPv6 address goes in brackets, as [::1]:6667")
    else:
        host, _, port_text = address.partition(":")
    if not host:
        raise SettingError(f"host {text!r} names no host; give HOST:PORT, e.g. 127.0.0.1:6667")
    if not port_text:
        return host, DEFAULT_PORT
    try:
        return host, remote_port(port_text)
    except ValueError:
        raise SettingError(f"host {text!r}: the port must be a number from 1 to 65535") from None


def parse_mix(text: str) -> dict[str, int]:
    """``list=1,get=4`` -> weight of each operation; an operation left out has weight 0."""
    weights = dict.fromkeys(OPS, 0)
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        op, equals, weight_text = item.partition("=")
        op = op.strip().lower()
        if op not in weights:
            raise SettingError(f"operation mix {text!r}: unknown operation {op!r}; choose from {', '.join(OPS)}")
        try:
            weight = int(weight_text) if equals else 1
        except ValueError:
            weight = -1
        if not 0 <= weight <= MAX_WEIGHT:
            raise SettingError(f"operation mix {text!r}: the weight of {op} must be a whole number "
                               f"from 0 to {MAX_WEIGHT}, not {weight_text!r}")
        weights[op] = weight
    if not any(weights.values()):
        raise SettingError(f"operation mix {text!r} gives no operation a weight above 0; e.g. {DEFAULT_MIX}")
    return weights


def parse_size(text: str) -> int:
    """FILE_SIZE_MB (MiB, as stress_test reads it) -> bytes."""
    try:
        size = round(size_mib(str(text)) * MIB)
    except ValueError:
        size = 0
    if size < 1:
        raise SettingError(f"file size {text!r}: give a number of MiB above 0 (0.5 works), at least one byte")
    return size


def parse_timeout(text: str) -> float:
    try:
        return timeout_seconds(str(text))
    except ValueError:
        raise SettingError(f"request timeout {text!r}: give seconds above 0 and at most a day") from None


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    mix: dict[str, int]
    size: int
    timeout: float = DEFAULT_TIMEOUT


def settings(host: str, mix: str, size_mb: str, timeout: str = str(DEFAULT_TIMEOUT)) -> Settings:
    """Every setting checked at once; SettingError names the first that cannot work."""
    return Settings(*parse_host(host), parse_mix(mix), parse_size(size_mb), parse_timeout(timeout))


def task_list(weights: dict[str, int], tasks: dict[str, Callable]) -> list[Callable]:
    """Locust's task list: each operation's task repeated by its weight (how Locust weighs tasks)."""
    return [tasks[op] for op in OPS for _ in range(weights[op])]


# ---------------------------------------------------------------------- names

def node_label(hostname: Optional[str] = None, pid: Optional[int] = None) -> str:
    """This worker process, for file names: its host's name (made safe, shortened) and its PID."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", hostname if hostname is not None else socket.gethostname())
    host = host.strip(".-")[:40] or "host"
    return f"{host}-{pid if pid is not None else os.getpid()}"


def upload_name(node: str, user: int) -> str:
    """The one name a user uploads under: workers (host and PID) and users never share one."""
    return f"{UPLOAD_PREFIX}{node}-{user}.bin"


# ---------------------------------------------------------------------- errors

def as_client_error(exc: Exception) -> ClientError:
    """Any failure of a request as a ClientError: the library's own, or ``other`` for the unexpected."""
    if isinstance(exc, ClientError):
        return exc
    return ClientError("other", f"{type(exc).__name__}: {exc}")


class RequestFailure(Exception):
    """What Locust is told failed: the ClientError kind alone, so its table has a row per kind and
    operation, not one per offset or message; the message stays in ``detail``."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(error.kind)
        self.kind, self.detail = error.kind, str(error)

    def __repr__(self) -> str:      # what Locust shows and groups by
        return self.kind

    __str__ = __repr__


# ---------------------------------------------------------------------- content

@dataclass(frozen=True)
class Workload:
    """The test content every worker makes alike, its canonical base64 and its name on the server."""
    content: TestContent
    encoding: CanonicalEncoding
    served_name: str


def make_workload(size: int, cache_dir: Optional[Path] = None) -> Workload:
    """stress_test's content of ``size`` bytes (cached and re-verified in .cache/stress/)."""
    content = test_content(size) if cache_dir is None else test_content(size, cache_dir)
    return Workload(content, canonical_encoding(content.path, content.sha256), server_name(content))


# ---------------------------------------------------------------------- requests

@dataclass(frozen=True)
class Sample:
    """One request as Locust records it."""
    op: str                      # LIST, GET, UPLOAD or DELETE
    name: str                    # the row in Locust's table
    seconds: float
    length: int                  # file bytes moved (decoded payload), as stress_test counts them
    error: Optional[ClientError] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _timed(op: str, name: str, length: int, request: Callable[[], object]) -> Sample:
    started = time.perf_counter()
    try:
        request()
    except Exception as exc:        # only Exception: a greenlet being killed is not a failed request
        return Sample(op, name, time.perf_counter() - started, 0, as_client_error(exc))
    return Sample(op, name, time.perf_counter() - started, length)


class FileServerSession:
    """One simulated user: a kept connection, the shared workload, an upload name of its own.

    Each method makes one or two requests and returns their samples; a failure is
    a sample with an error, never an exception.
    """

    def __init__(self, host: str, port: int, workload: Workload, upload_as: str,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.workload, self.upload_as = workload, upload_as
        self.client = VerifyingClient(host, port, timeout=timeout)
        # Our upload is on the server (True), is not (False), or a request about it was cut off
        # (None: the user was stopped mid-request), when only a person can tell.
        self.stored: Optional[bool] = False

    def close(self) -> None:
        self.client.close()

    def list(self, row: str = LIST_ROW) -> list[Sample]:
        def request() -> None:
            names = self.client.list()
            if self.workload.served_name not in names:
                raise ClientError("corrupt", f"LIST does not name the test file {self.workload.served_name}, "
                                             f"which the server holds ({len(names)} names listed)")
        return [_timed("LIST", row, 0, request)]

    def get(self, row: Optional[str] = None, name: Optional[str] = None) -> list[Sample]:
        name = name or self.workload.served_name
        return [_timed("GET", row or name, self.workload.content.size,
                       lambda: self.client.get_verified(name, self.workload.encoding))]

    def upload(self) -> list[Sample]:
        confirmed = []

        def request() -> None:
            result = self.client.upload_encoded(self.upload_as, self.workload.encoding)
            confirmed.append(result.server_confirmed)

        self.stored = None
        sample = _timed("UPLOAD", UPLOAD_ROW, self.workload.content.size, request)
        self.stored = sample.ok
        if not sample.ok:
            return [sample]
        if confirmed[0]:
            return [sample]
        # A server that answers a bare OK (not ours): what it stored is read back and compared.
        return [sample, *self.get(READ_BACK + UPLOAD_ROW, self.upload_as)]

    def delete(self) -> list[Sample]:
        """Delete this user's upload, uploading it first if it is not there: never a DELETE of nothing."""
        samples = [] if self.stored else self.upload()
        if not self.stored:
            return samples
        self.stored = None
        sample = _timed("DELETE", UPLOAD_ROW, 0, lambda: self.client.delete(self.upload_as))
        self.stored = False if sample.ok else None
        return [*samples, sample]

    def clean_up(self) -> list[Sample]:
        """At the user's stop: remove its upload if the server surely holds it.

        On a connection of its own: a user stopped mid-request left its connection
        in the middle of a reply.
        """
        self.close()
        samples = []
        if self.stored:
            samples.append(_timed("DELETE", UPLOAD_ROW, 0, lambda: self.client.delete(self.upload_as)))
        self.stored = False
        self.close()
        return samples


def prepare_server(host: str, port: int, workload: Workload, timeout: float = DEFAULT_TIMEOUT) -> list[Sample]:
    """Make sure the server holds the test file: LIST, then check it (GET) or upload it.

    Every request is returned as a sample (rows marked ``prepare:``), so the
    server's counts and Locust's agree exactly.  A LIST first, so that a missing
    file costs no failed GET.
    """
    session = FileServerSession(host, port, workload, workload.served_name, timeout)
    try:
        names: list[str] = []
        listing = _timed("LIST", PREPARE + LIST_ROW, 0, lambda: names.extend(session.client.list()))
        samples = [listing]
        if not listing.ok:
            return samples
        if workload.served_name in names:
            samples += session.get(PREPARE + workload.served_name)
            if samples[-1].ok:
                return samples
        upload = _timed("UPLOAD", PREPARE + workload.served_name, workload.content.size,
                        lambda: session.client.upload_encoded(workload.served_name, workload.encoding))
        return [*samples, upload]
    finally:
        session.close()
