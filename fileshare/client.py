"""The client library of the course's file server protocol.

    from fileshare.client import FileClient      # or: from client_worker import FileClient
    with FileClient("127.0.0.1", 6667) as client:
        client.list()                                  # ['a.txt', ...]
        result = client.get("a.txt", "copy.txt")       # TransferResult(bytes, seconds, sha256)
        client.upload("report.pdf", name="r.pdf")
        client.delete("r.pdf")

Every failure (server ERROR, timeout, refused or dropped connection, malformed
or corrupt reply) raises :class:`ClientError`, whose ``kind`` names the class.
Files stream through in chunks both ways: memory does not grow with their size.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, NoReturn, Optional, TypeVar, Union

from .protocol import TERMINATOR, ProtocolError, StrictBase64Decoder, build_request, upload_prefix, validate_name
from .replies import CONTENT_KEYS, ContentData, ContentEnd, ContentStart, ReplyEnd, ReplyField, ReplyParser
from .store import AtomicFile
from .streaming import HashingWriter, ReceiveBuffer, iter_encoded, receive_size

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6667
Progress = Optional[Callable[[int], None]]   # called with the number of payload bytes just moved
_T = TypeVar("_T")


class ClientError(Exception):
    """A request failed.  ``kind`` is one of KINDS; ``str(error)`` says what happened."""

    KINDS = ("refused", "timeout", "reset", "server", "corrupt", "other")

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _ClosedBeforeReply(ClientError):
    """The connection was found closed before any byte of the reply: the request went unanswered."""

    def __init__(self, message: str) -> None:
        super().__init__("reset", message)


@dataclass(frozen=True)
class TransferResult:
    name: str
    bytes: int
    seconds: float
    sha256: str
    server_confirmed: bool = False   # an upload the server confirmed with its own SHA-256

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class DiscardingSink(io.RawIOBase):
    """A binary file that keeps nothing: for downloads that are only checked, never stored."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


