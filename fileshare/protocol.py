"""Sans-IO core of the course's file-server protocol.

Everything here is a pure function of bytes: no sockets, no files.  Both servers
and the client build and parse their messages with this module, and the tests
exercise it byte by byte without a network.

Wire format
-----------
* A request is ``COMMAND [ARG ...]`` followed by ``\\r\\n\\r\\n``.  The command
  word is case-insensitive.  ``UPLOAD NAME CONTENT`` carries the file as
  base64 text, which may be far larger than memory, so the parser hands it out
  in pieces (:class:`UploadStart`, :class:`UploadData`, :class:`UploadEnd`).
* A reply is one JSON object followed by ``\\r\\n\\r\\n``.  A GET reply carries
  the file as a base64 JSON string; :mod:`fileshare.replies` parses replies
  incrementally, streaming that string.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from typing import Union

TERMINATOR = b"\r\n\r\n"
MAX_REQUEST_BYTES = 64 * 1024
MAX_NAME_BYTES = 255
# 48 KiB of raw bytes encode to exactly 64 KiB of base64.  Encoded output under
# 128 KiB stays in glibc's heap; larger buffers are mmap'd afresh on every call
# and encode at roughly half the speed on this kind of machine.
RAW_CHUNK = 48 * 1024
# Names the servers use for uploads in progress; never listed, never served.
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".part"


# Unicode's control characters (category Cc): a fixed set, U+0000-U+001F and U+007F-U+009F.
# One regular expression scans a name far faster than a category lookup per character.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


class ProtocolError(ValueError):
    """A message broke the protocol; ``str(error)`` says how, for a person.

    ``after`` holds the bytes received after the broken request when its end is known
    (a whole head that is not UTF-8): the requests in them can still be told apart and
    counted.  None when the stream cannot be split any more.
    """

    def __init__(self, message: str, after: "bytes | None" = None) -> None:
        super().__init__(message)
        self.after = after


# --------------------------------------------------------------------------- names

def validate_name(name: str) -> str:
    """Return ``name`` if it is one plain file name inside the served folder.

    Refuses what could reach elsewhere or confuse a listing: empty names, ``.``
    and ``..``, separators, NUL and control characters, over-long names and
    the servers' own temporary upload names.
    """
    if not name:
        raise ProtocolError("file name is empty")
    if name in (".", ".."):
        raise ProtocolError(f"file name {name!r} is not allowed")
    if "/" in name or "\\" in name:
        raise ProtocolError(f"file name {name!r} contains a path separator; give a plain file name")
    if _CONTROL_CHARACTER.search(name):
        raise ProtocolError(f"file name {name!r} contains a control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"file name {name!r} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise ProtocolError(f"file name is {len(encoded)} bytes long; the limit is {MAX_NAME_BYTES}")
    if is_temp_name(name):
        raise ProtocolError(f"file name {name!r} is reserved for uploads in progress")
    return name


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


# --------------------------------------------------------------------------- base64

def encoded_size(raw_size: int) -> int:
    """Length of the base64 text for ``raw_size`` bytes (padded, no newlines)."""
    return 4 * ((raw_size + 2) // 3)


def encode_chunk(raw: bytes) -> bytes:
    """Base64 of one piece; every piece but the last must be a multiple of 3 long."""
    return binascii.b2a_base64(raw, newline=False)


class StrictBase64Decoder:
    """Decode base64 text fed in arbitrary pieces, refusing anything sloppy.

    Characters outside the alphabet, padding anywhere but the very end, and a
    text whose length is not a multiple of four all raise :class:`ProtocolError`.
    At most three characters are held between calls.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._padded = False
        self.decoded_bytes = 0

    def feed(self, text: Union[bytes, bytearray, memoryview]) -> bytes:
        if not text:
            return b""
        if self._padded:
            raise ProtocolError("invalid base64: data after the final padding")
        if self._carry:
            # One copy of the piece beats decoding the straddling group on its own;
            # a reader that asks aligned() for its sizes rarely gets here.
            text = b"".join((self._carry, text))
            self._carry = b""
        whole = len(text) - len(text) % 4
        if whole != len(text):
            self._carry = bytes(text[whole:])
            text = memoryview(text)[:whole]
        return self._decode(text) if whole else b""

    def aligned(self, size: int) -> int:
        """How many characters, at most ``size``, to read next so that none is left over.

        A reader that receives this many (when that many have arrived) hands
        :meth:`feed` whole 4-character groups, which it decodes without copying.
        """
        aligned = size - (size + len(self._carry)) % 4
        return aligned if aligned > 0 else size

    def finish(self) -> None:
        """Check that the text ended cleanly; raise :class:`ProtocolError` if not."""
        if self._carry:
            raise ProtocolError("invalid base64: the text ends in the middle of a 4-character group")

    def _decode(self, text: Union[bytes, memoryview]) -> bytes:
        try:
            out = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"invalid base64: {exc}") from None
        # binascii lets a group of nothing but padding through.  Compare bytes: ``in`` on a
        # memoryview looks for the integer, never for b"=", and the parsers pass memoryviews.
        if b"=" in bytes(text[-4:-2]):
            raise ProtocolError("invalid base64: too much padding")
        if text[-1:] == b"=":
            self._padded = True
        self.decoded_bytes += len(out)
        return out


