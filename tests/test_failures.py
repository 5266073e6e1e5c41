"""Every failure answered and counted, every reply survived (issue 14).

What an adversarial review broke, one regression test each: a LIST of a served
folder that vanished, padding-only base64 groups, leftovers that cannot be
removed, flag values that parse but cannot work (servers), and hostile replies
to the client library: nesting, bad escapes, a doubled content key, a reply
too large in total, a download onto a directory.

Run: ``python -m unittest tests.test_failures -v``
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Sequence
from unittest import mock

try:
    from .support import HOST, REPO, SCRIPTS, RunningServer, send_command
    from .test_client import FakeServer, get_reply, read_request, scripted_reply
except ImportError:          # run from inside tests/
    from support import HOST, REPO, SCRIPTS, RunningServer, send_command
    from test_client import FakeServer, get_reply, read_request, scripted_reply

from client_worker import ClientError, DiscardingSink, FileClient
from fileshare import store
from fileshare.protocol import MAX_REQUEST_BYTES, TERMINATOR, ProtocolError, RequestParser, StrictBase64Decoder
from fileshare.replies import ReplyParser, parse_reply

SUBPROCESS_TIMEOUT = 30
MiB = 1024 * 1024
# Padding-only groups after a full group: binascii lets them through.
PADDING_ONLY = (b"QUJD====", b"QUJDQUJD====", b"QUJD========")


def run_script(args: Sequence[str], timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a script of the repository that should exit by itself; kill its own group if it does not."""
    proc = subprocess.Popen([sys.executable, *args], cwd=str(REPO), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{args} did not exit within {timeout} s (it runs with this value); "
                             f"stderr:\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---------------------------------------------------------------------- sans-IO: base64 and replies

class StrictBase64Test(unittest.TestCase):
    def decode(self, text) -> bytes:
        decoder = StrictBase64Decoder()
        out = decoder.feed(text)
        decoder.finish()
        return out

    def test_padding_only_groups_are_refused_whatever_the_buffer_type(self) -> None:
        for text in PADDING_ONLY:
            for kind in (bytes, bytearray, memoryview):
                with self.subTest(text=text, kind=kind.__name__):
                    with self.assertRaises(ProtocolError):
                        self.decode(kind(text))

    def test_padding_only_group_in_a_later_piece_is_refused(self) -> None:
        for kind in (bytes, bytearray, memoryview):
            with self.subTest(kind=kind.__name__):
                decoder = StrictBase64Decoder()
                self.assertEqual(decoder.feed(kind(b"QUJD")), b"ABC")
                with self.assertRaises(ProtocolError):
                    decoder.feed(kind(b"===="))

    def test_valid_padding_still_decodes(self) -> None:
        for text, raw in ((b"QUI=", b"AB"), (b"QQ==", b"A"), (b"QUJDQUI=", b"ABCAB")):
            for kind in (bytes, bytearray, memoryview):
                with self.subTest(text=text, kind=kind.__name__):
                    self.assertEqual(self.decode(kind(text)), raw)

    def test_characters_outside_the_alphabet_are_refused_at_a_valid_length(self) -> None:
        # Whole 4-character groups, so the length check alone cannot catch them; the
        # last ones decode to something without strict mode (it skips what it does not know).
        for text in (b"QUJD*EFG", b"QU JD", b"QU J", b"QUJD****QUJD", b"QU\nJQUJD", b"QUJD\x00UJD",
                     b"QUJDQU\r\nJD", b"QUJD----"):
            for kind in (bytes, memoryview):
                with self.subTest(text=text, kind=kind.__name__):
                    with self.assertRaises(ProtocolError):
                        self.decode(kind(text))

    def test_request_limit_is_64_kib(self) -> None:
        self.assertEqual(MAX_REQUEST_BYTES, 65536)
        line = b"GET " + b"n" * (65536 - 4)
        self.assertEqual(len(RequestParser().feed(line + TERMINATOR)), 1)
        with self.assertRaises(ProtocolError):
            RequestParser().feed(line + b"n" + TERMINATOR)


class ReplyParserStrictnessTest(unittest.TestCase):
    def test_deep_nesting_is_refused_not_a_recursion_error(self) -> None:
        deep = b'{"status": "OK", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}" + TERMINATOR
        with self.assertRaises(ProtocolError):
            parse_reply(deep)
        parser = ReplyParser()
        with self.assertRaises(ProtocolError):
            for start in range(0, len(deep), 7):           # pieces: the depth is counted across feeds
                parser.feed(deep[start:start + 7])

    def test_ordinary_nesting_still_parses(self) -> None:
        nested = b'{"status": "OK", "data": ' + b"[" * 50 + b"1" + b"]" * 50 + b"}" + TERMINATOR
        value = parse_reply(nested)["data"]
        for _ in range(50):
            value = value[0]
        self.assertEqual(value, 1)

    def test_a_key_twice_is_refused(self) -> None:
        for stream_keys in ((), ("data_file",)):
            with self.subTest(stream_keys=stream_keys):
                twice = b'{"status": "OK", "data_file": "QUJD", "data_file": "QUJD"}' + TERMINATOR
                with self.assertRaises(ProtocolError):
                    ReplyParser(stream_keys=stream_keys).feed(twice)

    def test_streamed_escapes_are_exactly_four_hex_digits(self) -> None:
        for escape in (rb"\u-001", rb"\u 44", rb"\u 044", rb"\u+041", rb"\u0x41", rb"\u_041", rb"\u12"):
            reply = b'{"status": "OK", "data_file": "QUJ' + escape + b'"}' + TERMINATOR
            for piece in (1, len(reply)):
                with self.subTest(escape=escape, piece=piece):
                    parser = ReplyParser(stream_keys=("data_file",))
                    with self.assertRaises(ProtocolError):
                        for start in range(0, len(reply), piece):
                            parser.feed(reply[start:start + piece])

    def test_valid_escapes_still_stream(self) -> None:
        reply = b'{"status": "OK", "data_file": "QUJ\\u0044\\/"}' + TERMINATOR
        for piece in (1, len(reply)):
            parser = ReplyParser(stream_keys=("data_file",))
            text = b"".join(bytes(e.text) for start in range(0, len(reply), piece)
                            for e in parser.feed(reply[start:start + piece]) if hasattr(e, "text"))
            self.assertEqual(text, b"QUJD/")

    def test_the_kept_data_of_a_whole_reply_is_bounded(self) -> None:
        value = json.dumps("x" * 1000).encode()
        fields = b", ".join(b'"k%d": %s' % (i, value) for i in range(5))
        reply = b'{"status": "OK", ' + fields + b"}" + TERMINATOR
        ReplyParser(max_value=2000, max_total=10_000).feed(reply)          # 5 kB kept: fine
        with self.assertRaises(ProtocolError):
            ReplyParser(max_value=2000, max_total=4_000).feed(reply)       # each under, all over

    def test_the_bound_on_kept_data_counts_keys_too(self) -> None:
        fields = b", ".join(b'"%s": 1' % (b"k%04d" % i * 200) for i in range(5))   # 5 kB of keys
        reply = b'{"status": "OK", ' + fields + b"}" + TERMINATOR
        ReplyParser(max_value=2000, max_total=10_000).feed(reply)
        with self.assertRaises(ProtocolError):
            ReplyParser(max_value=2000, max_total=4_000).feed(reply)


# ---------------------------------------------------------------------- both servers

class _ServerFailures:
    KIND = ""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix=f"failures-{self.KIND}-")
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.root = self.tmp / "root"
        self.root.mkdir()

    def start_server(self, extra_args: Sequence[str] = ()) -> RunningServer:
        server = RunningServer(self.KIND, self.root, workers=2, extra_args=extra_args)
        self.addCleanup(server.close)
        return server.start()

    def test_a_failing_list_is_answered_and_counted(self) -> None:
        (self.root / "keep").write_bytes(b"kept")
        server = self.start_server()
        with server.connect() as client:
            for how in ("removed", "replaced by a file"):
                with self.subTest(how):
                    before = client.command("STATS")["data"]
                    shutil.rmtree(self.root)
                    if how == "replaced by a file":
                        self.root.write_bytes(b"not a folder")
                    reply = client.command("LIST")         # the same connection keeps working
                    self.assertEqual(reply["status"], "ERROR", reply)
                    self.assertIn("cannot list", reply["data"])
                    after = client.command("STATS")["data"]
                    self.assertEqual((after["failed"] - before["failed"], after["succeeded"] - before["succeeded"]),
                                     (1, 0))
                    if self.root.is_file():
                        self.root.unlink()
                    self.root.mkdir()
                    self.assertEqual(client.command("LIST"), {"status": "OK", "data": []})

    def test_padding_only_groups_are_refused_in_uploads(self) -> None:
        server = self.start_server()
        with server.connect() as client:
            for text in PADDING_ONLY:
                with self.subTest(text=text):
                    reply = client.request(b"UPLOAD pad " + text + TERMINATOR)
                    self.assertEqual(reply["status"], "ERROR", reply)
                    self.assertFalse((self.root / "pad").exists())
            self.assertEqual(client.command("STATS")["data"]["failed"], len(PADDING_ONLY))

    def test_leftovers_that_cannot_be_removed_do_not_stop_the_start(self) -> None:
        odd = self.root / ".upload-999999999-x.part"       # a directory named like an upload, PID above pid_max
        odd.mkdir()
        stale = self.root / ".upload-999999998-y.part"
        stale.write_bytes(b"left by a crashed server")
        server = self.start_server()
        self.assertEqual(send_command(server, "LIST"), {"status": "OK", "data": []})
        self.assertTrue(odd.is_dir())
        self.assertFalse(stale.exists(), "a removable leftover must still go")
        self.assertIn(str(odd), server.stderr_text())
        self.assertNotIn("Traceback", server.stderr_text())

    def test_numbers_that_cannot_work_are_refused(self) -> None:
        for args in (["--timeout", "inf"], ["--timeout", "1e300"], ["--timeout", "nan"], ["--timeout", "86401"],
                     ["--max-upload-mb", "inf"], ["--max-upload-mb", "nan"], ["--max-upload-mb", "1048577"],
                     ["--grace", "inf"], ["--grace", "nan"], ["--grace", "-1"]):
            with self.subTest(args=args):
                done = run_script([str(SCRIPTS[self.KIND]), "--host", HOST, "--port", "0", "--root",
                                   str(self.root), *args], timeout=15)
                self.assertEqual(done.returncode, 2, done.stderr)
                self.assertEqual(done.stdout, "")
                self.assertIn(f"argument {args[0]}: invalid", done.stderr)
                self.assertNotIn("Traceback", done.stderr)

    def test_largest_sensible_numbers_still_start(self) -> None:
        server = self.start_server(["--timeout", "86400", "--max-upload-mb", "1048576", "--grace", "0"])
        self.assertEqual(send_command(server, "LIST"), {"status": "OK", "data": []})


