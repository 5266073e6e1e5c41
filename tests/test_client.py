"""Integration tests of client_worker.py: the FileClient library and its command line.

The library runs against both real servers (started by tests/support.py's
RunningServer on 127.0.0.1 with --port 0 and a temporary --root) and against
small fake servers in this file, which misbehave on purpose: they stay silent,
send invalid base64 or malformed JSON, or hang up in the middle of a reply.
The command line and the memory check run as subprocesses.

Run: ``cd /work/main && python -m unittest tests.test_client -v``
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Callable, Optional

try:
    from .support import HOST, REPO, ServerPerClass
except ImportError:          # run from inside tests/
    from support import HOST, REPO, ServerPerClass

from client_worker import ClientError, DiscardingSink, FileClient, TransferResult

CLIENT_SCRIPT = REPO / "client_worker.py"
TERMINATOR = b"\r\n\r\n"
SUBPROCESS_TIMEOUT = 60


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A port nothing listens on: bind one, note it, close it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def clear_folder(path: str) -> None:
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


# ---------------------------------------------------------------------- fake servers

class FakeServer:
    """A tiny TCP server on 127.0.0.1 whose every connection runs ``handler(conn, fake)``.

    Each connection gets its own daemon thread.  ``stop()`` closes the listener and
    every connection and joins the threads with a bounded wait; handlers should
    wait on ``fake.stopping`` rather than sleep.
    """

    def __init__(self, handler: Callable[[socket.socket, "FakeServer"], None],
                 conn_timeout: float = 20.0, max_connections: int = 200) -> None:
        self.handler = handler
        self.conn_timeout = conn_timeout
        self.max_connections = max_connections
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.02)
        self.port = self.listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="fake-accept", daemon=True)
        self._accept_thread.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set() and self.accepted < self.max_connections:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.conn_timeout)
            thread = threading.Thread(target=self._run, args=(conn,), name="fake-conn", daemon=True)
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except OSError:
            pass                      # the client went away: fine for a fake
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self._accept_thread.join(5)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> "FakeServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_request(conn: socket.socket, buffer: bytearray, limit: int = 256 * 1024 * 1024) -> Optional[bytes]:
    """One request (without its terminator) from ``conn``; None when the peer closed first.

    Base64 has no '\\r', so the first terminator always ends the request, uploads included.
    """
    scanned = 0
    while True:
        end = buffer.find(TERMINATOR, max(0, scanned - 3))
        if end >= 0:
            request = bytes(buffer[:end])
            del buffer[:end + len(TERMINATOR)]
            return request
        scanned = len(buffer)
        if scanned > limit:
            raise ValueError("request too long for the fake server")
        chunk = conn.recv(256 * 1024)
        if not chunk:
            return None
        buffer += chunk


def scripted_reply(reply: bytes, close: str = "none", piece: int = 0,
                   hold: float = 5.0) -> Callable[[socket.socket, FakeServer], None]:
    """A handler that answers the first request with ``reply`` (in ``piece``-byte sends if set).

    close: 'none' keeps the connection open (until the client closes it or ``hold`` s pass),
    'fin' closes it normally after the reply, 'rst' resets it (SO_LINGER 0).
    """
    def handler(conn: socket.socket, fake: FakeServer) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if read_request(conn, bytearray()) is None:
            return
        if piece:
            for start in range(0, len(reply), piece):
                conn.sendall(reply[start:start + piece])
        else:
            conn.sendall(reply)
        if close == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return
        if close == "fin":
            return
        conn.settimeout(hold)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
    return handler


def silent_handler(conn: socket.socket, fake: FakeServer) -> None:
    """Accept and never answer (until the test stops the fake server)."""
    fake.stopping.wait(30)


def get_reply(content_b64: bytes, key: str = "data_file", name: str = "x.bin") -> bytes:
    return (b'{"status": "OK", "data_namafile": ' + json.dumps(name).encode() + b', "' + key.encode()
            + b'": "' + content_b64 + b'"}' + TERMINATOR)


# ---------------------------------------------------------------------- against the real servers

class _ClientAgainstServer(ServerPerClass):
    """The library against a real server; subclasses choose ``kind``."""

    kind = ""

    server_workers = 3

    def setUp(self) -> None:
        clear_folder(self.root)
        self.local = tempfile.mkdtemp(prefix="local-", dir=self._tmp.name)
        self.addCleanup(shutil.rmtree, self.local, True)

    def client(self, timeout: float = 20.0) -> FileClient:
        client = FileClient(self.server.host, self.server.port, timeout=timeout, connect_timeout=5)
        self.addCleanup(client.close)
        return client

    def put_on_server(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)

    def on_server(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()

    def assertResult(self, result: TransferResult, name: str, data: bytes) -> None:
        self.assertIsInstance(result, TransferResult)
        self.assertEqual(result.name, name)
        self.assertEqual(result.bytes, len(data))
        self.assertEqual(result.sha256, sha256(data))
        self.assertGreaterEqual(result.seconds, 0)

    # ------------------------------------------------------------------ commands

    def test_list(self) -> None:
        client = self.client()
        self.assertEqual(client.list(), [])
        self.put_on_server("b.bin", b"\x00\x01")
        self.put_on_server("a.txt", b"hello")
        os.mkdir(os.path.join(self.root, "folder"))
        names = client.list()
        self.assertIsInstance(names, list)
        self.assertEqual(sorted(names), ["a.txt", "b.bin"])

    def test_upload_from_path_then_get_to_path(self) -> None:
        data = os.urandom(300_000) + b"tail"
        source = os.path.join(self.local, "source.bin")
        with open(source, "wb") as f:
            f.write(data)
        client = self.client()
        result = client.upload(source)
        self.assertResult(result, "source.bin", data)
        self.assertEqual(self.on_server("source.bin"), data)

        dest = os.path.join(self.local, "copy.bin")
        result = client.get("source.bin", dest)
        self.assertResult(result, "source.bin", data)
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(sorted(os.listdir(self.local)), ["copy.bin", "source.bin"], "a .part file was left")

    def test_upload_path_under_chosen_name(self) -> None:
        source = os.path.join(self.local, "local-name.txt")
        with open(source, "wb") as f:
            f.write(b"chosen name\n")
        result = self.client().upload(source, name="server-name.txt")
        self.assertResult(result, "server-name.txt", b"chosen name\n")
        self.assertEqual(sorted(os.listdir(self.root)), ["server-name.txt"])

    def test_upload_file_object_under_chosen_name(self) -> None:
        data = bytes(range(256)) * 1000 + b"x"      # not a multiple of the client's chunk
        client = self.client()
        result = client.upload(io.BytesIO(data), name="from-object.bin")
        self.assertResult(result, "from-object.bin", data)
        self.assertEqual(self.on_server("from-object.bin"), data)

        # An unbuffered file object may return short reads: the bytes must still arrive intact.
        path = os.path.join(self.local, "raw.bin")
        with open(path, "wb") as f:
            f.write(data)
        with open(path, "rb", buffering=0) as raw:
            result = client.upload(raw, name="from-raw.bin")
        self.assertResult(result, "from-raw.bin", data)
        self.assertEqual(self.on_server("from-raw.bin"), data)

    def test_get_to_file_object(self) -> None:
        data = os.urandom(200_001)
        self.put_on_server("blob.bin", data)
        out = io.BytesIO()
        result = self.client().get("blob.bin", out)
        self.assertResult(result, "blob.bin", data)
        self.assertEqual(out.getvalue(), data)

        result = self.client().get("blob.bin", DiscardingSink())
        self.assertResult(result, "blob.bin", data)

    def test_progress_callback_adds_up(self) -> None:
        data = os.urandom(150_000)
        self.put_on_server("p.bin", data)
        got: list[int] = []
        self.client().get("p.bin", io.BytesIO(), progress=got.append)
        self.assertEqual(sum(got), len(data))
        sent: list[int] = []
        self.client().upload(io.BytesIO(data), name="q.bin", progress=sent.append)
        self.assertEqual(sum(sent), len(data))

    def test_empty_file_round_trip(self) -> None:
        client = self.client()
        result = client.upload(io.BytesIO(b""), name="empty.txt")
        self.assertResult(result, "empty.txt", b"")
        self.assertEqual(self.on_server("empty.txt"), b"")
        out = io.BytesIO()
        self.assertResult(client.get("empty.txt", out), "empty.txt", b"")
        self.assertEqual(out.getvalue(), b"")

    def test_get_missing_file_is_a_server_error_and_leaves_nothing(self) -> None:
        client = self.client()
        dest = os.path.join(self.local, "never.bin")
        with self.assertRaises(ClientError) as caught:
            client.get("missing.bin", dest)
        self.assertEqual(caught.exception.kind, "server")
        self.assertIn("missing.bin", str(caught.exception))
        self.assertEqual(os.listdir(self.local), [], "a file or .part was left at the destination")

        # An existing destination is replaced only by a complete download.
        with open(dest, "wb") as f:
            f.write(b"keep me")
        with self.assertRaises(ClientError) as caught:
            client.get("missing.bin", dest)
        self.assertEqual(caught.exception.kind, "server")
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"keep me")
        self.assertEqual(os.listdir(self.local), ["never.bin"])

    def test_delete(self) -> None:
        self.put_on_server("gone.txt", b"bye")
        self.put_on_server("stays.txt", b"hi")
        client = self.client()
        message = client.delete("gone.txt")
        self.assertIsInstance(message, str)
        self.assertIn("gone.txt", message)
        self.assertEqual(sorted(os.listdir(self.root)), ["stays.txt"])
        self.assertEqual(client.list(), ["stays.txt"])
        with self.assertRaises(ClientError) as caught:
            client.delete("gone.txt")
        self.assertEqual(caught.exception.kind, "server")

    def test_stats_counts_requests_exactly(self) -> None:
        client = self.client()
        before = client.stats()
        self.assertEqual(set(before), {"succeeded", "failed", "connections"})
        self.assertTrue(all(isinstance(v, int) for v in before.values()), before)
        client.list()
        with self.assertRaises(ClientError):
            client.get("nope.bin", io.BytesIO())
        after = client.stats()
        self.assertEqual(after["succeeded"] - before["succeeded"], 1)
        self.assertEqual(after["failed"] - before["failed"], 1)

    def test_several_requests_on_one_connection(self) -> None:
        client = self.client()
        first = client.stats()                      # opens the connection
        data = os.urandom(70_000)
        client.upload(io.BytesIO(data), name="one.bin")
        self.assertEqual(client.list(), ["one.bin"])
        out = io.BytesIO()
        self.assertResult(client.get("one.bin", out), "one.bin", data)
        self.assertEqual(out.getvalue(), data)
        with self.assertRaises(ClientError) as caught:    # an ERROR reply keeps the connection usable
            client.get("two.bin", io.BytesIO())
        self.assertEqual(caught.exception.kind, "server")
        out = io.BytesIO()
        self.assertResult(client.get("one.bin", out), "one.bin", data)
        client.delete("one.bin")
        self.assertEqual(client.list(), [])
        last = client.stats()
        self.assertEqual(last["connections"], first["connections"], "the client opened another connection")
        self.assertEqual(last["succeeded"] - first["succeeded"], 6)
        self.assertEqual(last["failed"] - first["failed"], 1)

    def test_local_mistakes_are_kind_other(self) -> None:
        client = self.client()
        cases = {
            "missing local file": lambda: client.upload(os.path.join(self.local, "absent.bin")),
            "file object without a name": lambda: client.upload(io.BytesIO(b"x")),
            "name with a separator": lambda: client.upload(io.BytesIO(b"x"), name="a/b"),
        }
        for label, call in cases.items():
            with self.subTest(label):
                with self.assertRaises(ClientError) as caught:
                    call()
                self.assertEqual(caught.exception.kind, "other")
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(client.list(), [])          # still usable

    def test_memory_stays_bounded_for_20_mib(self) -> None:
        size = 20 * 1024 * 1024
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            for _ in range(20):
                f.write(os.urandom(1024 * 1024))
        with open(os.path.join(self.root, "big.bin"), "rb") as f:
            expected = hashlib.file_digest(f, "sha256").hexdigest()
        script = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
from client_worker import FileClient
from fileshare.harness import vm_hwm

def hwm():
    return vm_hwm(os.getpid())

report = {"baseline": hwm()}
with FileClient("127.0.0.1", int(sys.argv[2]), timeout=60) as client:
    got = client.get("big.bin", sys.argv[3])
    report["after_get"] = hwm()
    sent = client.upload(sys.argv[3], name="big-again.bin")
    report["after_upload"] = hwm()
report.update(get_bytes=got.bytes, get_sha=got.sha256, up_bytes=sent.bytes, up_sha=sent.sha256,
              maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(report))
"""
        dest = os.path.join(self.local, "big-copy.bin")
        proc = subprocess.run([sys.executable, "-c", script, str(REPO), str(self.server.port), dest],
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        report = json.loads(proc.stdout)
        self.assertEqual((report["get_bytes"], report["get_sha"]), (size, expected))
        self.assertEqual((report["up_bytes"], report["up_sha"]), (size, expected))
        with open(os.path.join(self.root, "big-again.bin"), "rb") as f:
            self.assertEqual(hashlib.file_digest(f, "sha256").hexdigest(), expected)
        # VmHWM is the peak of this process alone; ru_maxrss also carries over the peak of the
        # test process it was forked from (Linux keeps it across exec), so it is only reported.
        limit = 64 * 1024 * 1024
        self.assertLess(report["after_upload"], limit, report)
        # Stronger: the transfers must not hold anything near the file's size.
        self.assertLess(report["after_upload"] - report["baseline"], size // 2, report)


class ClientAgainstThreadServerTest(_ClientAgainstServer, unittest.TestCase):
    kind = "thread"

    def test_downloaded_file_gets_normal_permissions(self) -> None:
        """A download to a path gets the mode a new file would have (0666 & ~umask), not mkstemp's 0600."""
        self.put_on_server("shared.txt", b"for everyone")
        dest = os.path.join(self.local, "shared.txt")
        self.client().get("shared.txt", dest)
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(oct(os.stat(dest).st_mode & 0o777), oct(0o666 & ~umask))


class ClientAgainstProcessServerTest(_ClientAgainstServer, unittest.TestCase):
    kind = "process"


class UploadRefusedEarlyTest(ServerPerClass, unittest.TestCase):
    """A server that refuses an upload part-way says why; the client should pass that on."""

    server_args = ("--max-upload-mb", "0.05")

    def test_small_excess_is_reported_as_server_error(self) -> None:
        with FileClient(self.server.host, self.server.port, timeout=20) as client:
            with self.assertRaises(ClientError) as caught:
                client.upload(io.BytesIO(os.urandom(60_000)), name="big.bin")
        self.assertEqual(caught.exception.kind, "server")
        self.assertIn("limit", str(caught.exception))
        self.assertEqual(os.listdir(self.root), [])

    def test_large_excess_is_reported_as_server_error(self) -> None:
        """The server refuses a large upload early and hangs up while the client still sends:
        the client must still read and report the ERROR it sent ('server', not 'reset')."""
        with FileClient(self.server.host, self.server.port, timeout=20) as client:
            with self.assertRaises(ClientError) as caught:
                client.upload(io.BytesIO(bytes(8 * 1024 * 1024)), name="huge.bin")
        self.assertEqual(caught.exception.kind, "server", str(caught.exception))
        self.assertIn("limit", str(caught.exception))
        self.assertEqual(os.listdir(self.root), [])


# ---------------------------------------------------------------------- error kinds, fake servers

class ClientErrorKindsTest(unittest.TestCase):

    def setUp(self) -> None:
        self.local = tempfile.mkdtemp(prefix="client-errors-")
        self.addCleanup(shutil.rmtree, self.local, True)

    def fake(self, handler: Callable[[socket.socket, FakeServer], None]) -> FakeServer:
        fake = FakeServer(handler)
        self.addCleanup(self.assertEqual, fake.errors, [], "the fake server itself failed")
        self.addCleanup(fake.stop)
        return fake

    def client(self, port: int, timeout: float = 10.0) -> FileClient:
        client = FileClient(HOST, port, timeout=timeout, connect_timeout=5)
        self.addCleanup(client.close)
        return client

    def assertKind(self, kind: str, call: Callable[[], object]) -> ClientError:
        with self.assertRaises(ClientError) as caught:
            call()
        self.assertEqual(caught.exception.kind, kind, str(caught.exception))
        self.assertIn(caught.exception.kind, ClientError.KINDS)
        self.assertTrue(str(caught.exception))
        return caught.exception

    def assertNothingLeft(self) -> None:
        self.assertEqual(os.listdir(self.local), [], "a file or .part was left at the destination")

    def test_a_kept_connection_closed_in_the_middle_of_a_get_is_not_retried(self) -> None:
        """Only a kept connection closed before any reply byte is retried: one closed after half
        a GET reply must be a reset, or the GET is sent again and two replies are joined into a
        wrong file (issue 23)."""
        content = base64.b64encode(b"x" * 30_000)
        gets: list[bytes] = []

        def handler(conn: socket.socket, fake: FakeServer) -> None:
            buffer = bytearray()
            while (request := read_request(conn, buffer)) is not None:
                if request == b"LIST":
                    conn.sendall(json.dumps({"status": "OK", "data": ["a.bin"]}).encode() + TERMINATOR)
                    continue
                gets.append(request)
                conn.sendall(b'{"status": "OK", "data_namafile": "a.bin", "data_file": "'
                             + content[:len(content) // 2])
                return                  # closed after half the reply

        client = self.client(self.fake(handler).port)
        self.assertEqual(client.list(), ["a.bin"])
        self.assertKind("reset", lambda: client.get("a.bin", os.path.join(self.local, "a.bin")))
        self.assertEqual(gets, [b"GET a.bin"], "the GET was sent again")
        self.assertNothingLeft()

    def test_refused_when_nothing_listens(self) -> None:
        port = free_port()
        client = self.client(port)
        self.assertKind("refused", client.list)
        self.assertKind("refused", lambda: client.get("a.bin", os.path.join(self.local, "a.bin")))
        self.assertNothingLeft()
        self.assertKind("refused", lambda: client.upload(io.BytesIO(b"x"), name="a.bin"))

    def test_timeout_when_the_server_never_answers(self) -> None:
        fake = self.fake(silent_handler)
        client = self.client(fake.port, timeout=0.3)
        started = time.monotonic()
        self.assertKind("timeout", client.list)
        self.assertLess(time.monotonic() - started, 5)
        self.assertKind("timeout", lambda: client.get("a.bin", os.path.join(self.local, "a.bin")))
        self.assertNothingLeft()
        self.assertKind("timeout", client.stats)

    def test_corrupt_invalid_base64(self) -> None:
        for label, content in {"bad characters": b"QUJD@@@@", "truncated group": b"QUJDRA",
                               "data after padding": b"QQ==QUJD"}.items():
            with self.subTest(label):
                fake = self.fake(scripted_reply(get_reply(content)))
                self.assertKind("corrupt", lambda: self.client(fake.port).get("x.bin", io.BytesIO()))
                self.assertKind("corrupt", lambda: self.client(fake.port).get(
                    "x.bin", os.path.join(self.local, "x.bin")))
                self.assertNothingLeft()

    def test_corrupt_malformed_json(self) -> None:
        replies = {
            "not json": b"this is not json" + TERMINATOR,
            "bracket for brace": b'{"status": "OK", "data_file": "QUJD"]' + TERMINATOR,
            "trailing comma": b'{"status": "OK", "data_file": "QUJD",}' + TERMINATOR,
            "no colon": b'{"status" "OK", "data_file": "QUJD"}' + TERMINATOR,
            "bad terminator": b'{"status": "OK", "data_file": "QUJD"}\r\nX\r\n\r\n',
            "array": b'["OK", "QUJD"]' + TERMINATOR,
        }
        for label, reply in replies.items():
            with self.subTest(label):
                fake = self.fake(scripted_reply(reply))
                self.assertKind("corrupt", lambda: self.client(fake.port).get(
                    "x.bin", os.path.join(self.local, "x.bin")))
                self.assertNothingLeft()

    def test_corrupt_reply_without_content_or_status(self) -> None:
        fake = self.fake(scripted_reply(b'{"status": "OK", "data_namafile": "x.bin"}' + TERMINATOR))
        self.assertKind("corrupt", lambda: self.client(fake.port).get("x.bin", os.path.join(self.local, "x")))
        self.assertNothingLeft()
        fake = self.fake(scripted_reply(b'{"data_file": "QUJD"}' + TERMINATOR))
        self.assertKind("corrupt", lambda: self.client(fake.port).get("x.bin", io.BytesIO()))
        fake = self.fake(scripted_reply(b'{"status": "OK", "data": "not a list"}' + TERMINATOR))
        self.assertKind("corrupt", self.client(fake.port).list)

    def test_reset_when_the_server_hangs_up_mid_reply(self) -> None:
        partial = get_reply(base64.b64encode(os.urandom(30_000)))[:20_000]
        for close in ("fin", "rst"):
            with self.subTest(close=close):
                fake = self.fake(scripted_reply(partial, close=close))
                self.assertKind("reset", lambda: self.client(fake.port).get(
                    "x.bin", os.path.join(self.local, "x.bin")))
                self.assertNothingLeft()
        fake = self.fake(scripted_reply(b"", close="fin"))
        self.assertKind("reset", self.client(fake.port).list)

    def test_server_error_reply(self) -> None:
        fake = self.fake(scripted_reply(b'{"status": "ERROR", "data": "no such file"}' + TERMINATOR))
        error = self.assertKind("server", lambda: self.client(fake.port).get("x", os.path.join(self.local, "x")))
        self.assertIn("no such file", str(error))
        self.assertNothingLeft()

    def test_content_as_data_instead_of_data_file_is_accepted(self) -> None:
        data = os.urandom(100_000)
        fake = self.fake(scripted_reply(get_reply(base64.b64encode(data), key="data")))
        out = io.BytesIO()
        result = self.client(fake.port).get("x.bin", out)
        self.assertEqual((result.bytes, result.sha256), (len(data), sha256(data)))
        self.assertEqual(out.getvalue(), data)
        dest = os.path.join(self.local, "x.bin")
        result = self.client(fake.port).get("x.bin", dest)
        self.assertEqual((result.bytes, result.sha256), (len(data), sha256(data)))
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_reply_in_small_pieces_with_json_escapes(self) -> None:
        data = os.urandom(3000)
        escaped = base64.b64encode(data).replace(b"/", b"\\/")
        self.assertIn(b"\\/", escaped)
        fake = self.fake(scripted_reply(get_reply(escaped), piece=7))
        out = io.BytesIO()
        result = self.client(fake.port).get("x.bin", out)
        self.assertEqual(out.getvalue(), data)
        self.assertEqual(result.sha256, sha256(data))

    def test_upload_reply_that_contradicts_the_sent_bytes_is_corrupt(self) -> None:
        data = b"abcdef"
        replies = {
            "size": {"status": "OK", "data": "ok", "size": 5, "sha256": sha256(data)},
            "sha256": {"status": "OK", "data": "ok", "size": 6, "sha256": sha256(b"abcdeg")},
        }
        for label, reply in replies.items():
            with self.subTest(label):
                fake = self.fake(scripted_reply(json.dumps(reply).encode() + TERMINATOR))
                self.assertKind("corrupt", lambda: self.client(fake.port).upload(io.BytesIO(data), name="u.bin"))
        reply = {"status": "OK", "data": "ok", "size": 6, "sha256": sha256(data)}
        fake = self.fake(scripted_reply(json.dumps(reply).encode() + TERMINATOR))
        result = self.client(fake.port).upload(io.BytesIO(data), name="u.bin")
        self.assertEqual((result.bytes, result.sha256), (6, sha256(data)))


# ---------------------------------------------------------------------- the command line

class CommandLineTest(ServerPerClass, unittest.TestCase):

    def setUp(self) -> None:
        clear_folder(self.root)
        self.cwd = tempfile.mkdtemp(prefix="cwd-", dir=self._tmp.name)
        self.addCleanup(shutil.rmtree, self.cwd, True)

    def cli(self, *args: str, port: Optional[int] = None, env: Optional[dict] = None,
            address: bool = True) -> subprocess.CompletedProcess:
        port = self.server.port if port is None else port
        command = [sys.executable, str(CLIENT_SCRIPT)]
        if address:
            command += ["--host", HOST, "--port", str(port), "--timeout", "20"]
        full_env = dict(os.environ)
        full_env.pop("SERVER_HOST", None)
        full_env.pop("SERVER_PORT", None)
        full_env.update(env or {})
        return subprocess.run(command + list(args), cwd=self.cwd, env=full_env, capture_output=True,
                              text=True, timeout=SUBPROCESS_TIMEOUT, stdin=subprocess.DEVNULL)

    def assertOk(self, proc: subprocess.CompletedProcess) -> None:
        self.assertEqual(proc.returncode, 0, f"stdout={proc.stdout!r} stderr={proc.stderr!r}")
        self.assertNotIn("Traceback", proc.stderr)

    def assertOneLineError(self, proc: subprocess.CompletedProcess) -> str:
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stdout, "")
        self.assertNotIn("Traceback", proc.stderr)
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        return lines[0]

    def test_progress_on_a_terminal_and_quiet_otherwise(self) -> None:
        path = os.path.join(self.cwd, "big.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(1024 * 1024) * 60)
        quiet = self.cli("upload", path)
        self.assertOk(quiet)
        self.assertEqual(quiet.stderr, "", "progress written to a stderr that is not a terminal")
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, str(CLIENT_SCRIPT), "--host", HOST, "--port",
                                     str(self.server.port), "get", "big.bin", "--out", "copy.bin"],
                                    cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=terminal)
            os.close(terminal)
            shown = bytearray()
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:             # the terminal's other end closed: the client is done
                    break
                if not chunk:
                    break
                shown += chunk
            proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            os.close(controller)
        self.assertEqual(proc.returncode, 0)
        self.assertIn(b"GET big.bin", shown)
        self.assertIn(b"MB/s", shown)

    def test_upload_list_get_delete_stats(self) -> None:
        proc = self.cli("stats")
        self.assertOk(proc)
        before = {key: int(value) for key, value in (item.split("=", 1) for item in proc.stdout.split())}
        data = os.urandom(123_456)
        source = os.path.join(self.cwd, "local.bin")
        with open(source, "wb") as f:
            f.write(data)

        proc = self.cli("upload", source)
        self.assertOk(proc)
        self.assertIn(sha256(data), proc.stdout)
        self.assertIn(str(len(data)), proc.stdout)
        proc = self.cli("upload", source, "--name", "renamed.bin")
        self.assertOk(proc)
        self.assertEqual(sorted(os.listdir(self.root)), ["local.bin", "renamed.bin"])

        proc = self.cli("list")
        self.assertOk(proc)
        self.assertEqual(sorted(proc.stdout.splitlines()), ["local.bin", "renamed.bin"])

        out = os.path.join(self.cwd, "downloaded.bin")
        proc = self.cli("get", "renamed.bin", "--out", out)
        self.assertOk(proc)
        self.assertIn(sha256(data), proc.stdout)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)

        proc = self.cli("get", "local.bin")              # default: the name, in the working folder
        self.assertOk(proc)
        self.assertEqual(sorted(os.listdir(self.cwd)), ["downloaded.bin", "local.bin"])

        proc = self.cli("delete", "renamed.bin")
        self.assertOk(proc)
        self.assertIn("renamed.bin", proc.stdout)
        self.assertEqual(os.listdir(self.root), ["local.bin"])

        proc = self.cli("stats")
        self.assertOk(proc)
        after = {key: int(value) for key, value in (item.split("=", 1) for item in proc.stdout.split())}
        self.assertEqual(set(after), {"succeeded", "failed", "connections"})
        # upload x2, list, get x2, delete; each CLI run is one connection.
        self.assertEqual(after["succeeded"] - before["succeeded"], 6)
        self.assertEqual(after["failed"] - before["failed"], 0)
        self.assertEqual(after["connections"] - before["connections"], 7)

    def test_server_address_from_the_environment(self) -> None:
        with open(os.path.join(self.root, "env.txt"), "wb") as f:
            f.write(b"x")
        proc = self.cli("list", address=False, env={"SERVER_HOST": HOST, "SERVER_PORT": str(self.server.port)})
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["env.txt"])

    def test_missing_file_is_a_one_line_error(self) -> None:
        out = os.path.join(self.cwd, "nothing.bin")
        line = self.assertOneLineError(self.cli("get", "missing.bin", "--out", out))
        self.assertIn("missing.bin", line)
        self.assertEqual(os.listdir(self.cwd), [], "a file or .part was left behind")
        self.assertOneLineError(self.cli("delete", "missing.bin"))
        self.assertOneLineError(self.cli("upload", os.path.join(self.cwd, "absent.bin")))

    def test_no_server_is_a_one_line_error(self) -> None:
        line = self.assertOneLineError(self.cli("list", port=free_port()))
        self.assertIn("refused", line)


if __name__ == "__main__":
    unittest.main()