# --------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class Request:
    """A complete request other than an upload body: ``GET name``, ``LIST``..."""
    command: str    # upper-cased command word
    argument: str   # everything after the first space ('' when there is none)


@dataclass(frozen=True)
class UploadStart:
    name: str       # not yet validated: the server decides what to answer


@dataclass(frozen=True)
class UploadData:
    text: Union[bytes, memoryview]   # a piece of the base64 content


@dataclass(frozen=True)
class UploadEnd:
    pass


RequestEvent = Union[Request, UploadStart, UploadData, UploadEnd]


def build_request(command: str, *args: str) -> bytes:
    return " ".join((command, *args)).encode("utf-8") + TERMINATOR


def upload_prefix(name: str) -> bytes:
    """The bytes that precede the base64 content of an UPLOAD request."""
    return b"UPLOAD " + name.encode("utf-8") + b" "


class RequestParser:
    """Turn the bytes a server receives into request events.

    Small requests are buffered (up to ``max_request`` bytes) and come out as
    one :class:`Request`.  An upload comes out as :class:`UploadStart`, any
    number of :class:`UploadData` and :class:`UploadEnd`; its content is never
    buffered.  Base64 has no ``\\r``, so the first one ends the content and
    must begin the terminator.  Work is linear in the bytes fed.
    """

    _HEAD, _BODY, _TAIL = range(3)

    def __init__(self, max_request: int = MAX_REQUEST_BYTES) -> None:
        self.max_request = max_request
        self._state = self._HEAD
        self._head = bytearray()
        self._scanned = 0          # bytes of _head already searched for the terminator
        self._tail_seen = 0        # bytes of the terminator matched after a body

    @property
    def idle(self) -> bool:
        """True between requests: no byte of a next request has arrived."""
        return self._state == self._HEAD and not self._head

    def partial_stats(self) -> bool:
        """True while what has arrived of the next request can only be a STATS (never counted)."""
        partial = bytes(self._head).rstrip(b"\r\n").upper() if self._state == self._HEAD else b""
        return bool(partial) and b"STATS".startswith(partial)

    def feed(self, data: Union[bytes, bytearray]) -> list[RequestEvent]:
        return self._feed(data, stop_after_request=False)[0]

    def feed_request(self, data: Union[bytes, bytearray]) -> tuple[list[RequestEvent], int]:
        """Like :meth:`feed`, but stop as soon as one request is complete.

        Returns the events and how many bytes of ``data`` they used; the rest
        belongs to the requests after it (pipelined) and has not been looked at.
        """
        return self._feed(data, stop_after_request=True)

    def _feed(self, data: Union[bytes, bytearray], stop_after_request: bool) -> tuple[list[RequestEvent], int]:
        events: list[RequestEvent] = []
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            if self._state == self._BODY:
                cr = data.find(b"\r", pos)
                if cr < 0:
                    events.append(UploadData(view[pos:]))
                    return events, len(data)
                if cr > pos:
                    events.append(UploadData(view[pos:cr]))
                self._state, self._tail_seen, pos = self._TAIL, 0, cr
            elif self._state == self._TAIL:
                while pos < len(data) and self._tail_seen < 4:
                    if data[pos] != TERMINATOR[self._tail_seen]:
                        raise ProtocolError("invalid base64: only base64 characters may follow the upload's file name")
                    self._tail_seen += 1
                    pos += 1
                if self._tail_seen == 4:
                    events.append(UploadEnd())
                    self._state = self._HEAD
                    if stop_after_request:
                        return events, pos
            else:
                pos = self._feed_head(data, pos, events)
                if stop_after_request and events and isinstance(events[-1], Request):
                    return events, pos
        return events, pos

    def _feed_head(self, data: Union[bytes, bytearray], pos: int, events: list[RequestEvent]) -> int:
        if not self._head:
            # Blank lines between requests are skipped, as HTTP servers do: they are what is left
            # of a terminator sent after a pause (a person at telnet), after its request was
            # already served as sent, and never a request of their own.
            # Found in C: a stream of them must not cost the loop a Python step per byte.
            start = _NOT_A_LINE_BREAK.search(data, pos)
            if start is None:
                return len(data)
            pos = start.start()
        if not self._head and data[pos:pos + 7].upper() != b"UPLOAD ":
            # A whole small request in what was received: cut it out without buffering.
            end = data.find(TERMINATOR, pos, pos + self.max_request + len(TERMINATOR))
            if end >= 0:
                events.append(self._request(bytes(data[pos:end]), data, end + len(TERMINATOR)))
                return end + len(TERMINATOR)
        room = self.max_request + len(TERMINATOR) - len(self._head)
        take = min(len(data) - pos, room)
        self._head += data[pos:pos + take]
        pos += take
        start = max(0, self._scanned - (len(TERMINATOR) - 1))
        end = self._head.find(TERMINATOR, start)
        upload = self._upload_start(end)
        if upload is not None:
            name, content_at = upload
            leftover = len(self._head) - content_at
            self._reset_head()
            self._state = self._BODY
            events.append(UploadStart(name))
            return pos - leftover
        if end > self.max_request or (end < 0 and len(self._head) >= self.max_request + len(TERMINATOR)):
            raise ProtocolError(f"request is longer than {self.max_request} bytes without its \\r\\n\\r\\n terminator")
        if end >= 0:
            line = bytes(self._head[:end])
            leftover = len(self._head) - end - len(TERMINATOR)
            rest = bytes(self._head[end + len(TERMINATOR):]) + bytes(data[pos:]) if leftover or pos < len(data) else b""
            self._reset_head()
            events.append(self._request(line, rest, 0))
            return pos - leftover
        self._scanned = len(self._head)
        return pos

    def _upload_start(self, end: int) -> "tuple[str, int] | None":
        """(name, offset of the content) once an UPLOAD's name is complete."""
        if self._head[:7].upper() != b"UPLOAD ":
            return None
        space = self._head.find(b" ", max(7, self._scanned), end if end >= 0 else len(self._head))
        if space < 0:
            return None
        return _decode_text(self._head[7:space]), space + 1

    def _reset_head(self) -> None:
        self._head = bytearray()
        self._scanned = 0

    @staticmethod
    def _request(line: bytes, received: Union[bytes, bytearray], after_at: int) -> Request:
        """The request ``line`` holds; what ``received`` holds from ``after_at`` on goes with its error."""
        try:
            text = _decode_text(line)
        except ProtocolError as exc:
            raise ProtocolError(str(exc), after=bytes(received[after_at:])) from None
        command, _, argument = text.partition(" ")
        return Request(command.upper(), argument)


