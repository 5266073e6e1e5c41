"""Issue 23, adversarial review round 2: the accept loop, the hand-back of connections and
the workers' reading, each promise that once broke pinned by a test that failed before its fix."""

from __future__ import annotations

import base64
import os
import multiprocessing
import selectors
import signal
import socket
import tempfile
import threading
import time
import unittest
from contextlib import ExitStack
from unittest import mock

from tests.support import TERMINATOR, ConnectionClosedEarly, build, decode_reply, trickle_until_closed, wait_until
from tests.test_idle import IdleFixtures
from tests.test_servers import OLD

from fileshare import connection, handoff
from fileshare.connection import MinimumRate
from fileshare.handoff import HandoffServer
from fileshare.idle import READ_SIZE, STALE_DEADLINES_KEPT, IdleConnections
from fileshare.protocol import Request, RequestParser
from fileshare.state import RequestCounters, ServerContext


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of one loopback TCP connection to ``listener``."""
    client = socket.create_connection(listener.getsockname()[:2], timeout=10)
    server, _ = listener.accept()
    return server, client


def loop_connections(stack: ExitStack) -> tuple[selectors.BaseSelector, IdleConnections, socket.socket]:
    """The loop's waiting connections on a selector of their own, and a listener to make them with."""
    selector = stack.enter_context(selectors.DefaultSelector())
    idle = IdleConnections(selector, timeout=3600.0, counters=RequestCounters())
    stack.callback(idle.close_all)
    return selector, idle, stack.enter_context(socket.create_server(("127.0.0.1", 0)))


class DeadlineMemoryTests(unittest.TestCase):
    """The loop's deadline heap holds entries for open connections, not for requests served."""

    def test_deadline_entries_stay_bounded_by_open_connections(self) -> None:
        with ExitStack() as stack:
            selector, idle, listener = loop_connections(stack)
            # One silent connection: its deadline, the earliest, keeps every later one in the heap.
            silent, silent_peer = tcp_pair(listener)
            stack.enter_context(silent_peer)
            self.assertIsNone(idle.add(silent))
            kept, kept_peer = tcp_pair(listener)
            stack.enter_context(kept_peer)
            largest = 0
            for _ in range(3000):                   # a keep-alive client's requests, one by one
                self.assertIsNone(idle.add(kept))   # back from a worker, waiting for its next request
                kept_peer.sendall(build("LIST"))
                for key, _ in selector.select(5):
                    ready = idle.read(key.data)
                    if ready is not None:
                        break
                else:
                    self.fail("the loop never saw the request")
                self.assertEqual(ready, (kept, build("LIST")))
                largest = max(largest, idle.deadline_entries)
            self.assertEqual(len(idle), 1)
            self.assertLessEqual(largest, STALE_DEADLINES_KEPT * (len(idle) + 2))
            kept.close()


class BlankLineMemoryTests(unittest.TestCase):
    def test_blank_lines_between_requests_are_not_kept(self) -> None:
        """Blank lines are skipped between requests, so the loop must not keep them either: a
        client sending nothing but line breaks grew the loop's memory by all it sent (within
        --timeout, at loopback speed), and the worker then parsed all of it again."""
        with ExitStack() as stack:
            selector, idle, listener = loop_connections(stack)
            served, peer = tcp_pair(listener)
            stack.enter_context(peer)
            self.assertIsNone(idle.add(served))
            waiting = selector.get_key(served).data
            largest = 0
            for _ in range(200):                    # 1.6 MB of blank lines, 8 KB at a time
                peer.sendall(b"\r\n" * 4096)
                for key, _ in selector.select(5):
                    self.assertIsNone(idle.read(key.data))
                largest = max(largest, len(waiting.head))
            self.assertLessEqual(largest, READ_SIZE)
            peer.sendall(build("LIST"))
            for _ in range(100):
                ready = next((idle.read(key.data) for key, _ in selector.select(5)), None)
                if ready is not None:
                    break
            self.assertIsNotNone(ready, "the request after the blank lines never came out")
            self.assertEqual(RequestParser().feed(ready[1]), [Request("LIST", "")])
            served.close()


