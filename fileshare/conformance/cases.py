"""The conformance cases, one function each, grouped by the section of docs/protocol.md they check.

A case's id begins with the number of the requirement it checks (case 6.1.1
checks requirement 6.1); its function talks to the server through a
:class:`~fileshare.conformance.wire.Probe`, on connections of its own, and
returns a note when all is well or raises a :class:`~fileshare.conformance.model.Verdict`.
The ids are stable: a new case takes a new number, an old one keeps its own.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import struct
import threading
import time
from typing import Callable, Optional

from ..protocol import TERMINATOR, build_request, encode_chunk, upload_prefix
from .model import Case, Verdict, breach, informational, unimplemented
from .wire import CLOSED, SILENT, NoReply, PatternSource, Probe, Reply, content_of, difference

CASES: list[Case] = []

BIG_UPLOAD = 100 * 1024 * 1024      # the large upload of case 7.1.3
CONCURRENT_UPLOADS = 5
TRICKLE_PAUSE = 0.01                # between the bytes of a request sent one byte per segment
UNTERMINATED_WAIT = 2.0             # how long a request without its terminator is given
SETTLE_CHECKS, SETTLE_PAUSE = 5, 0.2    # looking again after a client vanished mid-upload
LONG_WAIT = 60.0                    # silence allowed while a server digests a large upload
OVERLONG_REQUEST = 1024 * 1024      # bytes of a request line that never ends


def case(case_id: str, title: str, bad_input: bool = False, budget: float = 30.0) -> Callable:
    def register(run: Callable[[Probe], Optional[str]]) -> Callable[[Probe], Optional[str]]:
        if any(c.id == case_id for c in CASES):
            raise ValueError(f"case {case_id} is defined twice")
        CASES.append(Case(case_id, title, run, bad_input, budget))
        return run
    return register


def upload_request(name: str, content: bytes) -> bytes:
    return upload_prefix(name) + encode_chunk(content) + TERMINATOR


def _round_trip(p: Probe, label: str, content: bytes, requirement: str) -> None:
    """UPLOAD ``content``, then GET it back: every byte must come back as it went."""
    name = p.name(label)
    p.upload(name, content)
    p.check_content(name, content, requirement)


def _listed(p: Probe, name: str) -> bool:
    return name in p.names()


def _message_of_error(reply: Reply, requirement: str, expected: str) -> str:
    if reply.status != "ERROR":
        raise breach(requirement, expected, reply.describe())
    return f"ERROR {reply.message()!r}"


# ============================================================ 1. Framing

@case("1.2.1", "A LIST reply is one JSON object with a status, then CR LF CR LF, and nothing after it")
def reply_framing(p: Probe) -> None:
    wire = p.connect()
    try:
        wire.send(build_request("LIST"))
        reply = wire.reply()
    except NoReply as exc:
        raise breach("1.2", 'a JSON object then CR LF CR LF, e.g. {"status": "OK", "data": [...]}',
                     exc.describe()) from None
    if reply.status not in ("OK", "ERROR"):
        raise breach("1.2", 'a "status" of "OK" or "ERROR"', reply.describe())
    extra = wire.closed_within(0.05)
    if extra:
        raise breach("1.2", "nothing after the reply's terminator", f"{len(extra)} more bytes: {extra[:80]!r}")
    return None


def _trickled(p: Probe, request: bytes) -> Reply:
    wire = p.connect()
    try:
        wire.trickle(request, TRICKLE_PAUSE)
        return wire.reply()
    except NoReply as exc:
        raise breach("1.3", f"a reply to {request[:40]!r} sent one byte per segment", exc.describe()) from None


@case("1.3.1", "LIST sent one byte at a time is answered")
def trickled_list(p: Probe) -> None:
    reply = _trickled(p, build_request("LIST"))
    if reply.status != "OK" or not isinstance(reply.fields.get("data"), list):
        raise breach("1.3", "OK with the list of names", reply.describe())


@case("1.3.2", "GET sent one byte at a time brings the file")
def trickled_get(p: Probe) -> None:
    name, content = p.name("trickle"), os.urandom(3000)
    p.upload(name, content)
    got = content_of(_trickled(p, build_request("GET", name)), name, "1.3")
    if got != content:
        raise breach("1.3", f"the {len(content)} bytes stored", difference(content, got))


@case("1.3.3", "UPLOAD sent one byte at a time stores the file")
def trickled_upload(p: Probe) -> None:
    name, content = p.name("trickle"), b"split at every byte"
    p.created.append(name)
    reply = _trickled(p, upload_request(name, content))
    if reply.status != "OK":
        raise breach("1.3", "OK to the UPLOAD", reply.describe())
    p.check_content(name, content, "1.3")


@case("1.4.1", "A command word in lower case (list)", bad_input=True)
def lower_case_command(p: Probe) -> str:
    reply = p.exchange(b"list" + TERMINATOR, "10.1")
    if reply.status == "OK":
        raise informational("1.4", "served like LIST")
    _message_of_error(reply, "10.1", "OK, or ERROR for a command it does not know")
    raise informational("1.4", f"refused: {reply.describe()}")


@case("1.5.1", "CR LF CR LF before a LIST: the blank lines are skipped, the one reply is the LIST's")
def blank_lines_skipped(p: Probe) -> None:
    wire = p.connect()
    try:
        wire.send(TERMINATOR + build_request("LIST"))
        reply = wire.reply()
    except NoReply as exc:
        raise breach("1.5", "the LIST's reply", exc.describe()) from None
    if reply.status != "OK" or not isinstance(reply.fields.get("data"), list):
        raise breach("1.5", "OK with the list of names, the blank lines skipped", reply.describe())


# ============================================================ 2. Connections

def _closed_early(exc: NoReply, answered: int, what: str) -> Verdict:
    """What a connection that stopped answering after ``answered`` replies means."""
    if answered and exc.kind == CLOSED and not exc.received:
        return breach("2.1", what, f"the connection was closed after {answered} "
                      f"repl{'y' if answered == 1 else 'ies'}: one request per connection (a variant)")
    if answered and exc.kind == SILENT and not exc.received:
        return breach("2.2" if answered == 1 else "2.3", what + ", or the connection closed",
                      f"after {answered} repl{'y' if answered == 1 else 'ies'}: {exc.describe()}")
    return breach("1.2", what, exc.describe())


@case("2.1.1", "Several requests on one connection: LIST, UPLOAD, GET, LIST")
def keep_alive(p: Probe) -> None:
    name, content = p.name("keep"), os.urandom(5000)
    p.created.append(name)
    requests = [build_request("LIST"), upload_request(name, content), build_request("GET", name),
                build_request("LIST")]
    wire = p.connect()
    replies: list[Reply] = []
    for request in requests:
        try:
            wire.send(request)
            replies.append(wire.reply())
        except NoReply as exc:
            raise _closed_early(exc, len(replies), f"replies to {len(requests)} requests on one connection") \
                from None
    if replies[1].status != "OK":
        raise breach("7.1", "OK to the UPLOAD", replies[1].describe())
    got = content_of(replies[2], name, "6.1")
    if got != content:
        raise breach("6.1", "the bytes just uploaded", difference(content, got))
    if name not in (replies[3].fields.get("data") or []):
        raise breach("5.2", f"{name!r} in the second LIST", replies[3].describe())


def _back_to_back(p: Probe, requests: list[bytes]) -> list[Reply]:
    """Send ``requests`` in one write (one TCP segment when small) and read a reply to each."""
    wire = p.connect()
    wire.send(b"".join(requests))
    replies: list[Reply] = []
    for _ in requests:
        try:
            replies.append(wire.reply())
        except NoReply as exc:
            raise _closed_early(exc, len(replies), f"{len(requests)} replies to requests sent together") from None
    return replies


@case("2.3.1", "Two GETs in one packet are answered, in order")
def pipelined_gets(p: Probe) -> None:
    first, second = p.name("first"), p.name("second")
    contents = {first: os.urandom(2000), second: os.urandom(3000)}
    for name, content in contents.items():
        p.upload(name, content)
    replies = _back_to_back(p, [build_request("GET", first), build_request("GET", second)])
    for (name, content), reply in zip(contents.items(), replies):
        got = content_of(reply, name, "2.3")
        if got != content:
            raise breach("2.3", f"the replies in request order ({first!r}, then {second!r})",
                         f"the reply for {name!r}: {difference(content, got)}")


@case("2.3.2", "UPLOAD and a GET of it in one packet: the GET sees the upload")
def pipelined_upload(p: Probe) -> None:
    name, content = p.name("pipelined"), os.urandom(4000)
    p.created.append(name)
    upload, get = _back_to_back(p, [upload_request(name, content), build_request("GET", name)])
    if upload.status != "OK":
        raise breach("7.1", "OK to the UPLOAD", upload.describe())
    got = content_of(get, name, "2.3")
    if got != content:
        raise breach("2.3", "the GET behind the UPLOAD to bring what it stored", difference(content, got))


@case("2.4.1", "Silent connections and one idle between requests do not stop another client")
def idle_connections(p: Probe) -> str:
    kept = p.connect()
    try:
        kept.send(build_request("LIST"))
        kept.reply()
    except NoReply as exc:
        raise breach("1.2", "a reply to LIST", exc.describe()) from None
    silent = [p.connect() for _ in range(p.workers + 3)]
    try:
        p.names("2.4")
    except Verdict as verdict:
        raise breach("2.4", f"a LIST on a new connection answered while {len(silent)} connections send "
                     "nothing and one waits between requests", verdict.actual) from None
    return f"{len(silent)} silent connections"


def _unterminated(p: Probe, request: bytes) -> tuple[Optional[Reply], str]:
    wire = p.connect()
    wire.send(request)
    started = time.monotonic()
    try:
        reply = wire.reply(wait=UNTERMINATED_WAIT)
    except NoReply as exc:
        if exc.kind == SILENT and not exc.received:
            return None, f"no reply within {UNTERMINATED_WAIT:g} s: it waits for the terminator"
        if exc.kind == CLOSED and not exc.received:
            return None, "closed the connection"
        raise breach("1.2", "a reply, silence or a closed connection", exc.describe()) from None
    return reply, f"answered after {time.monotonic() - started:.1f} s without the terminator: {reply.describe()}"


@case("2.5.1", "LIST without the terminator, as the course's clients send it", bad_input=True)
def unterminated_list(p: Probe) -> None:
    _, seen = _unterminated(p, b"LIST")
    raise informational("2.5", seen)


@case("2.5.2", "GET NAME without the terminator, as the course's clients send it", bad_input=True)
def unterminated_get(p: Probe) -> None:
    name, content = p.name("course"), os.urandom(1000)
    p.upload(name, content)
    reply, seen = _unterminated(p, b"GET " + name.encode())
    if reply is not None and reply.status == "OK":
        got = content_of(reply, name, "6.1")
        if got != content:
            raise breach("6.1", f"the {len(content)} bytes stored", difference(content, got))
        seen = f"served the file after the quiet ({seen.split(':')[0]})"
    raise informational("2.5", seen)


# ============================================================ 3. Names

def _strays(p: Probe, basename: str) -> list[str]:
    """Where a name reaching outside the folder put a file ``basename`` (removed again)."""
    found = []
    for folder, where in p.escape_dirs.items():
        path = os.path.join(folder, basename)
        if os.path.lexists(path):
            found.append(where)
            os.unlink(path)
    return found


def _upload_outside(p: Probe, name: str, basename: str, what: str) -> str:
    try:
        how = p.refused(upload_request(name, b"must not be written"), "3.1", what)
    except Verdict as verdict:
        strays = _strays(p, basename)
        raise breach("3.1", verdict.expected,
                     verdict.actual + (f"; the file was written {' and '.join(strays)}" if strays else "")) from None
    strays = _strays(p, basename)
    if strays:
        raise breach("3.1", f"nothing written outside the folder for {what}",
                     f"{how}, yet the file was written {' and '.join(strays)}")
    return how


@case("3.1.1", "UPLOAD ../NAME is refused and nothing is written outside the folder", bad_input=True)
def upload_parent(p: Probe) -> str:
    basename = p.name("escape", ".txt")
    return _upload_outside(p, "../" + basename, basename, f"UPLOAD ../{basename}")


@case("3.1.2", "UPLOAD of an absolute path is refused and nothing is written there", bad_input=True)
def upload_absolute(p: Probe) -> str:
    basename = p.name("escape", ".txt")
    folder = os.path.dirname(p.outside_file or "/nonexistent")
    p.escape_dirs[folder] = "at the absolute path"
    return _upload_outside(p, os.path.join(folder, basename), basename, "UPLOAD of an absolute path")


def _get_outside(p: Probe, name: str, what: str) -> str:
    reply = p.exchange(build_request("GET", name), "3.1")
    if reply.status == "OK":
        text = reply.content()
        planted = text is not None and text.decoded == p.outside_content
        raise breach("3.1", f"ERROR (or a closed connection) for {what}",
                     "OK with the content of the file planted outside the folder" if planted
                     else reply.describe())
    return _message_of_error(reply, "10.1", f"ERROR for {what}")


@case("3.1.3", "GET ../NAME of a file beside the served folder is refused", bad_input=True)
def get_parent(p: Probe) -> str:
    basename = os.path.basename(p.outside_file or "cf-outside")
    return _get_outside(p, "../" + basename, f"GET ../{basename}")


@case("3.1.4", "GET of an absolute path is refused", bad_input=True)
def get_absolute(p: Probe) -> str:
    return _get_outside(p, p.outside_file or "/cf-outside", "GET of the absolute path of a file outside the folder")


@case("3.1.5", "DELETE ../NAME of a file beside the served folder is refused, the file kept", bad_input=True)
def delete_parent(p: Probe) -> str:
    basename = os.path.basename(p.outside_file or "cf-outside")
    reply = p.exchange(build_request("DELETE", "../" + basename), "3.1")
    gone = [where for folder, where in p.escape_dirs.items() if not os.path.exists(os.path.join(folder, basename))]
    if reply.status == "OK" or gone:
        raise breach("3.1", f"ERROR for DELETE ../{basename}, the file kept",
                     reply.describe() + (f"; the file {' and '.join(gone)} was removed" if gone else ""))
    return f"ERROR {reply.message()!r}"


def _odd_name(p: Probe, label: str, what: str) -> str:
    name = p.name(label)
    p.created.append(name)
    return p.refused(upload_request(name, b"odd name"), "3.2", f"a name with {what}")


ODD_NAMES = [
    ("3.2.1", "UPLOAD of a name with a control character (TAB) is refused", "tab\there", "a TAB"),
    ("3.2.2", "UPLOAD of a name with a backslash is refused", "back\\slash", "a backslash"),
    ("3.2.3", "UPLOAD of a 300-byte name is refused", "long-" + "n" * 300, "300 bytes"),
]
for _id, _title, _label, _what in ODD_NAMES:
    case(_id, _title, bad_input=True)(functools.partial(_odd_name, label=_label, what=_what))


@case("3.3.1", "A non-ASCII name is stored, listed and served exactly")
def non_ascii(p: Probe) -> None:
    name, content = p.name("résumé-日本語-ø", ".txt"), "naïve café ☕".encode()
    p.upload(name, content, "3.3")
    names = p.names()
    if name not in names:
        raise breach("3.3", f"{name!r} in LIST", f"not there; similar: {[n for n in names if 'sum' in n][:3]}")
    p.check_content(name, content, "3.3")


@case("3.4.1", "UPLOAD NAME with a space: the name ends at the space, the rest is not base64", bad_input=True)
def name_with_space(p: Probe) -> str:
    head = p.name("two")
    whole = head + " words.bin"
    p.created.extend([head, whole])
    request = b"UPLOAD " + whole.encode() + b" QUJD" + TERMINATOR
    try:
        return p.refused(request, "3.4", f"UPLOAD {whole!r} QUJD: content 'words.bin QUJD'")
    except Verdict as verdict:
        names = p.names()
        stored = (f"stored as {whole!r}: the whole rest of the line taken as the name" if whole in names
                  else f"stored as {head!r} from 'words.bin QUJD', which is not base64" if head in names
                  else verdict.actual)
        raise breach("3.4", verdict.expected, stored) from None


# ============================================================ 4. Base64

@case("4.1.1", "GET of a 6 KiB file brings base64 without line breaks")
def canonical_base64(p: Probe) -> None:
    _round_trip(p, "lines", os.urandom(57 * 100), "6.1")     # MIME encoders break lines every 57 bytes


def _bad_base64(p: Probe, text: bytes, what: str) -> str:
    name = p.name("bad64")
    p.created.append(name)
    how = p.refused(upload_prefix(name) + text + TERMINATOR, "4.2", f"content {text!r} ({what})")
    if _listed(p, name):
        raise breach("4.2", "nothing stored for refused content", f"{how}, yet {name!r} is listed")
    return how


# Each: (case id, title, content, what it is).  A decoder that skips what it does not know
# accepts all but the cut-short group.
INVALID_BASE64 = [
    ("4.2.1", "UPLOAD content with a character outside the alphabet ('*') is refused", b"QUJD*QUJD", "a '*'"),
    ("4.2.2", "UPLOAD content with a line break inside is refused", b"QUJD\nQUJD", "a line feed"),
    ("4.2.3", "UPLOAD content in the URL-safe alphabet ('-', '_') is refused", b"QUJD-_-_", "URL-safe characters"),
    ("4.2.4", "UPLOAD content whose last group is cut short (no padding) is refused", b"QUJDRA", "6 characters"),
    ("4.2.5", "UPLOAD content with a group of nothing but padding is refused", b"QUJD====", "a group of '='"),
    ("4.2.6", "UPLOAD content with data after the padding is refused", b"QQ==QUJD", "padding in the middle"),
]
for _id, _title, _text, _what in INVALID_BASE64:
    case(_id, _title, bad_input=True)(functools.partial(_bad_base64, text=_text, what=_what))


# ============================================================ 5. LIST

@case("5.1.1", "LIST answers OK with an array of names")
def list_shape(p: Probe) -> str:
    return f"{len(p.names())} names"


@case("5.2.1", "An uploaded file appears in the next LIST")
def list_after_upload(p: Probe) -> None:
    name = p.name("listed")
    p.upload(name, b"listed")
    names = p.names()
    if name not in names:
        raise breach("5.2", f"{name!r} among the names", f"{len(names)} names without it")


# ============================================================ 6. GET

@case("6.1.1", "GET of a present file brings its exact bytes")
def get_present(p: Probe) -> None:
    _round_trip(p, "get", os.urandom(10_000), "6.1")


@case("6.2.1", "A GET reply carries the content under data_file and the name under data_namafile")
def get_reply_keys(p: Probe) -> None:
    name, content = p.name("keys"), os.urandom(500)
    p.upload(name, content)
    reply = p.exchange(build_request("GET", name), "6.1")
    got = content_of(reply, name, "6.1")
    if got != content:
        raise breach("6.1", f"the {len(content)} bytes stored", difference(content, got))
    keys = sorted(set(reply.fields) | set(reply.texts))
    if "data_file" not in reply.texts or reply.fields.get("data_namafile") != name:
        where = "data_file" if "data_file" in reply.texts else "data (a variant)"
        raise breach("6.2", f'{{"status": "OK", "data_namafile": {name!r}, "data_file": "<base64>"}}',
                     f"content under {where}; keys {keys}; data_namafile {reply.fields.get('data_namafile')!r}")


@case("6.3.1", "GET of a missing file answers ERROR", bad_input=True)
def get_missing(p: Probe) -> str:
    reply = p.exchange(build_request("GET", p.name("missing")), "6.3")
    return _message_of_error(reply, "6.3", "ERROR for a file that is not there")


# ============================================================ 7. UPLOAD

@case("7.1.1", "UPLOAD of a new file stores it")
def upload_new(p: Probe) -> None:
    _round_trip(p, "new", os.urandom(20_000), "7.1")


@case("7.1.2", "UPLOAD of every byte value 0-255 stores them exactly")
def upload_every_byte(p: Probe) -> None:
    _round_trip(p, "bytes", bytes(range(256)) * 4 + bytes(reversed(range(256))) * 4, "7.1")


@case("7.1.3", "UPLOAD of 100 MiB, streamed, then GET: every byte verified", budget=300.0)
def upload_large(p: Probe) -> str:
    if p.upload_limit is not None and p.upload_limit < BIG_UPLOAD:
        raise informational("7.1", f"not tried: the server's upload limit ({p.upload_limit} bytes) is below "
                            f"{BIG_UPLOAD} bytes", f"an upload of {BIG_UPLOAD} bytes, within the server's limit")
    name, source = p.name("large"), PatternSource(BIG_UPLOAD)
    p.created.append(name)
    started = time.monotonic()
    wire = p.connect()
    try:
        wire.send(upload_prefix(name))
        wire.send_pieces(source.encoded_pieces())
        wire.send(TERMINATOR)
        reply = wire.reply(wait=LONG_WAIT)
    except NoReply as exc:
        raise breach("7.1", f"OK to an UPLOAD of {BIG_UPLOAD} bytes", exc.describe()) from None
    finally:
        wire.close()
    if reply.status != "OK":
        raise breach("7.1", f"OK to an UPLOAD of {BIG_UPLOAD} bytes", reply.describe())
    uploaded = time.monotonic() - started
    wire = p.connect()
    try:
        wire.send(build_request("GET", name))
        reply = wire.reply(keep_bytes=0, wait=LONG_WAIT)
    except NoReply as exc:
        raise breach("7.1", f"the {BIG_UPLOAD} bytes back from GET", exc.describe()) from None
    finally:
        wire.close()
    text = reply.content()
    if reply.status != "OK" or text is None:
        raise breach("7.1", f"OK with the {BIG_UPLOAD} bytes", reply.describe())
    if text.error is not None:
        raise breach("4.1", "the content as strict base64", text.error)
    if (text.size, text.sha256) != (BIG_UPLOAD, source.sha256):
        raise breach("7.1", f"{BIG_UPLOAD} bytes with SHA-256 {source.sha256[:16]}...",
                     f"{text.size} bytes with SHA-256 {text.sha256[:16]}...")
    return f"upload {uploaded:.1f} s, download {time.monotonic() - started - uploaded:.1f} s"


@case("7.2.1", "UPLOAD over an existing file replaces it (with shorter content)")
def upload_overwrite(p: Probe) -> None:
    name, old, new = p.name("over"), os.urandom(9000), os.urandom(3000)
    p.upload(name, old)
    p.upload(name, new, "7.2")
    p.check_content(name, new, "7.2")


@case("7.3.1", "UPLOAD with empty content stores an empty file")
def upload_empty(p: Probe) -> None:
    name = p.name("empty")
    p.created.append(name)
    reply = p.exchange(upload_prefix(name) + TERMINATOR, "7.3")
    if reply.status != "OK":
        raise breach("7.3", f"OK to 'UPLOAD {name} ' with nothing after the space", reply.describe())
    p.check_content(name, b"", "7.3")


def _checked_sizes(p: Probe) -> tuple[Reply, bytes]:
    name = p.name("confirm")
    content = os.urandom(5000)
    return p.upload(name, content), content


@case("7.4.1", "An UPLOAD reply carries size and sha256")
def upload_reply_fields(p: Probe) -> None:
    reply, _ = _checked_sizes(p)
    if "size" not in reply.fields or "sha256" not in reply.fields:
        raise informational("7.4", f"a bare OK (a variant): {reply.describe()}")


@case("7.5.1", "size and sha256 in an UPLOAD reply, where present, are those of the bytes sent")
def upload_reply_exact(p: Probe) -> Optional[str]:
    reply, content = _checked_sizes(p)
    expected = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    present = {key: reply.fields[key] for key in expected if key in reply.fields}
    if not present:
        return "no size or sha256 to check"
    wrong = {key: value for key, value in present.items() if value != expected[key]}
    if wrong:
        raise breach("7.5", str({key: expected[key] for key in wrong}), str(wrong))
    return None


def _vanish_mid_upload(p: Probe, name: str, size: int) -> None:
    """Send half of an upload's content (whole 4-character groups) and hang up."""
    text = encode_chunk(os.urandom(size))
    wire = p.connect()
    try:
        wire.send(upload_prefix(name) + text[:len(text) // 2 // 4 * 4])
    except NoReply:
        pass
    wire.close()


def _settled(p: Probe, expected: str, check: Callable[[], Optional[str]]) -> None:
    """Look a few times while the server notices the hang-up: ``check`` says what is wrong, if anything."""
    for attempt in range(SETTLE_CHECKS):
        wrong = check()
        if wrong:
            raise breach("7.6", expected, wrong)
        if attempt + 1 < SETTLE_CHECKS:
            time.sleep(SETTLE_PAUSE)


@case("7.6.1", "A client that hangs up halfway through an UPLOAD leaves no file", bad_input=True)
def vanished_upload_new(p: Probe) -> None:
    name = p.name("vanish")
    p.created.append(name)
    _vanish_mid_upload(p, name, 1024 * 1024)

    def visible() -> Optional[str]:
        partial = [n for n in p.names() if name in n]
        return f"LIST shows {partial}" if partial else None
    _settled(p, "no trace of an upload whose client hung up halfway", visible)


@case("7.6.2", "A client that hangs up halfway through an UPLOAD over a file leaves it intact", bad_input=True)
def vanished_upload_existing(p: Probe) -> None:
    name, old = p.name("intact"), os.urandom(2000)
    p.upload(name, old)
    _vanish_mid_upload(p, name, 1024 * 1024)

    def changed() -> Optional[str]:
        got = p.get(name, "7.6")
        return None if got == old else f"GET brings {difference(old, got)}"
    _settled(p, f"the file as it was ({len(old)} bytes) after an upload over it was cut off halfway", changed)


@case("7.6.3", "An UPLOAD refused for bad base64 over a file leaves it intact", bad_input=True)
def refused_upload_existing(p: Probe) -> str:
    name, old = p.name("intact"), os.urandom(2000)
    p.upload(name, old)
    how = p.refused(upload_prefix(name) + encode_chunk(os.urandom(3000)) + b"*" + TERMINATOR, "4.2",
                    "content ending in '*'")
    got = p.get(name, "7.6")
    if got != old:
        raise breach("7.6", "the file as it was before the refused upload", difference(old, got))
    return how


@case("7.7.1", f"{CONCURRENT_UPLOADS} clients uploading at once: every file stored exactly", budget=60.0)
def concurrent_uploads(p: Probe) -> None:
    files = {p.name(f"together{i}"): os.urandom(1024 * 1024 + i) for i in range(CONCURRENT_UPLOADS)}
    start = threading.Barrier(len(files))
    verdicts: list[Exception] = []

    def upload(name: str, content: bytes) -> None:
        try:
            start.wait(p.wait())
            p.upload(name, content, "7.7")
        except (Verdict, NoReply, threading.BrokenBarrierError) as exc:
            verdicts.append(exc)
    threads = [threading.Thread(target=upload, args=item, daemon=True) for item in files.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, p.deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise breach("7.7", f"{len(files)} uploads answered", "the case's time ran out")
    for exc in verdicts:
        if isinstance(exc, Verdict):
            raise exc
        raise breach("7.7", f"{len(files)} uploads answered", str(exc) or type(exc).__name__)
    for name, content in files.items():
        p.check_content(name, content, "7.7")


# ============================================================ 8. DELETE

def _optional(p: Probe, request: bytes, expected: str) -> tuple[Optional[Reply], str]:
    """The reply to an optional command (None when the server does not have it), and how it answered.

    ERROR, or a connection closed without a reply, is how a server without the command
    answers; silence or a malformed reply breaks 1.2 like any other request's.
    """
    try:
        reply = p.exchange_raw(request)
    except NoReply as exc:
        if exc.kind == CLOSED and not exc.received:
            return None, "closed the connection without a reply"
        raise breach("1.2", expected, exc.describe()) from None
    return (reply if reply.status != "ERROR" else None), reply.describe()


def _delete_implemented(p: Probe) -> str:
    """Upload a file and DELETE it; UNIMPLEMENTED unless that works.  Returns the name."""
    name = p.name("delete")
    p.upload(name, b"to be deleted")
    expected = "OK to DELETE of a present file (an optional command)"
    reply, how = _optional(p, build_request("DELETE", name), expected)
    if reply is None:
        if _listed(p, name):
            raise unimplemented("8.1", expected, f"{how}; the file is still there")
        raise breach("8.2", expected, f"{how}, yet the file is gone")
    if reply.status != "OK":
        raise breach("8.2", expected, reply.describe())
    p.created.remove(name)
    return name


@case("8.2.1", "DELETE of a present file answers OK; then GET fails and LIST omits it")
def delete_present(p: Probe) -> None:
    name = _delete_implemented(p)
    if _listed(p, name):
        raise breach("8.2", f"{name!r} gone from LIST", "still listed")
    reply = p.exchange(build_request("GET", name), "8.2")
    if reply.status != "ERROR":
        raise breach("8.2", f"ERROR for GET of the deleted {name!r}", reply.describe())


@case("8.3.1", "DELETE of a missing file answers ERROR", bad_input=True)
def delete_missing(p: Probe) -> str:
    _delete_implemented(p)
    reply = p.exchange(build_request("DELETE", p.name("missing")), "8.3")
    return _message_of_error(reply, "8.3", "ERROR for a file that is not there")


# ============================================================ 9. STATS

COUNTERS = ("succeeded", "failed", "connections")


def _stats(p: Probe) -> dict:
    expected = '{"status": "OK", "data": {"succeeded": n, "failed": n, "connections": n}}'
    reply, how = _optional(p, build_request("STATS"), expected)
    if reply is None:
        raise unimplemented("9.1", "OK to STATS (an optional extension)", how)
    data = reply.fields.get("data")
    if reply.status != "OK" or not isinstance(data, dict) or not all(
            isinstance(data.get(k), int) and not isinstance(data.get(k), bool) and data[k] >= 0 for k in COUNTERS):
        raise breach("9.2", expected, reply.describe())
    return data


@case("9.2.1", "STATS answers OK with succeeded, failed and connections")
def stats_shape(p: Probe) -> str:
    data = _stats(p)
    return ", ".join(f"{k} {data[k]}" for k in COUNTERS)


@case("9.3.1", "STATS counts one LIST between two STATS as one success")
def stats_counting(p: Probe) -> None:
    before = _stats(p)
    p.names()
    after = _stats(p)
    if after["succeeded"] - before["succeeded"] != 1:
        raise breach("9.3", "succeeded up by 1 for one LIST (STATS not counted)",
                     f"up by {after['succeeded'] - before['succeeded']}")


# ============================================================ 10. Errors

@case("10.1.1", "An unknown command answers ERROR", bad_input=True)
def unknown_command(p: Probe) -> str:
    reply = p.exchange(build_request("FROBNICATE", "x"), "10.1")
    return _message_of_error(reply, "10.1", "ERROR for the unknown command FROBNICATE")


@case("10.2.1", "An ERROR reply says why, as a string under data", bad_input=True)
def error_message(p: Probe) -> None:
    reply = p.exchange(build_request("GET", p.name("missing")), "6.3")
    _message_of_error(reply, "6.3", "ERROR for a file that is not there")
    message = reply.message()
    if not isinstance(message, str) or not message.strip():
        raise breach("10.2", '{"status": "ERROR", "data": "<why>"}', reply.describe())


MALFORMED = [
    ("10.3.2", "A request that is not UTF-8 answers ERROR or closes", b"GET \xff\xfe\xfd.bin" + TERMINATOR,
     "bytes that are not UTF-8"),
    ("10.3.3", "UPLOAD with neither name nor content answers ERROR or closes", b"UPLOAD" + TERMINATOR, "UPLOAD alone"),
    ("10.3.4", "GET without a name answers ERROR or closes", b"GET" + TERMINATOR, "GET alone"),
    ("10.3.5", "Binary garbage answers ERROR or closes", bytes(range(256)).replace(b"\r", b"") * 4 + TERMINATOR,
     "binary garbage"),
]


def _malformed(p: Probe, request: bytes, what: str) -> str:
    return p.refused(request, "10.3", what)


for _id, _title, _request, _what in MALFORMED:
    case(_id, _title, bad_input=True)(functools.partial(_malformed, request=_request, what=_what))


@case("10.4.1", "A client that hangs up in the middle of a GET reply harms nobody", bad_input=True)
def vanished_download(p: Probe) -> str:
    name = p.name("cut")
    p.upload(name, os.urandom(4 * 1024 * 1024))
    wire = p.connect()
    wire.send(build_request("GET", name))
    try:
        first = wire.receive_some()
    except NoReply as exc:
        raise breach("1.2", "the beginning of a GET reply", exc.describe()) from None
    # A reset, not a polite close: the server's next send fails at once.
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wire.close()
    return f"hung up after {len(first)} bytes"


# ============================================================ 11. Limits

@case("11.1.1", "A 1 MiB request line with no end is refused without waiting for it", bad_input=True)
def overlong_request(p: Probe) -> str:
    wire = p.connect()
    try:
        wire.send(b"GET " + b"n" * OVERLONG_REQUEST)
    except NoReply as exc:
        if exc.kind == CLOSED:
            return "closed the connection while the request was being sent"
        raise breach("11.1", "ERROR or a closed connection once the server's limit is passed",
                     exc.describe()) from None
    try:
        reply = wire.reply()
    except NoReply as exc:
        if exc.kind == CLOSED and not exc.received:
            return "closed the connection"
        raise breach("11.1", f"ERROR or a closed connection for a request line of {OVERLONG_REQUEST} bytes "
                     "with no terminator", exc.describe()) from None
    return _message_of_error(reply, "11.1", "ERROR or a closed connection")


@case("11.2.1", "An UPLOAD over the server's limit is refused and not stored", bad_input=True, budget=300.0)
def upload_over_limit(p: Probe) -> str:
    if p.upload_limit is None:
        raise informational("11.2", "not tried: the server's upload limit is unknown (give --upload-limit-mb)",
                            "an upload 1 MiB over the server's limit refused, once the limit is known")
    name, source = p.name("too-large"), PatternSource(p.upload_limit + 1024 * 1024)
    p.created.append(name)
    wire = p.connect()
    how = ""
    try:
        wire.send(upload_prefix(name))
        wire.send_pieces(source.encoded_pieces())
        wire.send(TERMINATOR)
    except NoReply as exc:
        if exc.kind != CLOSED:
            raise breach("11.2", "ERROR or a closed connection", exc.describe()) from None
        how = "closed the connection during the upload"
    try:
        reply = wire.reply(wait=LONG_WAIT)
    except NoReply as exc:
        if exc.kind != CLOSED or exc.received:
            raise breach("11.2", "ERROR or a closed connection", exc.describe()) from None
        how = how or "closed the connection"
    else:
        if reply.status != "ERROR":
            raise breach("11.2", f"ERROR for {source.size} bytes, over the limit of {p.upload_limit}",
                         reply.describe())
        how = f"ERROR {reply.message()!r}"
    finally:
        wire.close()
    if _listed(p, name):
        raise breach("7.6", "nothing stored of an upload over the limit", f"{how}, yet {name!r} is listed")
    return how
