"""Hand a client socket between the server process and its worker processes.

Passing the descriptor number is wrong (a reused worker does not have it), and
letting the pool pickle the socket is racy (its feeder thread pickles later,
after the parent may have closed its copy).  Instead the parent keeps each
connection whose request has arrived under a random token, with the bytes it
already read, and sends only the token through the pool; the worker that runs
the task asks the parent for it over a private Unix socket and receives a
duplicate of the descriptor with SCM_RIGHTS, and those bytes, so nothing is
lost whichever worker runs the task, however often workers are reused.  The
parent keeps its own copy while a worker holds the connection; once the worker is done with it, it sends back only the
token, with any bytes it read beyond its last request, and closes its copy: the
parent's copy goes back to the loop, which owns the connection between requests.
Each worker process keeps one channel open to the parent for all of this.

Every message on the channel is one kind byte, a 4-byte length and that many
bytes; a descriptor, when there is one, travels with the first byte.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import shutil
import socket
import stat
import struct
import tempfile
import threading
from typing import Callable

from .state import Demand
from .store import stale_leftovers

log = logging.getLogger("fileserver.handoff")

TOKEN_BYTES = 16
FOLDER_PREFIX = "fileserver-handoff-"
CLAIM, GIVE_BACK = b"C", b"R"        # what a worker asks: a connection by token, or to return one
FOUND, GONE = b"\x01", b"\x00"       # the parent's answer to a claim
TAKEN = b"T"                          # the parent's answer to a return: the loop has it
_HEADER = struct.Struct("!cI")
CHANNEL_SECONDS = 10.0                # the most one message on the channel may take
TRANSIT_SECONDS = CHANNEL_SECONDS + 5.0   # the most withdraw() waits for a socket on its way
CLOSED_CHECK_SECONDS = 1.0            # how soon the handoff thread notices close()


def _remove_stale_folders() -> None:
    """Remove the handoff folders of servers that were killed before they could."""
    for path in stale_leftovers(tempfile.gettempdir(), FOLDER_PREFIX):
        try:
            ours = os.stat(path).st_uid == os.getuid()
        except OSError:         # another server starting at the same moment removed it first
            continue
        if ours:
            shutil.rmtree(path, ignore_errors=True)


class HandoffServer:
    """Parent side: keeps connections until a worker claims them, takes them back after."""

    def __init__(self, given_back: Callable[[socket.socket, bytes], None], demand: Demand | None = None,
                 workers: int = 1) -> None:
        """``given_back(conn, beyond)`` receives each connection a worker returns (on the
        handoff thread), with the bytes the worker read beyond its request.  ``demand`` is
        told how many connections wait for one of the ``workers`` to collect them."""
        _remove_stale_folders()
        # Mode 0700: ours alone. The PID in the name tells a later server whether it is stale.
        self._dir = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.path = os.path.join(self._dir, "handoff.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._given_back = given_back
        self._pending: dict[bytes, tuple[socket.socket, bytes]] = {}
        self._demand, self._workers = demand or Demand(), workers
        # Our copy of each connection a worker collected, kept until its task is settled: a stop
        # can then cut the worker's transfer (shutdown), and the worker counts the outcome itself.
        self._claimed: dict[bytes, socket.socket] = {}
        # Tokens whose socket is on its way to a worker: neither pending nor claimed until the
        # send ends, so withdraw() waits for that, or it would find nothing and leave the socket
        # to be parked for good in whichever set it then lands in.
        self._in_transit: set[bytes] = set()
        self._lock = threading.Lock()
        self._transit_over = threading.Condition(self._lock)
        self._closed = False
        self._cutting = False
        self._thread = threading.Thread(target=self._serve, name="handoff", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, conn: socket.socket, head: bytes) -> bytes:
        """Keep ``conn`` and the bytes read from it for a worker; return the token to claim them by."""
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock:
            self._pending[token] = (conn, head)
            self._publish_demand()
        return token

    def holds(self, token: bytes) -> bool:
        """True while the socket kept under ``token`` waits for a worker."""
        with self._lock:
            return token in self._pending

    def claimed_count(self) -> int:
        """Connections a worker collected whose task is not settled yet."""
        with self._lock:
            return len(self._claimed)

    def cut(self) -> int:
        """Hand out no more connections, and shut down every one a worker holds, which wakes it
        from a blocked receive or send; it then counts the request and closes.  Returns how
        many were cut."""
        with self._lock:
            self._cutting = True
            held = list(self._claimed.values())
        for conn in held:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(held)

    def withdraw(self, token: bytes, last_words: bytes = b"") -> bytes | None:
        """Close a socket no worker claimed (its task was cancelled or failed), after sending it
        ``last_words`` if it will take them at once; return the bytes read from it, None if a
        worker had claimed it."""
        with self._lock:
            self._transit_over.wait_for(lambda: token not in self._in_transit, TRANSIT_SECONDS)
            kept = self._pending.pop(token, None)
            self._publish_demand()
            ours = self._claimed.pop(token, None)
        if ours is not None:
            ours.close()
        if kept is None:
            return None
        conn, head = kept
        with conn:
            if last_words:
                try:
                    conn.setblocking(False)
                    conn.send(last_words)
                except OSError:
                    pass
        return head

    def _serve(self) -> None:
        """Answer every worker's channel (one per worker process, kept open) until closed."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._closed:
                try:
                    ready = selector.select(CLOSED_CHECK_SECONDS)   # close() cannot wake it otherwise
                except (OSError, ValueError):
                    return         # the listener was closed: the server is stopping
                for key, _ in ready:
                    if key.fileobj is self._listener:
                        try:
                            channel, _ = self._listener.accept()
                        except OSError:
                            return
                        channel.settimeout(CHANNEL_SECONDS)
                        selector.register(channel, selectors.EVENT_READ)
                        continue
                    channel = key.fileobj
                    try:
                        if self._answer(channel):
                            continue
                    except OSError as exc:
                        log.warning("a worker failed to collect or return a connection: %s", exc)
                    selector.unregister(channel)        # the worker is gone, or broke the protocol
                    channel.close()
            for key in list(selector.get_map().values()):
                if key.fileobj is not self._listener:
                    key.fileobj.close()

    def _answer(self, channel: socket.socket) -> bool:
        """Answer one message; False once the worker closed its channel (it exited)."""
        message = _receive_message(channel)
        if message is None:
            return False
        kind, payload, fds = message
        for fd in fds:              # no message carries a descriptor to us
            os.close(fd)
        if kind == GIVE_BACK:
            token, beyond = payload[:TOKEN_BYTES], payload[TOKEN_BYTES:]
            with self._lock:
                # Our own copy goes back to the loop: the worker's need not travel again.
                conn = None if self._closed else self._claimed.pop(token, None)
                self._publish_demand()
            if conn is None:        # cut and closed by a stop: the worker counts what it had read
                _send_message(channel, GONE, b"")
                return True
            self._given_back(conn, beyond)
            # Only now may the worker's task end: the server counts a connection as in flight
            # until then, so it is always counted somewhere (--max-connections).
            _send_message(channel, TAKEN, b"")
            return True
        if kind != CLAIM:
            raise ConnectionError(f"unexpected handoff message {kind!r}")
        with self._lock:
            kept = None if self._cutting else self._pending.pop(payload, None)
            self._publish_demand()
            if kept is not None:
                self._in_transit.add(payload)
        if kept is None:
            _send_message(channel, GONE, b"")
            return True
        conn, head = kept
        try:
            _send_message(channel, FOUND, head, conn.fileno())
        except OSError:
            with self._lock:        # the worker is gone: the connection waits for another
                self._end_transit(payload)
                if not self._closed:
                    self._pending[payload] = kept
                    self._publish_demand()
                    kept = None
            if kept is not None:
                conn.close()
            raise
        with self._lock:
            self._end_transit(payload)
            if not self._closed:
                self._claimed[payload] = conn
                self._publish_demand()
                return True
        conn.close()
        return True

    def _publish_demand(self) -> None:
        """Tell the workers how many connections wait for one of them beyond the idle ones.
        Called with the lock held: one writer at a time."""
        busy = len(self._claimed) + len(self._in_transit)
        self._demand.set_waiting(len(self._pending), busy, self._workers)

    def _end_transit(self, token: bytes) -> None:
        """Called with the lock held."""
        self._in_transit.discard(token)
        self._transit_over.notify_all()

    def close(self) -> list[bytes]:
        """Stop; return what had been read from each connection no worker claimed."""
        if self._closed:
            return []
        self._closed = True
        self._listener.close()
        with self._lock:
            leftovers, self._pending = list(self._pending.values()), {}
            held, self._claimed = list(self._claimed.values()), {}
        for conn in [*(conn for conn, _ in leftovers), *held]:
            conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        return [head for _, head in leftovers]