class ThreadServerFailuresTest(_ServerFailures, unittest.TestCase):
    KIND = "thread"


class ProcessServerFailuresTest(_ServerFailures, unittest.TestCase):
    KIND = "process"


class LeftoverRemovalTest(unittest.TestCase):
    def test_a_leftover_on_a_read_only_folder_is_logged_and_skipped(self) -> None:
        with tempfile.TemporaryDirectory() as root:
            leftover = os.path.join(root, ".upload-999999999-z.part")
            Path(leftover).write_bytes(b"stale")
            refused = OSError(errno.EROFS, "Read-only file system", leftover)
            with mock.patch("fileshare.store.os.unlink", side_effect=refused), \
                    self.assertLogs("fileserver", logging.WARNING) as logs:
                self.assertEqual(store.remove_temp_files(root), 0)
            self.assertEqual(len(logs.records), 1)
            self.assertIn(leftover, logs.output[0])
            self.assertIn("Read-only file system", logs.output[0])


class NumberChecksOfTheScriptsTest(unittest.TestCase):
    def assertRefused(self, done: subprocess.CompletedProcess) -> None:
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(done.stdout, "")

    def test_client_timeout(self) -> None:
        for value in ("inf", "nan", "1e300", "86401"):
            with self.subTest(value):
                done = run_script(["client_worker.py", "--timeout", value, "--port", "1", "list"])
                self.assertRefused(done)
                self.assertIn("argument --timeout: invalid", done.stderr)

    def test_stress_test_timeout(self) -> None:
        for value in ("inf", "nan", "1e300"):
            with self.subTest(value):
                done = run_script(["stress_test.py", "--timeout", value, "--port", "1"])
                self.assertRefused(done)
                self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)

    def test_run_experiment_numbers(self) -> None:
        with tempfile.TemporaryDirectory() as out:
            for args in (["--timeout", "inf"], ["--timeout", "1e300"], ["--sizes", "inf"], ["--sizes", "1,nan"]):
                with self.subTest(args=args):
                    done = run_script(["run_experiment.py", "--output", os.path.join(out, "r.csv"), *args])
                    self.assertRefused(done)
                    self.assertIn(f"argument {args[0]}: invalid", done.stderr)
            self.assertEqual(os.listdir(out), [])


