"""The checker's side of the wire: raw connections, each step bounded in time.

A conformance checker must see what really came: a missing terminator, a reply
under an unexpected key, one corrupt byte, a connection closed early.  So cases
talk through :class:`Probe` and :class:`Wire`, thin layers over a socket that
send exactly the bytes a case gives and read each reply with the sans-IO
:class:`~fileshare.replies.ReplyParser`, streaming content through a strict
base64 decoder and SHA-256 (a 100 MiB GET needs no more memory than a small one).
Every wait ends by the case's deadline: a silent server fails the step, never
stalls the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from ..protocol import (RAW_CHUNK, TERMINATOR, ProtocolError, StrictBase64Decoder, build_request, encode_chunk,
                        upload_prefix)
from ..replies import CONTENT_KEYS, ContentData, ContentEnd, ContentStart, ReplyEnd, ReplyField, ReplyParser
from .model import Verdict, breach

RECV_SIZE = 256 * 1024
PREVIEW_BYTES = 160          # of a reply, quoted in an 'actual'
MESSAGE_CHARS = 4096         # of a streamed value, kept as text (an ERROR's message under "data")
SMALL_CONTENT = 4 * 1024 * 1024   # decoded bytes a reply keeps for comparing byte by byte

SILENT, CLOSED, MALFORMED = "silent", "closed", "malformed"


class NoReply(Exception):
    """What came instead of a whole reply: silence, a closed connection, or bytes that are no reply."""

    def __init__(self, kind: str, waited: float, received: bytes = b"", detail: str = "") -> None:
        self.kind, self.waited, self.received, self.detail = kind, waited, received, detail
        super().__init__(self.describe())

    def describe(self) -> str:
        got = self.received
        if got and _whole_json_object(got):
            what = f"a JSON object without the CR LF CR LF terminator: {_preview(got)}"
            return what + ("; then the connection closed" if self.kind == CLOSED
                           else f"; nothing more within {self.waited:g} s")
        if self.kind == MALFORMED:
            return f"a malformed reply ({self.detail}): {_preview(got)}"
        if self.kind == CLOSED:
            base = self.detail or "the server closed the connection"
            return f"{base} after {len(got)} bytes of a reply: {_preview(got)}" if got else f"{base}, no reply"
        base = self.detail or f"no reply within {self.waited:g} s"
        return f"{base}; {len(got)} bytes came first: {_preview(got)}" if got else base


def _preview(data: bytes) -> str:
    text = repr(bytes(data[:PREVIEW_BYTES]))
    return text + (f"... ({len(data)} bytes)" if len(data) > PREVIEW_BYTES else "")


def _whole_json_object(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, UnicodeDecodeError):
        return False


class Text:
    """A streamed string value of a reply: kept as text up to a point, decoded strictly, hashed."""

    def __init__(self, key: str, keep_bytes: int) -> None:
        self.key = key
        self.chars = 0
        self.text = bytearray()
        self.size = 0                               # decoded bytes
        self.error: Optional[str] = None            # why it is not strict base64
        self.decoded: Optional[bytearray] = bytearray() if keep_bytes else None
        self._keep = keep_bytes
        self._decoder = StrictBase64Decoder()
        self._digest = hashlib.sha256()

    def feed(self, piece: Union[bytes, memoryview]) -> None:
        self.chars += len(piece)
        if len(self.text) < MESSAGE_CHARS:
            self.text += piece[:MESSAGE_CHARS - len(self.text)]
        if self.error is not None:
            return
        try:
            raw = self._decoder.feed(piece)
        except ProtocolError as exc:
            self.error = str(exc)
            return
        self.size += len(raw)
        self._digest.update(raw)
        if self.decoded is not None:
            if len(self.decoded) + len(raw) > self._keep:
                self.decoded = None
            else:
                self.decoded += raw

    def end(self) -> None:
        if self.error is None:
            try:
                self._decoder.finish()
            except ProtocolError as exc:
                self.error = str(exc)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def as_str(self) -> str:
        return self.text.decode("utf-8", "replace")


@dataclass
class Reply:
    fields: dict = field(default_factory=dict)
    texts: dict[str, Text] = field(default_factory=dict)
    raw: bytes = b""                                # the first bytes, for a reader

    @property
    def status(self) -> object:
        return self.fields.get("status")

    def message(self) -> object:
        """The value of ``data`` as a person would read it (a streamed string or any JSON value)."""
        if "data" in self.texts:
            return self.texts["data"].as_str()
        return self.fields.get("data")

    def content(self) -> Optional[Text]:
        """The GET content: under data_file, else under data (a variant)."""
        return self.texts.get("data_file") or self.texts.get("data")

    def describe(self) -> str:
        if self.status == "ERROR":
            return f"ERROR {self.message()!r}"
        return f"{self.status} reply {_preview(self.raw)}"


class Wire:
    """One connection of a case.  Every wait is bounded by the case's deadline."""

    def __init__(self, probe: "Probe", sock: socket.socket) -> None:
        self.probe = probe
        self.sock = sock
        self._leftover = b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.probe.wait())
            self.sock.sendall(data)
        except (socket.timeout, TimeoutError):
            raise NoReply(SILENT, self.probe.timeout, detail="the server stopped reading the request") from None
        except OSError:
            raise NoReply(CLOSED, 0, detail="the server closed the connection while the request was being sent") \
                from None

    def send_pieces(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.send(piece)

    def trickle(self, data: bytes, pause: float) -> None:
        """Send ``data`` one byte per TCP segment, ``pause`` seconds apart."""
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(len(data)):
            self.send(data[index:index + 1])
            if index + 1 < len(data):
                time.sleep(pause)

    def reply(self, keep_bytes: int = SMALL_CONTENT, wait: Optional[float] = None) -> Reply:
        """Read one whole reply; raise :class:`NoReply` when none comes within ``wait`` (default: the
        probe's timeout) of silence."""
        parser = ReplyParser(stream_keys=CONTENT_KEYS)
        reply = Reply()
        received = bytearray()
        data, self._leftover = self._leftover, b""
        while True:
            if not data:
                data = self._receive(wait, received)
            if len(received) < PREVIEW_BYTES:
                received += data[:PREVIEW_BYTES - len(received)]
            try:
                events = parser.feed(data)
            except ProtocolError as exc:
                raise NoReply(MALFORMED, 0, bytes(received), str(exc)) from None
            for event in events:
                if isinstance(event, ReplyField):
                    reply.fields[event.key] = event.value
                elif isinstance(event, ContentStart):
                    reply.texts[event.key] = Text(event.key, keep_bytes)
                elif isinstance(event, ContentData):
                    reply.texts[event.key].feed(event.text)
                elif isinstance(event, ContentEnd):
                    reply.texts[event.key].end()
                elif isinstance(event, ReplyEnd):
                    reply.raw = bytes(received)
                    self._leftover = parser.leftover
                    return reply
            data = b""

    def receive_some(self) -> bytes:
        """Whatever arrives next (at least one byte); NoReply if nothing does."""
        return self._receive(None, bytearray())

    def closed_within(self, seconds: float) -> Optional[bytes]:
        """Wait up to ``seconds`` for the server to close; b"" if it did, None if it did not,
        else the bytes it sent instead."""
        try:
            data = self._receive(seconds, bytearray(), closing_ok=True)
        except NoReply:
            return None
        return data

    def _receive(self, wait: Optional[float], received: bytearray, closing_ok: bool = False) -> bytes:
        wanted = self.probe.timeout if wait is None else wait
        allowed = self.probe.wait(wanted)
        try:
            self.sock.settimeout(allowed)
            data = self.sock.recv(RECV_SIZE)
        except (socket.timeout, TimeoutError):
            cut_short = "the case's time is up" if allowed < wanted else ""
            raise NoReply(SILENT, allowed, bytes(received), cut_short) from None
        except OSError:            # a reset: closed, whatever was on its way is lost
            data = b""
        if not data and not closing_ok:
            raise NoReply(CLOSED, 0, bytes(received))
        return data

    def close(self) -> None:
        self.sock.close()


class Probe:
    """Everything a case knows of the implementation under test, and its means to talk to it.

    ``escape_dirs`` maps folders a name reaching outside the served folder would land in (the
    parent of the folder, the server's working directory) to how a report names them (never by
    their path, which means nothing on another machine); a planted file waits there for a GET
    ``../`` and a stray upload would show there.  ``upload_limit`` is the server's upload limit
    in bytes, when known.
    """

    def __init__(self, address: tuple[str, int], timeout: float, budget: float, *,
                 escape_dirs: Optional[dict[str, str]] = None, outside_file: Optional[str] = None,
                 outside_content: bytes = b"", upload_limit: Optional[int] = None, workers: int = 5,
                 case_id: str = "x") -> None:
        self.address = address
        self.timeout = timeout
        self.deadline = time.monotonic() + budget
        self.escape_dirs = dict(escape_dirs or {})
        self.outside_file = outside_file               # an absolute path the server must never serve
        self.outside_content = outside_content
        self.upload_limit = upload_limit
        self.workers = workers
        self.case_id = case_id
        self.created: list[str] = []                   # names this case stored, removed afterwards
        self._wires: list[Wire] = []
        self._lock = threading.Lock()
        self.aborted = False

    # ------------------------------------------------------------------ time

    def wait(self, wait: Optional[float] = None) -> float:
        """Seconds the next wait may take: ``wait`` (default the timeout), never past the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0 or self.aborted:
            raise NoReply(SILENT, 0, detail="the case's time is up")
        return max(0.001, min(self.timeout if wait is None else wait, left))

    # ------------------------------------------------------------------ connections

    def connect(self) -> Wire:
        try:
            sock = socket.create_connection(self.address, timeout=self.wait())
        except (socket.timeout, TimeoutError):
            raise NoReply(SILENT, self.timeout, detail="connecting timed out") from None
        except OSError as exc:
            raise NoReply(CLOSED, 0, detail=f"cannot connect: {exc.strerror or exc}") from None
        wire = Wire(self, sock)
        with self._lock:
            if self.aborted:
                sock.close()
                raise NoReply(SILENT, 0, detail="the case's time is up")
            self._wires.append(wire)
        return wire

    def abort(self) -> None:
        """Close every connection of the case (its time is up), unblocking whoever waits on one."""
        with self._lock:
            self.aborted = True
            wires, self._wires = self._wires, []
        for wire in wires:
            try:
                wire.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            wire.close()

    def close_all(self) -> None:
        with self._lock:
            wires, self._wires = self._wires, []
        for wire in wires:
            wire.close()

    # ------------------------------------------------------------------ names and content

    def name(self, label: str = "file", suffix: str = ".bin") -> str:
        """A name no other case or run uses."""
        return f"cf-{self.case_id}-{label}-{secrets.token_hex(3)}{suffix}"

    # ------------------------------------------------------------------ steps

    def exchange(self, request: bytes, requirement: str = "1.2", keep_bytes: int = SMALL_CONTENT) -> Reply:
        """Send ``request`` on a fresh connection and read its reply; no reply breaks ``requirement``."""
        try:
            return self.exchange_raw(request, keep_bytes)
        except NoReply as exc:
            raise breach(requirement, "a reply to " + _preview(request[:60]), exc.describe()) from None

    def exchange_raw(self, request: bytes, keep_bytes: int = SMALL_CONTENT) -> Reply:
        """Send ``request`` on a fresh connection and read its reply, or raise :class:`NoReply`."""
        wire = self.connect()
        try:
            wire.send(request)
            return wire.reply(keep_bytes)
        finally:
            wire.close()

    def names(self, requirement: str = "5.1") -> list[str]:
        reply = self.exchange(build_request("LIST"), requirement)
        data = reply.fields.get("data")
        if reply.status != "OK" or not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise breach(requirement, '{"status": "OK", "data": [names...]}', reply.describe())
        return data

    def upload(self, name: str, content: bytes, requirement: str = "7.1") -> Reply:
        reply = self.exchange(upload_prefix(name) + encode_chunk(content) + TERMINATOR, requirement)
        if reply.status != "OK":
            raise breach(requirement, f"OK to an UPLOAD of {len(content)} bytes as {name!r}", reply.describe())
        self.created.append(name)
        return reply

    def get(self, name: str, requirement: str = "6.1") -> bytes:
        """The content a GET of ``name`` brings, strictly decoded; anything else breaks ``requirement``."""
        reply = self.exchange(build_request("GET", name), requirement)
        return content_of(reply, name, requirement)

    def check_content(self, name: str, expected: bytes, requirement: str) -> None:
        got = self.get(name, requirement)
        if got != expected:
            raise breach(requirement, f"GET {name!r} to bring the {len(expected)} bytes stored",
                         difference(expected, got))

    def refused(self, request: bytes, requirement: str, what: str) -> str:
        """Send a request the server must refuse (ERROR, or close); return how it refused."""
        wire = self.connect()
        try:
            wire.send(request)
            reply = wire.reply()
        except NoReply as exc:
            if exc.kind == CLOSED and not exc.received:
                return "closed the connection"
            raise breach("1.2", f"ERROR (or a closed connection) for {what}", exc.describe()) from None
        finally:
            wire.close()
        if reply.status != "ERROR":
            raise breach(requirement, f"ERROR (or a closed connection) for {what}", reply.describe())
        return f"ERROR {reply.message()!r}"

    def still_serves(self) -> None:
        """A LIST on a new connection must be answered (10.4)."""
        try:
            self.names("10.4")
        except Verdict as verdict:
            raise breach("10.4", "a LIST on a new connection answered OK after the bad input",
                         verdict.actual) from None

    def cleanup(self) -> None:
        """Remove what the case stored (best effort: DELETE is optional, the server may be gone)."""
        self.deadline = time.monotonic() + min(self.timeout, 5.0) * max(1, len(self.created))
        self.aborted = False
        for name in self.created:
            try:
                self.exchange(build_request("DELETE", name))
            except Verdict:
                return
        self.created = []


def content_of(reply: Reply, name: str, requirement: str) -> bytes:
    if reply.status != "OK":
        raise breach(requirement, f"OK with the content of {name!r}", reply.describe())
    text = reply.content()
    if text is None:
        raise breach(requirement, f"the content of {name!r} under data_file (or data)", reply.describe())
    if text.error is not None:
        raise breach("4.1", "the content as strict base64", f"{text.error}: {_preview(bytes(text.text))}")
    if text.decoded is None:
        raise breach(requirement, f"a small file's content (at most {SMALL_CONTENT} bytes)",
                     f"{text.size} bytes")
    return bytes(text.decoded)


def difference(expected: bytes, got: bytes) -> str:
    """Where two contents part, for a person."""
    if len(got) != len(expected):
        head = f"{len(got)} bytes instead of {len(expected)}"
    else:
        head = f"{len(got)} bytes"
    for offset, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return f"{head}, first difference at byte {offset}: 0x{b:02x} instead of 0x{a:02x}"
    return head + (", the same up to the shorter one's end" if len(got) != len(expected) else ", identical")


# ---------------------------------------------------------------------- large content, streamed

class PatternSource:
    """``size`` bytes of content that differ block by block, made as they are needed.

    One random block is repeated with its index written into its first bytes, so a
    reply that drops, repeats or swaps a block differs; nothing is held but the block.
    """

    BLOCK = RAW_CHUNK * 21         # a multiple of 3: every piece but the last encodes unpadded

    def __init__(self, size: int) -> None:
        self.size = size
        self._block = os.urandom(self.BLOCK)
        self.sha256 = ""

    def encoded_pieces(self) -> Iterable[bytes]:
        """The base64 text, piece by piece; :attr:`sha256` is set once all are out."""
        digest = hashlib.sha256()
        sent, index = 0, 0
        while sent < self.size:
            raw = (index.to_bytes(8, "big") + self._block[8:])[:self.size - sent]
            digest.update(raw)
            yield encode_chunk(raw)
            sent += len(raw)
            index += 1
        self.sha256 = digest.hexdigest()
