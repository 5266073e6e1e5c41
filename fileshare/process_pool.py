"""The process-pool policy: each connection is served by a process of a ProcessPoolExecutor.

A connection whose request has arrived reaches the worker through
:mod:`fileshare.handoff`, and goes back to the server's loop the same way once
the request is answered; this module keeps the pool alive across dead workers
and stops it without orphans.
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
import time
from typing import Callable

from .connection import serve_while_ready
from .handoff import HandoffServer, claim, close_inherited_sockets, give_back
from .protocol import error_reply
from .state import ServerContext
from .store import remove_temp_files

log = logging.getLogger("fileserver")

POOL_START_SECONDS = 30.0     # a pool whose workers are not all up by then is given up
POOL_STARTS = 3               # pools tried in a row, while their workers keep dying, for one connection
OFFERS_PER_CONNECTION = 3     # pools a connection nobody collected is offered to before it is closed
CUT_WAIT_SECONDS = 2.0       # how long busy workers get to count a request the stop cut
WORKER_EXIT_SECONDS = 5.0     # how long idle workers get to leave at shutdown before they are killed

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
    Raises BrokenProcessPool if a worker dies while starting, TimeoutError if they
    are not all up within POOL_START_SECONDS.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"),
            initializer=initializer, initargs=initargs)
        try:
            # With fork, the pool forks all its workers on the first submit: do it now,
            # while the caller waits, not later from whatever thread submits first. Bounded:
            # the caller may hold a lock a stopping server needs.
            executor.submit(os.getpid).result(timeout=POOL_START_SECONDS)
        except BaseException:      # a worker died or hung while starting: the pool is no good
            executor.shutdown(wait=False, cancel_futures=True)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return executor


def _serve_handed_off(token: bytes) -> None:
    claimed = claim(_handoff_path, token)
    if claimed is None:
        return
    conn, head = claimed
    beyond = serve_while_ready(conn, _worker_ctx, head)
    if beyond is None:
        return                      # closed: nothing to give back
    try:
        give_back(_handoff_path, conn, token, beyond)
    except OSError as exc:          # the server stopped listening (past its grace period)
        log.info("could not give a connection back to the server: %s", exc)
        _worker_ctx.counters.unanswered(beyond)


def _kill_workers() -> list[multiprocessing.process.BaseProcess]:
    """SIGKILL every worker process of this server, of whichever pool; return them.

    SIGKILL, not SIGTERM: a SIGTERM could merge with one from elsewhere still pending
    in the worker, and be missed.
    """
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.kill()
    return workers


class ProcessDispatcher:
    """Each request goes to a ProcessPoolExecutor; the worker collects the socket by token."""

    def start(self, ctx: ServerContext, workers: int,
              hand_back: Callable[[socket.socket, bytes], None]) -> None:
        self._ctx, self._workers = ctx, workers
        self._handoff = HandoffServer(hand_back, ctx.demand, workers)
        self._lock = threading.Lock()           # guards the pool: one replacement at a time
        self._closing = False
        self._executor: concurrent.futures.ProcessPoolExecutor | None = self._new_pool()
        self._handoff.start()
        self._unclaimed: "queue.Queue[tuple[bytes, concurrent.futures.Future, int]]" = queue.Queue()
        threading.Thread(target=self._resubmit_unclaimed, name="resubmit", daemon=True).start()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return start_pool(self._workers, _init_worker, (self._ctx, self._handoff.path, os.getpid()))

    def dispatch(self, conn: socket.socket, head: bytes) -> concurrent.futures.Future:
        # The server waits on this future, not on a pool's: a connection moved to a new
        # pool after a worker died is still in flight, and a graceful stop must wait for it.
        settled: concurrent.futures.Future = concurrent.futures.Future()
        settled.set_running_or_notify_cancel()
        self._submit(self._handoff.offer(conn, head), settled, offers=1)
        return settled

    def _submit(self, token: bytes, settled: concurrent.futures.Future, offers: int) -> None:
        with self._lock:
            if self._closing:                   # past the grace period: nobody will serve it
                self._release(token, settled)
                return
            try:
                future = self._submit_to_live_pool(token)
            except Exception as exc:
                log.error("connection dropped: %s", exc)
                self._release(token, settled, error_reply(f"the server could not start a worker: {exc}"))
                return
        future.add_done_callback(lambda done: self._settle(done, token, settled, offers))

    def _submit_to_live_pool(self, token: bytes) -> concurrent.futures.Future:
        """Submit to a pool whose workers are all alive, replacing it first if need be.

        Called with the lock held.
        """
        for _ in range(POOL_STARTS):
            if self._closing:               # force_close() does not wait for the lock
                raise RuntimeError("the server is stopping")
            # A dead worker (killed, out of memory) dooms the pool: Python will stop all its
            # workers. Replace it before a connection is handed to a worker about to be stopped.
            if self._executor is not None and len(multiprocessing.active_children()) < self._workers:
                log.error("a worker process died; replacing the pool")
                self._retire_pool()
            try:
                if self._executor is None:
                    self._executor = self._new_pool()
                return self._executor.submit(_serve_handed_off, token)
            except Exception as exc:
                # Broken before we saw a worker die, a worker lost or hung while starting, or
                # no fork at all (no memory or process slots, likely right after an OOM kill).
                log.error("the worker pool failed (%r); replacing it", exc)
                self._retire_pool()
        raise RuntimeError(f"{POOL_STARTS} worker pools in a row failed")

    def _retire_pool(self) -> None:
        """Stop the current pool's workers, all of them, and remove their unfinished uploads."""
        # Python stops a broken pool's workers itself only if it noticed the death first; if we
        # did, its shutdown would wait for every idle worker to take a stop request off its
        # queue, for ever if the dead one held that queue's lock.
        _kill_workers()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        remove_temp_files(self._ctx.root, self._ctx.temp_tag)

    def _settle(self, future: concurrent.futures.Future, token: bytes,
                settled: concurrent.futures.Future, offers: int) -> None:
        # Cancelled: queued in a pool we retired. Broken: queued in, or given to, a pool that died.
        error = None if future.cancelled() else future.exception()
        lost = future.cancelled() or isinstance(error, concurrent.futures.process.BrokenProcessPool)
        if lost and offers < OFFERS_PER_CONNECTION and not self._closing and self._handoff.holds(token):
            # No worker collected this connection, so its request is unread: a new pool can serve it.
            self._unclaimed.put((token, settled, offers + 1))
            return
        if error is not None and not lost:
            log.error("a worker failed to take its connection: %r", error)
        self._release(token, settled)

    def _release(self, token: bytes, settled: concurrent.futures.Future, last_words: bytes = b"") -> None:
        """This connection is done with: served, or to be closed unserved (and its requests counted)."""
        head = self._handoff.withdraw(token, last_words)    # None if a worker collected it
        if head is not None:
            self._ctx.counters.unanswered(head)
        settled.set_result(None)

    def _resubmit_unclaimed(self) -> None:
        # Runs on its own thread: the pool's callbacks run on its manager thread, which
        # replacing the pool must wait for.
        while True:
            try:
                self._submit(*self._unclaimed.get())
            except Exception:           # this thread must live on, or later connections would hang
                log.exception("could not offer a connection to a new pool")

    def force_close(self) -> None:
        # Not under the lock, which a pool being started holds: killing its workers ends that
        # start at once, and _closing stops the next. Every worker goes (a busy one would hold
        # its connection past the grace period); the pool then fails whatever was queued.
        self._closing = True
        if self._handoff.cut():
            # Woken by the cut, a busy worker counts its request and returns; one that does not
            # (stuck elsewhere) is killed below, its request uncounted.
            deadline = time.monotonic() + CUT_WAIT_SECONDS
            while self._handoff.claimed_count() and time.monotonic() < deadline:
                time.sleep(0.02)
        _kill_workers()
        self._count_unclaimed()

    def _count_unclaimed(self) -> None:
        for head in self._handoff.close():
            self._ctx.counters.unanswered(head)

    def shutdown(self) -> None:
        with self._lock:                    # waits for a pool start in progress, if any
            self._closing = True
            executor, self._executor = self._executor, None
        stopping = None
        if executor is not None:
            # Bounded: a worker can be stuck for good, on a queue lock a killed worker held while
            # the pool's SIGTERM to it was lost (merged with one already pending from elsewhere).
            stopping = threading.Thread(target=executor.shutdown, kwargs={"cancel_futures": True},
                                        name="pool-shutdown", daemon=True)
            stopping.start()
            stopping.join(WORKER_EXIT_SECONDS)
        left = _kill_workers()
        if left:
            log.warning("%d worker processes did not stop; killing them", len(left))
        for child in left:
            child.join(5)
        if stopping is not None:
            stopping.join(5)                # quick now that its workers are gone
        self._count_unclaimed()
