"""Integration tests for both file servers, over real sockets on 127.0.0.1.

Every test starts its own server (``--port 0``) on a fresh temporary folder
and runs once per server: :class:`ThreadServerTests` and
:class:`ProcessServerTests` share :class:`ServerTestsMixin`.  Run with::

    cd /work/main && python -m unittest tests.test_servers -v
"""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tempfile
import unittest
from contextlib import closing, suppress
from pathlib import Path

from tests.support import (REPO, SCRIPTS, TERMINATOR, Client, ConnectionClosedEarly, RunningServer, build,
                           decode_reply, exchange, open_descriptors, process_alive, process_group_pids, reaped,
                           send_command, start_time, status_fields, vm_hwm, wait_until)

from fileshare.protocol import StrictBase64Decoder, encode_chunk
from fileshare.replies import ContentData, ContentEnd, ReplyField, ReplyParser

MiB = 1024 * 1024
OLD = b"old content that must survive\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def temp_files(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith(".upload-") and n.endswith(".part"))


def file_sha(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(MiB)
            if not block:
                return size, digest.hexdigest()
            size += len(block)
            digest.update(block)


def write_big_file(path: Path, size_mib: int, seed: bytes | None = None) -> str:
    """Write ``size_mib`` MiB quickly (one random MiB with a counter per block); return its sha256."""
    base = seed or os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size_mib):
            block = i.to_bytes(8, "big") + base[8:]
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def start_slow_get(address: tuple[str, int], name: str) -> socket.socket:
    """Connect with a small receive buffer and ask for ``name``; the caller reads (or not) and closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(10)
    sock.connect(address)
    sock.sendall(build("GET", name))
    return sock


def stream_get(address: tuple[str, int], name: str, timeout: float = 60.0,
               rcvbuf: int | None = None) -> dict:
    """GET ``name`` and verify it on the fly: never holds the reply whole.

    Returns the small fields plus ``size`` and ``sha256`` of the decoded content.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(build("GET", name))
        parser = ReplyParser(stream_keys={"data_file", "data"})
        decoder = StrictBase64Decoder()
        digest = hashlib.sha256()
        fields: dict = {}
        message = bytearray()
        while not parser.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {name} not complete within {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(256 * 1024)
            if not chunk:
                raise ConnectionClosedEarly(f"GET {name}: connection closed mid-reply")
            for event in parser.feed(chunk):
                if isinstance(event, ContentData):
                    if event.key == "data_file":
                        digest.update(decoder.feed(event.text))
                    elif len(message) < 4096:
                        message += event.text
                elif isinstance(event, ReplyField):
                    fields[event.key] = event.value
                elif isinstance(event, ContentEnd) and event.key == "data":
                    fields["data"] = message.decode("utf-8", "replace")
        if parser.leftover:
            raise AssertionError(f"bytes after the reply: {parser.leftover[:50]!r}")
        decoder.finish()
        fields["size"] = decoder.decoded_bytes
        fields["sha256"] = digest.hexdigest()
        return fields
    finally:
        sock.close()


def stream_upload(address: tuple[str, int], name: str, blocks, timeout: float = 60.0) -> tuple[dict, int, str]:
    """UPLOAD the concatenation of ``blocks`` (an iterable of bytes) in pieces; return (reply, size, sha256)."""
    digest, size, carry = hashlib.sha256(), 0, b""
    with Client(address, timeout) as client:
        client.send(b"UPLOAD " + name.encode() + b" ")
        for block in blocks:
            digest.update(block)
            size += len(block)
            data = carry + block
            cut = len(data) - len(data) % 3
            carry = data[cut:]
            client.send(encode_chunk(data[:cut]))
        client.send(encode_chunk(carry) + TERMINATOR)
        reply = decode_reply(client.recv_reply(timeout))
    return reply, size, digest.hexdigest()


class SlowUploader(threading.Thread):
    """Sends ``UPLOAD name <base64>`` slowly and never the terminator (up to ``total`` bytes)."""

    def __init__(self, address, name: str, total: int, piece: int = 64 * 1024, pause: float = 0.05,
                 fast_first: int = 512 * 1024, max_seconds: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.client = Client(address, timeout=max_seconds)
        self.name, self.total, self.piece, self.pause = name, total, piece, pause
        self.fast_first, self.max_seconds = fast_first, max_seconds
        self.sent = 0
        self.error: BaseException | None = None
        self.first_part_sent = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        text = b64(os.urandom(self.total * 3 // 4 + 3))[:self.total]
        deadline = time.monotonic() + self.max_seconds
        try:
            self.client.send(b"UPLOAD " + self.name.encode() + b" " + text[:self.fast_first])
            self.sent = self.fast_first
            self.first_part_sent.set()
            while self.sent < self.total and not self.stop.is_set() and time.monotonic() < deadline:
                self.client.send(text[self.sent:self.sent + self.piece])
                self.sent += self.piece
                self.stop.wait(self.pause)
        except OSError as exc:
            self.error = exc
        finally:
            self.first_part_sent.set()

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        self.client.close()


class ServerTestsMixin:
    KIND = ""

    # ------------------------------------------------------------------ fixtures

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix=f"fs-{self.KIND}-")
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.root = self.tmp / "root"
        self.root.mkdir()

    def start_server(self, workers: int = 4, extra_args=(), **kwargs) -> RunningServer:
        server = RunningServer(self.KIND, self.root, workers=workers, extra_args=extra_args, **kwargs)
        server.start()
        self.addCleanup(server.close)
        return server

    def put(self, name: str, content: bytes) -> None:
        (self.root / name).write_bytes(content)

    def assert_ok(self, reply: dict, msg: str = "") -> dict:
        self.assertEqual(reply.get("status"), "OK", f"{msg}: {reply!r}"[:500])
        return reply

    def assert_error(self, reply: dict, msg: str = "") -> dict:
        self.assertEqual(reply.get("status"), "ERROR", f"{msg}: {reply!r}"[:500])
        self.assertIsInstance(reply.get("data"), str)
        self.assertTrue(reply["data"], "an ERROR reply says why")
        return reply

    def assert_serving(self, server: RunningServer, name: str = "keep", content: bytes = OLD) -> None:
        """Proof the server still works: LIST and GET on a new connection."""
        self.assertIsNone(server.proc.poll(), "server died:\n" + server.stderr_text()[-3000:])
        listing = self.assert_ok(send_command(server, "LIST"), "LIST after a bad request")
        self.assertIn(name, listing["data"])
        got = self.assert_ok(send_command(server, "GET", name), "GET after a bad request")
        self.assertEqual(got["data_namafile"], name)
        self.assertEqual(base64.b64decode(got["data_file"], validate=True), content)

    def stats(self, client: Client) -> dict:
        return self.assert_ok(client.command("STATS"), "STATS")["data"]

    def stop_and_wait(self, server: RunningServer, timeout: float, signum: int | None = signal.SIGTERM,
                      group: bool = False) -> tuple[int, float]:
        """Signal the server (by PID, or its own group; None: already signalled) and wait bounded.

        Returns (exit code, seconds from the signal to the exit).
        """
        started = time.monotonic()
        if signum is not None and group:
            os.killpg(server.pid, signum)               # the group this test started
        elif signum is not None:
            server.signal(signum)
        try:
            returncode = server.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"server still running {timeout} s after signal {signum}; "
                      f"stderr:\n{server.stderr_text()[-3000:]}")
        return returncode, time.monotonic() - started

    def worker_snapshot(self, server: RunningServer) -> list[tuple[int, int]]:
        return [(pid, start_time(pid)) for pid in server.children()]

    def assert_gone(self, processes: list[tuple[int, int]], server: RunningServer) -> None:
        gone = wait_until(lambda: not any(process_alive(p, t) for p, t in processes), 5)
        self.assertTrue(gone, f"child processes left running: "
                              f"{[p for p, t in processes if process_alive(p, t)]}")
        self.assertEqual(process_group_pids(server.pid), [], "processes left in the server's group")

    # ------------------------------------------------------------------ commands

    def test_commands_on_one_connection(self) -> None:
        self.put("b.txt", b"bee")
        self.put("a.txt", b"aye")
        self.put("C.txt", b"")
        self.put("keep", OLD)
        (self.root / "sub").mkdir()
        server = self.start_server()
        # A temporary upload name of a live server: hidden from LIST.
        self.put(f".upload-{server.pid}-zz.part", b"partial")
        with server.connect() as c:
            listing = self.assert_ok(c.command("LIST"))
            self.assertEqual(listing["data"], ["C.txt", "a.txt", "b.txt", "keep"])

            got = self.assert_ok(c.command("GET", "a.txt"))
            self.assertEqual(got["data_namafile"], "a.txt")
            self.assertEqual(base64.b64decode(got["data_file"], validate=True), b"aye")
            empty = self.assert_ok(c.command("GET", "C.txt"))
            self.assertEqual(empty["data_file"], "")

            content = os.urandom(100_001)
            up = self.assert_ok(c.request(b"UPLOAD new.bin " + b64(content) + TERMINATOR))
            self.assertEqual(up["size"], len(content))
            self.assertEqual(up["sha256"], sha(content))
            self.assertIsInstance(up["data"], str)
            self.assertEqual((self.root / "new.bin").read_bytes(), content)

            # UPLOAD replaces an existing file.
            replaced = self.assert_ok(c.request(b"UPLOAD a.txt " + b64(b"replacement") + TERMINATOR))
            self.assertEqual(replaced["size"], len(b"replacement"))
            got = self.assert_ok(c.command("GET", "a.txt"))
            self.assertEqual(base64.b64decode(got["data_file"]), b"replacement")
            self.assertEqual((self.root / "a.txt").read_bytes(), b"replacement")

            # Names with non-ASCII characters and one of exactly 255 bytes.
            self.assertEqual(len(("é" * 127 + "x").encode()), 255)
            for name in ("héllo_wörld.txt", "é" * 127 + "x", 'quote"d', "日本"):
                self.assert_ok(c.request(b"UPLOAD " + name.encode() + b" " + b64(b"u") + TERMINATOR), name)
                got = self.assert_ok(c.command("GET", name))
                self.assertEqual(got["data_namafile"], name)
                self.assertEqual((self.root / name).read_bytes(), b"u")

            deleted = self.assert_ok(c.command("DELETE", "b.txt"))
            self.assertIsInstance(deleted["data"], str)
            self.assertFalse((self.root / "b.txt").exists())
            self.assert_error(c.command("GET", "b.txt"))
            self.assert_error(c.command("DELETE", "b.txt"))

            listing = self.assert_ok(c.command("LIST"))["data"]
            self.assertEqual(listing, sorted(["C.txt", "a.txt", "keep", "new.bin", "héllo_wörld.txt",
                                              "é" * 127 + "x", 'quote"d', "日本"]))
            stats = self.assert_ok(c.command("STATS"))["data"]
            self.assertEqual(set(stats), {"succeeded", "failed", "connections"})
        self.assertTrue((self.root / f".upload-{server.pid}-zz.part").exists())

    def test_lowercase_and_pipelined_requests(self) -> None:
        self.put("keep", OLD)
        server = self.start_server()
        with server.connect() as c:
            self.assertEqual(self.assert_ok(c.command("list"))["data"], ["keep"])
            got = self.assert_ok(c.command("get", "keep"))
            self.assertEqual(base64.b64decode(got["data_file"]), OLD)
            self.assert_ok(c.request(b"upload lower " + b64(b"x") + TERMINATOR))
            self.assertEqual(self.assert_ok(c.command("Stats"))["data"]["failed"], 0)
            self.assert_ok(c.command("delete", "lower"))
            self.assertFalse((self.root / "lower").exists())
        # Everything in one send: replies come back in order on the same connection.
        content = os.urandom(30_000)
        batch = (build("LIST") + b"UPLOAD p.bin " + b64(content) + TERMINATOR + build("GET", "p.bin")
                 + build("NOPE") + build("DELETE", "p.bin") + build("LIST"))
        with server.connect() as c:
            c.send(batch)
            replies = [decode_reply(c.recv_reply()) for _ in range(6)]
        self.assertEqual(replies[0]["data"], ["keep"])
        self.assertEqual(replies[1]["sha256"], sha(content))
        self.assertEqual(base64.b64decode(replies[2]["data_file"]), content)
        self.assert_error(replies[3])
        self.assert_ok(replies[4])
        self.assertEqual(replies[5]["data"], ["keep"])

    def test_upload_in_progress_is_hidden(self) -> None:
        """The temporary file of an upload in progress is neither listed nor served."""
        self.put("keep", OLD)
        server = self.start_server()
        content = os.urandom(300_000)
        text = b64(content)
        with server.connect() as uploader:
            uploader.send(b"UPLOAD keep " + text[:200_000])
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "no temporary file appeared")
            temp = temp_files(self.root)[0]
            with server.connect() as other:
                self.assertEqual(self.assert_ok(other.command("LIST"))["data"], ["keep"])
                self.assert_error(other.command("GET", temp))
                self.assert_error(other.command("DELETE", temp))
                got = self.assert_ok(other.command("GET", "keep"))
                self.assertEqual(base64.b64decode(got["data_file"]), OLD, "old file visible until the end")
            uploader.send(text[200_000:] + TERMINATOR)
            self.assertEqual(self.assert_ok(decode_reply(uploader.recv_reply()))["sha256"], sha(content))
        self.assertEqual((self.root / "keep").read_bytes(), content)
        self.assertEqual(temp_files(self.root), [])

    def test_stale_temp_files_of_dead_servers_removed_at_start(self) -> None:
        self.put(".upload-999999999-abc.part", b"left by a crashed server")   # above any pid_max
        self.put("keep", OLD)
        server = self.start_server(workers=1)
        self.assertEqual(temp_files(self.root), [])
        self.assert_serving(server)

    # ------------------------------------------------------------------ bad input

    def test_bad_requests_get_error_and_server_keeps_serving(self) -> None:
        self.put("keep", OLD)
        (self.root / "sub").mkdir()
        outside = self.tmp / "outside.txt"
        outside.write_bytes(b"secret")
        (self.root / "link").symlink_to(outside)
        (self.root / "dirlink").symlink_to(self.tmp)
        os.mkfifo(self.root / "fifo")
        server = self.start_server(extra_args=["--max-upload-mb", "1"])
        before_parent = sorted(os.listdir(self.tmp))

        bad_names = ["../x", "a/b", "a\\b", "..", ".", "/etc/passwd", "a\x00b", "a\x01b", "a\x7fb", "a\nb",
                     "a\x85b", "x" * 256, "é" * 128, f".upload-{server.pid}-x.part", "sub", "link",
                     "dirlink", "fifo", "missing"]
        cases: list[tuple[str, bytes]] = [
            ("unknown command", build("FROB", "x")),
            ("unknown command after blank lines", TERMINATOR + b"\r\n" + build("FROB")),
            ("blank request", build("   ")),
            ("GET without a name", build("GET")),
            ("DELETE without a name", build("DELETE")),
            ("UPLOAD alone", build("UPLOAD")),
            ("UPLOAD without content", build("UPLOAD", "keep")),
            ("invalid UTF-8 command", b"\xc3\x28" + TERMINATOR),
            ("invalid UTF-8 GET", b"GET \xff\xfe" + TERMINATOR),
            ("invalid UTF-8 UPLOAD name", b"UPLOAD \xff " + b64(b"abc") + TERMINATOR),
            ("over 64 KiB without terminator", b"GET " + b"a" * (70 * 1024)),
            ("over 64 KiB", b"LIST " + b"a" * (70 * 1024) + TERMINATOR),
        ]
        # Uploading to "link", "dirlink" or "fifo" may replace that entry: tried last, below.
        replaceable = ("link", "dirlink", "fifo", "missing")
        for name in bad_names:
            encoded = name.encode()
            cases.append((f"GET {name!r}", b"GET " + encoded + TERMINATOR))
            if name not in replaceable:
                cases.append((f"UPLOAD {name!r}", b"UPLOAD " + encoded + b" " + b64(b"pwned") + TERMINATOR))
            cases.append((f"DELETE {name!r}", b"DELETE " + encoded + TERMINATOR))

        for label, data in cases:
            with self.subTest(label):
                try:
                    reply = decode_reply(exchange(server, data))
                except ConnectionClosedEarly:
                    self.fail(f"{label}: the connection was closed without an ERROR reply")
                self.assert_error(reply, label)
                self.assert_serving(server)
                self.assertEqual(temp_files(self.root), [], "temporary file left")
                self.assertEqual(sorted(os.listdir(self.tmp)), before_parent, "file created outside the root")
        self.assertEqual(sorted(os.listdir(self.root)), ["dirlink", "fifo", "keep", "link", "sub"])
        self.assertEqual(outside.read_bytes(), b"secret")
        self.assertTrue((self.root / "link").is_symlink())
        self.assertTrue((self.root / "sub").is_dir())
        self.assertEqual(self.assert_ok(send_command(server, "LIST"))["data"], ["keep"])
        # An UPLOAD over a symlink may replace the link itself, never write through it.
        for name in ("link", "dirlink"):
            with self.subTest(f"UPLOAD {name!r}"):
                send_command(server, "UPLOAD", name, b64(b"pwned"))
                self.assertEqual(outside.read_bytes(), b"secret")
                self.assertEqual(sorted(os.listdir(self.tmp)), before_parent)
                self.assertNotIn("pwned", {p.name for p in self.tmp.iterdir()})
                self.assertEqual(temp_files(self.root), [])
                self.assert_serving(server)

    def test_failed_requests_leak_no_file_descriptors(self) -> None:
        """Each refused GET must close what it opened: a client must not exhaust the server's fds."""
        self.put("keep", OLD)
        (self.root / "sub").mkdir()
        os.mkfifo(self.root / "fifo")
        server = self.start_server(workers=1)
        self.assert_serving(server)                  # the worker has served a connection once
        serving_pid = server.children()[0] if self.KIND == "process" else server.pid
        before = open_descriptors(serving_pid)
        for name in ("sub", "fifo", "missing", "sub", "fifo") * 4:
            try:
                exchange(server, build("GET", name))
            except ConnectionClosedEarly:
                pass                                 # reported by test_bad_requests_...
        self.assert_serving(server)
        after = open_descriptors(serving_pid)
        self.assertLessEqual(after, before + 2, f"open descriptors grew from {before} to {after}")

    def test_invalid_base64_leaves_old_file_untouched(self) -> None:
        self.put("keep", OLD)
        server = self.start_server()
        bad = {
            "bad character": b"QUJD*EFG",
            "space inside": b"QUJD QUJD",
            "url-safe alphabet": b"QU-_",
            "bad padding (length 3)": b"QUJ",
            "bad padding (length 1)": b"Q",
            "too much padding": b"Q===",
            "padding in the middle": b"QQ==QUJD",
            "padding then more": b"QQ==" + b"QUJD" * 30_000,
            "non-ASCII": "QUJDé".encode(),
            "bad byte after content": b"QUJD\rX\r\n\r\n",
            "bad character late in a big upload": b64(os.urandom(600_000)) + b"!" + b"QUJD" * 1000,
        }
        for label, text in bad.items():
            with self.subTest(label):
                data = b"UPLOAD keep " + text
                if not data.endswith(TERMINATOR):
                    data += TERMINATOR
                self.assert_error(decode_reply(exchange(server, data)), label)
                self.assertEqual((self.root / "keep").read_bytes(), OLD)
                self.assertEqual(temp_files(self.root), [])
                self.assertEqual(sorted(os.listdir(self.root)), ["keep"])
                self.assert_serving(server)
        # The same connection still works after a rejected upload's ERROR.
        with server.connect() as c:
            self.assert_error(c.request(b"UPLOAD keep QUJ*" + TERMINATOR))
            self.assertEqual(self.assert_ok(c.command("LIST"))["data"], ["keep"])

    def test_upload_size_limit(self) -> None:
        self.put("keep", OLD)
        server = self.start_server(extra_args=["--max-upload-mb", "1"])
        exact = os.urandom(MiB)
        self.assertEqual(self.assert_ok(send_command(server, "UPLOAD", "exact", b64(exact)))["size"], MiB)
        for size in (MiB + 1, 2 * MiB):
            with self.subTest(size=size), server.connect() as c:
                try:
                    c.send(b"UPLOAD keep " + b64(os.urandom(size)) + TERMINATOR)
                except (BrokenPipeError, ConnectionResetError):
                    pass     # the server may hang up once it has answered
                self.assert_error(decode_reply(c.recv_reply()))
                self.assertEqual((self.root / "keep").read_bytes(), OLD)
                self.assertEqual(temp_files(self.root), [])
                self.assert_serving(server)

    # ------------------------------------------------------------------ timeouts and disconnects

    def test_idle_and_stalled_connections_time_out(self) -> None:
        self.put("keep", OLD)
        server = self.start_server(workers=4, extra_args=["--timeout", "1"])
        with server.connect() as idle, server.connect() as stalled, server.connect() as half:
            stalled.send(b"UPLOAD keep " + b64(os.urandom(30_000)))
            half.send(b"LIS")
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            started = time.monotonic()
            for label, client in (("idle", idle), ("stalled upload", stalled), ("half request", half)):
                with self.subTest(label):
                    self.assertTrue(client.wait_closed(6), f"{label} connection not closed")
            self.assertLess(time.monotonic() - started, 6)
        self.assertTrue(wait_until(lambda: not temp_files(self.root), 5), "temporary file left")
        self.assertEqual((self.root / "keep").read_bytes(), OLD)
        self.assert_serving(server)

    def test_trickled_request_line_times_out(self) -> None:
        """A byte every 0.6 s is never silent for --timeout 1, but the request line as a whole
        must arrive within it: the connection is closed, not held for ever."""
        self.put("keep", OLD)
        server = self.start_server(workers=1, extra_args=["--timeout", "1"])
        with server.connect() as slow:
            started = time.monotonic()
            closed = False
            for byte in b"GET keep-and-a-very-long-name":       # bounded: 29 bytes, ~17 s at most
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if slow.wait_closed(0.6):
                    closed = True
                    break
            self.assertTrue(closed, "a trickling client held the only worker")
            self.assertLess(time.monotonic() - started, 4)
        self.assert_serving(server)

    def test_pipelined_requests_each_get_their_own_time(self) -> None:
        """A client whose every segment ends in the middle of its next request line is not cut:
        each request line has --timeout from when the worker starts waiting for it."""
        self.put("keep", OLD)
        server = self.start_server(workers=1, extra_args=["--timeout", "1"])
        with server.connect() as c:
            c.send(b"LIS")
            for _ in range(4):                      # 4 x 0.4 s: longer than --timeout in all
                time.sleep(0.4)
                c.send(b"T" + TERMINATOR + b"LIS")
            c.send(b"T" + TERMINATOR)
            for _ in range(5):
                self.assert_ok(decode_reply(c.recv_reply(5)))

    def test_active_connection_is_not_timed_out(self) -> None:
        """--timeout is about silence: a connection used every 0.45 s outlives it."""
        self.put("keep", OLD)
        server = self.start_server(extra_args=["--timeout", "1"])
        with server.connect() as c:
            for _ in range(3):
                self.assert_ok(c.command("LIST"))
                time.sleep(0.45)          # 1.35 s in all: longer than --timeout, never idle for it
            self.assert_ok(c.command("GET", "keep"))

    def test_reader_that_stops_reading_times_out(self) -> None:
        """A client that asks for a big file and never reads must not hold the only worker."""
        self.put("keep", OLD)
        write_big_file(self.root / "big", 16)
        server = self.start_server(workers=1, extra_args=["--timeout", "1"])
        stuck = start_slow_get(server.address, "big")
        self.addCleanup(stuck.close)
        self.assertTrue(stuck.recv(1))                  # the reply has started
        started = time.monotonic()
        self.assert_serving(server)                      # waits for the single worker
        self.assertLess(time.monotonic() - started, 6)

    def test_requests_split_into_tiny_pieces(self) -> None:
        """Requests arriving a byte at a time (terminators split anywhere) parse the same."""
        self.put("keep", OLD)
        server = self.start_server(extra_args=["--timeout", "5"])
        data = b"uPlOaD tiny QUJD\r\n\r\nGET tiny\r\n\r\nlist\r\n\r\n"
        with server.connect() as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                c.send(data[i:i + 1])
                time.sleep(0.003)     # pacing, so that the server sees many small segments
            up, got, listing = (decode_reply(c.recv_reply()) for _ in range(3))
        self.assertEqual(self.assert_ok(up)["size"], 3)
        self.assertEqual(got["data_file"], "QUJD")
        self.assertEqual(listing["data"], ["keep", "tiny"])

    def test_disconnect_mid_upload_leaves_no_partial_file(self) -> None:
        self.put("keep", OLD)
        server = self.start_server()
        for abort in ("close", "reset"):
            with self.subTest(abort):
                c = server.connect()
                c.send(b"UPLOAD keep " + b64(os.urandom(400_000)))
                self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
                if abort == "reset":
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                self.assertTrue(wait_until(lambda: not temp_files(self.root), 5), "temporary file left")
                self.assertEqual((self.root / "keep").read_bytes(), OLD)
                self.assertEqual(sorted(os.listdir(self.root)), ["keep"])
                self.assert_serving(server)

    def test_disconnect_mid_download(self) -> None:
        self.put("keep", OLD)
        big_sha = write_big_file(self.root / "big", 16)
        server = self.start_server()
        with server.connect() as watcher:
            before = self.stats(watcher)
            sock = start_slow_get(server.address, "big")
            received = 0
            while received < 100_000:
                chunk = sock.recv(65536)
                self.assertTrue(chunk)
                received += len(chunk)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            self.assertTrue(wait_until(lambda: self.stats(watcher)["failed"] == before["failed"] + 1, 5),
                            "the cut download is not counted as failed")
            after = self.stats(watcher)
            self.assertEqual(after["succeeded"], before["succeeded"])
            self.assert_serving(server)
        fields = stream_get(server.address, "big")
        self.assertEqual((fields["size"], fields["sha256"]), (16 * MiB, big_sha))

    # ------------------------------------------------------------------ concurrency

    def test_concurrent_uploads_to_one_name(self) -> None:
        self.put("same", OLD)
        server = self.start_server(workers=4)
        contents = [bytes([i]) * 16 + os.urandom(2 * MiB) for i in range(4)]
        barrier = threading.Barrier(4, timeout=10)
        replies: list = [None] * 4

        def upload(i: int) -> None:
            text = b"UPLOAD same " + b64(contents[i]) + TERMINATOR
            with server.connect(timeout=30) as c:
                barrier.wait()
                for start in range(0, len(text), 64 * 1024):
                    c.send(text[start:start + 64 * 1024])
                replies[i] = decode_reply(c.recv_reply(30))

        threads = [threading.Thread(target=upload, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        self.assertFalse(any(t.is_alive() for t in threads), "an upload hung")
        for i, reply in enumerate(replies):
            self.assertIsNotNone(reply, f"client {i} got no reply")
            self.assertEqual(self.assert_ok(reply)["sha256"], sha(contents[i]))
        final = (self.root / "same").read_bytes()
        self.assertIn(final, contents, "the file is not exactly one of the uploads")
        self.assertEqual(sorted(os.listdir(self.root)), ["same"])

    def test_get_during_replacement_sees_a_whole_file(self) -> None:
        """GETs racing UPLOADs of the same name always get one whole version, never a mix."""
        versions = [bytes([v]) * 200_000 for v in (1, 2, 3)]
        self.put("racy", versions[0])
        server = self.start_server(workers=3)
        errors: list = []

        def replace() -> None:
            try:
                with server.connect() as c:
                    for i in range(15):
                        self.assert_ok(c.request(b"UPLOAD racy " + b64(versions[1 + i % 2]) + TERMINATOR))
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=replace, daemon=True)
        writer.start()
        with server.connect() as c:
            for _ in range(15):
                got = base64.b64decode(self.assert_ok(c.command("GET", "racy"))["data_file"])
                self.assertIn(got, versions, "GET returned a mixed or partial file")
        writer.join(20)
        self.assertFalse(writer.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(temp_files(self.root), [])

    def test_more_clients_than_workers(self) -> None:
        content = os.urandom(MiB)
        self.put("one", content)
        server = self.start_server(workers=2)
        clients = 8
        barrier = threading.Barrier(clients, timeout=10)
        results: list = [None] * clients

        def fetch(i: int) -> None:
            with server.connect(timeout=30) as c:
                barrier.wait()
                reply = c.request(build("GET", "one"), timeout=30)
                results[i] = base64.b64decode(reply["data_file"], validate=True) == content

        threads = [threading.Thread(target=fetch, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        self.assertEqual(results, [True] * clients)

    def test_one_worker_serves_many_connections_in_turn(self) -> None:
        server = self.start_server(workers=1)
        workers_before = self.worker_snapshot(server)
        for i in range(10):
            content = f"file {i}".encode() * (i + 1)
            with server.connect() as c:
                self.assert_ok(c.request(b"UPLOAD f%d " % i + b64(content) + TERMINATOR), f"connection {i}")
                got = self.assert_ok(c.command("GET", f"f{i}"))
                self.assertEqual(base64.b64decode(got["data_file"]), content)
        self.assertEqual(self.assert_ok(send_command(server, "LIST"))["data"], sorted(f"f{i}" for i in range(10)))
        self.assertEqual(self.worker_snapshot(server), workers_before, "worker processes changed")

    # ------------------------------------------------------------------ STATS

    def test_stats_counts_are_exact(self) -> None:
        self.put("keep", OLD)
        server = self.start_server(workers=4)
        with server.connect() as watcher:
            before = self.stats(watcher)
            self.assertEqual(self.stats(watcher), before, "STATS counted itself")
            with server.connect() as b, server.connect() as c:
                ok = [build("LIST"), b"UPLOAD s " + b64(b"12345") + TERMINATOR, build("GET", "s"),
                      build("list"), build("DELETE", "s"), build("GET", "keep")]
                bad = [build("GET", "missing"), build("WHAT"), b"UPLOAD s QUJ*" + TERMINATOR,
                       build("GET", "../keep"), build("DELETE", "missing"), build("UPLOAD", "s")]
                for data in ok:
                    self.assert_ok(b.request(data))
                for data in bad:
                    self.assert_error(c.request(data))
                self.stats(b)
                # A protocol error that ends its connection counts too.
                self.assert_error(decode_reply(exchange(server, b"\xff" + TERMINATOR)))
                after = self.stats(watcher)
        self.assertEqual(after["succeeded"] - before["succeeded"], len(ok))
        self.assertEqual(after["failed"] - before["failed"], len(bad) + 1)
        self.assertEqual(after["connections"] - before["connections"], 3)

    # ------------------------------------------------------------------ stopping

    def test_sigterm_during_transfers(self) -> None:
        """SIGTERM while a slow upload and a slow download run: exit 0 after the grace, nothing left."""
        self.put("big", OLD)
        write_big_file(self.root / "down", 16)
        server = self.start_server(workers=3, extra_args=["--grace", "1"])
        children = self.worker_snapshot(server)
        if self.KIND == "process":
            self.assertEqual(len(children), 3, "expected one child per worker")
        reader = start_slow_get(server.address, "down")
        self.addCleanup(reader.close)
        self.assertTrue(reader.recv(1000))              # the download is under way, never finished
        uploader = SlowUploader(server.address, "big", total=8 * MiB, pause=0.05)
        uploader.start()
        try:
            self.assertTrue(uploader.first_part_sent.wait(10))
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            returncode, elapsed = self.stop_and_wait(server, 10)
        finally:
            uploader.finish()
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertLess(elapsed, 8, "stop took far longer than the grace")
        self.assertEqual(temp_files(self.root), [], "partial upload left")
        self.assertEqual(sorted(os.listdir(self.root)), ["big", "down"])
        self.assertEqual((self.root / "big").read_bytes(), OLD)
        self.assert_gone(children, server)

    def test_sigterm_lets_a_request_in_flight_finish_within_the_grace(self) -> None:
        self.put("keep", OLD)
        server = self.start_server(workers=2, extra_args=["--grace", "10"])
        content = os.urandom(600_000)
        text = b64(content)
        with server.connect() as c:
            c.send(b"UPLOAD keep " + text[:400_000])
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            server.signal(signal.SIGTERM)
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5),
                            "no 'stopping (signal N)' log line on stderr")
            c.send(text[400_000:] + TERMINATOR)
            reply = self.assert_ok(decode_reply(c.recv_reply(5)), "upload finished during the grace")
            self.assertEqual(reply["sha256"], sha(content))
            self.assertTrue(c.wait_closed(3), "connection not closed after its request, while stopping")
        returncode, elapsed = self.stop_and_wait(server, 8, signum=None)
        self.assertEqual(returncode, 0)
        self.assertLess(elapsed, 5, "the stop waited for the whole grace period")
        self.assertEqual((self.root / "keep").read_bytes(), content)
        self.assertEqual(temp_files(self.root), [])

    def test_sigterm_to_the_group_lets_a_request_in_flight_finish(self) -> None:
        """`kill -TERM -PGID`, timeout(1) and systemd signal every process of the group:
        the workers too.  Still a graceful stop: the upload in flight completes."""
        server = self.start_server(workers=2, extra_args=["--grace", "10"])
        content = os.urandom(600_000)
        text = b64(content)
        with server.connect() as c:
            c.send(b"UPLOAD whole " + text[:400_000])
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            os.killpg(server.pid, signal.SIGTERM)           # the group this test started
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5))
            c.send(text[400_000:] + TERMINATOR)
            reply = self.assert_ok(decode_reply(c.recv_reply(5)), "upload cut by a group SIGTERM")
            self.assertEqual(reply["sha256"], sha(content))
        returncode, _ = self.stop_and_wait(server, 8, signum=None)
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertEqual((self.root / "whole").read_bytes(), content)

    def test_sigterm_still_serves_a_request_that_had_arrived(self) -> None:
        """A request already received but queued behind the only worker is in flight for its
        client: it is answered within the grace, not dropped."""
        self.put("small.txt", b"small")
        server = self.start_server(workers=1, extra_args=["--grace", "10"])
        with server.connect() as busy, server.connect() as queued:
            busy.send(b"UPLOAD big.bin QUJD")                # holds the only worker
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            queued.send(b"GET small.txt\r\n\r\n")
            server.signal(signal.SIGTERM)
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5))
            busy.send(TERMINATOR)
            self.assert_ok(decode_reply(busy.recv_reply(5)))
            reply = self.assert_ok(decode_reply(queued.recv_reply(5)), "queued request dropped")
            self.assertEqual(base64.b64decode(reply["data_file"]), b"small")
        returncode, _ = self.stop_and_wait(server, 8, signum=None)
        self.assertEqual(returncode, 0)

    def test_sigterm_with_idle_connection_is_prompt(self) -> None:
        self.put("keep", OLD)
        server = self.start_server(workers=2, extra_args=["--grace", "20"])
        children = self.worker_snapshot(server)
        with server.connect() as idle:
            self.assert_ok(idle.command("LIST"))          # a worker is now holding it
            returncode, elapsed = self.stop_and_wait(server, 8)
            self.assertTrue(idle.wait_closed(2), "idle connection left open")
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertLess(elapsed, 4, "an idle connection held the stop for the grace period")
        self.assertEqual(server.extra_stdout + server.proc.stdout.read(), b"", "more than one line on stdout")
        self.assert_gone(children, server)

    def test_sigint_to_process_group_stops_gracefully(self) -> None:
        """Ctrl-C in a terminal signals the whole group: still a graceful stop, exit 0."""
        self.put("keep", OLD)
        server = self.start_server(workers=2, extra_args=["--grace", "20"])
        children = self.worker_snapshot(server)
        with server.connect() as idle:
            self.assert_ok(idle.command("LIST"))
            returncode, _ = self.stop_and_wait(server, 8, signal.SIGINT, group=True)
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assert_gone(children, server)

    def test_repeated_stops_are_clean(self) -> None:
        """Every stop exits 0, promptly, without a traceback on stderr.

        Races in the stop sequence show up only now and then: run more cycles
        with FILESERVER_STOP_CYCLES=200 to hunt them.
        """
        cycles = int(os.environ.get("FILESERVER_STOP_CYCLES", "4"))
        for cycle in range(cycles):
            with self.subTest(cycle=cycle):
                server = RunningServer(self.KIND, self.root, workers=2)
                server.start()
                try:
                    with server.connect() as c:
                        self.assert_ok(c.command("LIST"))
                        returncode, elapsed = self.stop_and_wait(server, 8)
                    self.assertEqual(returncode, 0)
                    self.assertLess(elapsed, 4)
                    stderr = server.stderr_text()
                    self.assertFalse("Traceback" in stderr, f"traceback on stderr:\n{stderr[-2500:]}")
                finally:
                    server.stop(timeout=1)
                    server.close()

    def test_no_new_connections_accepted_while_stopping(self) -> None:
        """Once the server stops accepting, connecting must fail rather than hang unserved."""
        server = self.start_server(workers=2, extra_args=["--grace", "2"])
        uploader = SlowUploader(server.address, "big", total=8 * MiB, pause=0.05)
        uploader.start()
        try:
            self.assertTrue(uploader.first_part_sent.wait(10))
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            server.signal(signal.SIGTERM)
            # The server logs this line after it has closed its listening socket.
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5),
                            "no 'stopping (signal N)' log line on stderr")
            try:
                late = Client(server.address, timeout=1)
            except ConnectionRefusedError:
                late = None
            if late is not None:
                with late:
                    try:
                        late.send(build("LIST"))
                        outcome = repr(late.recv_reply(1))
                    except (OSError, ConnectionError) as exc:
                        outcome = repr(exc)
                self.fail(f"a connection was accepted after the listener closed; it got {outcome}")
        finally:
            uploader.finish()
        self.assertEqual(self.stop_and_wait(server, 10, signum=None)[0], 0)

    # ------------------------------------------------------------------ memory

    def test_big_files_in_bounded_memory(self) -> None:
        size_mib = 64
        big_sha = write_big_file(self.root / "big", size_mib)
        server = self.start_server(workers=3)
        results: list = [None] * 3
        errors: list = []

        def fetch(i: int) -> None:
            try:
                results[i] = stream_get(server.address, "big", timeout=40)
            except BaseException as exc:       # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=fetch, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(45)
        self.assertEqual(errors, [])
        for fields in results:
            self.assertEqual(fields["status"], "OK")
            self.assertEqual(fields["data_namafile"], "big")
            self.assertEqual((fields["size"], fields["sha256"]), (size_mib * MiB, big_sha))

        seed = os.urandom(MiB)
        blocks = (i.to_bytes(8, "big") + seed[8:] for i in range(size_mib))
        reply, size, digest = stream_upload(server.address, "up", blocks, timeout=40)
        self.assert_ok(reply)
        self.assertEqual((reply["size"], reply["sha256"]), (size, digest))
        self.assertEqual(file_sha(self.root / "up"), (size_mib * MiB, digest))

        limit = 64 * MiB
        for pid in [server.pid, *server.children()]:
            with self.subTest(pid=pid):
                self.assertLess(vm_hwm(pid), limit, f"peak RSS of {pid} is {vm_hwm(pid) / MiB:.1f} MiB")


