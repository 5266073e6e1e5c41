"""The thread-pool policy: each connection is served by a thread of a ThreadPoolExecutor."""

from __future__ import annotations

import concurrent.futures
import socket
import threading

from .connection import serve_connection
from .state import ServerContext


class ThreadDispatcher:
    """Each connection goes to a ThreadPoolExecutor; the socket object is shared as is."""

    def start(self, ctx: ServerContext, workers: int) -> None:
        self._ctx = ctx
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="worker")
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def dispatch(self, conn: socket.socket) -> concurrent.futures.Future:
        with self._lock:
            self._open.add(conn)
        return self._executor.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            serve_connection(conn, self._ctx)
        finally:
            with self._lock:
                self._open.discard(conn)

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
            queued, self._open = list(self._open), set()
        for conn in queued:
            conn.close()