class MinimumRateTests(unittest.TestCase):
    def test_each_window_is_judged_when_it_ends(self) -> None:
        pace = MinimumRate(rate=100, window=2, now=0)
        self.assertEqual(pace.seconds_left(0.5), 1.5)
        self.assertTrue(pace.transferred(150, 1.0))     # not judged before its end
        self.assertTrue(pace.transferred(50, 2.0))      # 200 in 2 s: enough, a new window
        self.assertEqual(pace.seconds_left(2.0), 2)
        self.assertTrue(pace.transferred(0, 3.9))
        self.assertFalse(pace.transferred(0, 4.0))      # nothing in the second window
        trickle = MinimumRate(rate=100, window=2, now=0)
        self.assertFalse(all(trickle.transferred(1, t / 10) for t in range(1, 30)))


class SlowReaderTests(unittest.TestCase):
    def test_a_get_read_below_the_minimum_rate_is_cut(self) -> None:
        """A GET's reader must keep the rate an upload's sender must: each send only had to finish
        within --timeout, so at the default a reader taking 1.1 KiB/s (64 KiB a minute) held a
        worker for as long as the file lasted.  Here the minimum is raised so that the reader, far
        faster than any send's timeout needs, is still too slow, and the test stays short."""
        with ExitStack() as stack:
            root = stack.enter_context(tempfile.TemporaryDirectory())
            with open(os.path.join(root, "big"), "wb") as f:
                f.write(os.urandom(3 * 1024 * 1024))
            ctx = ServerContext(root=root, timeout=0.5, max_upload_bytes=1 << 20, temp_tag="t",
                                counters=RequestCounters())
            stack.enter_context(mock.patch.object(connection, "MIN_BYTES_PER_SECOND", 8 * 1024 * 1024))
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            reader = socket.socket()
            stack.enter_context(reader)
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)   # the buffers stay small
            reader.connect(listener.getsockname())
            served, _ = listener.accept()
            stack.enter_context(served)             # the worker keeps it open after a whole reply
            served.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            worker = threading.Thread(target=connection.serve_request, args=(served, ctx, build("GET big")),
                                      daemon=True)
            worker.start()
            reader.settimeout(10)
            received = bytearray()
            for _ in range(200):            # 64 KiB every 20 ms at most: whole in 1.3 s or more
                try:
                    piece = reader.recv(64 * 1024)
                except ConnectionResetError:
                    piece = b""
                received += piece
                if not piece or received.endswith(TERMINATOR):
                    break
                time.sleep(0.02)
            worker.join(10)
            self.assertFalse(worker.is_alive())
            self.assertFalse(received.endswith(TERMINATOR), "a reader below the minimum rate got the whole file")
            self.assertEqual(ctx.counters.snapshot()["failed"], 1)


