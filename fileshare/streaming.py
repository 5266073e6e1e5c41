"""Streaming helpers shared by the servers and the client: bounded memory, any file size."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import socket
import threading
from typing import BinaryIO, Iterator

from .protocol import RAW_CHUNK, encode_chunk

RECV_CHUNK = 256 * 1024         # fewer Python steps per byte than 64 KiB: ~5% faster
SMALL_RECV_CHUNK = 64 * 1024    # decodes to 48 KiB: what each of many transfers gets
# Each transfer receiving 256 KiB holds ~0.7 MiB (the receive, its decoded bytes, a
# joined base64 group); 50 of them in one process would break the 64 MiB budget.
_LARGE_RECEIVE_SLOTS = threading.BoundedSemaphore(4)


@contextlib.contextmanager
def receive_size() -> Iterator[int]:
    """How much one transfer receives at a time: large while at most four transfers
    share this process, small beyond that, so memory stays flat with 50 clients."""
    large = _LARGE_RECEIVE_SLOTS.acquire(blocking=False)
    try:
        yield RECV_CHUNK if large else SMALL_RECV_CHUNK
    finally:
        if large:
            _LARGE_RECEIVE_SLOTS.release()


_ZEROS = memoryview(bytes(RECV_CHUNK))


def peer_name(sock: socket.socket) -> str:
    """``HOST:PORT`` of the other end, for log lines; ``?`` once it is gone."""
    try:
        return "%s:%s" % sock.getpeername()[:2]
    except OSError:
        return "?"


class ReceiveBuffer:
    """One buffer reused for every receive of a connection.

    A fresh bytes object per recv(), freed once decoded, lets glibc hand the top of
    the heap back to the OS and fault it in again on the next receive: ~80 page
    faults per 256 KiB chunk, 5-8% of a receiving worker's CPU.  recv_into() one
    buffer instead.  What :meth:`receive` returns is overwritten by the next call,
    so it must be used up (copied, decoded, written) before then.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive(self, sock: socket.socket, size: int) -> bytearray:
        """Receive at most ``size`` (up to RECV_CHUNK) bytes; empty at end of stream."""
        buffer = self._buffer
        try:
            # Any resize fails while a view of the last piece is still held somewhere (an
            # exception's traceback, say); that piece must then not be overwritten either.
            buffer.append(0)
            if len(buffer) > size:
                del buffer[size:]
            else:
                buffer += _ZEROS[:size - len(buffer)]
        except BufferError:
            self._buffer = buffer = bytearray(_ZEROS[:size])
        del buffer[sock.recv_into(buffer):]
        return buffer

    def release(self) -> None:
        """Give the memory back while the connection waits (idle keep-alive connections
        must not each hold a large buffer)."""
        self._buffer = bytearray()


def read_arrived(sock: socket.socket, limit: int) -> bytes:
    """Up to ``limit`` bytes that have arrived on ``sock``, without waiting for more (the socket
    is left non-blocking): what a connection about to be closed had sent, to be counted."""
    pieces, size = [], 0
    sock.setblocking(False)
    try:
        while size < limit:
            piece = sock.recv(min(limit - size, SMALL_RECV_CHUNK))
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
    except OSError:             # nothing more yet (BlockingIOError), or reset
        pass
    return b"".join(pieces)


def iter_encoded(source: BinaryIO, chunk: int = RAW_CHUNK) -> Iterator[bytes]:
    """Yield the base64 text of ``source`` piece by piece, reading ``chunk`` bytes at a time.

    ``chunk`` must be a multiple of 3 so that only the last piece is padded;
    a buffered binary file returns full reads until its end.
    """
    assert chunk % 3 == 0, "base64 pieces must be whole 3-byte groups"
    while True:
        raw = source.read(chunk)
        if not raw:
            return
        yield encode_chunk(raw)


_CPUS = os.cpu_count() or 1
# One transfer per process may hash on a helper thread: more would only fight over the GIL.
_BACKGROUND_SLOTS = threading.BoundedSemaphore(1)


def core_to_spare() -> bool:
    """True when no more tasks are runnable than cores + 1, so a helper thread would find a core.

    Read from /proc/loadavg's count of runnable tasks (Linux); elsewhere, False.
    """
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return False
    return running <= _CPUS + 1


class HashingWriter:
    """Write chunks to a binary file and SHA-256 them, on a helper thread when one pays.

    File writes and hashlib release the GIL; base64 decoding, the caller's work,
    does not.  So while a core is idle, chunks are joined into 1 MiB batches (one
    GIL hand-off per MiB; per 48 KiB chunk the hand-offs cost more than they save)
    and hashed and written on a helper thread, overlapping the decoding: a 100 MB
    GET goes from 0.87 to 0.93 of this machine's ceiling.  The helper costs about
    1 ns of CPU per byte more, though, so when every core is busy (several
    transfers at once) inline is faster (0.86 vs 0.73 with 4 clients): the choice
    is made when the transfer starts.  At most ``depth`` batches wait.  An error
    on the helper thread is raised by the next call.
    """

    BATCH = 1024 * 1024

    def __init__(self, sink: BinaryIO, depth: int = 2) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._error: BaseException | None = None
        self.size = 0
        self._thread: threading.Thread | None = None
        if core_to_spare() and _BACKGROUND_SLOTS.acquire(blocking=False):
            self._queue: "queue.Queue[bytes | None]" = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="hashing-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write_now(batch)
                except BaseException as exc:  # handed to the caller on its next call
                    self._error = exc

    def _write_now(self, data: bytes) -> None:
        self._sink.write(data)
        self._hash.update(data)

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not chunk:
            return
        self.size += len(chunk)
        if self._thread is None:
            self._write_now(chunk)
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= self.BATCH:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._pending:
            self._queue.put(b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def close(self) -> str:
        """Wait until everything is written; return the SHA-256 hex digest."""
        if self._thread is not None:
            self._hand_over()
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Stop without caring about what was written (the caller discards the file)."""
        self._pending, self._pending_size = [], 0
        self._error = self._error or InterruptedError("write aborted")
        self._stop()

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            _BACKGROUND_SLOTS.release()