class ThreadServerTests(ServerTestsMixin, unittest.TestCase):
    KIND = "thread"


class ProcessServerTests(ServerTestsMixin, unittest.TestCase):
    KIND = "process"

    def test_workers_do_not_outlive_a_killed_server(self) -> None:
        """SIGKILL leaves the server no time to stop its pool: the workers notice and go."""
        server = self.start_server(workers=3)
        workers = self.worker_snapshot(server)
        self.assertEqual(len(workers), 3)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        self.assertTrue(wait_until(lambda: not any(process_alive(p, t) for p, t in workers), 5),
                        "workers left running after their server was killed")

    def test_a_dead_worker_does_not_take_the_server_down(self) -> None:
        """A worker process that dies (OOM killer, crash) must not end the whole service.

        Connections served after that must still behave: a request the server
        answers by hanging up (a protocol error) is followed by EOF, i.e. no
        other process keeps a copy of the client's socket open.
        """
        self.put("keep", OLD)
        server = self.start_server(workers=2)
        victim = server.children()[0]
        os.kill(victim, signal.SIGKILL)
        # Only the server reaps its worker, so once it is gone from /proc the server knows.
        # A zombie is not enough: a killed process with threads shows as one before its
        # last thread has exited, and until then the server cannot tell it is dying; a
        # request it hands out in that window is cut with the rest of the broken pool.
        self.assertTrue(wait_until(lambda: reaped(victim), 5))
        for attempt in range(3):
            with self.subTest(attempt=attempt):
                try:
                    with server.connect() as c:
                        c.send(b"\xff" + TERMINATOR)
                        self.assert_error(decode_reply(c.recv_reply(5)))
                        self.assertTrue(c.wait_closed(3), "the server answered but never closed the "
                                                          "connection")
                    self.assert_serving(server)
                except (OSError, ConnectionError) as exc:
                    self.fail(f"request failed after a worker died: {exc!r}; "
                              f"server exit code {server.proc.poll()}; stderr:\n{server.stderr_text()}")
        self.assertEqual(len(server.children()), 2, "the pool did not get its workers back")


    def test_a_dead_worker_publishes_nothing_and_the_server_recovers(self) -> None:
        """A dead worker breaks a ProcessPoolExecutor, which stops all its workers (documented):
        the upload in flight is cut, but nothing half-written is ever published, its temporary
        file is gone once the replacement pool serves, and the server keeps serving."""
        self.put("keep", OLD)
        self.put("up", OLD)
        server = self.start_server(workers=2)
        workers = server.children()
        uploader = SlowUploader(server.address, "up", total=1 * MiB, fast_first=256 * 1024, pause=0.02)
        uploader.start()
        try:
            self.assertTrue(uploader.first_part_sent.wait(10))
            self.assertTrue(wait_until(lambda: temp_files(self.root), 5), "upload did not start")
            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            self.assertTrue(wait_until(lambda: not process_alive(victim), 5))
            uploader.join(15)
            self.assertFalse(uploader.is_alive())
        finally:
            uploader.finish()
        self.assert_serving(server)
        self.assertEqual((self.root / "up").read_bytes(), OLD, "a cut upload changed the file")
        self.assertTrue(wait_until(lambda: not temp_files(self.root), 3),
                        f"temporary files left while the server runs: {temp_files(self.root)}")

    def test_connections_waiting_for_a_worker_survive_its_death(self) -> None:
        """Connections no worker has collected yet are moved to a new pool, never dropped,
        whether the pool or the server notices the death first."""
        self.put("keep", OLD)
        server = self.start_server(workers=2)
        holders = [server.connect() for _ in range(2)]
        waiting: list[Client] = []
        try:
            # Each holder keeps a worker until it closes: an upload never finished does (an
            # idle connection no longer would).
            for number, holder in enumerate(holders):
                holder.send(b"UPLOAD held%d QUJD" % number)
            self.assertTrue(wait_until(lambda: len(temp_files(self.root)) == 2, 5), "uploads did not start")
            for _ in range(4):
                waiting.append(server.connect())
                waiting[-1].send(build("GET", "keep"))
                waiting[-1].sock.shutdown(socket.SHUT_WR)     # one request each: free the worker after
            os.kill(server.children()[0], signal.SIGKILL)
            # A new connection right away makes the server look at its workers, maybe before the
            # pool has noticed: then it retires the pool itself, with the four still queued in it.
            # This one may be cut (README: the window right after a death); the four may not.
            with suppress(OSError):
                with server.connect() as trigger:
                    trigger.command("LIST", timeout=10)
            for number, client in enumerate(waiting):
                reply = self.assert_ok(decode_reply(client.recv_reply(10)), f"waiting connection {number}")
                self.assertEqual(base64.b64decode(reply["data_file"]), OLD)
        finally:
            for client in holders + waiting:
                client.close()
        self.assert_serving(server)

    def test_a_worker_dying_while_the_new_pool_starts(self) -> None:
        """A worker of the replacement pool killed as it starts: the server starts another
        pool and keeps serving, instead of exiting or dropping every later connection."""
        self.put("keep", OLD)
        server = self.start_server(workers=2)
        first_pool = set(server.children())
        first_victim = min(first_pool)
        os.kill(first_victim, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: reaped(first_victim), 5))   # so the next connection sees it
        opener = threading.Thread(target=_try_list, args=(server,), daemon=True)
        opener.start()                            # its connection makes the server start a new pool
        second_victim = None
        deadline = time.monotonic() + 10
        while second_victim is None and time.monotonic() < deadline:
            second_victim = next((pid for pid in server.children() if pid not in first_pool), None)
        self.assertIsNotNone(second_victim, "no new pool was started")
        with suppress(ProcessLookupError):
            os.kill(second_victim, signal.SIGKILL)
        opener.join(15)
        self.assertTrue(wait_until(lambda: reaped(second_victim), 5))
        self.assertIsNone(server.proc.poll(), "the server exited:\n" + server.stderr_text()[-3000:])
        self.assert_serving(server)
        self.assertTrue(wait_until(lambda: len(server.children()) == 2, 5), "the pool did not get its workers back")

    def test_a_worker_dying_during_a_graceful_stop(self) -> None:
        """A request that had arrived before SIGTERM is answered within the grace even when
        the worker pool dies meanwhile; the server still exits 0 with no child left."""
        self.put("small.txt", b"small")
        write_big_file(self.root / "big", 16)
        server = self.start_server(workers=1, extra_args=["--grace", "10"])
        with closing(start_slow_get(server.address, "big")) as busy, server.connect() as queued:
            self.assertTrue(busy.recv(1), "the only worker did not start on the big GET")
            queued.send(build("GET", "small.txt"))         # waits: the only worker is busy
            server.signal(signal.SIGTERM)
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5))
            os.kill(server.children()[0], signal.SIGKILL)
            reply = self.assert_ok(decode_reply(queued.recv_reply(10)), "a request that had arrived was dropped")
            self.assertEqual(base64.b64decode(reply["data_file"]), b"small")
        returncode, _ = self.stop_and_wait(server, 15, signum=None)
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertTrue(wait_until(lambda: not process_group_pids(server.pid), 5),
                        f"processes left in the server's group: {process_group_pids(server.pid)}")

    def test_a_worker_that_never_leaves_does_not_hold_up_the_stop(self) -> None:
        """A worker stuck for good (here stopped with SIGSTOP; in life, on a queue lock a killed
        worker held) is killed once the pool has had its time to stop: exit 0, no process left."""
        server = self.start_server(workers=2)
        workers = self.worker_snapshot(server)
        os.kill(workers[0][0], signal.SIGSTOP)
        returncode, _ = self.stop_and_wait(server, 20)
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertIn("did not stop; killing", server.stderr_text())
        self.assert_gone(workers, server)


