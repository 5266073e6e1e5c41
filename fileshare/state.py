"""The state a server shares with every worker thread and process.

The request counters live in shared memory (made from the fork context before
any worker starts), so a thread pool and a process pool count alike;
:class:`ServerContext` bundles them with the server's settings and is what a
worker receives.  (Stopping is the accept loop's business alone: a worker only
ever holds a request in progress.)
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from dataclasses import dataclass, field
from typing import Any, Iterator

from .protocol import requests_begun

log = logging.getLogger("fileserver")

LOCK_TIMEOUT_SECONDS = 2.0


class RequestCounters:
    """Exact counts of finished requests, shared by every worker thread and process.

    A request is counted before the last byte of its reply is sent, so a client
    that has its reply can already see itself in STATS.  STATS is not counted,
    which lets a caller diff two snapshots and get exactly the requests between.
    """

    SUCCEEDED, FAILED, CONNECTIONS = range(3)
    lock_timeout = LOCK_TIMEOUT_SECONDS

    def __init__(self, mp_context: Any = None) -> None:
        ctx = mp_context or multiprocessing.get_context()
        self._values = ctx.Array("q", 3, lock=True)
        # Read and written only through this raw view: indexing the synchronized array takes
        # its lock again, with no timeout, which would undo the fallback in _locked().
        self._raw = self._values.get_obj()

    def _change(self, *changes: tuple[int, int]) -> None:
        with self._locked():
            for index, amount in changes:
                self._raw[index] += amount

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A worker killed inside this tiny critical section would leave the lock held
        # for good; a count then goes unlocked rather than hanging every process.
        lock = self._values.get_lock()
        held = lock.acquire(timeout=self.lock_timeout)
        if not held:
            log.error("request counters' lock is stuck (a worker died holding it?); counting without it")
        try:
            yield
        finally:
            if held:
                lock.release()

    def succeeded(self) -> None:
        self._change((self.SUCCEEDED, 1))

    def failed(self, count: int = 1) -> None:
        self._change((self.FAILED, count))

    def unanswered(self, received: bytes | bytearray) -> None:
        """The connection is closed with ``received`` read but not answered: its requests failed."""
        count = requests_begun(received) if received else 0
        if count:
            self.failed(count)

    def success_became_failure(self) -> None:
        """A reply already counted as a success could not be delivered in full."""
        self._change((self.SUCCEEDED, -1), (self.FAILED, 1))

    def connection_opened(self) -> None:
        self._change((self.CONNECTIONS, 1))

    def snapshot(self) -> dict[str, int]:
        with self._locked():
            succeeded, failed, connections = self._raw[:]
        return {"succeeded": succeeded, "failed": failed, "connections": connections}


class Demand:
    """How many requests wait for a worker, shared with every worker thread and process.

    A worker that has just answered a request may keep its connection for the
    next one (see :func:`fileshare.connection.serve_while_ready`), but only while
    nobody else waits: this is how it knows.  One writer at a time (the pool's
    dispatcher, under its own lock); workers read it without a lock, since a
    word-sized read is atomic and a stale value costs at most one request's wait.
    """

    def __init__(self, mp_context: Any = None) -> None:
        ctx = mp_context or multiprocessing.get_context("fork")
        self._waiting = ctx.RawValue("q", 0)
        self._draining = ctx.RawValue("b", 0)      # a stop began: every worker gives its connection back

    def set_waiting(self, queued: int, busy: int, workers: int) -> None:
        """``queued`` requests wait for a worker, ``busy`` of the ``workers`` hold a connection.
        A request an idle worker is about to take waits for no one's connection to be given back."""
        self._waiting.value = max(0, queued + busy - workers)

    def drain(self) -> None:
        self._draining.value = 1

    def others_waiting(self) -> bool:
        """True when a worker should give its connection back rather than keep it."""
        return self._waiting.value != 0 or self._draining.value != 0


@dataclass
class ServerContext:
    """Everything a worker needs; picklable into a worker process at its start."""
    root: str
    timeout: float
    max_upload_bytes: int
    temp_tag: str              # marks this server's temporary upload files
    counters: RequestCounters
    get_key: str = "data_file"    # the GET reply's content key (--get-key)
    demand: Demand = field(default_factory=Demand)
