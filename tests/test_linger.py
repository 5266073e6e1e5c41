"""Issue 20: a worker keeps a busy keep-alive connection while nobody else waits, on both servers.

After a reply the worker serves the connection's next request at once if it is
there or arrives within a short linger; it hands the connection back when the
connection goes quiet or when another connection waits for a worker.  The
tests use one worker, so any connection held too long would starve the other.
"""

from __future__ import annotations

import threading
import time
import unittest
from contextlib import ExitStack

from tests.support import build, decode_reply, wait_until
from tests.test_idle import IdleFixtures

BATCH = 500         # requests a busy client keeps in flight, so its next one is always there


class LingerTestsMixin(IdleFixtures):
    def test_a_busy_connection_is_handed_back_when_another_waits(self) -> None:
        """A client that always has hundreds of requests there would keep the only worker for
        ever if the worker did not look whether another connection waits."""
        server = self.start_server(workers=1)
        busy, other = self.crowd(server, 2)
        other_answered = threading.Event()
        replies = [0]

        def keep_busy() -> None:
            # Bounded: until the other client is answered, or 30 s, or 4,000 batches.
            deadline = time.monotonic() + 30
            sent = 0
            try:
                for _ in range(4000):
                    if other_answered.is_set() or time.monotonic() > deadline:
                        return
                    busy.send(build("LIST") * BATCH)      # the next batch is there long before this one ends
                    sent += BATCH
                    while sent - replies[0] > BATCH:
                        busy.recv_reply(30)
                        replies[0] += 1
            except OSError:
                pass                # closed by the test below

        hog = threading.Thread(target=keep_busy, daemon=True)
        hog.start()
        try:
            self.assertTrue(wait_until(lambda: replies[0] > 0, 10), "the busy client got no reply")
            self.assertEqual(other.command("LIST", timeout=10)["data"], ["keep"],
                             "the other connection waited while the busy one kept the worker")
        finally:
            other_answered.set()
            hog.join(60)
        self.assertFalse(hog.is_alive())

    def test_a_connection_quiet_during_the_linger_is_handed_back_and_answered_later(self) -> None:
        server = self.start_server(workers=1)
        quiet, other = self.crowd(server, 2)
        self.assertEqual(quiet.command("LIST")["data"], ["keep"])      # then quiet: the worker lingers
        self.assertEqual(other.command("LIST", timeout=10)["data"], ["keep"])
        self.assertEqual(quiet.command("LIST", timeout=10)["data"], ["keep"], "the quiet one was lost")
        self.assertEqual(other.command("GET", "keep", timeout=10)["status"], "OK")

    def test_counts_stay_exact_with_pipelined_and_back_to_back_requests(self) -> None:
        server = self.start_server(workers=2)
        before = self.stats(server)
        seen = {"OK": 0, "ERROR": 0}
        with ExitStack() as stack:
            clients = [stack.enter_context(server.connect()) for _ in range(3)]
            for round_no in range(30):
                for index, client in enumerate(clients):
                    if index == 0:          # pipelined: several requests in one send
                        client.send(build("LIST") + build("GET", "keep") + build("GET", "missing"))
                        replies = [decode_reply(client.recv_reply(10)) for _ in range(3)]
                    else:                   # back to back
                        replies = [client.command("LIST"), client.command("GET", "keep")]
                    for reply in replies:
                        seen[reply["status"]] += 1
        after = self.stats(server)
        self.assertEqual((after["succeeded"] - before["succeeded"], after["failed"] - before["failed"]),
                         (seen["OK"], seen["ERROR"]))
        self.assertEqual(seen, {"OK": 30 * 6, "ERROR": 30})


class ThreadLingerTests(LingerTestsMixin, unittest.TestCase):
    KIND = "thread"


class ProcessLingerTests(LingerTestsMixin, unittest.TestCase):
    KIND = "process"


if __name__ == "__main__":
    unittest.main()