def _try_list(server: RunningServer) -> None:
    with suppress(OSError):
        send_command(server, "LIST", timeout=10)


_signals_blocked_at_birth: set[int] = set()


def _record_blocked_signals() -> None:
    global _signals_blocked_at_birth
    _signals_blocked_at_birth = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def _blocked_signals_recorded() -> set[int]:
    return _signals_blocked_at_birth


def sigterm_pending(pid: int) -> bool:
    fields = status_fields(pid)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


class ProcessPoolStartTests(unittest.TestCase):
    def test_a_worker_whose_server_is_gone_exits(self) -> None:
        """A worker started just before its server was killed must not live on, adopted.

        It is told its server's PID; here that server has already exited, as if killed
        while the worker was still starting.
        """
        from fileshare.process_pool import exit_with_server
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(10)
        worker = multiprocessing.get_context("fork").Process(target=exit_with_server, args=(gone.pid,))
        worker.start()
        worker.join(5)
        if worker.exitcode is None:
            worker.kill()
            worker.join(5)
            self.fail("the worker kept running after its server was gone")
        self.assertEqual(worker.exitcode, 1)

    def test_a_worker_ends_on_a_sigterm_from_its_server_only(self) -> None:
        """SIGTERM from the server (its pool stopping) ends a worker; one from elsewhere does not."""
        from fileshare.process_pool import exit_with_server
        ctx = multiprocessing.get_context("fork")
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            worker = ctx.Process(target=exit_with_server, args=(os.getpid(),))
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        try:
            outsider = subprocess.run(["kill", "-TERM", str(worker.pid)], timeout=10)
            self.assertEqual(outsider.returncode, 0)
            worker.join(1.5)       # past the watcher's 1 s wait, so a wrong exit would show
            self.assertIsNone(worker.exitcode, "a SIGTERM from another process ended the worker")
            # Still pending, the outsider's SIGTERM would absorb ours (signals of a kind do not queue).
            self.assertTrue(wait_until(lambda: not sigterm_pending(worker.pid), 5))
            self.assertIsNone(worker.exitcode, "a SIGTERM from another process ended the worker")
            worker.terminate()     # SIGTERM from the server, i.e. us
            worker.join(5)
            self.assertEqual(worker.exitcode, 1)
        finally:
            if worker.exitcode is None:
                worker.kill()
                worker.join(5)

    def test_workers_are_forked_with_stop_signals_held(self) -> None:
        """Until a worker's initializer has run, SIGTERM and SIGINT must wait for it.

        Delivered earlier they would run the handler inherited from the server, which only
        sets a flag: the SIGTERM a breaking pool sends its workers was lost that way, and
        the pool's shutdown then waited for ever for a worker that never left.
        """
        from fileshare.process_pool import start_pool
        caller_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        pool = start_pool(1, _record_blocked_signals, ())
        try:
            blocked = pool.submit(_blocked_signals_recorded).result(10)
        finally:
            pool.shutdown()
        self.assertLessEqual({signal.SIGTERM, signal.SIGINT}, blocked)
        self.assertEqual(signal.pthread_sigmask(signal.SIG_BLOCK, []), caller_mask,
                         "the caller's own signal mask was not restored")