_channels: dict[str, socket.socket] = {}     # this process's channel to each handoff server
_channels_pid = 0


def _exchange(path: str, kind: bytes, payload: bytes) -> tuple[bytes, bytes, list[int]]:
    """Worker side: send one message on this process's channel to the server at ``path`` (opened on
    first use and kept: a connection per message cost the server an accept and a close every time)
    and return its answer.  Raises OSError if the server is not there any more."""
    global _channels_pid
    if _channels_pid != os.getpid():            # inherited through a fork: not ours to use
        _channels.clear()
        _channels_pid = os.getpid()
    channel = _channels.get(path)
    try:
        if channel is None:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            channel.settimeout(CHANNEL_SECONDS)
            channel.connect(path)
            _channels[path] = channel
        _send_message(channel, kind, payload)
        answer = _receive_message(channel)
        if answer is None:
            raise ConnectionError("handoff channel closed by the server")
        return answer
    except BaseException:
        _channels.pop(path, None)
        if channel is not None:
            channel.close()
        raise


def claim(path: str, token: bytes) -> tuple[socket.socket, bytes] | None:
    """Worker side: collect the socket kept under ``token`` and the bytes read from it; None if it is gone."""
    kind, head, fds = _exchange(path, CLAIM, token)
    if kind != FOUND or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0]), head


