"""Idle, keep-alive and slow connections cost no worker (issue 12), on both servers.

The accept loop owns a connection between requests and reads each request's
head itself; a worker gets the connection only for one request.  Every test
here uses a pool smaller than the crowd it makes, and ends with proof that the
server still serves.  Also the sans-IO pieces the loop relies on.
"""

from __future__ import annotations

import base64
import multiprocessing
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
from contextlib import ExitStack

from tests.support import (TERMINATOR, Client, RunningServer, build, decode_reply, send_command,
                           trickle_until_closed, wait_until)
from tests.test_servers import OLD, ServerTestsMixin, write_big_file

from fileshare.process_pool import ProcessDispatcher
from fileshare.state import RequestCounters, ServerContext
from fileshare.protocol import (Request, RequestParser, UploadData, UploadEnd, UploadStart, requests_begun,
                                unterminated_request)

class SansIOTests(unittest.TestCase):
    def test_feed_request_stops_after_one_request(self) -> None:
        data = b"LIST\r\n\r\nGET a\r\n\r\nLIS"
        parser = RequestParser()
        events, used = parser.feed_request(data)
        self.assertEqual((events, used), ([Request("LIST", "")], 8))
        self.assertTrue(parser.idle)
        events, used = parser.feed_request(data[used:])
        self.assertEqual((events, used), ([Request("GET", "a")], 9))

    def test_feed_request_stops_after_an_upload(self) -> None:
        data = b"UPLOAD a QUJD\r\n\r\nLIST\r\n\r\n"
        for split in range(1, len(data)):           # every byte boundary
            with self.subTest(split=split):
                parser = RequestParser()
                events, used = parser.feed_request(data[:split])
                if split < 17:
                    self.assertEqual(used, split)
                    more, rest = parser.feed_request(data[split:])
                    events, used = events + more, split + rest
                self.assertEqual(used, 17, "the upload ends after its terminator")
                self.assertIsInstance(events[-1], UploadEnd)
                self.assertEqual(events[0], UploadStart("a"))
                content = b"".join(bytes(e.text) for e in events if isinstance(e, UploadData))
                self.assertEqual(content, b"QUJD")

    def test_unterminated_course_style_requests(self) -> None:
        served = {b"LIST": b"LIST", b"list": b"list", b"STATS": b"STATS", b"GET a.txt": b"GET a.txt",
                  b"get my file.txt": b"get my file.txt", b"DELETE a": b"DELETE a", b"LIST\r\n": b"LIST",
                  b"GET a\n": b"GET a"}
        for head, line in served.items():
            with self.subTest(head=head):
                self.assertEqual(unterminated_request(head), line + TERMINATOR)
        for head in (b"", b"LIS", b"GET", b"GET ", b"DELETE ", b"LIST x", b"UPLOAD a QUJD", b"UPLOAD a",
                     b"GET a\r\nb", b"GET " + b"n" * 300, b"WHAT"):
            with self.subTest(head=head):
                self.assertIsNone(unterminated_request(head))

    def test_requests_begun(self) -> None:
        self.assertEqual(requests_begun(b""), 0)
        self.assertEqual(requests_begun(b"LIST\r\n\r\n"), 1)
        self.assertEqual(requests_begun(b"LIST\r\n\r\nGET a\r\n\r\nLIS"), 3)
        self.assertEqual(requests_begun(b"UPLOAD a QUJD\r\n\r\nUPLOAD b QU"), 2)
        self.assertEqual(requests_begun(b"STATS\r\n\r\nLIST\r\n\r\n"), 1, "STATS is never counted")
        self.assertEqual(requests_begun(b"UPLOAD a QU*D\r\n\r\n"), 1)
        for partial in (b"STATS", b"stat", b"S", b"STATS\r\n"):     # cut short, it is still a STATS
            self.assertEqual(requests_begun(b"LIST\r\n\r\n" + partial), 1, partial)
        self.assertEqual(requests_begun(b"LIST\r\n\r\nSTATSX"), 2)


class IdleFixtures:
    """A server of kind KIND serving a folder with one file; crowds of connections; STATS."""

    KIND = ""
    # The servers' tests' fixtures, without their tests.
    start_server = ServerTestsMixin.start_server
    put = ServerTestsMixin.put
    assert_ok = ServerTestsMixin.assert_ok
    assert_serving = ServerTestsMixin.assert_serving      # LIST and GET on new connections

    def setUp(self) -> None:
        ServerTestsMixin.setUp(self)
        self.put("keep", OLD)

    def crowd(self, server: RunningServer, count: int) -> list[Client]:
        stack = ExitStack()
        self.addCleanup(stack.close)
        return [stack.enter_context(server.connect()) for _ in range(count)]

    def stats(self, server: RunningServer) -> dict:
        return send_command(server, "STATS")["data"]