class CommandLineTests(unittest.TestCase):
    def run_script(self, kind: str, args, env=None) -> subprocess.CompletedProcess:
        """Run a script expected to exit by itself; kill its own group if it does not."""
        proc = subprocess.Popen([sys.executable, str(SCRIPTS[kind]), *args], cwd=str(REPO), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
            self.fail(f"{kind} {args} did not exit by itself")
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def test_help(self) -> None:
        for kind in SCRIPTS:
            with self.subTest(kind):
                done = self.run_script(kind, ["--help"])
                self.assertEqual(done.returncode, 0, done.stderr)
                for flag in ("--host", "--port", "--workers", "--root", "--timeout", "--max-upload-mb", "--grace"):
                    self.assertIn(flag, done.stdout)

    def test_bad_environment_defaults(self) -> None:
        for kind in SCRIPTS:
            for var, value in (("MAX_WORKERS", "abc"), ("MAX_WORKERS", "0")):
                with self.subTest(kind=kind, var=var, value=value):
                    env = dict(os.environ, **{var: value})
                    with tempfile.TemporaryDirectory() as root:
                        done = self.run_script(kind, ["--host", "127.0.0.1", "--port", "0", "--root", root],
                                               env=env)
                    self.assertEqual(done.returncode, 2, done.stderr)
                    self.assertIn(value, done.stderr)
                    self.assertEqual(done.stdout, "")

    def test_bad_flags(self) -> None:
        for kind in SCRIPTS:
            for args in (["--workers", "0"], ["--timeout", "-1"], ["--port", "x"], ["--max-upload-mb", "0"]):
                with self.subTest(kind=kind, args=args):
                    with tempfile.TemporaryDirectory() as root:
                        done = self.run_script(kind, ["--host", "127.0.0.1", "--port", "0", "--root", root,
                                                      *args])
                    self.assertEqual(done.returncode, 2, done.stderr)
                    self.assertIn("usage", done.stderr)


if __name__ == "__main__":
    unittest.main()
