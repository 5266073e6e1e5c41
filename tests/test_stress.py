"""Integration tests of stress_test.py, run as a subprocess as its users run it.

Against both real servers (tests/support.py's RunningServer, 127.0.0.1, --port 0,
a temporary --root): both operations x both client pools, with exact server
counts.  Against nothing: every client fails with 'refused', exit 0.  Against
fake servers that corrupt what they store: every client fails with 'corrupt'.
Every invalid setting: exit 2 with one line on stderr.

stress_test.py caches its content in .cache/stress of the repository and has no
setting to move it, so these tests use that cache (0.5 MiB of it).

Run: ``cd /work/main && python -m unittest tests.test_stress -v``
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import unittest
from typing import Sequence

try:
    from .support import HOST, REPO, ServerPerClass
    from .test_client import FakeServer, clear_folder, free_port, get_reply, read_request
except ImportError:          # run from inside tests/
    from support import HOST, REPO, ServerPerClass
    from test_client import FakeServer, clear_folder, free_port, get_reply, read_request

STRESS_SCRIPT = REPO / "stress_test.py"
SUBPROCESS_TIMEOUT = 60
SIZE_MB = "0.5"
SIZE_BYTES = 512 * 1024
CLIENTS = 3
SETTING_VARIABLES = ("STRESS_OP", "FILE_SIZE_MB", "CLIENT_POOL", "CLIENT_POOL_TYPE", "SERVER_HOST",
                     "SERVER_PORT", "STRESS_LOG_LEVEL")
RESULT_KEYS = {"op", "size_mb", "clients", "pool", "succeed", "failed", "total_time_s", "throughput_Bps",
               "wall_time_s", "aggregate_throughput_Bps", "latency_s", "errors", "server_succeeded",
               "server_failed"}
LATENCY_KEYS = ("min", "p50", "p90", "p99", "max")


def stress_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_VARIABLES}
    env.update(settings)
    return env


def start_stress(args: Sequence[str] = (), **settings: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(STRESS_SCRIPT), *args], cwd=str(REPO), env=stress_env(**settings),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait (bounded) for a stress run; on timeout kill its process group, which we started."""
    try:
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"stress_test did not finish within {SUBPROCESS_TIMEOUT} s; stderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_stress(args: Sequence[str] = (), **settings: str) -> subprocess.CompletedProcess:
    return finish(start_stress(args, **settings))


class _StressAssertions(unittest.TestCase):

    def result_of(self, proc: subprocess.CompletedProcess) -> dict:
        """stdout must be exactly one JSON object; the run must have exited 0."""
        self.assertEqual(proc.returncode, 0, f"stderr:\n{proc.stderr}")
        self.assertNotIn("Traceback", proc.stderr)
        decoder = json.JSONDecoder()
        text = proc.stdout.strip()
        self.assertTrue(text, "nothing on stdout")
        value, end = decoder.raw_decode(text)
        self.assertEqual(text[end:].strip(), "", f"more than one JSON value on stdout: {proc.stdout!r}")
        self.assertIsInstance(value, dict)
        self.assertEqual(len(proc.stdout.strip().splitlines()), 1, proc.stdout)
        missing = RESULT_KEYS - set(value)
        self.assertFalse(missing, f"keys missing from the result: {sorted(missing)}")
        self.assertEqual(set(value["latency_s"]), set(LATENCY_KEYS))
        self.assertIsInstance(value["errors"], dict)
        self.assertEqual(value["succeed"] + value["failed"], value["clients"])
        return value

    def assertAllSucceeded(self, result: dict, op: str, pool: str) -> None:
        self.assertEqual((result["op"], result["pool"], result["clients"]), (op, pool, CLIENTS))
        self.assertEqual(result["size_mb"], float(SIZE_MB))
        self.assertEqual((result["succeed"], result["failed"]), (CLIENTS, 0), result["errors"])
        self.assertEqual(result["errors"], {})
        self.assertEqual((result["server_succeeded"], result["server_failed"]), (CLIENTS, 0),
                         "the server's counts of the measured requests")
        for key in ("total_time_s", "throughput_Bps", "wall_time_s", "aggregate_throughput_Bps"):
            self.assertIsInstance(result[key], (int, float), key)
            self.assertGreater(result[key], 0, key)
        latency = [result["latency_s"][key] for key in LATENCY_KEYS]
        self.assertTrue(all(isinstance(v, (int, float)) and v > 0 for v in latency), latency)
        self.assertEqual(latency, sorted(latency))
        self.assertLessEqual(result["latency_s"]["max"], result["wall_time_s"] + 1e-6)
        # Each client moved SIZE_BYTES: the mean of per-client rates matches the mean time roughly.
        self.assertAlmostEqual(result["throughput_Bps"] * result["total_time_s"] / SIZE_BYTES, 1.0, delta=0.5)

    def assertAllFailed(self, result: dict, kind: str) -> None:
        self.assertEqual((result["succeed"], result["failed"]), (0, CLIENTS), result["errors"])
        self.assertIn(kind, result["errors"], result["errors"])
        self.assertEqual(result["errors"][kind]["count"], CLIENTS, result["errors"])
        self.assertTrue(result["errors"][kind]["example"])
        self.assertIsNone(result["total_time_s"])
        self.assertIsNone(result["throughput_Bps"])


