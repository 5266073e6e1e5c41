"""Unit tests for fileshare.protocol: pure bytes in, events out, no network.

Run with:  cd /work/main && python -m unittest tests.test_protocol -v
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sys
import unittest

from fileshare import protocol
from fileshare.protocol import (
    GET_REPLY_SUFFIX, MAX_NAME_BYTES, MAX_REQUEST_BYTES, RAW_CHUNK, TERMINATOR,
    ProtocolError, Request, RequestParser, StrictBase64Decoder, UploadData, UploadEnd, UploadStart,
    build_reply, build_request, encode_chunk, encoded_size, error_reply, get_reply_prefix,
    is_temp_name, ok_reply, requests_begun, upload_prefix, validate_name,
)
from fileshare.replies import (
    CONTENT_KEYS, ContentData, ContentEnd, ContentStart, ReplyEnd, ReplyField, ReplyParser, parse_reply,
)


# --------------------------------------------------------------------------- helpers

def split_variants(data: bytes, seed: int = 0, random_splits: int = 40):
    """Yield (label, pieces) for every way of feeding ``data`` we care about.

    * the whole thing in one piece,
    * every 2-way split point,
    * one byte at a time,
    * a few seeded random multi-way splits (some with empty pieces).
    """
    yield "whole", [data]
    for i in range(1, len(data)):
        yield f"split at {i}", [data[:i], data[i:]]
    yield "1 byte at a time", [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for n in range(random_splits):
        if len(data) < 2:
            break
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(2, 6))))
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        if n % 4 == 0:
            pieces.insert(rng.randrange(len(pieces) + 1), b"")
        yield f"random cuts {cuts}", pieces


def feed_requests(pieces, parser: RequestParser | None = None):
    """Feed pieces to a RequestParser; return (parser, normalised events).

    UploadData pieces are copied to bytes at once and consecutive ones joined,
    so the result does not depend on how the input was cut.
    """
    parser = parser or RequestParser()
    out: list = []
    for piece in pieces:
        for event in parser.feed(piece):
            if isinstance(event, UploadData):
                chunk = bytes(event.text)
                if out and out[-1][0] == "data":
                    out[-1][1].extend(chunk)
                else:
                    out.append(["data", bytearray(chunk)])
            elif isinstance(event, Request):
                out.append(["request", event.command, event.argument])
            elif isinstance(event, UploadStart):
                out.append(["start", event.name])
            elif isinstance(event, UploadEnd):
                out.append(["end"])
            else:  # pragma: no cover - a wrong event type is a failure
                raise AssertionError(f"unexpected event {event!r}")
    return parser, [tuple(bytes(x) if isinstance(x, bytearray) else x for x in e) for e in out]


def feed_reply(pieces, parser: ReplyParser | None = None, decoders: dict | None = None):
    """Feed pieces to a ReplyParser; return (parser, normalised events).

    ContentStart/ContentData/ContentEnd are checked to nest properly and are
    merged into one ("content", key, bytes) item.  When ``decoders`` is a
    dict, each streamed piece is also fed, as it arrives, to a
    StrictBase64Decoder per key and the decoded bytes collected there.
    """
    parser = parser or ReplyParser()
    out: list = []
    open_key = None
    buf = bytearray()
    for piece in pieces:
        for event in parser.feed(piece):
            if isinstance(event, ContentStart):
                assert open_key is None, f"ContentStart inside {open_key!r}"
                open_key, buf = event.key, bytearray()
                if decoders is not None:
                    decoders[event.key] = [StrictBase64Decoder(), bytearray()]
            elif isinstance(event, ContentData):
                assert event.key == open_key, f"ContentData for {event.key!r} outside its value"
                chunk = bytes(event.text)
                buf += chunk
                if decoders is not None:
                    decoders[event.key][1] += decoders[event.key][0].feed(chunk)
            elif isinstance(event, ContentEnd):
                assert event.key == open_key, f"ContentEnd for {event.key!r} without its start"
                out.append(("content", open_key, bytes(buf)))
                if decoders is not None:
                    decoders[open_key][0].finish()
                open_key = None
            elif isinstance(event, ReplyField):
                assert open_key is None, "ReplyField inside a streamed value"
                out.append(("field", event.key, event.value))
            elif isinstance(event, ReplyEnd):
                assert open_key is None, "ReplyEnd inside a streamed value"
                out.append(("end",))
            else:  # pragma: no cover
                raise AssertionError(f"unexpected event {event!r}")
    return parser, out


class _Pairs(list):
    """A JSON object as json.loads saw it: its (key, value) pairs in order."""


def expected_reply(reply: bytes, stream_keys=CONTENT_KEYS):
    """What a correct ReplyParser must report for ``reply`` (computed with json)."""
    assert reply.endswith(TERMINATOR)
    pairs = json.loads(reply[:-len(TERMINATOR)].decode("utf-8"), object_pairs_hook=_Pairs)
    out = []
    for key, value in pairs:
        if key in stream_keys and isinstance(value, str):
            out.append(("content", key, value.encode("utf-8")))
        else:
            out.append(("field", key, _to_dicts(value)))
    out.append(("end",))
    return out


def _to_dicts(value):
    if isinstance(value, _Pairs):
        return {k: _to_dicts(v) for k, v in value}
    if isinstance(value, list):
        return [_to_dicts(v) for v in value]
    return value


def decode_strict(text: bytes, piece: int) -> bytes:
    """Decode ``text`` with StrictBase64Decoder fed in ``piece``-byte pieces, then finish()."""
    decoder = StrictBase64Decoder()
    out = bytearray()
    for i in range(0, len(text), piece):
        out += decoder.feed(text[i:i + piece])
    decoder.finish()
    return bytes(out)


class SplitAssertions:
    """Checks that run a parser over every way of cutting its input.

    Failures are gathered and reported once per call (how many cuts went
    wrong and the first few), so one bug does not print hundreds of tracebacks.
    """

    def assertSameForEverySplit(self, data: bytes, run, expected, **variant_args):
        problems = []
        total = 0
        for label, pieces in split_variants(data, **variant_args):
            total += 1
            try:
                got = run(pieces)
            except Exception as exc:       # ProtocolError, or a nesting assertion in a helper
                problems.append(f"{label}: raised {type(exc).__name__}: {exc}")
                continue
            if got != expected:
                problems.append(f"{label}: got {got!r}")
        if problems:
            self.fail(f"{len(problems)} of {total} ways of feeding {data[:80]!r} went wrong.\n"
                      f"expected {expected!r}\n" + "\n".join(problems[:6]))

    def assertRejectedEverySplit(self, data: bytes, run, **variant_args):
        accepted = []
        total = 0
        for label, pieces in split_variants(data, **variant_args):
            total += 1
            try:
                got = run(pieces)
            except ProtocolError:
                continue
            accepted.append(f"{label}: got {got!r}")
        if accepted:
            self.fail(f"{len(accepted)} of {total} ways of feeding {data[:80]!r} raised no ProtocolError:\n"
                      + "\n".join(accepted[:6]))


def run_requests(max_request: int = MAX_REQUEST_BYTES):
    """A ``run`` for SplitAssertions: (events, idle) of a fresh RequestParser."""
    def run(pieces):
        parser, events = feed_requests(pieces, RequestParser(max_request))
        return events, parser.idle
    return run


def run_reply(**parser_args):
    """A ``run`` for SplitAssertions: (events, done, leftover) of a fresh ReplyParser."""
    def run(pieces):
        parser, events = feed_reply(pieces, ReplyParser(**parser_args))
        return events, parser.done, parser.leftover
    return run


# --------------------------------------------------------------------------- names

class ValidateNameTests(unittest.TestCase):

    def test_accepts_plain_names(self):
        for name in ["a", "file.txt", "my file name.txt", " leading space", "trailing space ",
                     ".hidden", "..dots", "...", "a..b", "café.txt", "日本語.txt", "emoji 😀.png",
                     "Ünïcödé ñ", "-dash", "name.part", ".upload-", ".upload-x", "x.upload-1.part",
                     ".part", "a" * MAX_NAME_BYTES]:
            with self.subTest(name=name):
                self.assertEqual(validate_name(name), name)

    def test_rejects_empty_dot_and_dotdot(self):
        for name in ["", ".", ".."]:
            with self.subTest(name=name):
                with self.assertRaises(ProtocolError):
                    validate_name(name)

    def test_rejects_separators(self):
        for name in ["a/b", "../x", "/abs", "x/", "a\\b", "..\\x", "\\", "/"]:
            with self.subTest(name=name):
                with self.assertRaises(ProtocolError):
                    validate_name(name)

    def test_rejects_control_characters(self):
        for name in ["a\x00b", "\x00", "a\nb", "name\n", "\r", "tab\there", "del\x7f", "\x1b[31m", "\x85nel"]:
            with self.subTest(name=name):
                with self.assertRaises(ProtocolError):
                    validate_name(name)

    def test_control_characters_are_exactly_unicode_category_cc(self):
        import unicodedata
        control = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cc")
        for ch in control:
            with self.assertRaises(ProtocolError, msg=hex(ord(ch))):
                validate_name(f"a{ch}b")
        for ch in map(chr, (0x20, 0x7e, 0xa0, 0x200b, 0xfeff, 0x1f600)):    # neighbours and lookalikes
            self.assertEqual(validate_name(f"a{ch}b"), f"a{ch}b")

    def test_rejects_unencodable_surrogate(self):
        with self.assertRaises(ProtocolError):
            validate_name("bad\ud800name")

    def test_length_limit_is_in_utf8_bytes(self):
        accepted = ["a" * 255, "é" * 127 + "a", "日" * 85, "😀" * 63 + "abc"]
        rejected = ["a" * 256, "é" * 128, "日" * 86, "😀" * 64, "x" * 10000]
        for name in accepted:
            with self.subTest(accepted=len(name.encode())):
                self.assertEqual(len(name.encode("utf-8")), 255)
                self.assertEqual(validate_name(name), name)
        for name in rejected:
            with self.subTest(rejected=len(name.encode())):
                self.assertGreater(len(name.encode("utf-8")), 255)
                with self.assertRaises(ProtocolError):
                    validate_name(name)

    def test_rejects_temp_upload_names(self):
        for name in [".upload-123-abc.part", ".upload-.part", ".upload-w1-x7y.part"]:
            with self.subTest(name=name):
                self.assertTrue(is_temp_name(name))
                with self.assertRaises(ProtocolError):
                    validate_name(name)

    def test_is_temp_name(self):
        self.assertTrue(is_temp_name(protocol.TEMP_PREFIX + "anything" + protocol.TEMP_SUFFIX))
        for name in ["upload-1.part", ".upload-1.par", "x.upload-1.part", ".upload-1.part.txt", ".hidden"]:
            with self.subTest(name=name):
                self.assertFalse(is_temp_name(name))


# --------------------------------------------------------------------------- base64 helpers

class EncodeTests(unittest.TestCase):

    def test_encoded_size_matches_base64(self):
        for n in list(range(0, 40)) + [RAW_CHUNK - 1, RAW_CHUNK, RAW_CHUNK + 1, 10**6]:
            with self.subTest(n=n):
                self.assertEqual(encoded_size(n), len(base64.b64encode(bytes(n))))

    def test_raw_chunk_encodes_to_64k(self):
        self.assertEqual(RAW_CHUNK % 3, 0)
        self.assertEqual(encoded_size(RAW_CHUNK), 64 * 1024)

    def test_encode_chunk_pieces_concatenate(self):
        raw = random.Random(1).randbytes(RAW_CHUNK * 2 + 1000)
        pieces = [raw[i:i + RAW_CHUNK] for i in range(0, len(raw), RAW_CHUNK)]
        encoded = b"".join(encode_chunk(p) for p in pieces)
        self.assertEqual(encoded, base64.b64encode(raw))
        self.assertNotIn(b"\n", encoded)
        self.assertEqual(encode_chunk(b""), b"")
        self.assertEqual(encode_chunk(b"ABC"), b"QUJD")
        self.assertEqual(encode_chunk(b"A"), b"QQ==")


# --------------------------------------------------------------------------- strict base64

class StrictBase64DecoderTests(unittest.TestCase):

    def assertRejected(self, text: bytes, pieces=(None, 1, 2, 3, 4, 5)):
        """``text`` must raise ProtocolError (in feed or finish) however it is cut."""
        sizes = dict.fromkeys((len(text) or 1) if piece is None else piece for piece in pieces)
        for size in sizes:
            with self.subTest(text=text, piece=size):
                with self.assertRaises(ProtocolError):
                    decode_strict(text, size)

    def test_valid_text_in_pieces_1_to_7(self):
        rng = random.Random(2)
        for n in list(range(0, 20)) + [100, 1001, 4096]:
            raw = rng.randbytes(n)
            text = base64.b64encode(raw)
            for piece in range(1, 8):
                with self.subTest(n=n, piece=piece):
                    decoder = StrictBase64Decoder()
                    out = bytearray()
                    for i in range(0, len(text), piece):
                        out += decoder.feed(text[i:i + piece])
                    decoder.finish()
                    self.assertEqual(bytes(out), raw)
                    self.assertEqual(decoder.decoded_bytes, n)

    def test_valid_text_as_memoryview_and_bytearray(self):
        raw = random.Random(3).randbytes(1000)
        text = base64.b64encode(raw)
        for wrap in (memoryview, bytearray):
            decoder = StrictBase64Decoder()
            out = bytearray()
            for i in range(0, len(text), 7):
                out += decoder.feed(wrap(text[i:i + 7]))
            decoder.finish()
            self.assertEqual(bytes(out), raw)

    def test_aligned_sizes_leave_nothing_over(self):
        # Whatever a first piece left over, one piece of the size aligned() gives
        # completes the group, and the content still decodes exactly.
        raw = random.Random(4).randbytes(3000)
        text = base64.b64encode(raw)
        for first in range(0, 9):
            with self.subTest(first=first):
                decoder = StrictBase64Decoder()
                out = bytearray(decoder.feed(text[:first]))
                size = decoder.aligned(101)
                self.assertEqual(size, 101 - (101 + first % 4) % 4)
                out += decoder.feed(text[first:first + size])
                self.assertEqual(decoder.aligned(101), 100, "a group is still held back")
                out += decoder.feed(text[first + size:])
                decoder.finish()
                self.assertEqual(bytes(out), raw)

    def test_aligned_never_asks_for_nothing(self):
        for carry in range(4):
            decoder = StrictBase64Decoder()
            decoder.feed(b"QUJD"[:carry])
            for size in range(1, 9):
                with self.subTest(carry=carry, size=size):
                    self.assertIn(decoder.aligned(size), range(1, size + 1))

    def test_empty_feed_is_harmless(self):
        decoder = StrictBase64Decoder()
        self.assertEqual(decoder.feed(b""), b"")
        self.assertEqual(decoder.feed(b"QU"), b"")
        self.assertEqual(decoder.feed(b""), b"")
        self.assertEqual(decoder.feed(b"JD"), b"ABC")
        decoder.finish()
        self.assertEqual(decoder.decoded_bytes, 3)

    def test_output_is_released_as_soon_as_a_group_is_complete(self):
        decoder = StrictBase64Decoder()
        self.assertEqual(decoder.feed(b"QUJ"), b"")
        self.assertEqual(decoder.decoded_bytes, 0)
        self.assertEqual(decoder.feed(b"DRE"), b"ABC")
        self.assertEqual(decoder.decoded_bytes, 3)
        self.assertEqual(decoder.feed(b"VGRw=="), b"DEFG")
        self.assertEqual(decoder.decoded_bytes, 7)
        decoder.finish()

    def test_decoded_bytes_counts(self):
        for raw in [b"", b"A", b"AB", b"ABC", b"ABCD", bytes(range(256)) * 3]:
            text = base64.b64encode(raw)
            for piece in (1, 3, 4, 5, len(text) or 1):
                with self.subTest(n=len(raw), piece=piece):
                    decoder = StrictBase64Decoder()
                    seen = 0
                    for i in range(0, len(text), piece):
                        seen += len(decoder.feed(text[i:i + piece]))
                        self.assertEqual(decoder.decoded_bytes, seen)
                    decoder.finish()
                    self.assertEqual(decoder.decoded_bytes, len(raw))

    def test_rejects_characters_outside_the_alphabet(self):
        good = b"QUJDREVGR0hJ"          # "ABCDEFGHI"
        bad_chars = [b" ", b"\n", b"\r", b"\t", b"-", b"_", b"*", b".", b"\x00",
                     "é".encode("utf-8"), b"\xff", b"\x80"]
        for bad in bad_chars:
            for at in (0, 1, 3, 4, 6, 11, 12):
                text = good[:at] + bad + good[at:]
                self.assertRejected(text, pieces=(None, 1, 4, 5))

    def test_rejects_url_safe_alphabet(self):
        # b"\xfb\xff\xbf" is "+/+/" in the standard alphabet and "-_-_" in the URL-safe one
        self.assertEqual(decode_strict(b"+/+/", 4), base64.b64decode(b"+/+/"))
        self.assertRejected(b"-_-_")

    def test_rejects_padding_in_the_middle(self):
        for text in [b"QQ==QUJD", b"QQ=AQUJD", b"Q=Q=", b"QUJDQQ==QUJD", b"QU=D", b"Q=JD"]:
            self.assertRejected(text)

    def test_rejects_data_after_padding_across_feeds(self):
        cases = [
            [b"QQ==", b"QUJD"],
            [b"QQ==", b"Q"],
            [b"QQ=", b"=QUJD"],
            [b"QQ", b"==", b"QUJD"],
            [b"QUI=", b"QUI="],
            [b"QQ==Q"],            # a stray character after the padding, in the same feed
            [b"QQ==", b"===="],
        ]
        for pieces in cases:
            with self.subTest(pieces=pieces):
                decoder = StrictBase64Decoder()
                with self.assertRaises(ProtocolError):
                    for piece in pieces:
                        decoder.feed(piece)
                    decoder.finish()

    def test_after_padding_only_empty_feeds_are_allowed(self):
        decoder = StrictBase64Decoder()
        self.assertEqual(decoder.feed(b"QQ=="), b"A")
        self.assertEqual(decoder.feed(b""), b"")
        decoder.finish()
        with self.assertRaises(ProtocolError):
            decoder.feed(b"Q")

    def test_rejects_length_not_multiple_of_4_at_finish(self):
        for text in [b"Q", b"QQ", b"QQ=", b"QUJ", b"QUJDR", b"QUJDRE", b"QUJDREV"]:
            with self.subTest(text=text):
                decoder = StrictBase64Decoder()
                decoder.feed(text)          # incomplete is fine until finish()
                with self.assertRaises(ProtocolError):
                    decoder.finish()
            self.assertRejected(text)

    def test_rejects_leading_padding(self):
        for text in [b"====", b"=QUJ", b"==QQ", b"====QUJD", b"=", b"=="]:
            self.assertRejected(text)

    def test_rejects_a_group_of_only_padding_after_data(self):
        # "QUJD====" is "ABC" followed by a group made only of padding: the
        # padding leads its group.  It must be refused however it arrives.
        for text in [b"QUJD====", b"QUJDQUJD====", b"QUJD========"]:
            self.assertRejected(text, pieces=(None, 1, 2, 3, 4, 5, 8))

    def test_rejects_excess_padding(self):
        for text in [b"Q===", b"QQ======", b"QUI=====", b"QQ===", b"QUI=="]:
            self.assertRejected(text)


# --------------------------------------------------------------------------- request framing

class RequestFramingTests(SplitAssertions, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        raw = random.Random(4).randbytes(301)
        cls.raw = raw
        cls.b64 = base64.b64encode(raw)
        cls.stream = b"".join([
            build_request("LIST"),
            build_request("GET", "my file with spaces.txt"),
            upload_prefix("photo_1.bin") + cls.b64 + TERMINATOR,
            b"list\r\n\r\n",
            b"get r\xc3\xa9sum\xc3\xa9 2024.pdf\r\n\r\n",
            b"upload small.txt QUJD\r\n\r\n",
            b"UPLOAD empty.txt \r\n\r\n",
            b"UpLoAd noargs\r\n\r\n",
            b"dElEtE old.txt\r\n\r\n",
        ])
        cls.expected = [
            ("request", "LIST", ""),
            ("request", "GET", "my file with spaces.txt"),
            ("start", "photo_1.bin"),
            ("data", cls.b64),
            ("end",),
            ("request", "LIST", ""),
            ("request", "GET", "résumé 2024.pdf"),
            ("start", "small.txt"),
            ("data", b"QUJD"),
            ("end",),
            ("start", "empty.txt"),
            ("end",),
            ("request", "UPLOAD", "noargs"),
            ("request", "DELETE", "old.txt"),
        ]

    def test_stream_in_one_piece(self):
        parser, events = feed_requests([self.stream])
        self.assertEqual(events, self.expected)
        self.assertTrue(parser.idle)

    def test_stream_at_every_split(self):
        self.assertSameForEverySplit(self.stream, run_requests(), (self.expected, True), seed=11)

    def test_upload_content_decodes_to_original(self):
        for label, pieces in [("whole", [self.stream]),
                              ("1 byte", [self.stream[i:i + 1] for i in range(len(self.stream))])]:
            with self.subTest(label):
                parser = RequestParser()
                decoder = None
                decoded = bytearray()
                for piece in pieces:
                    for event in parser.feed(piece):
                        if isinstance(event, UploadStart) and event.name == "photo_1.bin":
                            decoder = StrictBase64Decoder()
                        elif isinstance(event, UploadData) and decoder is not None:
                            decoded += decoder.feed(event.text)
                        elif isinstance(event, UploadEnd) and decoder is not None:
                            decoder.finish()
                            self.assertEqual(bytes(decoded), self.raw)
                            decoder = None
                self.assertEqual(bytes(decoded), self.raw)

    def test_pipelined_small_requests(self):
        stream = b"".join(build_request("GET", f"file {i}.txt") for i in range(20000))
        parser, events = feed_requests([stream])
        self.assertEqual(len(events), 20000)
        self.assertEqual(events[12345], ("request", "GET", "file 12345.txt"))
        parser, events = feed_requests([stream[i:i + 65536] for i in range(0, len(stream), 65536)])
        self.assertEqual(len(events), 20000)
        self.assertEqual(events[-1], ("request", "GET", "file 19999.txt"))


# --------------------------------------------------------------------------- request parser details

class RequestParserTests(SplitAssertions, unittest.TestCase):

    def assertRejectedAllSplits(self, data: bytes, max_request: int = MAX_REQUEST_BYTES):
        self.assertRejectedEverySplit(data, run_requests(max_request), random_splits=10)

    def test_command_is_upper_cased_and_argument_kept_verbatim(self):
        _, events = feed_requests([b"gEt  two  spaces \r\n\r\n", b" \r\n\r\n", b"STATS\r\n\r\n"])
        self.assertEqual(events, [("request", "GET", " two  spaces "),
                                  ("request", "", ""),
                                  ("request", "STATS", "")])

    def test_blank_lines_between_requests_are_skipped(self):
        """What is left of a terminator sent after a pause, once its request was served as sent
        (issue 23): never a request of its own, nor the start of the next one."""
        data = b"\r\n\r\n" + b"LIST\r\n\r\n" + b"\r\n" + b"GET a\r\n\r\n" + b"\n\r\n"
        for split in range(len(data) + 1):
            with self.subTest(split=split):
                _, events = feed_requests([data[:split], data[split:]])
                self.assertEqual(events, [("request", "LIST", ""), ("request", "GET", "a")])
        parser = RequestParser()
        self.assertEqual(parser.feed(b"\r\n\r\n\r"), [])
        self.assertTrue(parser.idle, "blank lines are no request begun")
        self.assertEqual(requests_begun(b"\r\n\r\n"), 0)

    def test_requests_after_a_head_that_is_not_utf8_are_counted(self):
        """Bytes after a protocol error count as a request; whole requests after a bad head
        whose end is known count one each (issue 23)."""
        bad = b"GET \xff\xfe\r\n\r\n"
        self.assertEqual(requests_begun(bad + b"LIST\r\n\r\nLIST\r\n\r\n"), 3)
        self.assertEqual(requests_begun(bad + b"LIST\r\n\r\nLI"), 3)
        self.assertEqual(requests_begun(bad), 1)
        for split in range(1, len(bad) + 4):        # the bad head buffered across receives too
            with self.subTest(split=split):
                data = bad + b"LIST\r\n\r\n"
                parser = RequestParser()
                with self.assertRaises(ProtocolError) as caught:
                    parser.feed(data[:split])
                    parser.feed(data[split:])
                self.assertEqual(caught.exception.after, data[len(bad):] if split < len(bad) else data[len(bad):split])

    def test_request_over_limit_without_terminator(self):
        with self.assertRaises(ProtocolError):
            RequestParser().feed(b"G" * (MAX_REQUEST_BYTES + len(TERMINATOR)))
        with self.assertRaises(ProtocolError):
            RequestParser().feed(b"GET " + b"x" * (10 * MAX_REQUEST_BYTES))

    def test_request_over_limit_fed_in_small_pieces_fails_early(self):
        for piece in (1, 7, 1000, 4096):
            with self.subTest(piece=piece):
                parser = RequestParser()
                fed = 0
                with self.assertRaises(ProtocolError):
                    while fed < 4 * MAX_REQUEST_BYTES:
                        parser.feed(b"a" * piece)
                        fed += piece
                # it must not have buffered much more than the limit before refusing
                self.assertLessEqual(fed, MAX_REQUEST_BYTES + len(TERMINATOR) + piece)

    def test_request_one_byte_over_limit_with_terminator_is_rejected(self):
        line = b"GET " + b"a" * (MAX_REQUEST_BYTES - 3)
        self.assertEqual(len(line), MAX_REQUEST_BYTES + 1)
        with self.assertRaises(ProtocolError):
            RequestParser().feed(line + TERMINATOR)
        self.assertRejectedAllSplits(b"GET " + b"a" * 13 + TERMINATOR, max_request=16)

    def test_request_of_exactly_the_limit_in_one_piece(self):
        line = b"GET " + b"a" * (MAX_REQUEST_BYTES - 4)
        self.assertEqual(len(line), MAX_REQUEST_BYTES)
        parser, events = feed_requests([line + TERMINATOR + b"LIST\r\n\r\n"])
        self.assertEqual(events, [("request", "GET", "a" * (MAX_REQUEST_BYTES - 4)),
                                  ("request", "LIST", "")])
        self.assertTrue(parser.idle)

    def test_request_of_exactly_the_limit_at_every_split(self):
        # Whether a request is accepted must not depend on how TCP cut it.
        line = b"GET " + b"a" * 12
        self.assertEqual(len(line), 16)
        self.assertSameForEverySplit(line + TERMINATOR, run_requests(max_request=16),
                                     ([("request", "GET", "a" * 12)], True))

    def test_request_of_exactly_64k_split_before_terminator(self):
        line = b"GET " + b"a" * (MAX_REQUEST_BYTES - 4)
        data = line + TERMINATOR
        for cut in range(len(line) - 2, len(data)):
            with self.subTest(cut=cut):
                _, events = feed_requests([data[:cut], data[cut:]])
                self.assertEqual(events, [("request", "GET", "a" * (MAX_REQUEST_BYTES - 4))])

    def test_request_of_exactly_64k_one_byte_at_a_time(self):
        line = b"GET " + b"a" * (MAX_REQUEST_BYTES - 4)
        data = line + TERMINATOR
        _, events = feed_requests(data[i:i + 1] for i in range(len(data)))
        self.assertEqual(events, [("request", "GET", "a" * (MAX_REQUEST_BYTES - 4))])

    def test_upload_name_over_limit_is_rejected(self):
        with self.assertRaises(ProtocolError):
            RequestParser().feed(b"UPLOAD " + b"n" * (MAX_REQUEST_BYTES + 10) + b" QUJD\r\n\r\n")

    def test_upload_content_is_not_limited(self):
        text = b"QUJD" * (MAX_REQUEST_BYTES // 2)       # 2 * the request limit
        _, events = feed_requests([upload_prefix("big") + text + TERMINATOR])
        self.assertEqual(events, [("start", "big"), ("data", text), ("end",)])

    def test_invalid_utf8_is_rejected(self):
        for data in [b"GET \xff\xfe\r\n\r\n", b"\xc3\r\n\r\n", b"GET caf\xc3\r\n\r\n",
                     b"UPLOAD \xff\xfe QUJD\r\n\r\n", b"UPLOAD n\xe9 QUJD\r\n\r\n"]:
            self.assertRejectedAllSplits(data)

    def test_upload_without_content_is_a_plain_request(self):
        self.assertSameForEverySplit(b"UPLOAD name\r\n\r\n", run_requests(),
                                     ([("request", "UPLOAD", "name")], True))

    def test_upload_with_empty_content(self):
        self.assertSameForEverySplit(b"UPLOAD name \r\n\r\nLIST\r\n\r\n", run_requests(),
                                     ([("start", "name"), ("end",), ("request", "LIST", "")], True))

    def test_upload_name_is_utf8_decoded(self):
        data = upload_prefix("résumé 😀") + b"QUJD" + TERMINATOR
        # the name ends at the first space: "résumé", the rest is content
        self.assertSameForEverySplit(data, run_requests(),
                                     ([("start", "résumé"), ("data", "😀 QUJD".encode()), ("end",)], True))
        _, events = feed_requests([upload_prefix("naïve.txt") + b"QUJD" + TERMINATOR])
        self.assertEqual(events, [("start", "naïve.txt"), ("data", b"QUJD"), ("end",)])

    def test_stray_cr_in_upload_content_is_rejected(self):
        for data in [b"UPLOAD n QU\rJD\r\n\r\n",
                     b"UPLOAD n QUJD\r\r\n\r\n",
                     b"UPLOAD n QUJD\rX",
                     b"UPLOAD n QUJD\r\nX",
                     b"UPLOAD n QUJD\r\n\rX",
                     b"UPLOAD n QUJD\r\n\n\r\n",
                     b"UPLOAD n \r\r\n\r\n"]:
            self.assertRejectedAllSplits(data)

    def test_idle_property(self):
        parser = RequestParser()
        self.assertTrue(parser.idle)
        parser.feed(b"GE")
        self.assertFalse(parser.idle)
        self.assertEqual(parser.feed(b"T a\r\n"), [])
        self.assertFalse(parser.idle)
        self.assertEqual(parser.feed(b"\r\n"), [Request("GET", "a")])
        self.assertTrue(parser.idle)
        parser.feed(b"LIST\r\n\r\nL")
        self.assertFalse(parser.idle)
        parser.feed(b"IST\r\n\r\n")
        self.assertTrue(parser.idle)
        events = parser.feed(b"UPLOAD x ")
        self.assertEqual(events, [UploadStart("x")])
        self.assertFalse(parser.idle)
        parser.feed(b"QUJD")
        self.assertFalse(parser.idle)
        parser.feed(b"\r\n")
        self.assertFalse(parser.idle)
        self.assertEqual(parser.feed(b"\r\n"), [UploadEnd()])
        self.assertTrue(parser.idle)
        parser.feed(b"UPLOAD")          # a partial command word is a request in progress
        self.assertFalse(parser.idle)

    def test_idle_after_every_split_of_whole_requests(self):
        data = build_request("LIST") + upload_prefix("a") + b"QUJD" + TERMINATOR
        for cut in range(1, len(data)):
            with self.subTest(cut=cut):
                parser = RequestParser()
                parser.feed(data[:cut])
                self.assertEqual(parser.idle, cut == len(build_request("LIST")))
                parser.feed(data[cut:])
                self.assertTrue(parser.idle)


class RequestParserLinearTests(unittest.TestCase):

    def test_20mb_upload_in_64k_pieces(self):
        raw = random.Random(5).randbytes(15 * 1024 * 1024)
        text = base64.b64encode(raw)
        self.assertEqual(len(text), 20 * 1024 * 1024)
        data = upload_prefix("big.bin") + text + TERMINATOR + build_request("LIST")
        parser = RequestParser()
        decoder = StrictBase64Decoder()
        digest = hashlib.sha256()
        text_len = 0
        kinds = []
        for i in range(0, len(data), 64 * 1024):
            for event in parser.feed(data[i:i + 64 * 1024]):
                if isinstance(event, UploadData):
                    text_len += len(event.text)
                    digest.update(decoder.feed(event.text))
                    if kinds[-1] != "data":
                        kinds.append("data")
                else:
                    kinds.append(event)
        decoder.finish()
        self.assertEqual(kinds, [UploadStart("big.bin"), "data", UploadEnd(), Request("LIST", "")])
        self.assertEqual(text_len, len(text))
        self.assertEqual(decoder.decoded_bytes, len(raw))
        self.assertEqual(digest.hexdigest(), hashlib.sha256(raw).hexdigest())
        self.assertTrue(parser.idle)

    def test_20mb_get_reply_in_64k_pieces(self):
        raw = random.Random(6).randbytes(15 * 1024 * 1024)
        data = get_reply_prefix("big.bin") + encode_chunk(raw) + GET_REPLY_SUFFIX
        parser = ReplyParser()
        decoder = StrictBase64Decoder()
        digest = hashlib.sha256()
        fields = {}
        for i in range(0, len(data), 64 * 1024):
            for event in parser.feed(data[i:i + 64 * 1024]):
                if isinstance(event, ContentData):
                    digest.update(decoder.feed(event.text))
                elif isinstance(event, ReplyField):
                    fields[event.key] = event.value
        decoder.finish()
        self.assertTrue(parser.done)
        self.assertEqual(fields, {"status": "OK", "data_namafile": "big.bin"})
        self.assertEqual(decoder.decoded_bytes, len(raw))
        self.assertEqual(digest.hexdigest(), hashlib.sha256(raw).hexdigest())


# --------------------------------------------------------------------------- builders

class BuilderTests(unittest.TestCase):

    def test_build_request(self):
        self.assertEqual(build_request("LIST"), b"LIST\r\n\r\n")
        self.assertEqual(build_request("GET", "a b.txt"), b"GET a b.txt\r\n\r\n")
        self.assertEqual(build_request("GET", "é"), b"GET \xc3\xa9\r\n\r\n")
        _, events = feed_requests([build_request("DELETE", "x y")])
        self.assertEqual(events, [("request", "DELETE", "x y")])

    def test_upload_prefix(self):
        self.assertEqual(upload_prefix("a.txt"), b"UPLOAD a.txt ")
        self.assertEqual(upload_prefix("é"), b"UPLOAD \xc3\xa9 ")

    def test_replies_are_json_plus_terminator(self):
        for reply, expected in [
            (ok_reply(data=["a", "b"]), {"status": "OK", "data": ["a", "b"]}),
            (error_reply("nope"), {"status": "ERROR", "data": "nope"}),
            (build_reply("OK", data="x", size=3), {"status": "OK", "data": "x", "size": 3}),
        ]:
            with self.subTest(reply=reply):
                self.assertTrue(reply.endswith(TERMINATOR))
                self.assertEqual(json.loads(reply[:-4]), expected)
                self.assertEqual(parse_reply(reply), expected)

    def test_get_reply_is_valid_json(self):
        name = 'we"ird \\ név.txt'
        reply = get_reply_prefix(name) + encode_chunk(b"hello") + GET_REPLY_SUFFIX
        self.assertTrue(reply.endswith(TERMINATOR))
        self.assertEqual(json.loads(reply[:-4]),
                         {"status": "OK", "data_namafile": name, "data_file": "aGVsbG8="})


# --------------------------------------------------------------------------- reply framing

class ReplyFramingTests(SplitAssertions, unittest.TestCase):

    def check_every_split(self, reply: bytes, expected=None, leftover: bytes = b"",
                          stream_keys=CONTENT_KEYS, **parser_args):
        """Every way of feeding reply + leftover gives ``expected``, done, and the leftover."""
        expected = expected if expected is not None else expected_reply(reply, stream_keys)
        self.assertSameForEverySplit(reply + leftover, run_reply(stream_keys=stream_keys, **parser_args),
                                     (expected, True, leftover), seed=len(reply))

    def test_get_reply(self):
        raw = random.Random(7).randbytes(200)
        name = "holiday photo.jpg"
        reply = get_reply_prefix(name) + encode_chunk(raw) + GET_REPLY_SUFFIX
        expected = [("field", "status", "OK"), ("field", "data_namafile", name),
                    ("content", "data_file", base64.b64encode(raw)), ("end",)]
        self.assertEqual(expected_reply(reply), expected)
        self.check_every_split(reply, expected)

    def test_get_reply_content_decodes_while_streaming(self):
        raw = random.Random(8).randbytes(200)
        reply = get_reply_prefix("x") + encode_chunk(raw) + GET_REPLY_SUFFIX
        def run(pieces):
            decoders = {}
            parser, _ = feed_reply(pieces, decoders=decoders)
            return parser.done, bytes(decoders["data_file"][1]), decoders["data_file"][0].decoded_bytes
        self.assertSameForEverySplit(reply, run, (True, raw, len(raw)))

    def test_empty_get_reply(self):
        reply = get_reply_prefix("empty") + encode_chunk(b"") + GET_REPLY_SUFFIX
        self.check_every_split(reply, [("field", "status", "OK"), ("field", "data_namafile", "empty"),
                                       ("content", "data_file", b""), ("end",)])

    def test_list_reply(self):
        names = ["a.txt", "b c.txt", "résumé.pdf", 'quote".txt', "brace}.txt", "comma,.txt"]
        reply = ok_reply(data=names)
        self.check_every_split(reply, [("field", "status", "OK"), ("field", "data", names), ("end",)])

    def test_error_reply(self):
        reply = error_reply("file 'missing.txt' not found")
        self.check_every_split(reply, [("field", "status", "ERROR"),
                                       ("content", "data", b"file 'missing.txt' not found"), ("end",)])

    def test_content_key_before_status(self):
        reply = b'{"data_file": "QUJD", "status": "OK", "size": 3}\r\n\r\n'
        self.check_every_split(reply, [("content", "data_file", b"QUJD"), ("field", "status", "OK"),
                                       ("field", "size", 3), ("end",)])

    def test_simple_escapes_in_streamed_value(self):
        reply = b'{"status": "OK", "data": "a\\/b\\/c+\\/\\/d \\"q\\" \\\\z\\n\\t\\r\\b\\f"}\r\n\r\n'
        self.check_every_split(reply, [("field", "status", "OK"),
                                       ("content", "data", b'a/b/c+//d "q" \\z\n\t\r\b\f'), ("end",)])

    def test_escaped_slashes_in_base64_content(self):
        raw = bytes([0xFB, 0xFF, 0xBF]) * 20          # base64 "+/+/" repeated: many slashes
        b64 = base64.b64encode(raw)
        self.assertIn(b"/", b64)
        reply = b'{"status": "OK", "data_file": "' + b64.replace(b"/", b"\\/") + b'"}\r\n\r\n'
        self.check_every_split(reply, [("field", "status", "OK"), ("content", "data_file", b64), ("end",)])
        def run(pieces):
            decoders = {}
            feed_reply(pieces, decoders=decoders)
            return bytes(decoders["data_file"][1])
        self.assertSameForEverySplit(reply, run, raw)

    def test_unicode_escapes_in_streamed_value(self):
        reply = b'{"status": "OK", "data": "x\\u002Fy\\u0041\\u00e9\\u00E9-\\u65e5"}\r\n\r\n'
        self.check_every_split(reply, [("field", "status", "OK"),
                                       ("content", "data", "x/yAéé-日".encode("utf-8")), ("end",)])

    def test_error_reply_with_non_ascii_message(self):
        # json.dumps escapes non-ASCII as \\uXXXX, so any ERROR naming a
        # non-ASCII file goes through the streamed-escape path.
        message = "file 'café.txt' not found"
        reply = error_reply(message)
        self.assertIn(b"\\u00e9", reply)
        self.check_every_split(reply, [("field", "status", "ERROR"),
                                       ("content", "data", message.encode("utf-8")), ("end",)])

    def test_surrogate_pair_escape_in_streamed_value(self):
        reply = error_reply("smile 😀")
        self.assertIn(b"\\ud83d\\ude00", reply)
        self.check_every_split(reply, [("field", "status", "ERROR"),
                                       ("content", "data", "smile 😀".encode("utf-8")), ("end",)])

    def test_unicode_escapes_in_buffered_value(self):
        reply = ok_reply(data=["café", "😀"], note="naïve\n")
        self.check_every_split(reply)
        self.assertEqual(parse_reply(reply), {"status": "OK", "data": ["café", "😀"], "note": "naïve\n"})

    def test_leftover_after_terminator(self):
        reply = error_reply("gone")
        self.check_every_split(reply, [("field", "status", "ERROR"), ("content", "data", b"gone"), ("end",)],
                               leftover=b'{"status": "OK"}\r\n\r\nmore')

    def test_bytes_fed_after_done_go_to_leftover(self):
        parser = ReplyParser()
        events = parser.feed(ok_reply(data="x") + b"AB")
        self.assertIsInstance(events[-1], ReplyEnd)
        self.assertEqual(parser.feed(b"CD"), [])
        self.assertEqual(parser.feed(b"EF"), [])
        self.assertEqual(parser.leftover, b"ABCDEF")

    def test_scalars_nesting_and_whitespace(self):
        reply = (b' \n{ "status" : "OK" , "n": 12, "neg": -1.5e3, "t": true, "f": false, "z": null,'
                 b'\t"o": {"k": "}\\"", "l": [1, {"a": ","}, []]}, "s": "x,y}]", "e": {}, "a": [],'
                 b' "last": 7 }\r\n\r\n')
        self.check_every_split(reply)
        self.assertEqual(parse_reply(reply)["o"], {"k": '}"', "l": [1, {"a": ","}, []]})

    def test_content_key_with_non_string_value_is_buffered(self):
        reply = b'{"status": "OK", "data": {"files": 3, "ok": true}, "data_file": null}\r\n\r\n'
        self.check_every_split(reply, [("field", "status", "OK"), ("field", "data", {"files": 3, "ok": True}),
                                       ("field", "data_file", None), ("end",)])

    def test_custom_stream_keys(self):
        reply = error_reply("boom")
        self.check_every_split(reply, [("field", "status", "ERROR"), ("field", "data", "boom"), ("end",)],
                               stream_keys=())
        self.check_every_split(reply, [("content", "status", b"ERROR"), ("field", "data", "boom"), ("end",)],
                               stream_keys={"status"})

    def test_empty_object(self):
        self.check_every_split(b"{}\r\n\r\n", [("end",)])

    def test_streamed_value_is_not_limited_by_max_value(self):
        reply = get_reply_prefix("f") + b"QUJD" * 100 + GET_REPLY_SUFFIX
        parser, events = feed_reply([reply], ReplyParser(max_value=50))
        self.assertEqual(events[2], ("content", "data_file", b"QUJD" * 100))
        self.assertTrue(parser.done)


class ReplyParserRejectTests(SplitAssertions, unittest.TestCase):

    def assertRejectedAllSplits(self, data: bytes, **parser_args):
        self.assertRejectedEverySplit(data, run_reply(**parser_args), random_splits=10)

    def test_non_object_reply(self):
        for data in [b'[1, 2]\r\n\r\n', b'"OK"\r\n\r\n', b'42\r\n\r\n', b'null\r\n\r\n',
                     b'OK\r\n\r\n', b'\r\n\r\n[]']:
            self.assertRejectedAllSplits(data)

    def test_bad_start_is_reported_without_waiting_for_more_bytes(self):
        # A client must not sit waiting for the rest of a reply that is already wrong.
        for data in [b"[", b'"', b"4", b"n", b"x", b" \n[", b'{"status": ,', b'{"status": }', b'{"a": 1 "']:
            with self.subTest(data=data):
                with self.assertRaises(ProtocolError):
                    ReplyParser().feed(data)

    def test_garbage_instead_of_terminator(self):
        for data in [b'{"status": "OK"}garbage', b'{"status": "OK"}\r\n\r\x00',
                     b'{"status": "OK"}\n\r\n\r\n', b'{"status": "OK"}}\r\n\r\n',
                     b'{"status": "OK"},\r\n\r\n', b'{"status": "OK"}\r\nX\r\n']:
            self.assertRejectedAllSplits(data)

    def test_malformed_objects(self):
        for data in [b'{"status" "OK"}\r\n\r\n', b'{"status": "OK",}\r\n\r\n', b'{"status": }\r\n\r\n',
                     b'{"status": "OK" "x": 1}\r\n\r\n', b'{status: "OK"}\r\n\r\n', b'{1: 2}\r\n\r\n',
                     b'{"n": 12x}\r\n\r\n', b'{"s": "a\\qb"}\r\n\r\n', b'{"data": "a\\qb"}\r\n\r\n',
                     b'{"data": "a\\u00zzb"}\r\n\r\n', b'{"n": tru}\r\n\r\n']:
            self.assertRejectedAllSplits(data)

    def test_value_longer_than_max_value(self):
        self.assertRejectedAllSplits(b'{"status": "' + b"x" * 200 + b'"}\r\n\r\n', max_value=100)
        self.assertRejectedAllSplits(ok_reply(data=["name%d" % i for i in range(50)]), max_value=100)
        self.assertRejectedAllSplits(b'{"' + b"k" * 200 + b'": 1}\r\n\r\n', max_value=100)
        # a value well inside the limit is fine
        parser, events = feed_reply([b'{"status": "' + b"x" * 50 + b'"}\r\n\r\n'], ReplyParser(max_value=100))
        self.assertEqual(events, [("field", "status", "x" * 50), ("end",)])

    def test_oversized_value_is_refused_before_it_is_all_buffered(self):
        parser = ReplyParser(max_value=1000)
        parser.feed(b'{"status": "')
        fed = 0
        with self.assertRaises(ProtocolError):
            while fed < 100_000:
                parser.feed(b"x" * 100)
                fed += 100
        self.assertLessEqual(fed, 1100)


class ParseReplyTests(unittest.TestCase):

    def test_complete_reply(self):
        self.assertEqual(parse_reply(ok_reply(data="x", size=3)), {"status": "OK", "data": "x", "size": 3})
        self.assertEqual(parse_reply(error_reply("café")), {"status": "ERROR", "data": "café"})

    def test_incomplete_input_raises(self):
        reply = ok_reply(data=["a", "b"])
        for cut in range(len(reply)):
            with self.subTest(cut=cut):
                with self.assertRaises(ProtocolError):
                    parse_reply(reply[:cut])

    def test_content_keys_are_buffered_by_default(self):
        reply = get_reply_prefix("f") + b"QUJD" + GET_REPLY_SUFFIX
        self.assertEqual(parse_reply(reply), {"status": "OK", "data_namafile": "f", "data_file": "QUJD"})


if __name__ == "__main__":
    unittest.main()
