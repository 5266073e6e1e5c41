"""The connections the accept loop owns between requests, so that waiting costs no worker.

A connection is here from its accept until its next request's head has
arrived, and again after each reply.  The loop reads it without blocking and
feeds the same sans-IO :class:`RequestParser` the workers use; once a head is
complete (the whole request for LIST, GET, DELETE and STATS; the command and the
name for UPLOAD) the connection leaves for a worker with every byte read so far.
This module keeps the deadlines (``--timeout`` of silence, ``--timeout`` for a
whole head from its first byte, the quiet that ends an unterminated course-style
request) and the order in which connections arrived, for ``--max-connections``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from typing import Iterator

from .protocol import ProtocolError, RequestParser, unterminated_request
from .state import RequestCounters
from .streaming import peer_name

log = logging.getLogger("fileserver")

READ_SIZE = 64 * 1024       # one non-blocking read of a head; more waits in the kernel
QUIET_SECONDS = 0.5         # silence after which an unterminated LIST/GET/... is served as sent
STALE_DEADLINES_KEPT = 4    # the deadline heap may grow to this many entries per open connection


class Waiting:
    """One connection between requests, and what has arrived of its next request."""

    __slots__ = ("sock", "head", "parser", "since", "first_byte_at", "last_byte_at", "course_style",
                 "check_at")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.head = bytearray()
        self.parser: RequestParser | None = None       # made on the first byte: idle ones stay small
        self.since = now
        self.first_byte_at = 0.0
        self.last_byte_at = 0.0
        self.course_style: bytes | None = None         # what to serve if the client says no more
        self.check_at = 0.0

    def feed(self, data: bytes, now: float) -> bool:
        """Add received bytes; True once a request's head is complete (or broke the protocol:
        the worker parses it again and answers)."""
        if self.parser is None:
            self.parser = RequestParser()
            self.first_byte_at = now
        self.last_byte_at = now
        self.head += data
        try:
            # Stop at the first complete head: what follows it (pipelined requests) is the
            # worker's to parse, once, rather than the loop's again after every reply.
            events, _ = self.parser.feed_request(data)
            if events:
                return True
        except ProtocolError:
            return True
        if self.parser.idle:
            # Only blank lines so far, which the parser skips: keeping them would let a client
            # grow the loop's memory by all it sends within --timeout.  The connection is idle
            # again, under the deadline it had before.
            self.parser, self.head = None, bytearray()
            return False
        self.course_style = unterminated_request(self.head)
        return False


class IdleConnections:
    """The loop's connections that have no worker: registered for reading on ``selector``."""

    def __init__(self, selector: selectors.BaseSelector, timeout: float, counters: RequestCounters) -> None:
        self._selector = selector
        self._timeout = timeout
        self._counters = counters
        self._by_arrival: "collections.OrderedDict[socket.socket, Waiting]" = collections.OrderedDict()
        self._deadlines: list[tuple[float, int, Waiting]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._by_arrival)

    def add(self, sock: socket.socket, received: bytes = b"") -> tuple[socket.socket, bytes] | None:
        """Take ``sock`` (new, or back from a worker with ``received``, the bytes read beyond its
        last request).  Returns (sock, head) if those bytes already hold a whole head."""
        now = time.monotonic()
        waiting = Waiting(sock, now)
        if received and waiting.feed(received, now):
            return sock, bytes(waiting.head)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, waiting)
        self._by_arrival[sock] = waiting
        self._schedule(waiting)
        return None

    def read(self, waiting: Waiting) -> tuple[socket.socket, bytes] | None:
        """The connection is readable: (sock, head) once its head is complete."""
        if self._by_arrival.get(waiting.sock) is not waiting:
            return None     # closed earlier in the same batch of events (--max-connections)
        try:
            data = waiting.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:                 # reset by the peer
            data = b""
        if not data:
            if waiting.course_style is not None:
                # End of input ends the request (``nc -N`` sends its line, then half-closes):
                # served as sent, its reply still reaches the client.
                return self._release(waiting)[0], waiting.course_style
            self._close(waiting, "went away")
            return None
        if waiting.feed(data, time.monotonic()):
            return self._release(waiting)
        self._schedule(waiting)
        return None

    def expire(self) -> list[tuple[socket.socket, bytes]]:
        """Close the connections past a deadline; return the course-style requests now due."""
        now = time.monotonic()
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            check_at, _, waiting = heapq.heappop(self._deadlines)
            if not self._current(check_at, waiting):
                continue
            if waiting.parser is None:
                self._close(waiting, f"idle for {self._timeout:g} s")
            elif now >= waiting.first_byte_at + self._timeout:
                self._close(waiting, f"request not complete within {self._timeout:g} s")
            elif waiting.course_style is not None and now >= waiting.last_byte_at + QUIET_SECONDS:
                log.debug("serving an unterminated request: %r", waiting.course_style)
                self._release(waiting)
                due.append((waiting.sock, waiting.course_style))
            else:
                self._schedule(waiting)
        return due

    def seconds_to_next_deadline(self) -> float | None:
        while self._deadlines:
            check_at, _, waiting = self._deadlines[0]
            if self._current(check_at, waiting):
                return max(0.0, check_at - time.monotonic())
            heapq.heappop(self._deadlines)      # stale: drop it here, so the heap stays small
        return None

    def close_oldest(self) -> bool:
        """Make room: close the connection that has waited longest between requests, one on
        which no byte of a next request has arrived, read or not. False if there is none."""
        for waiting in self._by_arrival.values():
            if waiting.parser is None and not _has_unread_bytes(waiting.sock):
                self._close(waiting, "closed to stay within --max-connections")
                return True
        return False

    def close_idle(self) -> int:
        """Close every connection no byte of a request has arrived on; return how many."""
        idle = [w for w in self._by_arrival.values() if w.parser is None]
        for waiting in idle:
            self._close(waiting, "server stopping")
        return len(idle)

    def close_all(self) -> int:
        everyone = list(self._by_arrival.values())
        for waiting in everyone:
            self._close(waiting, "server stopping")
        return len(everyone)

    def _current(self, check_at: float, waiting: Waiting) -> bool:
        """False for a deadline since moved, or of a wait that is over (the same socket may be
        back, waiting for its next request)."""
        return check_at == waiting.check_at and self._by_arrival.get(waiting.sock) is waiting

    @property
    def deadline_entries(self) -> int:
        """Deadlines kept, stale ones included: bounded by the open connections."""
        return len(self._deadlines)

    def _schedule(self, waiting: Waiting) -> None:
        if waiting.parser is None:
            check_at = waiting.since + self._timeout
        else:
            check_at = waiting.first_byte_at + self._timeout    # for the whole head, not per read
            if waiting.course_style is not None:
                check_at = min(check_at, waiting.last_byte_at + QUIET_SECONDS)
        if check_at != waiting.check_at:
            waiting.check_at = check_at
            heapq.heappush(self._deadlines, (check_at, next(self._order), waiting))
            if len(self._deadlines) > STALE_DEADLINES_KEPT * (len(self._by_arrival) + 1):
                self._drop_stale_deadlines()

    def _drop_stale_deadlines(self) -> None:
        """Keep only current deadlines.  Stale ones (a request released, a deadline moved) leave
        the heap's top only once every earlier deadline has passed, and one live connection's
        deadline can be up to --timeout away: without this, every request served meanwhile would
        stay here with its Waiting.  Rebuilding when the heap is a few times larger than the open
        connections keeps memory bounded by them, at a cost that spreads over the pushes."""
        self._deadlines = [entry for entry in self._deadlines if self._current(entry[0], entry[2])]
        heapq.heapify(self._deadlines)

    def _release(self, waiting: Waiting) -> tuple[socket.socket, bytes]:
        """Stop watching the connection: it goes to a worker."""
        self._selector.unregister(waiting.sock)
        del self._by_arrival[waiting.sock]
        head, waiting.head = bytes(waiting.head), bytearray()   # a stale deadline may outlive it
        return waiting.sock, head

    def _close(self, waiting: Waiting, why: str) -> None:
        self._selector.unregister(waiting.sock)
        del self._by_arrival[waiting.sock]
        if waiting.head:
            log.info("%s: closing a connection in the middle of a request: %s", peer_name(waiting.sock), why)
            self._counters.unanswered(waiting.head)
        else:
            log.debug("%s: closing an idle connection: %s", peer_name(waiting.sock), why)
        waiting.sock.close()


