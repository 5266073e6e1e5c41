#!/usr/bin/env python3
"""File server whose connections are served by a pool of processes.

Usage: python file_server_multiprocesspool.py [--port 6667] [--workers 5] [--root files/]
(see --help).  Everything but the pool and the socket handoff lives in fileshare/.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
from typing import Callable

from fileshare.connection import ServerContext, serve_connection
from fileshare.handoff import HandoffServer, claim, close_inherited_sockets
from fileshare.server import main_for, remove_temp_files

_worker_ctx: ServerContext | None = None
_handoff_path = ""


def _init_worker(ctx: ServerContext, handoff_path: str, server_pid: int) -> None:
    global _worker_ctx, _handoff_path
    _worker_ctx, _handoff_path = ctx, handoff_path
    # The parent turns SIGTERM and Ctrl-C into a graceful stop. Sent to the whole process
    # group (Ctrl-C, `kill -TERM -PGID`, timeout(1), systemd) they must not cut a worker's
    # request short; only a SIGTERM from the parent (the pool tearing itself down) ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=exit_with_server, args=(server_pid,), name="sigterm", daemon=True).start()
    signal.set_wakeup_fd(-1)      # the parent's wake-up socket is not ours to write to
    close_inherited_sockets()


def exit_with_server(server_pid: int) -> None:
    """End this worker on a SIGTERM from its server, or once the server is gone (killed).

    The server's PID is passed in rather than read here with getppid(): a server
    killed while this worker was still starting would otherwise be mistaken for
    whichever process adopted the worker, and the worker would outlive it.
    """
    while os.getppid() == server_pid:
        info = signal.sigtimedwait({signal.SIGTERM}, 1.0)
        if info is not None and info.si_pid == server_pid:
            break
    os._exit(1)


def start_pool(workers: int, initializer: Callable[..., None],
               initargs: tuple) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` forked processes, all started before this returns.

    They are forked with SIGTERM and SIGINT blocked: until ``initializer`` has set up
    their own handling, a stop signal waits instead of running the handler inherited
    from this process, which would swallow it. (A SIGTERM from a breaking pool lost
    that way leaves the pool's shutdown waiting for that worker for ever.)
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"),
            initializer=initializer, initargs=initargs)
        # With fork, the pool forks all its workers on the first submit: do it now,
        # while the caller waits, not later from whatever thread submits first.
        executor.submit(os.getpid).result()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return executor


def _serve_handed_off(token: bytes) -> None:
    conn = claim(_handoff_path, token)
    if conn is not None:
        serve_connection(conn, _worker_ctx)


class ProcessDispatcher:
    """Each connection goes to a ProcessPoolExecutor; the worker collects the socket by token."""

    def start(self, ctx: ServerContext, workers: int) -> None:
        self._ctx, self._workers = ctx, workers
        self._handoff = HandoffServer()
        self._executor = self._new_pool()
        self._handoff.start()
        self._lock = threading.Lock()           # one pool replacement at a time
        self._closing = False
        self._unclaimed: "queue.Queue[bytes]" = queue.Queue()
        threading.Thread(target=self._resubmit_unclaimed, name="resubmit", daemon=True).start()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return start_pool(self._workers, _init_worker, (self._ctx, self._handoff.path, os.getpid()))

    def dispatch(self, conn: socket.socket) -> concurrent.futures.Future:
        return self._submit(self._handoff.offer(conn), retried=False)

    def _submit(self, token: bytes, retried: bool) -> concurrent.futures.Future:
        with self._lock:
            # A dead worker (killed, out of memory) dooms the pool: Python will stop all its
            # workers. Replace it before a connection is handed to a worker about to be stopped.
            if len(multiprocessing.active_children()) < self._workers:
                self._replace_pool()
            try:
                future = self._executor.submit(_serve_handed_off, token)
            except concurrent.futures.process.BrokenProcessPool:
                self._replace_pool()
                future = self._executor.submit(_serve_handed_off, token)
        future.add_done_callback(lambda done: self._settle(done, token, retried))
        return future

    def _replace_pool(self) -> None:
        logging.getLogger("fileserver").error("a worker process died; starting a new pool")
        # The pool is doomed. Python stops its workers itself only if it noticed the death
        # first; if we did, its shutdown would wait for every idle worker to take a stop
        # request off its queue, for ever if the dead one held that queue's lock.
        for worker in multiprocessing.active_children():    # the old pool's, all of them
            worker.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)
        remove_temp_files(self._ctx.root, self._ctx.temp_tag)   # its workers' unfinished uploads
        self._executor = self._new_pool()

    def _settle(self, future: concurrent.futures.Future, token: bytes, retried: bool) -> None:
        broken = not future.cancelled() and isinstance(future.exception(), concurrent.futures.process.BrokenProcessPool)
        if broken and not retried and not self._closing and self._handoff.holds(token):
            # No worker collected this connection, so its request is unread: a new pool can serve it.
            self._unclaimed.put(token)
        else:
            self._handoff.withdraw(token)

    def _resubmit_unclaimed(self) -> None:
        # Runs on its own thread: the pool's callbacks run on its manager thread, which
        # replacing the pool must wait for.
        while True:
            self._submit(self._unclaimed.get(), retried=True)

    def force_close(self) -> None:
        self._closing = True
        # Every worker goes (a busy one would hold its connection past the grace period);
        # the pool then fails whatever was queued, and shutdown() collects it.
        for child in multiprocessing.active_children():
            child.kill()
        self._handoff.close()

    def shutdown(self) -> None:
        self._closing = True
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.join(5)
        self._handoff.close()


if __name__ == "__main__":
    main_for(ProcessDispatcher, "File server: each connection is handled by a process from a ProcessPoolExecutor.")
