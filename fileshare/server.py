"""The server loop both file servers share: command line, listening, shutdown.

The loop owns every connection that waits (new, or idle between requests, or
still sending a request's head; see :mod:`fileshare.idle`) and hands each
request whose head has arrived to a concurrency policy (a :class:`Dispatcher`),
which serves it on a worker and gives the connection back.  Everything else
lives here, in the spirit of ``socketserver``: the two server scripts only
choose the executor.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import logging
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .cli import grace_seconds, port_number, positive_int, size_mib, timeout_seconds
from .idle import HandBacks, IdleConnections, drain_wakeups, refuse
from .protocol import GET_REPLY_KEYS
from .state import RequestCounters, ServerContext
from .store import remove_temp_files

log = logging.getLogger("fileserver")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / "files"
DEFAULT_PORT = 6667
DEFAULT_WORKERS = 5
DEFAULT_MAX_CONNECTIONS = 10000
ACCEPTS_PER_WAKE = 64       # accept a burst in one go, but let waiting connections have a turn
STOPPING_POLL_SECONDS = 0.05  # how often a stopping loop looks whether its requests are done
AFTER_FORCE_SECONDS = 5.0   # how long to wait for workers once their connections are cut


class Dispatcher(Protocol):
    """How accepted connections reach workers: the one thing the two servers differ in."""

    def start(self, ctx: ServerContext, workers: int,
              hand_back: Callable[[socket.socket, bytes], None]) -> None:
        """Create the pool (before any other thread of the server exists).

        ``hand_back(conn, beyond)``, callable from any thread, returns a connection to the
        loop once its request is answered, with the bytes read beyond that request (the
        next ones, pipelined: the socket will not be readable for them).  A connection
        the worker closed is not handed back.
        """

    def dispatch(self, conn: socket.socket, head: bytes) -> concurrent.futures.Future:
        """Hand ``conn``, whose request head ``head`` holds (with every byte read so far), to a
        worker that serves exactly that request; the dispatcher owns it until it hands it back.

        The future is done once the request has been served or given up: a graceful
        stop waits on it, so it must not be done while the request is still waiting.
        """

    def force_close(self) -> None:
        """The grace period is over: cut every connection still open, drop queued ones."""

    def shutdown(self) -> None:
        """Release the pool; after this no worker thread or process is left."""


def build_arg_parser(description: str) -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Environment: SERVER_HOST, SERVER_PORT, MAX_WORKERS and FILES_DIR set the defaults; "
               "flags win. Once ready the server prints one line 'listening on HOST:PORT' to stdout; "
               "logs go to stderr. SIGTERM or Ctrl-C stop it gracefully.")
    parser.add_argument("--host", default=env("SERVER_HOST", "127.0.0.1"),
                        help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=port_number, default=env("SERVER_PORT", str(DEFAULT_PORT)),
                        help="TCP port; 0 picks any free port (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=env("MAX_WORKERS", str(DEFAULT_WORKERS)),
                        help="size of the worker pool (default: %(default)s)")
    parser.add_argument("--root", default=env("FILES_DIR", str(DEFAULT_ROOT)),
                        help="folder to serve, created if missing (default: %(default)s)")
    parser.add_argument("--timeout", type=timeout_seconds, default=60.0,
                        help="seconds a connection may stay silent or stall before it is closed, "
                             "and the most a request's head may take to arrive (default: %(default)s)")
    parser.add_argument("--max-connections", type=positive_int, default=DEFAULT_MAX_CONNECTIONS,
                        help="open connections at most; beyond it the one that has waited longest "
                             "for its next request is closed (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=size_mib, default=1024.0,
                        help="largest upload accepted, in MiB (default: %(default)s)")
    parser.add_argument("--grace", type=grace_seconds, default=5.0,
                        help="seconds in-flight requests get to finish on SIGTERM/SIGINT (default: %(default)s)")
    parser.add_argument("--get-key", choices=GET_REPLY_KEYS, default=env("GET_REPLY_KEY", "data_file"),
                        help="key a GET reply carries the content in; 'data' serves clients that read only "
                             "that key. data_namafile is sent either way (env GET_REPLY_KEY, default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging detail on stderr (default: %(default)s)")
    return parser


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag plus a wake-up of the accept loop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    @property
    def wakeup(self) -> socket.socket:
        return self._read

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()


def run_server(make_dispatcher: Callable[[], Dispatcher], description: str,
               argv: Sequence[str] | None = None) -> int:
    parser = build_arg_parser(description)
    args = parser.parse_args(argv)
    if args.get_key not in GET_REPLY_KEYS:      # argparse checks choices of flags, not of defaults from env
        parser.error(f"GET_REPLY_KEY must be one of {', '.join(GET_REPLY_KEYS)}, not {args.get_key!r}")
    # From here on SIGTERM/SIGINT mean "stop gracefully", even during start-up.
    stop = _StopSignal()
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(processName)s %(levelname)s %(message)s")
    root = os.path.abspath(args.root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the folder to serve {root}: {exc.strerror}", file=sys.stderr)
        stop.close()
        return 2
    stale = remove_temp_files(root)
    if stale:
        log.info("removed %d upload leftovers of servers no longer running", stale)

    _raise_open_file_limit(args.max_connections)
    mp = multiprocessing.get_context("fork")
    ctx = ServerContext(root=root, timeout=args.timeout,
                        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                        temp_tag=str(os.getpid()), counters=RequestCounters(mp),
                        get_key=args.get_key)
    try:
        listener = socket.create_server((args.host, args.port), backlog=1024)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        stop.close()
        return 2
    hand_backs = HandBacks()
    dispatcher = make_dispatcher()
    try:
        dispatcher.start(ctx, args.workers, hand_backs.put)
    except BaseException:
        listener.close()
        hand_backs.close(ctx.counters)
        stop.close()
        raise
    drained = False
    try:
        host, port = listener.getsockname()[:2]
        log.info("serving %s with %d workers", root, args.workers)
        try:
            print(f"listening on {host}:{port}", flush=True)
        except BrokenPipeError:     # whoever started us is gone: nobody to serve
            stop.received = signal.SIGPIPE
        with _Loop(listener, stop, dispatcher, ctx, hand_backs, args.max_connections) as loop:
            loop.serve_until_stopped()
            loop.finish(args.grace)
        drained = True
    finally:
        listener.close()
        if not drained:            # an unexpected error: do not wait for anyone
            dispatcher.force_close()
        dispatcher.shutdown()
        hand_backs.close(ctx.counters)
        removed = remove_temp_files(root, ctx.temp_tag)
        if removed:
            log.info("removed %d unfinished uploads", removed)
        stop.close()
    log.info("stopped; requests: %s", ctx.counters.snapshot())
    return 0


def _raise_open_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to the hard one, so --max-connections is reachable."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        else:
            log.info("open-file limit raised from %d to %d", soft, hard)
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < max_connections + 64:
        log.warning("the open-file limit (%d) is below --max-connections (%d): accepting will fail "
                    "before that many connections are open", soft, max_connections)


class _Loop:
    """The accept loop: accepts, watches waiting connections, hands complete heads to the pool."""

    def __init__(self, listener: socket.socket, stop: _StopSignal, dispatcher: Dispatcher,
                 ctx: ServerContext, hand_backs: HandBacks, max_connections: int) -> None:
        self.listener, self.stop, self.dispatcher, self.ctx = listener, stop, dispatcher, ctx
        self.hand_backs = hand_backs
        self.max_connections = max_connections
        self.selector = selectors.DefaultSelector()
        self.idle = IdleConnections(self.selector, ctx.timeout, ctx.counters)
        self.in_flight: set[concurrent.futures.Future] = set()
        # Each connection a worker has, by the future of its dispatch: counted open until it is
        # handed back or its future ends. Kept by this thread alone (futures end elsewhere and
        # are only noted in `finished`), so a connection back in the loop before its future ends
        # (a worker lingers, a process pool reports late) is not counted twice.
        self.at_workers: dict[socket.socket, concurrent.futures.Future] = {}
        self.finished: "collections.deque[tuple[socket.socket, concurrent.futures.Future]]" = collections.deque()
        self.stopping = False

    def __enter__(self) -> "_Loop":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.idle.close_all()
        self.selector.close()

    def serve_until_stopped(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.stop.wakeup, selectors.EVENT_READ)
        self.selector.register(self.hand_backs.wakeup, selectors.EVENT_READ)
        while self.stop.received is None:
            self._turn(self.idle.seconds_to_next_deadline())

    def finish(self, grace: float) -> None:
        """Stop: close waiting connections, let requests in flight finish within ``grace`` s, cut the rest."""
        self.selector.unregister(self.listener)
        self.listener.close()
        self.stopping = True
        self.ctx.demand.drain()     # workers give their connections back after the request in hand
        closed = self.idle.close_idle()
        log.info("stopping (signal %s): %d requests in flight, %d idle connections closed",
                 self.stop.received, len(self.in_flight), closed)
        # A request partly received when the stop came is in flight for its client too.
        deadline = time.monotonic() + max(grace, 0)
        while (self.in_flight or len(self.idle)) and time.monotonic() < deadline:
            self._turn(min(STOPPING_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        cut = self.idle.close_all()
        if cut:
            log.warning("grace period over: closed %d connections whose request had not fully arrived", cut)
        if self.in_flight:
            log.warning("grace period over: closing %d connections still open", len(self.in_flight))
            self.dispatcher.force_close()
            concurrent.futures.wait(set(self.in_flight), timeout=AFTER_FORCE_SECONDS)

    def _turn(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj is self.stop.wakeup:
                drain_wakeups(self.stop.wakeup)
            elif key.fileobj is self.hand_backs.wakeup:
                for conn, beyond in self.hand_backs.take():
                    self._handed_back(conn, beyond)
            else:
                self._dispatch(self.idle.read(key.data))
        for ready in self.idle.expire():
            self._dispatch(ready)
        self._forget_finished()         # every turn: what it holds stays bounded by one turn's work

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: keep serving the others
                log.warning("accept failed: %s", exc)
                time.sleep(0.05)
                return
            self.ctx.counters.connection_opened()
            # Replies go out as a few writes (prefix, content, suffix); Nagle would hold the last.
            # Set once here: the option stays with the socket through every worker it visits.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._forget_finished()
            open_now = len(self.idle) + len(self.at_workers)
            if open_now >= self.max_connections and not self.idle.close_oldest():
                log.warning("--max-connections %d reached with every connection busy: closing a new one",
                            self.max_connections)
                refuse(conn, self.ctx.counters)
                continue
            self._dispatch(self.idle.add(conn))

    def _forget_finished(self) -> None:
        while self.finished:
            conn, future = self.finished.popleft()
            if self.at_workers.get(conn) is future:     # not handed back: the worker closed it
                del self.at_workers[conn]

    def _handed_back(self, conn: socket.socket, beyond: bytes) -> None:
        self.at_workers.pop(conn, None)
        if self.stopping:
            self.ctx.counters.unanswered(beyond)
            conn.close()
            return
        self._dispatch(self.idle.add(conn, beyond))

    def _dispatch(self, ready: tuple[socket.socket, bytes] | None) -> None:
        if ready is None:
            return
        conn, head = ready
        conn.setblocking(True)
        future = self.dispatcher.dispatch(conn, head)
        self.in_flight.add(future)
        self.at_workers[conn] = future
        future.add_done_callback(lambda done: self.finished.append((conn, done)))
        future.add_done_callback(self.in_flight.discard)


def main_for(make_dispatcher: Callable[[], Dispatcher], description: str) -> None:
    sys.exit(run_server(make_dispatcher, description))
