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
  the file as a base64 JSON string that :class:`ReplyParser` also streams.
"""

from __future__ import annotations

import binascii
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Union

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
# Reply keys whose string value may be a whole file: streamed, never buffered.
CONTENT_KEYS = frozenset({"data_file", "data"})
# Largest reply value that is buffered whole (a LIST of many names, a message).
MAX_SMALL_VALUE = 16 * 1024 * 1024


class ProtocolError(ValueError):
    """A message broke the protocol; ``str(error)`` says how, for a person."""


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
    if any(unicodedata.category(ch) == "Cc" for ch in name):
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
        if b"=" in text[-4:-2]:     # binascii lets a group of nothing but padding through
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

    @property
    def receiving_head(self) -> bool:
        """True while part of a request line (or of an upload's name) has arrived."""
        return self._state == self._HEAD and bool(self._head)

    def feed(self, data: Union[bytes, bytearray]) -> list[RequestEvent]:
        events: list[RequestEvent] = []
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            if self._state == self._BODY:
                cr = data.find(b"\r", pos)
                if cr < 0:
                    events.append(UploadData(view[pos:]))
                    return events
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
            else:
                pos = self._feed_head(data, pos, events)
        return events

    def _feed_head(self, data: Union[bytes, bytearray], pos: int, events: list[RequestEvent]) -> int:
        if not self._head and data[pos:pos + 7].upper() != b"UPLOAD ":
            # A whole small request in what was received: cut it out without buffering.
            end = data.find(TERMINATOR, pos, pos + self.max_request + len(TERMINATOR))
            if end >= 0:
                events.append(self._request(bytes(data[pos:end])))
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
            self._reset_head()
            events.append(self._request(line))
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
    def _request(line: bytes) -> Request:
        text = _decode_text(line)
        command, _, argument = text.partition(" ")
        return Request(command.upper(), argument)


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


def get_reply_prefix(name: str) -> bytes:
    """Everything of a GET reply before the base64 content."""
    return b'{"status": "OK", "data_namafile": ' + json.dumps(name).encode("utf-8") + b', "data_file": "'


GET_REPLY_SUFFIX = b'"}' + TERMINATOR


@dataclass(frozen=True)
class ReplyField:
    """A reply field whose value was small enough to buffer and decode."""
    key: str
    value: object


@dataclass(frozen=True)
class ContentStart:
    """A streamed string value begins (a file's base64 content, usually)."""
    key: str


@dataclass(frozen=True)
class ContentData:
    key: str
    text: Union[bytes, memoryview]   # raw characters of the string, escapes resolved


@dataclass(frozen=True)
class ContentEnd:
    key: str


@dataclass(frozen=True)
class ReplyEnd:
    pass


ReplyEvent = Union[ReplyField, ContentStart, ContentData, ContentEnd, ReplyEnd]

_WHITESPACE = b" \t\r\n"
_STRING_SPECIAL = re.compile(rb'["\\]')
_VALUE_SPECIAL = re.compile(rb'["\[\]{},\s]')
_SIMPLE_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
                   ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}


