"""The stress test's cheap client: every byte checked, nothing decoded.

A load generator that decodes base64 under one GIL measures itself, not the
server.  The test content is known, so the exact base64 text a correct server
sends (and a correct client uploads) is known too: its canonical encoding (no
newlines, padded) is kept as a file beside the content.

* A download is compared with that file piece by piece, as bytes (a memory
  comparison); the reply's envelope (status, content key, JSON framing,
  terminator) goes through :class:`ReplyParser` as usual.  Any difference (a wrong
  byte, line breaks, a JSON escape, truncation, extra characters) fails the
  client as ``corrupt`` with the first offset where the text differed.
* An upload sends that file with ``socket.sendfile()`` after ``UPLOAD name ``;
  the server's reply (size, SHA-256) is checked as :class:`FileClient` does.

The application-like path (decode, hash, encode) stays in client_worker.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .client import ClientError, FileClient, TransferResult, _checked_name, _client_error, _raise_for_status
from .protocol import TERMINATOR, build_request, encoded_size, upload_prefix
from .replies import ContentData, ContentEnd, ContentStart, ReplyEnd, ReplyField, ReplyParser
from .store import replaced_atomically
from .streaming import iter_encoded

MESSAGE_BYTES = 4096      # kept of each content value, for an ERROR reply's message


# ---------------------------------------------------------------------- the canonical encoding

@dataclass(frozen=True)
class CanonicalEncoding:
    """The base64 text (no newlines) of a content file, kept in a file of its own."""
    path: str
    size: int               # characters of base64
    sha256: str             # of the base64 text
    content_size: int
    content_sha256: str


def canonical_encoding(content_path: Union[str, os.PathLike], content_sha256: str,
                       path: Union[str, os.PathLike, None] = None) -> CanonicalEncoding:
    """The canonical encoding of ``content_path`` (whose SHA-256 the caller has verified).

    Kept at ``path`` (default: beside the content, suffix ``.b64``) with a record
    ``<path>.sha256`` of its own digest and of the content it encodes.  The file is
    re-hashed on every use and rebuilt, streaming, when it or its content differ.
    """
    content_size = os.path.getsize(content_path)
    path = Path(path) if path is not None else Path(content_path).with_suffix(".b64")
    record = path.with_name(path.name + ".sha256")
    size = encoded_size(content_size)
    try:
        recorded, encoded_content = record.read_text().split()
        if encoded_content == content_sha256 and path.stat().st_size == size:
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() == recorded:
                    return CanonicalEncoding(str(path), size, recorded, content_size, content_sha256)
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(content_path, "rb") as source, replaced_atomically(path) as out:
        for piece in iter_encoded(source):
            digest.update(piece)
            out.write(piece)
    with replaced_atomically(record) as out:
        out.write(f"{digest.hexdigest()} {content_sha256}\n".encode())
    return CanonicalEncoding(str(path), size, digest.hexdigest(), content_size, content_sha256)


# ---------------------------------------------------------------------- checking a GET reply

class _ContentCheck:
    """One streamed string value of a reply compared with the expected text.

    The expected text is read with preadv() into one reused buffer rather than
    mapped (mapped pages would count in the resident size of every client, which
    the bench measures) or read into a fresh bytes object per piece (glibc hands
    the memory of a 256 KiB allocation back and faults it in again: a quarter of a
    fresh client's CPU).  The received piece is compared in place, with startswith():
    a memory comparison, without copying either side.
    """

    def __init__(self, key: str, expected_fd: int, expected_size: int) -> None:
        self.key = key
        self.fd, self.expected_size = expected_fd, expected_size
        self.offset = 0
        self.error: str | None = None
        self.message = bytearray()
        self._expected = bytearray()

    def note(self, text: Union[bytes, bytearray, memoryview]) -> None:
        """Keep the first characters: an ERROR reply's message travels in ``data``."""
        if len(self.message) < MESSAGE_BYTES:
            self.message += text[:MESSAGE_BYTES - len(self.message)]

    def compare(self, data: bytearray, start: int, end: int) -> None:
        """Compare ``data[start:end]``, the next piece of this value, with the expected text."""
        size = end - start
        if len(self.message) < MESSAGE_BYTES:
            self.note(memoryview(data)[start:end])
        if self.error is not None:
            return
        if len(self._expected) < size:
            self._expected = bytearray(size)
        with memoryview(self._expected)[:size] as expected_view:
            got = os.preadv(self.fd, [expected_view], self.offset)
            # Equal lengths, so "starts with" is "equals"; a memoryview here would compare item by item.
            if got == size and data.startswith(expected_view, start, end):
                self.offset += size
                return
            piece, expected = data[start:end], expected_view[:got].tobytes()     # only on failure
        first = next((i for i, (a, b) in enumerate(zip(piece, expected)) if a != b), len(expected))
        if self.offset + first >= self.expected_size:
            self.fail(f"the content goes on at offset {self.expected_size}, past the end of the expected "
                      f"{self.expected_size} characters of base64", self.expected_size)
        else:
            self.fail(f"the content differs from the expected base64 at offset {self.offset + first}",
                      self.offset + first)

    def fail(self, message: str, offset: int) -> None:
        if self.error is None:
            self.error, self.offset = message, offset

    def end(self) -> None:
        if self.offset < self.expected_size:
            self.fail(f"the content ends at offset {self.offset}, before the expected {self.expected_size} "
                      "characters of base64", self.offset)


class _VerifiedReply:
    """A GET reply checked as it arrives: content compared, the rest parsed.

    Content values run on a fast path (find the closing quote, compare the
    bytes before it); everything else, and a value once it has failed, goes to
    the ReplyParser, fed up to each '"' so that it stops where a content value
    starts.
    """

    def __init__(self, expected_fd: int, expected_size: int) -> None:
        self.fd, self.expected_size = expected_fd, expected_size
        self.values: dict[str, _ContentCheck] = {}
        self._fast: _ContentCheck | None = None
        self.done = False

    def feed(self, parser: ReplyParser, data: bytearray, length: int, fields: dict) -> bool:
        """Take ``data[:length]``; True once the reply is complete."""
        pos = 0
        while pos < length and not self.done:
            if self._fast is not None:
                pos = self._compare(data, pos, length)
            else:
                pos = self._parse(parser, data, pos, length, fields)
        if self.done and pos < length:     # what follows the reply belongs to the next one
            parser.leftover += bytes(data[pos:length])
        return self.done

    def _compare(self, data: bytearray, pos: int, length: int) -> int:
        check = self._fast
        assert check is not None
        quote = data.find(b'"', pos, length)
        end = length if quote < 0 else quote
        escape = data.find(b"\\", pos, end)
        if escape >= 0:
            end = escape
        if end > pos:
            check.compare(data, pos, end)
        if escape >= 0:
            check.fail(f"a JSON escape at offset {check.offset}: not the canonical base64", check.offset)
        if quote >= 0 or escape >= 0 or check.error is not None:
            self._fast = None     # the parser takes over: the closing quote, or the rest of a failed value
        return end

    def _parse(self, parser: ReplyParser, data: bytearray, pos: int, length: int, fields: dict) -> int:
        quote = data.find(b'"', pos, length)
        end = length if quote < 0 else quote + 1
        for event in parser.feed(bytes(data[pos:end])):
            if isinstance(event, ReplyField):
                fields[event.key] = event.value
            elif isinstance(event, ContentStart):
                self._fast = self.values[event.key] = _ContentCheck(event.key, self.fd, self.expected_size)
            elif isinstance(event, ContentData):
                self.values[event.key].note(event.text)
            elif isinstance(event, ContentEnd):
                self.values[event.key].end()
            elif isinstance(event, ReplyEnd):
                self.done = True
        return end

    def content(self) -> _ContentCheck | None:
        """The file's content: ``data_file``, or ``data`` as other implementations send it."""
        return self.values.get("data_file") or self.values.get("data")

    def message(self) -> str:
        check = self.values.get("data") or self.values.get("data_file")
        return check.message.decode("utf-8", "replace") if check is not None else ""


# ---------------------------------------------------------------------- the client

class VerifyingClient(FileClient):
    """FileClient plus the load generator's two cheap transfers."""

    def get_verified(self, name: str, expected: CanonicalEncoding) -> TransferResult:
        """Download ``name`` and compare what arrives with ``expected``, byte for byte."""
        started = time.perf_counter()
        with open(expected.path, "rb") as f:
            reply = _VerifiedReply(f.fileno(), expected.size)
            self._send(build_request("GET", _checked_name(name)))
            fields = self._receive(reply)          # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        _raise_for_status(fields, reply.message())
        content = reply.content()
        if content is None:
            raise ClientError("corrupt", f"GET {name}: the reply carries no file content")
        if content.error is not None:
            raise ClientError("corrupt", f"GET {name}: {content.error}")
        return TransferResult(name, expected.content_size, seconds, expected.content_sha256)

    def _receive_into(self, sock: socket.socket, parser: ReplyParser, sink, fields: dict,
                      data: Union[bytes, bytearray], chunk: int) -> dict:
        if not isinstance(sink, _VerifiedReply):
            return super()._receive_into(sock, parser, sink, fields, data, chunk)
        if data:        # bytes left from an earlier reply on this connection
            sink.feed(parser, bytearray(data), len(data), fields)
        # A buffer of fixed size, not ReceiveBuffer: trimming it to each short receive and
        # growing it again makes glibc fault its pages in anew, a quarter of this client's CPU.
        buffer = bytearray(chunk)
        while not sink.done:
            received = sock.recv_into(buffer)
            if not received:
                raise ClientError("reset", "the server closed the connection before replying in full")
            sink.feed(parser, buffer, received, fields)
        self._leftover = parser.leftover
        return fields

    def upload_encoded(self, name: str, encoded: CanonicalEncoding) -> TransferResult:
        """Upload the content whose canonical encoding is ``encoded``, sent as it is, with sendfile()."""
        _checked_name(name)
        started = time.perf_counter()
        try:
            self._send(upload_prefix(name), keep_open=True)
            with open(encoded.path, "rb") as f:
                try:
                    self._connection().sendfile(f)
                except OSError as exc:
                    raise _client_error(exc, "sending the request failed") from None
            self._send(TERMINATOR, keep_open=True)
        except ClientError as send_error:
            self._raise_refusal(send_error)
        return self._upload_result(name, encoded.content_size, encoded.content_sha256, started)