def _has_unread_bytes(sock: socket.socket) -> bool:
    """True if bytes wait in the kernel for the non-blocking ``sock`` (a request, unread yet)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:             # nothing yet (BlockingIOError), or reset: nothing to serve
        return False


def refuse(sock: socket.socket, counters: RequestCounters) -> None:
    """Close a connection the server has no room for, counting what it had sent already as failed."""
    sock.setblocking(False)
    try:
        received = sock.recv(READ_SIZE)
    except OSError:
        received = b""
    if received:
        counters.unanswered(received)
    sock.close()


def drain_wakeups(sock: socket.socket) -> None:
    """Read every pending wake-up byte from the non-blocking ``sock``."""
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


class HandBacks:
    """Connections workers give back to the loop, from any thread, with a wake-up for its selector."""

    def __init__(self) -> None:
        self._items: "collections.deque[tuple[socket.socket, bytes]]" = collections.deque()
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        self._closed = False
        self._lock = threading.Lock()

    @property
    def wakeup(self) -> socket.socket:
        return self._read

    def __len__(self) -> int:
        """Connections given back that the loop has not taken yet."""
        return len(self._items)

    def put(self, conn: socket.socket, beyond: bytes) -> None:
        with self._lock:
            if self._closed:           # the loop is gone: nobody will serve it
                conn.close()
                return
            self._items.append((conn, beyond))
            try:
                self._write.send(b"\0")
            except (BlockingIOError, InterruptedError):
                pass                   # the loop has wake-ups pending already

    def take(self) -> Iterator[tuple[socket.socket, bytes]]:
        drain_wakeups(self._read)
        while self._items:
            yield self._items.popleft()

    def close(self, counters: RequestCounters) -> None:
        with self._lock:
            self._closed = True
            left, self._items = list(self._items), collections.deque()
        for conn, beyond in left:
            counters.unanswered(beyond)
            conn.close()
        self._read.close()
        self._write.close()