# ---------------------------------------------------------------------- real servers

class _StressAgainstServer(ServerPerClass, _StressAssertions):
    kind = ""

    server_workers = CLIENTS + 1

    def setUp(self) -> None:
        clear_folder(self.root)

    def stress(self, op: str, pool: str) -> dict:
        return self.result_of(run_stress(["--timeout", "20"], STRESS_OP=op, FILE_SIZE_MB=SIZE_MB,
                                         CLIENT_POOL=str(CLIENTS), CLIENT_POOL_TYPE=pool,
                                         SERVER_HOST=HOST, SERVER_PORT=str(self.server.port)))

    def stress_files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.root) if name.startswith("stress-"))

    def check_download(self, pool: str) -> None:
        result = self.stress("download", pool)
        self.assertAllSucceeded(result, "download", pool)
        files = self.stress_files()
        self.assertEqual(len(files), 1, files)
        self.assertEqual(os.path.getsize(os.path.join(self.root, files[0])), SIZE_BYTES)

    def check_upload(self, pool: str) -> None:
        result = self.stress("upload", pool)
        self.assertAllSucceeded(result, "upload", pool)
        self.assertEqual([n for n in os.listdir(self.root) if n.startswith("stress-upload")], [],
                         "the uploaded test files were not deleted")
        self.assertEqual([n for n in os.listdir(self.root) if n.endswith(".part")], [])

    def test_download_thread_pool(self) -> None:
        self.check_download("thread")

    def test_download_process_pool(self) -> None:
        self.check_download("process")

    def test_upload_thread_pool(self) -> None:
        self.check_upload("thread")

    def test_upload_process_pool(self) -> None:
        self.check_upload("process")

    def test_download_replaces_a_corrupted_copy_on_the_server(self) -> None:
        self.check_download("thread")
        [name] = self.stress_files()
        path = os.path.join(self.root, name)
        with open(path, "rb") as f:
            good = f.read()
        with open(path, "wb") as f:
            f.write(bytes(len(good)))             # same size, wrong bytes
        self.check_download("thread")
        self.assertEqual(self.stress_files(), [name])
        with open(path, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(good).hexdigest())


class StressAgainstThreadServerTest(_StressAgainstServer):
    kind = "thread"


class StressAgainstProcessServerTest(_StressAgainstServer):
    kind = "process"


del _StressAgainstServer       # only the concrete classes hold tests


# ---------------------------------------------------------------------- no server

class StressWithoutServerTest(_StressAssertions):

    def check(self, op: str, pool: str) -> None:
        proc = run_stress(["--timeout", "10"], STRESS_OP=op, FILE_SIZE_MB=SIZE_MB, CLIENT_POOL=str(CLIENTS),
                          CLIENT_POOL_TYPE=pool, SERVER_HOST=HOST, SERVER_PORT=str(free_port()))
        result = self.result_of(proc)
        self.assertEqual((result["op"], result["pool"]), (op, pool))
        self.assertAllFailed(result, "refused")
        self.assertIsNone(result["server_succeeded"])
        self.assertIsNone(result["server_failed"])

    def test_download_thread_pool_refused(self) -> None:
        self.check("download", "thread")

    def test_upload_process_pool_refused(self) -> None:
        self.check("upload", "process")