class HandoffRaceTests(unittest.TestCase):
    """A worker dies while the parent sends it a connection; the pool settles the request at that
    very moment.  The client must get its connection closed, and the request counted once."""

    def setUp(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(self.listener.close)
        self.handoff = HandoffServer(lambda conn, beyond: conn.close())
        self.addCleanup(self.handoff.close)
        self.handoff.start()

    def settle_during_the_send(self, send_fails: bool) -> tuple[list, socket.socket]:
        """Claim a connection as a worker would, while withdraw() runs in the middle of the send."""
        served, client = tcp_pair(self.listener)
        self.addCleanup(client.close)
        token = self.handoff.offer(served, build("LIST"))
        withdrawn: list = []
        real_send = handoff._send_message

        def send(channel, kind, payload, fd=None):
            if kind == handoff.FOUND:
                settling = threading.Thread(target=lambda: withdrawn.append(self.handoff.withdraw(token)))
                settling.start()
                settling.join(0.5)      # long enough for a withdraw() that does not wait to finish
                if send_fails:
                    raise BrokenPipeError("the worker died")
            return real_send(channel, kind, payload, fd)

        with mock.patch.object(handoff, "_send_message", send):
            try:
                claimed = handoff.claim(self.handoff.path, token)
            except ConnectionError:     # the parent's send failed: it closed the channel
                claimed = None
        if claimed is not None:
            claimed[0].close()          # the worker dies with its copy
        self.assertTrue(wait_until(lambda: withdrawn, 20), "withdraw() never returned")
        return withdrawn, client

    def assert_closed(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            self.assertEqual(client.recv(1), b"", "the client got bytes instead of the end")
        except ConnectionResetError:
            pass
        except socket.timeout:
            self.fail("the connection was parked: the client waits for ever")

    def test_a_send_that_fails_while_the_request_is_settled(self) -> None:
        with self.assertLogs("fileserver.handoff", "WARNING"):
            withdrawn, client = self.settle_during_the_send(send_fails=True)
        self.assertEqual(withdrawn, [build("LIST")], "the unserved request must be counted by the caller")
        self.assert_closed(client)

    def test_a_send_that_succeeds_while_the_request_is_settled(self) -> None:
        withdrawn, client = self.settle_during_the_send(send_fails=False)
        self.assertEqual(withdrawn, [None], "a worker collected it: the worker counts it")
        self.assertEqual(self.handoff.claimed_count(), 0)
        self.assert_closed(client)


class HandBackOrderTests(unittest.TestCase):
    def test_a_worker_is_released_only_once_the_loop_has_its_connection(self) -> None:
        """The server counts a connection as in flight until the worker's task ends, which is
        when give_back() returns: acknowledged before the loop has it, the connection would be
        counted nowhere for --max-connections.  Pin the order."""
        in_loop = threading.Event()
        let_go = threading.Event()

        def given_back(conn: socket.socket, beyond: bytes) -> None:
            in_loop.set()
            let_go.wait(10)
            conn.close()

        server = HandoffServer(given_back)
        self.addCleanup(server.close)
        server.start()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            served, client = tcp_pair(listener)
        self.addCleanup(client.close)
        token = server.offer(served, build("LIST"))
        claimed, _ = handoff.claim(server.path, token)
        worker = threading.Thread(target=handoff.give_back, args=(server.path, claimed, token, b""), daemon=True)
        worker.start()
        self.assertTrue(in_loop.wait(10), "the connection never reached the loop")
        worker.join(0.5)            # long enough for an acknowledgement sent too early to arrive
        still_waiting = worker.is_alive()
        let_go.set()
        worker.join(10)
        self.assertTrue(still_waiting, "the worker was acknowledged before the loop had the connection")
        self.assertFalse(worker.is_alive())


class ServerPromisesMixin(IdleFixtures):
    """Both servers: what a client sends is answered or counted, whatever its timing."""

    def test_a_pause_inside_the_terminator_keeps_the_connection_in_step(self) -> None:
        server = self.start_server(workers=2)
        before = self.stats(server)
        with server.connect() as c:
            c.send(b"LIST\r\n")
            self.assertEqual(decode_reply(c.recv_reply(5))["data"], ["keep"])   # served after the quiet
            c.send(b"\r\n")                          # the rest of the terminator, late
            self.assertEqual(c.command("LIST")["data"], ["keep"])
            c.send(b"GET keep")
            self.assertEqual(base64.b64decode(decode_reply(c.recv_reply(5))["data_file"]), OLD)
            c.send(TERMINATOR)                          # a whole terminator, late
            self.assertEqual(c.command("LIST")["data"], ["keep"], "a reply nobody asked for came first")
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]), (4, 0))

    def test_a_whole_request_then_a_half_close_is_answered(self) -> None:
        server = self.start_server(workers=2)
        before = self.stats(server)
        for head in (b"LIST", b"GET keep\n", b"LIST\r\n\r"):
            with self.subTest(head=head), server.connect() as c:
                c.send(head)
                c.sock.shutdown(socket.SHUT_WR)                 # what nc -N does
                self.assertEqual(decode_reply(c.recv_reply(5))["status"], "OK")
                self.assertTrue(c.wait_closed(5))
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]), (3, 0))

    def test_max_connections_never_closes_a_connection_uncounted(self) -> None:
        """A burst of connections whose whole requests arrived before the loop read them: each
        is answered, or closed and counted as failed (they were closed uncounted)."""
        server = self.start_server(workers=2, extra_args=["--max-connections", "3"])
        before = self.stats(server)
        server.signal(signal.SIGSTOP)            # hold the loop: all six arrive in one burst
        try:
            clients = self.crowd(server, 6)
            for client in clients:
                client.send(build("LIST"))
            time.sleep(0.2)                      # let them all arrive while the loop is held
        finally:
            server.signal(signal.SIGCONT)
        answered = closed = 0
        for client in clients:
            try:
                self.assertEqual(decode_reply(client.recv_reply(10))["status"], "OK")
                answered += 1
            except (ConnectionClosedEarly, ConnectionResetError):
                closed += 1
        self.assertGreater(answered, 0)
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]),
                         (answered, closed))

    def test_requests_behind_a_bad_request_are_counted(self) -> None:
        server = self.start_server(workers=2)
        before = self.stats(server)
        with server.connect() as c:
            c.send(b"GET \xff\xfe" + TERMINATOR + build("LIST") + build("LIST"))
            self.assertEqual(decode_reply(c.recv_reply(5))["status"], "ERROR")
            self.assertTrue(c.wait_closed(5))
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]), (0, 3))

    def test_requests_behind_a_bad_request_past_one_read_are_counted(self) -> None:
        """Whole requests behind a bad one that had arrived, but beyond what was read with it,
        count as failed too: they went uncounted (and the unread bytes turned the close into a
        reset)."""
        server = self.start_server(workers=2)
        before = self.stats(server)
        behind = 20000                  # 160 KB: far more than the loop reads at once
        with server.connect() as c:
            c.send(b"GET \xff\xfe" + TERMINATOR + build("LIST") * behind)
            self.assertEqual(decode_reply(c.recv_reply(10))["status"], "ERROR")
            self.assertTrue(c.wait_closed(10))
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]),
                         (0, 1 + behind))


    def test_slow_uploads_do_not_take_every_worker(self) -> None:
        """Two uploads trickling one base64 character at a time, two workers: a third client is
        still answered, once the trickles fall below the minimum rate (issue 23 item 4)."""
        server = self.start_server(workers=2, extra_args=["--timeout", "1"])
        before = self.stats(server)
        slow = self.crowd(server, 2)
        for client in slow:
            client.send(b"UPLOAD slow ")
        # Bounded: 100 characters 0.2 s apart, far longer than the LIST below waits.
        trickles = [threading.Thread(target=trickle_until_closed, args=(client, b"QUFB" * 25, 0.2), daemon=True)
                    for client in slow]
        for trickle in trickles:
            trickle.start()
        with server.connect() as third:
            self.assertEqual(third.command("LIST", timeout=10)["data"], ["keep"])
        for trickle in trickles:
            trickle.join(30)
            self.assertFalse(trickle.is_alive(), "a trickling upload was never cut")
        self.assertFalse((self.root / "slow").exists())
        after = self.stats(server)
        self.assertEqual(after["failed"] - before["failed"], 2)


