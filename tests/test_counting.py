"""Counting that a real bug would upset (issue 14, items 1, 9-14).

* In process: a connection served on a socket whose every final send reads the
  counters, so a success counted after its reply (not just before) shows; an
  unexpected OSError of a request gets one ERROR and one failed count.
* Both servers: a client leaving mid-upload is one failed request, and
  stress_test's server_failed against a server that refuses the uploads.
* run_experiment.py run as a user runs it: the CSV's time and throughput
  columns against the JSON Lines, --repeat's median, the 12 column names.

Run: ``python -m unittest tests.test_counting -v``
"""

from __future__ import annotations

import base64
import csv
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path
from unittest import mock

try:
    from .support import HOST, REPO, Client, ServerPerClass, wait_until
    from .test_stress import run_stress
except ImportError:          # run from inside tests/
    from support import HOST, REPO, Client, ServerPerClass, wait_until
    from test_stress import run_stress

from fileshare import connection
from fileshare.protocol import TERMINATOR
from fileshare.state import RequestCounters, ServerContext

SUBPROCESS_TIMEOUT = 120
CSV_HEADER = [
    "Nomor", "Model concurrency", "Operasi", "Volume", "Jumlah client worker pool", "Jumlah server worker pool",
    "Waktu total per client", "Throughput per client", "Jumlah client sukses", "Jumlah client gagal",
    "Jumlah server sukses", "Jumlah server gagal",
]


# ---------------------------------------------------------------------- one connection, in this process

class _CountingSocket(socket.socket):
    """A server-side socket that notes the counters whenever a reply's last bytes go out."""

    counters: RequestCounters
    at_reply_end: list

    def sendall(self, data, *flags):  # type: ignore[override]
        if bytes(data[-len(TERMINATOR):]) == TERMINATOR:
            self.at_reply_end.append(self.counters.snapshot())
        return super().sendall(data, *flags)


def serve_until_closed(sock: socket.socket, ctx: ServerContext) -> None:
    """What a server does with one connection, request after request, without the accept loop."""
    pending: bytes | None = b""
    while pending is not None:
        pending = connection.serve_request(sock, ctx, pending)


