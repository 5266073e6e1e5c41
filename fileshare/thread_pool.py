"""The thread-pool policy: each request is served by a thread of a ThreadPoolExecutor."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
from typing import Callable

from .connection import serve_while_ready
from .state import ServerContext


class ThreadDispatcher:
    """Each request goes to a ThreadPoolExecutor; the socket object is shared as is."""

    def start(self, ctx: ServerContext, workers: int,
              hand_back: Callable[[socket.socket, bytes], None]) -> None:
        self._ctx = ctx
        self._hand_back = hand_back
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="worker")
        self._open: dict[socket.socket, bytes] = {}     # connection -> the bytes read from it
        self._queued = 0                                # requests waiting for a worker thread
        self._busy = 0                                  # worker threads serving a connection
        self._workers = workers
        self._lock = threading.Lock()

    def dispatch(self, conn: socket.socket, head: bytes) -> concurrent.futures.Future:
        with self._lock:
            self._open[conn] = head
            self._queued += 1
            self._publish_demand()
        return self._executor.submit(self._serve, conn, head)

    def _serve(self, conn: socket.socket, head: bytes) -> None:
        with self._lock:
            self._queued -= 1
            self._busy += 1
            self._publish_demand()
        try:
            beyond = serve_while_ready(conn, self._ctx, head)
        finally:
            with self._lock:
                self._open.pop(conn, None)
                self._busy -= 1
                self._publish_demand()
        if beyond is not None:
            self._hand_back(conn, beyond)

    def _publish_demand(self) -> None:
        """Called with the lock held: one writer at a time."""
        self._ctx.demand.set_waiting(self._queued, self._busy, self._workers)

    def force_close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            still_open = list(self._open)
        for conn in still_open:
            # shutdown() wakes a worker blocked in recv/send; it then cleans up and closes.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            queued, self._open = self._open, {}
        for conn, head in queued.items():     # cancelled before a worker took them
            self._ctx.counters.unanswered(head)
            conn.close()