# ---------------------------------------------------------------------- settings

class StressSettingsTest(_StressAssertions):

    INVALID_ENV = [
        {"STRESS_OP": "foo"}, {"STRESS_OP": ""},
        {"FILE_SIZE_MB": "0"}, {"FILE_SIZE_MB": "-1"}, {"FILE_SIZE_MB": "abc"}, {"FILE_SIZE_MB": "nan"},
        {"CLIENT_POOL": "0"}, {"CLIENT_POOL": "1.5"}, {"CLIENT_POOL": "abc"}, {"CLIENT_POOL": "-2"},
        {"CLIENT_POOL_TYPE": "fork"},
        {"SERVER_PORT": "abc"}, {"SERVER_PORT": "70000"}, {"SERVER_PORT": "0"},
    ]
    INVALID_FLAGS = [
        ["--op", "foo"], ["--size-mb", "0"], ["--size-mb", "abc"], ["--clients", "1.5"], ["--clients", "0"],
        ["--pool", "fork"], ["--port", "70000"], ["--port", "abc"], ["--timeout", "0"],
    ]

    def assertInvalid(self, proc: subprocess.CompletedProcess) -> None:
        self.assertEqual(proc.returncode, 2, f"stdout={proc.stdout!r} stderr={proc.stderr!r}")
        self.assertEqual(proc.stdout, "")
        self.assertNotIn("Traceback", proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)

    def test_invalid_settings_exit_2_with_one_line(self) -> None:
        # Valid values for everything else, so only the setting under test can be at fault.
        base = dict(STRESS_OP="download", FILE_SIZE_MB="0.01", CLIENT_POOL="1", CLIENT_POOL_TYPE="thread",
                    SERVER_HOST=HOST, SERVER_PORT=str(free_port()))
        cases = [(f"env {bad}", [], {**base, **bad}) for bad in self.INVALID_ENV]
        cases += [(f"flag {flags}", flags, base) for flags in self.INVALID_FLAGS]
        # A flag wins over its variable, also when the flag is the invalid one.
        cases += [("flag over valid env", ["--clients", "0"], {**base, "CLIENT_POOL": "2"})]
        running = [(label, start_stress(flags, **env)) for label, flags, env in cases]
        for label, proc in running:
            with self.subTest(label):
                self.assertInvalid(finish(proc))

    def test_flags_override_invalid_environment(self) -> None:
        proc = run_stress(["--op", "upload", "--size-mb", SIZE_MB, "--clients", "2", "--pool", "thread",
                           "--host", HOST, "--port", str(free_port()), "--timeout", "10"],
                          STRESS_OP="foo", FILE_SIZE_MB="abc", CLIENT_POOL="0", CLIENT_POOL_TYPE="fork",
                          SERVER_HOST="", SERVER_PORT="70000")
        result = self.result_of(proc)
        self.assertEqual((result["op"], result["size_mb"], result["clients"], result["pool"]),
                         ("upload", float(SIZE_MB), 2, "thread"))
        self.assertEqual(result["failed"], 2)
        self.assertIn("refused", result["errors"])


# ---------------------------------------------------------------------- corrupting fake servers