class _ContentSink:
    """Where a GET reply's content goes: decoded, hashed and written as it arrives.

    The course's servers send the content as ``data_file``; other implementations
    send it as ``data``, which ERROR replies also use for their message.  So the
    text is decoded optimistically and the first bytes are kept as a possible
    message; a later ``data_file`` value wins over an earlier ``data`` one.
    """

    MESSAGE_BYTES = 4096

    def __init__(self, dest: BinaryIO, progress: Progress) -> None:
        self.dest = dest
        self.progress = progress
        self.key: str | None = None
        self.messages: dict[str, bytearray] = {}
        self.error: str | None = None
        self._writer: HashingWriter | None = None
        self._decoder = StrictBase64Decoder()
        self.sha256 = ""
        self.size = 0

    def start(self, key: str) -> None:
        self.messages[key] = bytearray()
        if self.key is None:
            self._restart(key)
        elif key == "data_file" and self.key != "data_file" and self.dest.seekable():
            self._restart(key)

    def _restart(self, key: str) -> None:
        if self._writer is not None:
            self._writer.abort()
            self.dest.seek(0)
            self.dest.truncate()
        self.key, self.error = key, None
        self._decoder = StrictBase64Decoder()
        self._writer = HashingWriter(self.dest)

    def data(self, key: str, text: Union[bytes, memoryview]) -> None:
        message = self.messages[key]
        if len(message) < self.MESSAGE_BYTES:
            message += text[:self.MESSAGE_BYTES - len(message)]
        if key != self.key or self.error is not None:
            return
        try:
            decoded = self._decoder.feed(text)
        except ProtocolError as exc:
            self.error = str(exc)
            return
        assert self._writer is not None
        self._writer.write(decoded)
        if self.progress and decoded:
            self.progress(len(decoded))

    def aligned(self, size: int) -> int:
        """How much to receive next so the content decodes without joining pieces."""
        return self._decoder.aligned(size)

    def end(self, key: str) -> None:
        if key != self.key or self.error is not None:
            return
        try:
            self._decoder.finish()
        except ProtocolError as exc:
            self.error = str(exc)

    def finish(self) -> None:
        """Flush what was written; sets sha256 and size."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        self.sha256 = writer.close()
        self.size = writer.size

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def message(self) -> str:
        for key in ("data", "data_file"):
            if key in self.messages:
                return self.messages[key].decode("utf-8", "replace")
        return ""


class FileClient:
    """A connection to a file server, opened on first use and reused for every request."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 60.0,
                 connect_timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._sock: socket.socket | None = None
        self._leftover = b""
        self._received = ReceiveBuffer()
        self._reply_started = False

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> "FileClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._leftover = b""

    def _connection(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            except OSError as exc:
                raise _client_error(exc, f"cannot connect to {self.host}:{self.port}") from None
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    # ------------------------------------------------------------------ commands

    def list(self) -> list[str]:
        reply = self._simple(build_request("LIST"), repeatable=True)
        names = reply.get("data")
        if not isinstance(names, list):
            raise ClientError("corrupt", f"LIST reply has no list of names: {reply!r:.200}")
        return names

    def delete(self, name: str) -> str:
        return str(self._simple(build_request("DELETE", _checked_name(name))).get("data", ""))

    def stats(self) -> dict:
        """The server's request counters (an extension: servers of the course toolkit only)."""
        data = self._simple(build_request("STATS"), repeatable=True).get("data")
        if not isinstance(data, dict):
            raise ClientError("corrupt", "STATS reply has no counters")
        return data

    def get(self, name: str, dest: Union[str, os.PathLike, BinaryIO], progress: Progress = None) -> TransferResult:
        """Download ``name`` into a path (replaced only when complete) or a binary file object."""
        if isinstance(dest, (str, os.PathLike)):
            return self._get_to_path(name, os.fspath(dest), progress)
        started = time.perf_counter()
        sink = _ContentSink(dest, progress)
        try:
            request = build_request("GET", _checked_name(name))
            fields = self._repeatable(lambda: self._exchange(request, sink))
            sink.finish()
        except OSError as exc:          # socket errors are ClientErrors already: this is the local side
            sink.abort()
            raise ClientError("other", f"GET {name}: cannot write the download: {exc.strerror or exc}") from None
        except BaseException:
            sink.abort()
            raise
        seconds = time.perf_counter() - started
        _raise_for_status(fields, sink.message())
        if sink.key is None:
            raise ClientError("corrupt", f"GET {name}: the reply carries no file content")
        if sink.error is not None:
            raise ClientError("corrupt", f"GET {name}: {sink.error}")
        return TransferResult(name, sink.size, seconds, sink.sha256)

    def _get_to_path(self, name: str, path: str, progress: Progress) -> TransferResult:
        if os.path.isdir(path):         # found out now, not after the whole download
            raise ClientError("other", f"cannot write {path}: it is a directory")
        folder = os.path.dirname(os.path.abspath(path))
        try:
            out = AtomicFile(folder, f".{os.path.basename(path)}.", ".part", "w+b")
        except OSError as exc:
            raise ClientError("other", f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            result = self.get(name, out.file, progress)
            out.publish(path)
        except OSError as exc:          # publishing: a directory appeared there meanwhile, say
            out.discard()
            raise ClientError("other", f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            out.discard()
            raise
        return result

    def upload(self, source: Union[str, os.PathLike, BinaryIO], name: str | None = None,
               progress: Progress = None, known_sha256: str | None = None) -> TransferResult:
        """Upload a path or a binary file object under ``name`` (default: the path's base name).

        The SHA-256 of what is sent is checked against the one the server computed of
        what it stored.  A caller that already knows the content's SHA-256 (a test
        file, say) passes it as ``known_sha256`` and saves hashing it again here.
        """
        if isinstance(source, (str, os.PathLike)):
            name = name or os.path.basename(os.fspath(source))
            try:
                with open(source, "rb") as f:
                    return self.upload(f, name, progress, known_sha256)
            except OSError as exc:
                raise ClientError("other", f"cannot read {os.fspath(source)}: {exc.strerror or exc}") from None
        if not name:
            raise ClientError("other", "upload needs a name for content that is not a file path")
        _checked_name(name)
        if " " in name:
            raise ClientError("other", f"upload name {name!r} contains a space; the protocol ends an "
                                       "UPLOAD name at the first space")
        started = time.perf_counter()
        digest, size = (hashlib.sha256() if known_sha256 is None else None), 0
        try:
            self._send(upload_prefix(name), keep_open=True)
            for piece, raw_len in _hashing_pieces(source, digest):
                self._send(piece, keep_open=True)
                size += raw_len
                if progress:
                    progress(raw_len)
            self._send(TERMINATOR, keep_open=True)
        except ClientError as send_error:
            self._raise_refusal(send_error)
        except OSError as exc:          # reading the source (socket errors are ClientErrors already)
            self.close()                # half a request is out: the connection is no use
            raise ClientError("other", f"UPLOAD {name}: cannot read the content: {exc.strerror or exc}") from None
        sha256 = digest.hexdigest() if digest is not None else known_sha256
        return self._upload_result(name, size, sha256, started)

    def _raise_refusal(self, send_error: ClientError) -> NoReturn:
        """Sending an upload failed: the server may have refused early (too large, say) and
        said why; raise that, else ``send_error``.  The connection is closed either way."""
        reply = self._try_reading_reply()
        self.close()
        if reply is not None:
            _raise_for_status(reply, str(reply.get("data", "")))
        raise send_error

    def _upload_result(self, name: str, size: int, sha256: str, started: float) -> TransferResult:
        """Read an upload's reply and check the server stored ``size`` bytes with ``sha256``."""
        reply = self._receive(None)
        seconds = time.perf_counter() - started
        _raise_for_status(reply, str(reply.get("data", "")))
        if "size" in reply and reply["size"] != size:
            raise ClientError("corrupt", f"UPLOAD {name}: sent {size} bytes, server stored {reply['size']}")
        if "sha256" in reply and reply["sha256"] != sha256:
            raise ClientError("corrupt", f"UPLOAD {name}: server's SHA-256 {reply['sha256']} differs from {sha256}")
        return TransferResult(name, size, seconds, sha256, server_confirmed="sha256" in reply)

    # ------------------------------------------------------------------ wire

    def _simple(self, request: bytes, repeatable: bool = False) -> dict:
        reply = self._repeatable(lambda: self._exchange(request, None)) if repeatable else self._exchange(request, None)
        _raise_for_status(reply, str(reply.get("data", "")))
        return reply

    def _exchange(self, request: bytes, sink: _ContentSink | None) -> dict:
        self._send(request)
        return self._receive(sink)

    def _repeatable(self, attempt: Callable[[], _T]) -> _T:
        """Run a request that is safe to repeat, once more on a fresh connection if a kept one was closed.

        Servers that answer one request per connection close it after the reply, so
        the next request on it meets a closed socket before any byte of its reply.
        A fresh connection that does the same is a real failure and is not retried.
        """
        kept = self._sock is not None
        try:
            return attempt()
        except _ClosedBeforeReply:
            if not kept:
                raise
            self.close()
            return attempt()

    def _send(self, data: bytes, keep_open: bool = False) -> None:
        """Send ``data``; on failure close the connection unless the caller still wants to read it."""
        sock = self._connection()
        try:
            sock.sendall(data)
        except OSError as exc:
            if not keep_open:
                self.close()
            raise _unanswered(_client_error(exc, "sending the request failed")) from None

    def _receive(self, sink: _ContentSink | None) -> dict:
        """Read one reply; stream its content into ``sink`` (GET) or buffer it all."""
        sock = self._connection()
        parser = ReplyParser(stream_keys=CONTENT_KEYS if sink is not None else ())
        fields: dict = {}
        data, self._leftover = self._leftover, b""
        self._reply_started = bool(data)
        try:
            with receive_size() as chunk:
                return self._receive_into(sock, parser, sink, fields, data, chunk)
        except ProtocolError as exc:
            self.close()
            raise ClientError("corrupt", f"malformed reply from the server: {exc}") from None
        except OSError as exc:
            self.close()
            error = _client_error(exc, "reading the reply failed")
            raise (error if self._reply_started else _unanswered(error)) from None
        except ClientError:
            self.close()
            raise
        finally:
            self._received.release()     # an idle client holds no large buffer

    def _receive_into(self, sock: socket.socket, parser: ReplyParser, sink: _ContentSink | None, fields: dict,
                      data: bytes | bytearray, chunk: int) -> dict:
        while True:
            if not data:
                data = self._received.receive(sock, sink.aligned(chunk) if sink is not None else chunk)
                if not data:
                    if not self._reply_started:
                        raise _ClosedBeforeReply("the server closed the connection without replying")
                    raise ClientError("reset", "the server closed the connection before replying in full")
                self._reply_started = True
            if self._dispatch(parser.feed(data), sink, fields):
                self._leftover = parser.leftover
                return fields
            data = b""

    @staticmethod
    def _dispatch(events: list, sink: _ContentSink | None, fields: dict) -> bool:
        """Hand one receive's reply events on; True once the reply is complete.

        Its own function so no event (a view of the receive buffer) outlives the call.
        """
        for event in events:
            if isinstance(event, ReplyField):
                fields[event.key] = event.value
            elif isinstance(event, ContentData):
                sink.data(event.key, event.text)        # type: ignore[union-attr]
            elif isinstance(event, ContentStart):
                sink.start(event.key)                   # type: ignore[union-attr]
            elif isinstance(event, ContentEnd):
                sink.end(event.key)                     # type: ignore[union-attr]
            elif isinstance(event, ReplyEnd):
                return True
        return False

    def _try_reading_reply(self) -> dict | None:
        if self._sock is None:
            return None
        try:
            self._sock.settimeout(2)
            return self._receive(None)
        except ClientError:
            return None


def _hashing_pieces(source: BinaryIO, digest: "hashlib._Hash | None"):
    """Yield (base64 piece, raw length) for ``source``, hashing the raw bytes on the way (if ``digest``)."""
    reader = _HashingReader(source, digest)
    for piece in iter_encoded(reader):
        yield piece, reader.last


class _HashingReader:
    def __init__(self, source: BinaryIO, digest: "hashlib._Hash | None") -> None:
        self.source, self.digest, self.last = source, digest, 0

    def read(self, size: int) -> bytes:
        data = _read_full(self.source, size)
        if self.digest is not None:
            self.digest.update(data)
        self.last = len(data)
        return data


def _read_full(source: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes unless the end comes first (raw files may return less)."""
    data = source.read(size)
    if not data or len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = source.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _checked_name(name: str) -> str:
    """Refuse here what no server would serve (and what could not even be sent)."""
    try:
        return validate_name(name)
    except ProtocolError as exc:
        raise ClientError("other", str(exc)) from None


def _raise_for_status(reply: dict, message: str) -> None:
    status = reply.get("status")
    if status == "OK":
        return
    if status == "ERROR":
        raise ClientError("server", f"server error: {message or 'no message'}")
    raise ClientError("corrupt", f"reply has no valid status: {status!r}")


def _unanswered(error: ClientError) -> ClientError:
    """A reset met before any byte of the reply came back means the request went unanswered."""
    return _ClosedBeforeReply(str(error)) if error.kind == "reset" else error


def _client_error(exc: OSError, doing: str) -> ClientError:
    if isinstance(exc, ConnectionRefusedError):
        return ClientError("refused", f"{doing}: connection refused (is the server running?)")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ClientError("timeout", f"{doing}: timed out")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return ClientError("reset", f"{doing}: connection reset by the server")
    return ClientError("other", f"{doing}: {exc.strerror or exc}")
