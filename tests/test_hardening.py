"""Issue 23, adversarial review round 2: the accept loop, the hand-back of connections and
the workers' reading, each promise that once broke pinned by a test that failed before its fix."""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import threading
import unittest
from contextlib import ExitStack

from tests.support import TERMINATOR, build

from fileshare.idle import STALE_DEADLINES_KEPT, IdleConnections
from fileshare.state import RequestCounters


def tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of one loopback TCP connection to ``listener``."""
    client = socket.create_connection(listener.getsockname()[:2], timeout=10)
    server, _ = listener.accept()
    return server, client


class DeadlineMemoryTests(unittest.TestCase):
    """The loop's deadline heap holds entries for open connections, not for requests served."""

    def test_deadline_entries_stay_bounded_by_open_connections(self) -> None:
        with ExitStack() as stack:
            selector = stack.enter_context(selectors.DefaultSelector())
            idle = IdleConnections(selector, timeout=3600.0, counters=RequestCounters())
            stack.callback(idle.close_all)
            # One silent connection: its deadline, the earliest, keeps every later one in the heap.
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
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
