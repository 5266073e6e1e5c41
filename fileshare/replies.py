"""Sans-IO parser of the servers' replies: one JSON object, then ``\r\n\r\n``.

A reply is small (a status, a message, a list of names) except for a GET's
content, a base64 string as large as the file.  :class:`ReplyParser` turns
bytes into events, streaming the values of content keys in pieces and
buffering every other value, so a client reads a reply of any size in bounded
memory.  No sockets here: the tests feed it byte by byte.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Iterable, Union

from .protocol import TERMINATOR, ProtocolError

# Reply keys whose string value may be a whole file: streamed, never buffered.
CONTENT_KEYS = frozenset({"data_file", "data"})
# Largest reply value that is buffered whole (a LIST of many names, a message).
MAX_SMALL_VALUE = 16 * 1024 * 1024
# Largest total of a reply's buffered keys and values: without it, many values each under
# MAX_SMALL_VALUE could take a client's memory anywhere.  Streamed content does not count.
MAX_REPLY_KEPT = 32 * 1024 * 1024
# Deepest nesting of a buffered value; json.loads recurses, and no real reply nests.
MAX_DEPTH = 100


class ReplyState(enum.Enum):
    """Where the parser stands in ``{"key": value, ...}\r\n\r\n``."""
    OPEN = "before the opening brace"
    KEY_OR_CLOSE = "after '{': a key or '}'"
    KEY_START = "after ',': a key"
    KEY = "inside a key"
    COLON = "after a key: ':'"
    VALUE_START = "after ':': a value"
    VALUE = "inside a buffered value"
    CONTENT = "inside a streamed string value"
    COMMA_OR_CLOSE = "after a value: ',' or '}'"
    TAIL = "after '}': the terminator"


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
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
                   ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}


class ReplyParser:
    """Incremental parser for one JSON reply object followed by ``\\r\\n\\r\\n``.

    String values of ``stream_keys`` come out in pieces (:class:`ContentStart`,
    :class:`ContentData`..., :class:`ContentEnd`) so a file of any size passes
    through in bounded memory; every other value is buffered (up to
    ``max_value`` bytes, ``max_total`` for the whole reply, nested at most
    ``MAX_DEPTH`` deep) and comes out decoded as a :class:`ReplyField`.  A key
    given twice is refused: its values would be merged or one silently lost.
    After :class:`ReplyEnd`, :attr:`leftover` holds any bytes that followed.
    """

    def __init__(self, stream_keys: Iterable[str] = CONTENT_KEYS, max_value: int = MAX_SMALL_VALUE,
                 max_total: int = MAX_REPLY_KEPT) -> None:
        self.stream_keys = frozenset(stream_keys)
        self.max_value = max_value
        self.max_total = max_total
        self._kept = 0                  # bytes of keys and small values buffered so far
        self._keys: set[str] = set()
        self.leftover = b""
        self.done = False
        self._state = ReplyState.OPEN
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
            if state is ReplyState.CONTENT:
                pos = self._feed_content(data, view, pos, events)
                continue
            if state in (ReplyState.KEY, ReplyState.VALUE):
                pos = self._feed_token(data, pos, events)
                continue
            byte = data[pos]
            if state is ReplyState.TAIL:
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
            if state is ReplyState.OPEN:
                self._expect(byte, b"{", "a reply must be a JSON object")
                self._state = ReplyState.KEY_OR_CLOSE
            elif state in (ReplyState.KEY_OR_CLOSE, ReplyState.KEY_START):
                if byte == ord("}") and state is ReplyState.KEY_OR_CLOSE:
                    self._state = ReplyState.TAIL
                else:
                    self._expect(byte, b'"', "expected a field name in the reply")
                    self._start_token(b'"', in_string=True)
                    self._state = ReplyState.KEY
            elif state is ReplyState.COLON:
                self._expect(byte, b":", "expected ':' after a field name in the reply")
                self._state = ReplyState.VALUE_START
            elif state is ReplyState.VALUE_START:
                if byte == ord('"') and self._key in self.stream_keys:
                    self._state = ReplyState.CONTENT
                    events.append(ContentStart(self._key))
                else:
                    self._start_token(bytes([byte]), in_string=byte == ord('"'))
                    if byte in b"[{":
                        self._depth = 1
                    self._state = ReplyState.VALUE
                    if byte in b",}]":
                        raise ProtocolError("a reply field has no value")
            elif state is ReplyState.COMMA_OR_CLOSE:
                if byte == ord("}"):
                    self._state = ReplyState.TAIL
                else:
                    self._expect(byte, b",", "expected ',' or '}' in the reply")
                    self._state = ReplyState.KEY_START
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
                if self._depth > MAX_DEPTH:
                    raise ProtocolError(f"malformed reply: a value nested more than {MAX_DEPTH} levels deep")
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
        self._kept += pos - start
        if self._kept > self.max_total:
            raise ProtocolError(f"the reply's fields add up to more than {self.max_total} bytes "
                                f"({self.max_total / (1024 * 1024):g} MiB)")
        if not complete:
            return pos
        try:
            value = json.loads(bytes(self._token))
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"malformed reply: cannot read {bytes(self._token[:60])!r}") from None
        if self._state is ReplyState.KEY:
            if not isinstance(value, str):
                raise ProtocolError("malformed reply: a field name must be a string")
            if value in self._keys:
                raise ProtocolError(f"malformed reply: the field {value[:60]!r} appears twice")
            self._keys.add(value)
            self._key = value
            self._state = ReplyState.COLON
        else:
            events.append(ReplyField(self._key, value))
            self._state = ReplyState.COMMA_OR_CLOSE
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
        self._state = ReplyState.COMMA_OR_CLOSE
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
        if not _HEX_DIGITS.issuperset(escape[2:]):     # int(..., 16) would take signs, spaces, '_'
            raise ProtocolError(f"malformed reply: bad escape {escape!r}")
        code = int(escape[2:], 16)
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