_NOT_A_LINE_BREAK = re.compile(rb"[^\r\n]")

# The longest request a course-style client could send unterminated: "DELETE " and a name.
_MAX_UNTERMINATED = len("DELETE ") + MAX_NAME_BYTES + 2


def unterminated_request(head: Union[bytes, bytearray]) -> "bytes | None":
    """The request to serve for ``head`` if it reads as a whole request sent without ``\\r\\n\\r\\n``.

    The course's reference client sends ``LIST`` or ``GET name`` with no terminator
    and waits; a server that has seen nothing more for a while may serve it.  Only
    ``LIST``, ``STATS``, ``GET NAME`` and ``DELETE NAME`` qualify (a trailing line
    break is dropped), never ``UPLOAD``: its content has no end without the
    terminator.  Returns the request terminated, ready for :class:`RequestParser`.
    """
    if len(head) > _MAX_UNTERMINATED:
        return None
    line = bytes(head).rstrip(b"\r\n")
    if b"\r" in line or b"\n" in line:
        return None
    command, space, name = line.partition(b" ")
    command = command.upper()
    whole = ((command in (b"LIST", b"STATS") and not space)
             or (command in (b"GET", b"DELETE") and name.strip(b" ") != b""))
    return line + TERMINATOR if whole else None


def head_complete(data: Union[bytes, bytearray]) -> bool:
    """True if ``data`` begins with what a worker can act on at once: a whole request's head
    (an UPLOAD's up to its name), or bytes that break the protocol (it answers them)."""
    try:
        events, _ = RequestParser().feed_request(data)
    except ProtocolError:
        return True
    return bool(events)


def requests_begun(data: Union[bytes, bytearray]) -> int:
    """How many counted requests ``data`` holds: whole ones and a last one cut short.

    A server that must hang up on bytes it had received but not answered counts
    these as failed.  STATS is never counted, so a whole STATS is not either; the
    bytes after a protocol error count as one request, since they cannot be split.
    """
    parser = RequestParser()
    count = 0
    try:
        for event in parser.feed(data):
            if isinstance(event, UploadEnd) or (isinstance(event, Request) and event.command != "STATS"):
                count += 1
    except ProtocolError as exc:
        return count + 1 + (requests_begun(exc.after) if exc.after else 0)
    return count if parser.idle or parser.partial_stats() else count + 1


def _decode_text(raw: Union[bytes, bytearray]) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request is not valid UTF-8 text") from None


# --------------------------------------------------------------------------- replies

def build_reply(status: str, **fields: object) -> bytes:
    return json.dumps({"status": status, **fields}).encode("utf-8") + TERMINATOR


def ok_reply(**fields: object) -> bytes:
    return build_reply("OK", **fields)


def error_reply(message: str) -> bytes:
    return build_reply("ERROR", data=message)


GET_REPLY_KEYS = ("data_file", "data")    # the course's key, and the one some other implementations' clients read


def get_reply_prefix(name: str, key: str = "data_file") -> bytes:
    """Everything of a GET reply before the base64 content, which is carried under ``key``."""
    if key not in GET_REPLY_KEYS:
        raise ValueError(f"a GET reply carries its content as one of {GET_REPLY_KEYS}, not {key!r}")
    return (b'{"status": "OK", "data_namafile": ' + json.dumps(name).encode("utf-8") + b', "'
            + key.encode("ascii") + b'": "')


GET_REPLY_SUFFIX = b'"}' + TERMINATOR
