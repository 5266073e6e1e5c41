"""Streaming helpers shared by the servers and the client: bounded memory, any file size."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import BinaryIO, Callable, Iterator

from .protocol import RAW_CHUNK, encode_chunk

RECV_CHUNK = 64 * 1024   # base64 text per recv: decodes to 48 KiB, stays in glibc's heap


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


class HashingWriter:
    """Write chunks to a binary file and SHA-256 them on a helper thread.

    Disk writes and hashlib release the GIL while base64 decoding does not, so
    handing them to a second thread lets them overlap the caller's decoding
    (worth ~25% on one core's pipeline).  The queue is short, so at most a few
    chunks are held.  Errors on the helper thread surface on the next call.
    """

    _DONE = None

    def __init__(self, sink: BinaryIO, depth: int = 8) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._queue: "queue.Queue[bytes | None]" = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.size = 0
        self._thread = threading.Thread(target=self._run, name="hashing-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is self._DONE:
                return
            if self._error is not None:
                continue
            try:
                self._sink.write(chunk)
                self._hash.update(chunk)
            except BaseException as exc:  # handed to the caller on its next call
                self._error = exc

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        if chunk:
            self.size += len(chunk)
            self._queue.put(chunk)

    def close(self) -> str:
        """Wait for every chunk to be written; return the SHA-256 hex digest."""
        self._stop()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Stop without caring about what was written (the caller discards the file)."""
        self._error = self._error or InterruptedError("write aborted")
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(self._DONE)
            self._thread.join()


def sha256_of(source: BinaryIO, chunk: int = 1024 * 1024, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    while True:
        raw = source.read(chunk)
        if not raw:
            return digest.hexdigest()
        digest.update(raw)
        if progress:
            progress(len(raw))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def publishable_mode(fd: int) -> None:
    """Give a temporary file (mkstemp makes it 0600) the mode a new file would have had."""
    os.fchmod(fd, 0o666 & ~_UMASK)
