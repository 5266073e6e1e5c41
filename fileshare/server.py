"""The server loop both file servers share: command line, listening, shutdown.

A concurrency policy (a :class:`Dispatcher`) decides how an accepted
connection reaches a worker; everything else lives here, in the spirit of
``socketserver``: the two server scripts only choose the executor.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .cli import port_number, positive_float, positive_int
from .protocol import GET_REPLY_KEYS
from .state import RequestCounters, ServerContext, StopFlag
from .store import remove_temp_files

log = logging.getLogger("fileserver")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / "files"
DEFAULT_PORT = 6667
DEFAULT_WORKERS = 5
AFTER_FORCE_SECONDS = 5.0   # how long to wait for workers once their connections are cut


class Dispatcher(Protocol):
    """How accepted connections reach workers: the one thing the two servers differ in."""

    def start(self, ctx: ServerContext, workers: int) -> None:
        """Create the pool (before any other thread of the server exists)."""

    def dispatch(self, conn: socket.socket) -> concurrent.futures.Future:
        """Hand ``conn`` to a worker; the dispatcher owns it from now on.

        The future is done once the connection has been served or given up: a graceful
        stop waits on it, so it must not be done while the connection is still waiting.
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
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="seconds a connection may stay silent or stall before it is closed "
                             "(default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=positive_float, default=1024.0,
                        help="largest upload accepted, in MiB (default: %(default)s)")
    parser.add_argument("--grace", type=float, default=5.0,
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

    mp = multiprocessing.get_context("fork")
    ctx = ServerContext(root=root, timeout=args.timeout,
                        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                        temp_tag=str(os.getpid()), counters=RequestCounters(mp), stopping=StopFlag(mp),
                        get_key=args.get_key)
    try:
        listener = socket.create_server((args.host, args.port), backlog=1024)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        stop.close()
        return 2
    dispatcher = make_dispatcher()
    try:
        dispatcher.start(ctx, args.workers)
    except BaseException:
        listener.close()
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
        in_flight = _accept_until_stopped(listener, stop, dispatcher)
        listener.close()
        log.info("stopping (signal %s): %d connections in flight", stop.received, len(in_flight))
        ctx.stopping.set()
        _finish(in_flight, dispatcher, args.grace)
        drained = True
    finally:
        listener.close()
        ctx.stopping.set()
        if not drained:            # an unexpected error: do not wait for anyone
            dispatcher.force_close()
        dispatcher.shutdown()
        removed = remove_temp_files(root, ctx.temp_tag)
        if removed:
            log.info("removed %d unfinished uploads", removed)
        stop.close()
    log.info("stopped; requests: %s", ctx.counters.snapshot())
    return 0


def _accept_until_stopped(listener: socket.socket, stop: _StopSignal,
                          dispatcher: Dispatcher) -> set[concurrent.futures.Future]:
    in_flight: set[concurrent.futures.Future] = set()
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(stop.wakeup, selectors.EVENT_READ)
        listener.setblocking(False)
        while stop.received is None:
            for key, _ in selector.select():
                if key.fileobj is stop.wakeup:
                    _drain(stop.wakeup)
                    continue
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # e.g. out of descriptors: keep serving the others
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.05)
                    continue
                conn.setblocking(True)
                future = dispatcher.dispatch(conn)
                in_flight.add(future)
                future.add_done_callback(in_flight.discard)
    return in_flight


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _finish(in_flight: set[concurrent.futures.Future], dispatcher: Dispatcher, grace: float) -> None:
    """Let running requests finish within ``grace`` seconds, then cut the rest."""
    _, unfinished = concurrent.futures.wait(set(in_flight), timeout=max(grace, 0))
    if unfinished:
        log.warning("grace period over: closing %d connections still open", len(unfinished))
        dispatcher.force_close()
        concurrent.futures.wait(unfinished, timeout=AFTER_FORCE_SECONDS)


def main_for(make_dispatcher: Callable[[], Dispatcher], description: str) -> None:
    sys.exit(run_server(make_dispatcher, description))