def give_back(path: str, conn: socket.socket, token: bytes, beyond: bytes) -> None:
    """Worker side: return the connection claimed by ``token`` to the parent, with the bytes read
    beyond its request, and close this copy (the parent kept its own).  Raises OSError if the
    parent no longer holds it (a stop cut it) or is not listening any more."""
    with conn:
        kind, _, fds = _exchange(path, GIVE_BACK, token + beyond)
    for fd in fds:
        os.close(fd)
    if kind != TAKEN:
        raise ConnectionError("the server no longer holds the connection")


def _send_message(channel: socket.socket, kind: bytes, payload: bytes, fd: int | None = None) -> None:
    message = _HEADER.pack(kind, len(payload)) + payload
    if fd is None:
        channel.sendall(message)
        return
    sent = socket.send_fds(channel, [message], [fd])
    if sent < len(message):         # never an empty send: the peer may have read all and closed
        channel.sendall(message[sent:])


def _receive_message(channel: socket.socket) -> tuple[bytes, bytes, list[int]] | None:
    """(kind, payload, descriptors) of one message, None if the channel closed before it; the
    descriptors arrive with its first byte."""
    first, fds, _, _ = socket.recv_fds(channel, _HEADER.size, 1)
    try:
        if not first:
            for fd in fds:
                os.close(fd)
            return None
        header = first + _recv_exactly(channel, _HEADER.size - len(first))
        kind, size = _HEADER.unpack(header)
        return kind, _recv_exactly(channel, size), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("handoff channel closed early")
        data += chunk
    return bytes(data)


def close_inherited_sockets() -> int:
    """Close every socket a forked worker inherited (listeners, other clients' connections).

    A worker must hold only the connections handed to it: an inherited copy of
    the listener would keep accepting after the server stopped, and an inherited
    copy of a client's socket would keep that connection open after its own
    worker closed it.  Standard streams are left alone.  Returns how many were closed.
    """
    closed = 0
    for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
                closed += 1
        except OSError:
            pass               # the listing's own descriptor, already gone
    return closed
