"""Hand an accepted socket from the server process to a worker process.

Passing the descriptor number is wrong (a reused worker does not have it), and
letting the pool pickle the socket is racy (its feeder thread pickles later,
after the parent may have closed its copy).  Instead the parent keeps each
accepted socket under a random token and sends only the token through the pool;
the worker that runs the task asks the parent for it over a private Unix
socket and receives a duplicate of the descriptor with SCM_RIGHTS.  Only then
does the parent close its copy, so nothing is lost whichever worker runs the
task, however often workers are reused.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import tempfile
import threading

from .store import stale_leftovers

log = logging.getLogger("fileserver.handoff")

TOKEN_BYTES = 16
FOLDER_PREFIX = "fileserver-handoff-"


def _remove_stale_folders() -> None:
    """Remove the handoff folders of servers that were killed before they could."""
    for path in stale_leftovers(tempfile.gettempdir(), FOLDER_PREFIX):
        if os.stat(path).st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)


class HandoffServer:
    """Parent side: keeps accepted sockets until a worker claims them."""

    def __init__(self) -> None:
        _remove_stale_folders()
        # Mode 0700: ours alone. The PID in the name tells a later server whether it is stale.
        self._dir = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.path = os.path.join(self._dir, "handoff.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._pending: dict[bytes, socket.socket] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="handoff", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, conn: socket.socket) -> bytes:
        """Keep ``conn`` for a worker; return the token the worker will claim it by."""
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock:
            self._pending[token] = conn
        return token

    def holds(self, token: bytes) -> bool:
        """True while the socket kept under ``token`` waits for a worker."""
        with self._lock:
            return token in self._pending

    def withdraw(self, token: bytes) -> None:
        """Close a socket no worker claimed (its task was cancelled or failed)."""
        with self._lock:
            conn = self._pending.pop(token, None)
        if conn is not None:
            conn.close()

    def _serve(self) -> None:
        while True:
            try:
                channel, _ = self._listener.accept()
            except OSError:
                return             # closed: the server is stopping
            with channel:
                try:
                    self._hand_over(channel)
                except OSError as exc:
                    log.warning("a worker failed to collect its connection: %s", exc)

    def _hand_over(self, channel: socket.socket) -> None:
        channel.settimeout(10)
        token = _recv_exactly(channel, TOKEN_BYTES)
        with self._lock:
            conn = self._pending.pop(token, None)
        if conn is None:
            channel.sendall(struct.pack("!B", 0))
            return
        with conn:
            socket.send_fds(channel, [struct.pack("!B", 1)], [conn.fileno()])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.close()
        with self._lock:
            leftovers, self._pending = list(self._pending.values()), {}
        for conn in leftovers:
            conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def claim(path: str, token: bytes) -> socket.socket | None:
    """Worker side: collect the socket kept under ``token``; None if it is gone."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(10)
        channel.connect(path)
        channel.sendall(token)
        msg, fds, _, _ = socket.recv_fds(channel, 1, 1)
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    if msg != b"\x01":
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0])


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