class InProcessConnectionTest(unittest.TestCase):
    """fileshare.connection serving one real loopback connection in a thread of this process."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="counting-")
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name
        self.ctx = ServerContext(root=self.root, timeout=10.0, max_upload_bytes=1024 * 1024,
                                 temp_tag=str(os.getpid()), counters=RequestCounters())

    def serve_one(self) -> tuple[Client, _CountingSocket, threading.Thread]:
        with socket.create_server((HOST, 0)) as listener:
            client = Client(listener.getsockname()[:2], timeout=10)
            accepted, _ = listener.accept()
        sock = _CountingSocket(fileno=accepted.detach())
        sock.counters, sock.at_reply_end = self.ctx.counters, []
        thread = threading.Thread(target=serve_until_closed, args=(sock, self.ctx), daemon=True)
        thread.start()

        def finish() -> None:
            client.close()
            thread.join(15)
            self.assertFalse(thread.is_alive(), "the connection was not served to its end")
        self.addCleanup(finish)
        return client, sock, thread

    def test_a_success_is_counted_before_its_reply_ends(self) -> None:
        client, sock, _ = self.serve_one()
        requests = [b"UPLOAD a " + base64.b64encode(b"x" * 100_000), b"GET a", b"LIST", b"DELETE a"]
        for request in requests:
            self.assertEqual(client.request(request + TERMINATOR)["status"], "OK", request[:20])
        self.assertEqual([seen["succeeded"] for seen in sock.at_reply_end], [1, 2, 3, 4],
                         "a client holding its reply must already be in STATS")

    def test_an_unexpected_os_error_is_answered_and_counted(self) -> None:
        client, _, _ = self.serve_one()
        with mock.patch.object(connection, "list_names", side_effect=PermissionError(13, "Permission denied")), \
                self.assertLogs("fileserver", "WARNING"):
            reply = client.request(b"LIST" + TERMINATOR)
        self.assertEqual(reply["status"], "ERROR", reply)
        self.assertIn("Permission denied", reply["data"])
        self.assertEqual(client.request(b"STATS" + TERMINATOR)["data"]["failed"], 1)
        self.assertEqual(client.request(b"LIST" + TERMINATOR), {"status": "OK", "data": []})


# ---------------------------------------------------------------------- both servers

class _CountingAgainstServer(ServerPerClass):
    """A server that refuses uploads over 0.25 MiB."""

    server_workers = 4
    server_args = ("--max-upload-mb", "0.25")

    def stats(self, client: Client) -> dict:
        return client.request(b"STATS" + TERMINATOR)["data"]

    def test_a_client_leaving_mid_upload_is_one_failed_request(self) -> None:
        with Client(self.server.address) as watcher:
            for abort in ("close", "reset", "close", "reset"):
                with self.subTest(abort):
                    before = self.stats(watcher)
                    uploader = Client(self.server.address)
                    uploader.send(b"UPLOAD going " + base64.b64encode(os.urandom(60_000)))
                    self.assertTrue(wait_until(lambda: any(n.endswith(".part") for n in os.listdir(self.root)), 5),
                                    "the upload did not start")
                    if abort == "reset":
                        uploader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    uploader.close()
                    self.assertTrue(wait_until(lambda: self.stats(watcher)["failed"] > before["failed"], 5),
                                    "the abandoned upload is not counted as failed")
                    self.assertTrue(wait_until(lambda: not any(n.endswith(".part") for n in os.listdir(self.root)),
                                               5))
                    after = self.stats(watcher)
                    self.assertEqual((after["failed"] - before["failed"], after["succeeded"] - before["succeeded"]),
                                     (1, 0))

    def test_stress_counts_the_uploads_the_server_refused(self) -> None:
        done = run_stress(["--timeout", "20"], STRESS_OP="upload", FILE_SIZE_MB="0.5", CLIENT_POOL="3",
                          CLIENT_POOL_TYPE="thread", SERVER_HOST=HOST, SERVER_PORT=str(self.server.port))
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        self.assertEqual((result["succeed"], result["failed"]), (0, 3), result["errors"])
        self.assertEqual((result["server_succeeded"], result["server_failed"]), (0, 3))


class ThreadServerCountingTest(_CountingAgainstServer, unittest.TestCase):
    kind = "thread"


class ProcessServerCountingTest(_CountingAgainstServer, unittest.TestCase):
    kind = "process"


# ---------------------------------------------------------------------- run_experiment.py's output

class SweepOutputTest(unittest.TestCase):
    """One small sweep with --repeat 3, read as a user reads it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory(prefix="sweep-output-")
        cls.output = Path(cls._tmp.name) / "results.csv"
        cls.done = subprocess.run(
            [sys.executable, str(REPO / "run_experiment.py"), "--output", str(cls.output), "--models", "thread",
             "--server-workers", "1", "--ops", "upload", "--sizes", "0.25", "--client-workers", "1",
             "--repeat", "3", "--max-repeat", "3"],
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=cls._tmp.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    def setUp(self) -> None:
        self.assertEqual(self.done.returncode, 0, self.done.stderr)
        with open(self.output, newline="", encoding="utf-8") as f:
            self.rows = list(csv.reader(f))
        lines = [json.loads(line) for line in self.output.with_suffix(".jsonl").read_text().splitlines()]
        self.cells = [line for line in lines if line.get("type") == "cell"]

    def test_the_header_is_the_original_12_columns(self) -> None:
        self.assertEqual(self.rows[0], CSV_HEADER)

    def test_time_and_throughput_columns_are_the_cells_figures(self) -> None:
        self.assertEqual(len(self.rows), 2)
        self.assertEqual(len(self.cells), 1)
        row = dict(zip(CSV_HEADER, self.rows[1]))
        result = self.cells[0]["result"]
        self.assertEqual(row["Waktu total per client"], f"{result['total_time_s']:.4f}")
        self.assertEqual(row["Throughput per client"], f"{result['throughput_Bps']:.0f}")
        # One client: its throughput is the file's size over its time.
        self.assertAlmostEqual(result["throughput_Bps"] * result["total_time_s"] / result["size_bytes"], 1.0,
                               places=6)
        self.assertEqual([row["Jumlah client sukses"], row["Jumlah client gagal"]], ["1", "0"])
        self.assertEqual([row["Jumlah server sukses"], row["Jumlah server gagal"]], ["1", "0"])

    def test_repeat_writes_the_median_run(self) -> None:
        samples = self.cells[0]["samples"]
        self.assertEqual(len(samples), 3)
        ranked = sorted(samples, key=lambda s: s["aggregate_throughput_Bps"])
        self.assertEqual(self.cells[0]["result"], ranked[1])
        self.assertEqual(self.rows[1][7], f"{ranked[1]['throughput_Bps']:.0f}")


class MedianChoiceTest(unittest.TestCase):
    def test_median_of_three_and_of_four_with_a_failed_run(self) -> None:
        sys.path.insert(0, str(REPO))
        from fileshare.sweep import representative
        runs = [{"aggregate_throughput_Bps": rate, "succeed": 1, "id": i}
                for i, rate in enumerate((30.0, 10.0, 20.0))]
        self.assertEqual(representative(runs)["id"], 2)
        runs.append({"aggregate_throughput_Bps": None, "succeed": 0, "id": 3})     # a run whose clients all failed
        self.assertEqual(representative(runs)["id"], 1, "the lower middle run, not the fastest")
        runs[3] = {"aggregate_throughput_Bps": 40.0, "succeed": 1, "id": 3}
        self.assertEqual(representative(runs)["id"], 2)


if __name__ == "__main__":
    unittest.main()