class IdleTestsMixin(IdleFixtures):

    # ------------------------------------------------------------------ crowds

    def test_silent_connections_beyond_the_pool(self) -> None:
        server = self.start_server(workers=2)
        self.crowd(server, 40)                        # never send a byte
        self.assert_serving(server)

    def test_hand_backs_are_clean(self) -> None:
        """Every connection a worker gives back arrives without an error on either side
        (a process worker's empty send after its descriptor once met a closed channel)."""
        server = self.start_server(workers=2)
        with ExitStack() as stack:
            clients = [stack.enter_context(server.connect()) for _ in range(4)]
            for _ in range(10):
                for client in clients:
                    self.assertEqual(client.command("LIST")["status"], "OK")
        self.assert_serving(server)
        server.stop()
        log = server.stderr_text()
        for complaint in ("could not give a connection back", "failed to collect or return"):
            self.assertNotIn(complaint, log)

    def test_keep_alive_clients_idle_between_requests(self) -> None:
        server = self.start_server(workers=2)
        clients = self.crowd(server, 8)
        for client in clients:
            self.assertEqual(client.command("LIST")["status"], "OK")
        self.assert_serving(server)                   # while all eight sit idle
        for client in clients:                        # and each is still usable
            self.assertEqual(base64.b64decode(client.command("GET", "keep")["data_file"]), OLD)

    def test_trickled_request_head(self) -> None:
        server = self.start_server(workers=1)
        with server.connect() as slow:
            head = b"GET keep" + TERMINATOR
            for index, byte in enumerate(head):       # bounded: 12 bytes
                slow.send(bytes([byte]))
                if index == 4:
                    self.assert_serving(server)       # the only worker is free meanwhile
                time.sleep(0.05)
            self.assertEqual(base64.b64decode(decode_reply(slow.recv_reply(5))["data_file"]), OLD)
        self.assert_serving(server)

    def test_trickled_upload_name_holds_no_worker(self) -> None:
        server = self.start_server(workers=1)
        with server.connect() as slow:
            slow.send(b"UPLOAD a-name-still-arriv")
            self.assert_serving(server)
            slow.send(b"ing " + base64.b64encode(b"done") + TERMINATOR)
            self.assertEqual(decode_reply(slow.recv_reply(5))["size"], 4)
        self.assertEqual((self.root / "a-name-still-arriving").read_bytes(), b"done")

    # ------------------------------------------------------------------ pipelining

    def test_pipelined_requests_across_a_hand_back(self) -> None:
        server = self.start_server(workers=1)
        with server.connect() as c:
            c.send(build("LIST") + b"UPLOAD p " + base64.b64encode(b"piped") + TERMINATOR
                   + build("GET", "p") + build("DELETE", "p") + build("STATS"))
            replies = [decode_reply(c.recv_reply(5)) for _ in range(5)]
            self.assertEqual([r["status"] for r in replies], ["OK"] * 5, replies)
            self.assertEqual(replies[0]["data"], ["keep"])
            self.assertEqual(replies[1]["size"], 5)
            self.assertEqual(base64.b64decode(replies[2]["data_file"]), b"piped")
            self.assertEqual(replies[3]["data"], "p deleted")
            self.assertEqual(c.command("LIST")["data"], ["keep"])
        self.assert_serving(server)

    # ------------------------------------------------------------------ course-style requests

    def test_unterminated_course_style_requests_are_served(self) -> None:
        server = self.start_server(workers=1)
        for head in (b"LIST", b"get keep", b"STATS"):
            with self.subTest(head=head), server.connect() as c:
                c.send(head)
                self.assertEqual(decode_reply(c.recv_reply(5))["status"], "OK")
        (self.root / "gone").write_bytes(b"x")
        with server.connect() as c:
            c.send(b"DELETE gone")
            self.assertEqual(decode_reply(c.recv_reply(5))["data"], "gone deleted")
            c.send(b"LIST")                           # again on the same connection
            self.assertEqual(decode_reply(c.recv_reply(5))["data"], ["keep"])
        self.assert_serving(server)

    def test_unterminated_upload_is_never_served(self) -> None:
        server = self.start_server(workers=2)         # the upload's content holds one of them
        with server.connect() as up, server.connect() as bare:
            up.send(b"UPLOAD new " + base64.b64encode(b"not yet"))
            bare.send(b"GET ")
            for client in (up, bare):
                with self.assertRaises(TimeoutError):
                    client.recv_reply(1.5)            # three times the quiet that serves a LIST
            self.assertFalse((self.root / "new").exists())
            self.assert_serving(server)
            up.send(TERMINATOR)                       # the upload was only waiting for its end
            self.assertEqual(decode_reply(up.recv_reply(5))["size"], 7)

    # ------------------------------------------------------------------ deadlines and limits

    def test_idle_and_head_deadlines(self) -> None:
        server = self.start_server(workers=1, extra_args=["--timeout", "1"])
        before = self.stats(server)
        with server.connect() as idle, server.connect() as kept, server.connect() as slow:
            self.assertEqual(kept.command("LIST")["status"], "OK")
            # Never silent for 1 s, but the head as a whole is late (20 bytes take 6 s at least).
            self.assertTrue(trickle_until_closed(slow, b"UPLOAD name-too-slow", 0.3),
                            "a trickled head outlived --timeout")
            self.assertTrue(idle.wait_closed(5), "a silent new connection was not closed")
            self.assertTrue(kept.wait_closed(5), "an idle kept-alive connection was not closed")
        after = self.stats(server)
        self.assertEqual(after["failed"] - before["failed"], 1, "the cut head counts as failed, idle ones not")
        self.assert_serving(server)

    def test_max_connections_closes_the_one_waiting_longest(self) -> None:
        server = self.start_server(workers=2, extra_args=["--max-connections", "3"])
        first, second, third = self.crowd(server, 3)
        self.assertEqual(first.command("LIST")["status"], "OK")   # now the second has waited longest
        with server.connect() as fourth:
            self.assertEqual(fourth.command("LIST")["status"], "OK")
            self.assertTrue(second.wait_closed(5), "the connection waiting longest was not closed")
            self.assertEqual(first.command("LIST")["status"], "OK")
        self.assert_serving(server)

    def test_eviction_and_a_read_in_one_batch_of_events(self) -> None:
        """The connection --max-connections closes may have a read of its own waiting in the
        same select() batch; the loop must skip it, not crash (it once exited with status 1)."""
        server = self.start_server(workers=1, extra_args=["--max-connections", "2"])
        oldest, _ = self.crowd(server, 2)
        time.sleep(0.2)                          # both accepted (a STATS here would evict one)
        server.signal(signal.SIGSTOP)            # hold the loop so both events land in one select()
        try:
            newcomer = self.crowd(server, 1)[0]  # the listener is readable first...
            oldest.sock.shutdown(socket.SHUT_WR)  # ...then the oldest connection (a request would spare it)
            time.sleep(0.2)                      # let both events arrive while the loop is held
        finally:
            server.signal(signal.SIGCONT)
        self.assertTrue(oldest.wait_closed(5), "the oldest connection was not closed to make room")
        self.assertEqual(newcomer.command("LIST")["status"], "OK")
        self.assert_serving(server)
        self.assertIsNone(server.returncode)

    def test_requests_cut_at_the_end_of_the_grace_are_counted(self) -> None:
        """A request a worker holds and one queued behind it, both cut when the grace ends:
        two failed requests, on both servers."""
        server = self.start_server(workers=1, extra_args=["--grace", "0.5"])
        before = self.stats(server)
        stalled, queued = self.crowd(server, 2)
        stalled.send(b"UPLOAD slow.bin QUFB")              # its head is complete; its content stalls
        self.assertTrue(wait_until(lambda: list(self.root.glob(".upload-*")), 5), "the upload never started")
        queued.send(build("LIST"))                          # waits for the only worker
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait(20), 0)
        counts = server.stderr_text().rsplit("stopped; requests: ", 1)[1].splitlines()[0]
        self.assertIn(f"'failed': {before['failed'] + 2}", counts)

    def test_a_reply_cut_at_the_end_of_the_grace_counts_once(self) -> None:
        """A LIST already counted as a success whose last send is stuck (its client stopped
        reading), cut when the grace ends: it moves to failed once, on both servers (the process
        server once also counted the killed worker's request as failed on top)."""
        for number in range(24000):                  # a reply of ~6 MB: more than the socket buffers hold
            (self.root / f"{number:06d}{'x' * 234}").touch()
        server = self.start_server(workers=2, extra_args=["--grace", "0.5"])     # one left for STATS
        before = self.stats(server)
        reader = socket.socket()
        self.addCleanup(reader.close)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(server.address)
        reader.sendall(build("LIST"))                # and never read
        self.assertTrue(wait_until(lambda: self.stats(server)["succeeded"] > before["succeeded"], 10),
                        "the LIST was never counted")
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait(20), 0)
        counts = server.stderr_text().rsplit("stopped; requests: ", 1)[1].splitlines()[0]
        self.assertIn(f"'succeeded': {before['succeeded']}, 'failed': {before['failed'] + 1}", counts)

    # ------------------------------------------------------------------ counting

    def test_requests_behind_an_undeliverable_reply_count_as_failed(self) -> None:
        """Regression (issue 14 item 5): requests fully sent behind one whose reply could not
        be delivered used to vanish from STATS, while an incomplete one counted as failed."""
        write_big_file(self.root / "big", 16)
        server = self.start_server(workers=1)
        before = self.stats(server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.settimeout(10)
        with sock:
            sock.connect(server.address)
            sock.sendall(build("GET", "big") + build("LIST") + build("GET", "keep") + b"LIS")
            self.assertTrue(sock.recv(1000))          # the GET's reply has started
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        expected = before["failed"] + 4             # the GET, the LIST, the GET keep and the partial LIS
        self.assertTrue(wait_until(lambda: self.stats(server)["failed"] >= expected, 5),
                        f"STATS went from {before} to {self.stats(server)}; expected 4 more failed")
        after = self.stats(server)
        self.assertEqual((after["failed"], after["succeeded"]), (expected, before["succeeded"]))
        self.assert_serving(server)

    def test_connections_counted_once_not_per_request(self) -> None:
        server = self.start_server(workers=1)
        before = self.stats(server)
        with server.connect() as c:
            for _ in range(3):
                self.assertEqual(c.command("LIST")["status"], "OK")
        self.assertEqual(self.stats(server)["connections"] - before["connections"], 2)   # c, and this STATS

    # ------------------------------------------------------------------ stopping

    def test_sigterm_with_many_idle_connections(self) -> None:
        """Idle connections are closed at once; a request partly received still gets the grace."""
        server = self.start_server(workers=2, extra_args=["--grace", "20"])
        silent = self.crowd(server, 100)
        kept = self.crowd(server, 10)
        for client in kept:
            self.assertEqual(client.command("LIST")["status"], "OK")
        self.assert_serving(server)
        with server.connect() as partial:
            partial.send(b"GET ke")
            self.assertTrue(wait_until(lambda: self.stats_connections(server) >= 114, 5))
            server.signal(signal.SIGTERM)
            self.assertTrue(wait_until(lambda: "stopping (signal" in server.stderr_text(), 5))
            for client in silent[:5] + kept[:5]:
                self.assertTrue(client.wait_closed(2), "an idle connection was left open")
            partial.send(b"ep" + TERMINATOR)
            reply = decode_reply(partial.recv_reply(5))
            self.assertEqual(base64.b64decode(reply["data_file"]), OLD, "a request partly received was dropped")
            self.assertTrue(partial.wait_closed(2), "connection not closed after its request, while stopping")
            try:
                returncode = server.wait(10)          # half the grace: idle connections did not hold it
            except subprocess.TimeoutExpired:
                self.fail("server still running 10 s after SIGTERM:\n" + server.stderr_text()[-3000:])
        self.assertEqual(returncode, 0, server.stderr_text()[-3000:])
        self.assertNotIn("Traceback", server.stderr_text())

    def stats_connections(self, server: RunningServer) -> int:
        """Connections accepted so far, the STATS connection asking included."""
        return self.stats(server)["connections"]


class ThreadIdleTests(IdleTestsMixin, unittest.TestCase):
    KIND = "thread"


class ProcessIdleTests(IdleTestsMixin, unittest.TestCase):
    KIND = "process"


class ProcessDispatcherGivesUpTests(unittest.TestCase):
    def test_a_connection_no_pool_can_take_is_answered_and_counted(self) -> None:
        """When every pool fails, the connection gets an ERROR and its request one failed count."""
        mp = multiprocessing.get_context("fork")
        with tempfile.TemporaryDirectory() as root:
            ctx = ServerContext(root=root, timeout=5, max_upload_bytes=1 << 20, temp_tag="test",
                                counters=RequestCounters(mp))
            dispatcher = ProcessDispatcher()
            dispatcher.start(ctx, 1, lambda conn, beyond: conn.close())
            try:
                def no_pool(token: bytes) -> None:
                    raise RuntimeError("3 worker pools in a row failed")
                dispatcher._submit_to_live_pool = no_pool          # what repeated failed forks end in
                server_end, client_end = socket.socketpair()
                with client_end:
                    dispatcher.dispatch(server_end, build("LIST")).result(10)
                    client_end.settimeout(5)
                    reply = decode_reply(client_end.recv(4096))
                self.assertEqual(reply["status"], "ERROR")
                self.assertIn("could not start a worker", reply["data"])
                self.assertEqual(ctx.counters.snapshot()["failed"], 1)
            finally:
                dispatcher.force_close()
                dispatcher.shutdown()


if __name__ == "__main__":
    unittest.main()