class ReplyParser:
    """Incremental parser for one JSON reply object followed by ``\\r\\n\\r\\n``.

    String values of ``stream_keys`` come out in pieces (:class:`ContentStart`,
    :class:`ContentData`..., :class:`ContentEnd`) so a file of any size passes
    through in bounded memory; every other value is buffered (up to
    ``max_value`` bytes) and comes out decoded as a :class:`ReplyField`.
    After :class:`ReplyEnd`, :attr:`leftover` holds any bytes that followed.
    """

    def __init__(self, stream_keys: Iterable[str] = CONTENT_KEYS, max_value: int = MAX_SMALL_VALUE) -> None:
        self.stream_keys = frozenset(stream_keys)
        self.max_value = max_value
        self.leftover = b""
        self.done = False
        self._state = "open"
        self._key = ""
        self._token = bytearray()       # a key or small value being collected
        self._depth = 0                 # nesting inside a small value
        self._in_string = False         # inside a string of a small value or key
        self._escaped = False
        self._escape = b""              # an escape of a streamed string split across feeds
        self._high_surrogate: int | None = None
        self._tail_seen = 0

    def feed(self, data: Union[bytes, bytearray]) -> list[ReplyEvent]:
        if self.done:
            self.leftover += bytes(data)
            return []
        events: list[ReplyEvent] = []
        pos, end = 0, len(data)
        view = memoryview(data)
        while pos < end and not self.done:
            state = self._state
            if state == "content":
                pos = self._feed_content(data, view, pos, events)
                continue
            if state in ("key", "value"):
                pos = self._feed_token(data, pos, events)
                continue
            byte = data[pos]
            if state == "tail":
                if byte != TERMINATOR[self._tail_seen]:
                    raise ProtocolError("reply is not followed by \\r\\n\\r\\n")
                self._tail_seen += 1
                pos += 1
                if self._tail_seen == len(TERMINATOR):
                    self.done = True
                    self.leftover = bytes(data[pos:])
                    events.append(ReplyEnd())
                continue
            if byte in _WHITESPACE:
                pos += 1
                continue
            pos += 1
            if state == "open":
                self._expect(byte, b"{", "a reply must be a JSON object")
                self._state = "key_or_close"
            elif state in ("key_or_close", "key_start"):
                if byte == ord("}") and state == "key_or_close":
                    self._state = "tail"
                else:
                    self._expect(byte, b'"', "expected a field name in the reply")
                    self._start_token(b'"', in_string=True)
                    self._state = "key"
            elif state == "colon":
                self._expect(byte, b":", "expected ':' after a field name in the reply")
                self._state = "value_start"
            elif state == "value_start":
                if byte == ord('"') and self._key in self.stream_keys:
                    self._state = "content"
                    events.append(ContentStart(self._key))
                else:
                    self._start_token(bytes([byte]), in_string=byte == ord('"'))
                    if byte in b"[{":
                        self._depth = 1
                    self._state = "value"
                    if byte in b",}]":
                        raise ProtocolError("a reply field has no value")
            elif state == "comma_or_close":
                if byte == ord("}"):
                    self._state = "tail"
                else:
                    self._expect(byte, b",", "expected ',' or '}' in the reply")
                    self._state = "key_start"
        return events

    @staticmethod
    def _expect(byte: int, wanted: bytes, message: str) -> None:
        if byte != wanted[0]:
            raise ProtocolError(f"malformed reply: {message}, got {bytes([byte])!r}")

    def _start_token(self, first: bytes, in_string: bool) -> None:
        self._token = bytearray(first)
        self._in_string = in_string
        self._escaped = False
        self._depth = 0

    def _feed_token(self, data: Union[bytes, bytearray], pos: int, events: list[ReplyEvent]) -> int:
        """Collect a key or a small value up to its end; return where it ended."""
        end = len(data)
        start = pos
        complete = False
        while pos < end:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    pos += 1
                    continue
                found = _STRING_SPECIAL.search(data, pos)
                if found is None:
                    pos = end
                    break
                pos = found.start()
                if data[pos] == 0x5C:       # backslash: the next byte is escaped
                    self._escaped = True
                    pos += 1
                    continue
                self._in_string = False     # closing quote
                pos += 1
                if self._depth == 0:
                    complete = True
                    break
                continue
            found = _VALUE_SPECIAL.search(data, pos)
            if found is None:
                pos = end
                break
            pos = found.start()
            byte = data[pos]
            if byte == 0x22:
                self._in_string = True
                pos += 1
            elif byte in b"[{":
                self._depth += 1
                pos += 1
            elif byte in b"]}":
                if self._depth == 0:        # the '}' closing the reply ends a scalar
                    complete = True
                    break
                self._depth -= 1
                pos += 1
                if self._depth == 0:
                    complete = True
                    break
            elif self._depth == 0:          # ',' or white space ends a scalar
                complete = True
                break
            else:
                pos += 1
        self._token += data[start:pos]
        if len(self._token) > self.max_value:
            raise ProtocolError(f"a reply value is longer than {self.max_value} bytes")
        if not complete:
            return pos
        try:
            value = json.loads(bytes(self._token))
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"malformed reply: cannot read {bytes(self._token[:60])!r}") from None
        if self._state == "key":
            if not isinstance(value, str):
                raise ProtocolError("malformed reply: a field name must be a string")
            self._key = value
            self._state = "colon"
        else:
            events.append(ReplyField(self._key, value))
            self._state = "comma_or_close"
        return pos

    def _feed_content(self, data: Union[bytes, bytearray], view: memoryview, pos: int,
                      events: list[ReplyEvent]) -> int:
        key = self._key
        if self._escape:
            return self._feed_escape(data, pos, events)
        quote = data.find(b'"', pos)
        slash = data.find(b"\\", pos, quote if quote >= 0 else len(data))
        stop = slash if slash >= 0 else quote
        if stop != pos:
            self._flush_surrogate(events)
        if stop < 0:
            events.append(ContentData(key, view[pos:]))
            return len(data)
        if stop > pos:
            events.append(ContentData(key, view[pos:stop]))
        if stop == slash:
            self._escape = b"\\"
            return stop + 1
        self._flush_surrogate(events)
        events.append(ContentEnd(key))
        self._state = "comma_or_close"
        return stop + 1

    def _feed_escape(self, data: Union[bytes, bytearray], pos: int, events: list[ReplyEvent]) -> int:
        """Complete an escape (backslash-n, backslash-u plus 4 hex digits...) split across feeds."""
        if len(self._escape) == 1:
            self._escape += bytes(data[pos:pos + 1])
            pos += 1
        needed = 6 if self._escape[1:2] == b"u" else 2
        take = min(needed - len(self._escape), len(data) - pos)
        if take > 0:
            self._escape += bytes(data[pos:pos + take])
            pos += take
        if len(self._escape) < needed:
            return pos
        escape, self._escape = self._escape, b""
        if escape[1] != ord("u"):
            self._flush_surrogate(events)
            try:
                events.append(ContentData(self._key, _SIMPLE_ESCAPES[escape[1]]))
            except KeyError:
                raise ProtocolError(f"malformed reply: bad escape {escape!r}") from None
            return pos
        try:
            code = int(escape[2:], 16)
        except ValueError:
            raise ProtocolError(f"malformed reply: bad escape {escape!r}") from None
        if 0xDC00 <= code < 0xE000 and self._high_surrogate is not None:
            code = 0x10000 + ((self._high_surrogate - 0xD800) << 10) + (code - 0xDC00)
            self._high_surrogate = None
        else:
            self._flush_surrogate(events)
            if 0xD800 <= code < 0xDC00:       # the first half of a pair: wait for the second
                self._high_surrogate = code
                return pos
        events.append(ContentData(self._key, chr(code).encode("utf-8", "replace")))
        return pos

    def _flush_surrogate(self, events: list[ReplyEvent]) -> None:
        """A lone high surrogate is no character: U+FFFD stands in for it."""
        if self._high_surrogate is not None:
            self._high_surrogate = None
            events.append(ContentData(self._key, "\ufffd".encode("utf-8")))


def parse_reply(data: bytes, stream_keys: Iterable[str] = ()) -> dict:
    """Parse one complete small reply (tests and simple callers)."""
    parser = ReplyParser(stream_keys=stream_keys)
    reply: dict = {}
    for event in parser.feed(data):
        if isinstance(event, ReplyField):
            reply[event.key] = event.value
    if not parser.done:
        raise ProtocolError("reply is incomplete")
    return reply