# ---------------------------------------------------------------------- the client against hostile servers

class HostileRepliesTest(unittest.TestCase):
    def fake(self, reply: bytes) -> FakeServer:
        server = FakeServer(scripted_reply(reply, close="fin"))
        self.addCleanup(server.stop)
        return server

    def client(self, server: FakeServer) -> FileClient:
        client = FileClient(HOST, server.port, timeout=20, connect_timeout=5)
        self.addCleanup(client.close)
        return client

    def assertCorrupt(self, call) -> ClientError:
        with self.assertRaises(ClientError) as caught:
            call()
        self.assertEqual(caught.exception.kind, "corrupt", caught.exception)
        return caught.exception

    def test_deeply_nested_list_reply(self) -> None:
        deep = b'{"status": "OK", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}" + TERMINATOR
        self.assertCorrupt(self.client(self.fake(deep)).list)
        deep_stats = b'{"status": "OK", "data": {"a": ' + b"{" * 100_000 + b"}" * 100_001 + b"}" + TERMINATOR
        self.assertCorrupt(self.client(self.fake(deep_stats)).stats)

    def test_get_reply_with_escapes_json_does_not_allow(self) -> None:
        for escape in (rb"\u-001", rb"\u 44", rb"\u 044"):
            with self.subTest(escape=escape):
                server = self.fake(get_reply(b"QUJ" + escape))
                self.assertCorrupt(lambda: self.client(server).get("x.bin", DiscardingSink()))

    def test_get_reply_with_the_content_key_twice(self) -> None:
        reply = (b'{"status": "OK", "data_namafile": "x.bin", "data_file": "QUJD", "data_file": "REVG"}'
                 + TERMINATOR)
        server = self.fake(reply)
        with tempfile.TemporaryDirectory() as local:
            dest = os.path.join(local, "x.bin")
            self.assertCorrupt(lambda: self.client(server).get("x.bin", dest))
            self.assertEqual(os.listdir(local), [], "nothing is written from a corrupt reply")

    def test_get_reply_with_padding_only_groups(self) -> None:
        for text in PADDING_ONLY:
            with self.subTest(text=text):
                server = self.fake(get_reply(text))
                self.assertCorrupt(lambda: self.client(server).get("x.bin", DiscardingSink()))

    def test_a_reply_too_large_in_total_is_refused(self) -> None:
        value = json.dumps("n" * (8 * MiB)).encode()
        fields = b", ".join(b'"k%d": %s' % (i, value) for i in range(5))      # 40 MiB kept, 8 MiB a value
        error = self.assertCorrupt(self.client(self.fake(b'{"status": "OK", ' + fields + b"}" + TERMINATOR)).stats)
        self.assertIn("MiB", str(error))

    def test_a_large_listing_within_the_total_bound_is_read(self) -> None:
        names = json.dumps(["n" * 200] * 60_000).encode()                    # ~12 MB of names
        reply = b'{"status": "OK", "data": ' + names + b', "extra": ' + names + b"}" + TERMINATOR
        self.assertEqual(len(self.client(self.fake(reply)).list()), 60_000)

    def test_get_onto_a_directory_fails_before_downloading(self) -> None:
        requests: list[bytes] = []

        def handler(conn: socket.socket, fake: FakeServer) -> None:
            request = read_request(conn, bytearray())
            if request is not None:
                requests.append(request)
                conn.sendall(get_reply(b"QUJD"))

        server = FakeServer(handler)
        self.addCleanup(server.stop)
        with tempfile.TemporaryDirectory() as local:
            with self.assertRaises(ClientError) as caught:
                self.client(server).get("x.bin", local)
            self.assertEqual(caught.exception.kind, "other")
            self.assertIn("directory", str(caught.exception))
            self.assertEqual(os.listdir(local), [])
        self.assertEqual(requests, [], "the download should not even start")

    def test_a_source_that_cannot_be_read_is_a_client_error(self) -> None:
        class Unreadable(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, buffer) -> int:
                raise OSError(errno.EIO, "Input/output error")

        server = FakeServer(lambda conn, fake: read_request(conn, bytearray()))
        self.addCleanup(server.stop)
        with self.assertRaises(ClientError) as caught:
            self.client(server).upload(Unreadable(), "x.bin")
        self.assertEqual(caught.exception.kind, "other")
        self.assertIn("Input/output error", str(caught.exception))

    def test_the_command_line_prints_one_error_line(self) -> None:
        deep = b'{"status": "OK", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}" + TERMINATOR
        server = self.fake(deep)
        done = run_script(["client_worker.py", "--port", str(server.port), "list"])
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
        self.assertTrue(done.stderr.startswith("error: "), done.stderr)


if __name__ == "__main__":
    unittest.main()