class CorruptingServer:
    """A fake file server that keeps uploads in memory and changes them on the way.

    mangle: 'flip' inverts the first byte, 'truncate' drops the last one, 'none' keeps it whole.  With
    ``report`` the UPLOAD reply carries the size and SHA-256 of what was stored
    (as the real servers do); without it, it is a bare OK.  STATS is unknown.
    """

    def __init__(self, mangle: str = "flip", report: bool = False) -> None:
        self.mangle, self.report = mangle, report
        self.store: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.fake = FakeServer(self._handle)
        self.port = self.fake.port

    def _changed(self, data: bytes) -> bytes:
        if self.mangle == "truncate":
            return data[:-1]
        if self.mangle == "none":
            return data
        return bytes([data[0] ^ 0xFF]) + data[1:] if data else b"?"

    def _handle(self, conn: socket.socket, fake: FakeServer) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        for _ in range(1000):                  # requests on one connection, bounded
            request = read_request(conn, buffer)
            if request is None or fake.stopping.is_set():
                return
            command, _, rest = request.partition(b" ")
            command = command.upper()
            if command == b"UPLOAD":
                name, _, text = rest.partition(b" ")
                stored = self._changed(base64.b64decode(text, validate=True))
                with self.lock:
                    self.store[name.decode()] = stored
                reply = {"status": "OK", "data": f"{name.decode()} uploaded"}
                if self.report:
                    reply.update(size=len(stored), sha256=hashlib.sha256(stored).hexdigest())
                conn.sendall(json.dumps(reply).encode() + b"\r\n\r\n")
            elif command == b"GET":
                with self.lock:
                    content = self.store.get(rest.decode())
                if content is None:
                    conn.sendall(b'{"status": "ERROR", "data": "not found"}\r\n\r\n')
                else:
                    conn.sendall(get_reply(base64.b64encode(content), name=rest.decode()))
            elif command == b"DELETE":
                with self.lock:
                    found = self.store.pop(rest.decode(), None)
                conn.sendall(b'{"status": "OK", "data": "deleted"}\r\n\r\n' if found is not None
                             else b'{"status": "ERROR", "data": "not found"}\r\n\r\n')
            else:
                conn.sendall(b'{"status": "ERROR", "data": "unknown command"}\r\n\r\n')

    def stop(self) -> None:
        self.fake.stop()


class StressCountsCorruptionTest(_StressAssertions):

    def corrupting(self, mangle: str = "flip", report: bool = False) -> CorruptingServer:
        server = CorruptingServer(mangle, report)
        self.addCleanup(self.assertEqual, server.fake.errors, [], "the fake server itself failed")
        self.addCleanup(server.stop)
        return server

    def stress(self, server: CorruptingServer, op: str, pool: str) -> dict:
        result = self.result_of(run_stress(["--timeout", "20"], STRESS_OP=op, FILE_SIZE_MB=SIZE_MB,
                                           CLIENT_POOL=str(CLIENTS), CLIENT_POOL_TYPE=pool,
                                           SERVER_HOST=HOST, SERVER_PORT=str(server.port)))
        self.assertIsNone(result["server_succeeded"])     # the fake has no STATS
        return result

    def test_download_of_changed_bytes_thread_pool(self) -> None:
        server = self.corrupting("flip")
        self.assertAllFailed(self.stress(server, "download", "thread"), "corrupt")
        self.assertEqual(len(server.store), 1)           # the content was put there first

    def test_download_of_changed_bytes_process_pool(self) -> None:
        self.assertAllFailed(self.stress(self.corrupting("flip"), "download", "process"), "corrupt")

    def test_download_of_truncated_content(self) -> None:
        self.assertAllFailed(self.stress(self.corrupting("truncate"), "download", "thread"), "corrupt")

    def test_upload_when_the_server_reports_other_bytes(self) -> None:
        server = self.corrupting("flip", report=True)
        self.assertAllFailed(self.stress(server, "upload", "thread"), "corrupt")
        self.assertEqual([n for n in server.store if n.startswith("stress-upload")], [])

    def test_upload_corrupted_on_the_server_without_a_checksum_reply(self) -> None:
        """A server that answers a bare OK (no size or SHA-256) has what it stored read back
        after the timed part: content it corrupted counts as failed clients."""
        server = self.corrupting("flip", report=False)
        self.assertAllFailed(self.stress(server, "upload", "thread"), "corrupt")

    def test_upload_kept_whole_by_a_server_without_a_checksum_reply_succeeds(self) -> None:
        """The read-back of unconfirmed uploads passes when the server kept every byte."""
        server = self.corrupting("none", report=False)
        result = self.stress(server, "upload", "thread")
        self.assertEqual((result["succeed"], result["failed"]), (CLIENTS, 0), result["errors"])


if __name__ == "__main__":
    unittest.main()