class ThreadServerPromisesTests(ServerPromisesMixin, unittest.TestCase):
    KIND = "thread"


class ProcessServerPromisesTests(ServerPromisesMixin, unittest.TestCase):
    KIND = "process"


if __name__ == "__main__":
    unittest.main()


class CountersLockTests(unittest.TestCase):
    def test_a_count_goes_through_when_a_dead_worker_holds_the_lock(self) -> None:
        """The documented fallback: after the lock's timeout a count goes unlocked, never hangs
        (it once took the same lock again, through the synchronized array, with no timeout)."""
        counters = RequestCounters(multiprocessing.get_context("fork"))
        counters.lock_timeout = 0.1
        lock = counters._values.get_lock()
        self.assertTrue(lock.acquire(timeout=5))        # as a worker killed holding it would
        try:
            counted = threading.Thread(target=lambda: (counters.succeeded(), counters.failed(2),
                                                       counters.success_became_failure()), daemon=True)
            with self.assertLogs("fileserver", "ERROR"):
                counted.start()
                counted.join(30)
            self.assertFalse(counted.is_alive(), "counting hung on the stuck lock")
            snapshot = threading.Thread(target=counters.snapshot, daemon=True)
            snapshot.start()
            snapshot.join(30)
            self.assertFalse(snapshot.is_alive(), "STATS hung on the stuck lock")
        finally:
            lock.release()
        self.assertEqual(counters.snapshot(), {"succeeded": 0, "failed": 3, "connections": 0})
