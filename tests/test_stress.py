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
import tempfile
import threading
import unittest
from typing import Callable, Sequence

try:
    from .support import HOST, REPO, ServerPerClass
    from .test_client import FakeServer, clear_folder, free_port, get_reply, read_request
except ImportError:          # run from inside tests/
    from support import HOST, REPO, ServerPerClass
    from test_client import FakeServer, clear_folder, free_port, get_reply, read_request
from fileshare.loadgen import _VerifiedReply, canonical_encoding  # noqa: E402  (support put the repository on the path)
from fileshare.replies import ReplyParser  # noqa: E402
from stress_test import test_content as stress_content  # noqa: E402

STRESS_SCRIPT = REPO / "stress_test.py"
SUBPROCESS_TIMEOUT = 60
SIZE_MB = "0.5"
SIZE_BYTES = 512 * 1024
CLIENTS = 3
SETTING_VARIABLES = ("STRESS_OP", "FILE_SIZE_MB", "CLIENT_POOL", "CLIENT_POOL_TYPE", "SERVER_HOST",
                     "SERVER_PORT", "STRESS_LOG_LEVEL", "CLIENT_WORK", "SERVER_PID", "IDLE_SERVER_PIDS")
RESULT_KEYS = {"op", "size_mb", "clients", "pool", "client_work", "succeed", "failed", "total_time_s",
               "throughput_Bps", "wall_time_s", "aggregate_throughput_Bps", "latency_s", "errors",
               "server_succeeded", "server_failed", "client_cpu_s"}
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

    def assertAllSucceeded(self, result: dict, op: str, pool: str, client_work: str = "verify") -> None:
        self.assertEqual((result["op"], result["pool"], result["clients"], result["client_work"]),
                         (op, pool, CLIENTS, client_work))
        self.assertEqual(result["size_mb"], float(SIZE_MB))
        self.assertEqual((result["succeed"], result["failed"]), (CLIENTS, 0), result["errors"])
        self.assertEqual(result["errors"], {})
        self.assertEqual((result["server_succeeded"], result["server_failed"]), (CLIENTS, 0),
                         "the server's counts of the measured requests")
        for key in ("total_time_s", "throughput_Bps", "wall_time_s", "aggregate_throughput_Bps", "client_cpu_s"):
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

    def stress(self, op: str, pool: str, client_work: str = "verify") -> dict:
        return self.result_of(run_stress(["--timeout", "20"], STRESS_OP=op, FILE_SIZE_MB=SIZE_MB,
                                         CLIENT_POOL=str(CLIENTS), CLIENT_POOL_TYPE=pool, CLIENT_WORK=client_work,
                                         SERVER_HOST=HOST, SERVER_PORT=str(self.server.port)))

    def stress_files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.root) if name.startswith("stress-"))

    def check_download(self, pool: str, client_work: str = "verify") -> None:
        result = self.stress("download", pool, client_work)
        self.assertAllSucceeded(result, "download", pool, client_work)
        files = self.stress_files()
        self.assertEqual(len(files), 1, files)
        self.assertEqual(os.path.getsize(os.path.join(self.root, files[0])), SIZE_BYTES)

    def check_upload(self, pool: str, client_work: str = "verify") -> None:
        result = self.stress("upload", pool, client_work)
        self.assertAllSucceeded(result, "upload", pool, client_work)
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

    # The application-like clients (decode and encode); each pool type once, each operation once.
    def test_download_process_pool_decoding_clients(self) -> None:
        self.check_download("process", "decode")

    def test_upload_thread_pool_decoding_clients(self) -> None:
        self.check_upload("thread", "decode")

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


# ---------------------------------------------------------------------- cores over the timed part

# A server in a process of its own that answers every request with an ERROR, but an UPLOAD only once a child
# of its has burnt BURN_S seconds of CPU: that child's CPU falls inside the stress test's timed transfer.
BURNING_SERVER = """
import socket, subprocess, sys
BURN = "import os\\nfor _ in range(10 ** 9):\\n    if sum(os.times()[:2]) >= %s: break"
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        try:
            if conn.recv(64).upper().startswith(b"UPLOAD"):
                subprocess.run([sys.executable, "-c", BURN], timeout=60)
            conn.sendall(b'{"status": "ERROR", "data": "not stored"}\\r\\n\\r\\n')
        except OSError:
            pass
"""
BURN_S = 0.3


class StressCoresTest(_StressAssertions):

    def setUp(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-c", BURNING_SERVER % BURN_S], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.addCleanup(lambda: (os.killpg(self.server.pid, 9), self.server.wait(10), self.server.stdout.close()))
        self.port = self.server.stdout.readline().strip()
        self.assertTrue(self.port.isdigit(), "the burning server printed no port")

    def stress(self, *flags: str) -> dict:
        usage = self.result_of(run_stress(["--op", "upload", "--size-mb", "0.01", "--clients", "1", "--host", HOST,
                                           "--port", self.port, "--timeout", "30", *flags]))["usage"]
        self.assertEqual(usage["over"], "transfer")
        self.assertGreater(usage["window_s"], 0)
        return usage

    def test_the_servers_cores_count_a_burning_child_of_the_watched_process(self) -> None:
        usage = self.stress("--server-pid", str(self.server.pid))
        # CPU seconds of the server's tree over the timed transfer: the child's burn (/proc counts whole ticks)
        self.assertGreaterEqual(usage["server_cores"] * usage["window_s"], BURN_S - 0.05, usage)
        self.assertIsNotNone(usage["other_cores"])
        self.assertEqual(usage["idle_servers_cores"], 0.0)

    def test_a_server_it_cannot_see_has_no_cores(self) -> None:
        usage = self.stress()
        self.assertIsNone(usage["server_cores"])
        self.assertIsNone(usage["other_cores"])
        self.assertGreaterEqual(usage["client_cores"], 0)

    def test_a_burning_server_watched_as_idle_counts_as_idle(self) -> None:
        usage = self.stress("--idle-server-pids", str(self.server.pid))
        self.assertGreaterEqual(usage["idle_servers_cores"] * usage["window_s"], BURN_S - 0.05, usage)


# ---------------------------------------------------------------------- settings

class StressSettingsTest(_StressAssertions):

    INVALID_ENV = [
        {"STRESS_OP": "foo"}, {"STRESS_OP": ""},
        {"FILE_SIZE_MB": "0"}, {"FILE_SIZE_MB": "-1"}, {"FILE_SIZE_MB": "abc"}, {"FILE_SIZE_MB": "nan"},
        {"CLIENT_POOL": "0"}, {"CLIENT_POOL": "1.5"}, {"CLIENT_POOL": "abc"}, {"CLIENT_POOL": "-2"},
        {"CLIENT_POOL_TYPE": "fork"}, {"CLIENT_WORK": "hash"}, {"CLIENT_WORK": ""},
        {"SERVER_PORT": "abc"}, {"SERVER_PORT": "70000"}, {"SERVER_PORT": "0"},
        {"SERVER_PID": "abc"}, {"SERVER_PID": "12,13"}, {"SERVER_PID": "-1"}, {"IDLE_SERVER_PIDS": "1,x"},
    ]
    INVALID_FLAGS = [
        ["--op", "foo"], ["--size-mb", "0"], ["--size-mb", "abc"], ["--clients", "1.5"], ["--clients", "0"],
        ["--pool", "fork"], ["--port", "70000"], ["--port", "abc"], ["--timeout", "0"], ["--client-work", "none"],
        ["--server-pid", "0"], ["--idle-server-pids", "2;3"],
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

def stress_base64() -> bytes:
    """The canonical base64 of the test content stress_test uses at SIZE_MB."""
    with open(stress_content(SIZE_BYTES).path, "rb") as f:
        return base64.b64encode(f.read())


class CorruptingServer:
    """A fake file server that keeps uploads in memory and changes them on the way.

    mangle: 'flip' inverts the first byte, 'truncate' drops the last one, 'none' keeps it whole.  With
    ``report`` the UPLOAD reply carries the size and SHA-256 of what was stored
    (as the real servers do); without it, it is a bare OK.  ``reply_text`` turns the
    stored content's base64 into the text a GET reply carries.  STATS is unknown.
    """

    def __init__(self, mangle: str = "flip", report: bool = False,
                 reply_text: Callable[[bytes], bytes] = base64.b64encode) -> None:
        self.mangle, self.report, self.reply_text = mangle, report, reply_text
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
                    conn.sendall(get_reply(self.reply_text(content), name=rest.decode()))
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

    def corrupting(self, mangle: str = "flip", report: bool = False,
                   reply_text: Callable[[bytes], bytes] = base64.b64encode) -> CorruptingServer:
        server = CorruptingServer(mangle, report, reply_text)
        self.addCleanup(self.assertEqual, server.fake.errors, [], "the fake server itself failed")
        self.addCleanup(server.stop)
        return server

    def stress(self, server: CorruptingServer, op: str, pool: str, client_work: str = "verify") -> dict:
        result = self.result_of(run_stress(["--timeout", "20"], STRESS_OP=op, FILE_SIZE_MB=SIZE_MB,
                                           CLIENT_POOL=str(CLIENTS), CLIENT_POOL_TYPE=pool, CLIENT_WORK=client_work,
                                           SERVER_HOST=HOST, SERVER_PORT=str(server.port)))
        self.assertIsNone(result["server_succeeded"])     # the fake has no STATS
        self.assertEqual(result["client_work"], client_work)
        return result

    def assertCorruptAt(self, reply_text: Callable[[bytes], bytes], offset: int, words: str) -> None:
        """A GET reply whose text is ``reply_text(content)`` fails every client as corrupt at ``offset``."""
        result = self.stress(self.corrupting("none", reply_text=reply_text), "download", "thread")
        self.assertAllFailed(result, "corrupt")
        example = result["errors"]["corrupt"]["example"]
        self.assertRegex(example, rf"offset {offset}\b")
        self.assertIn(words, example)

    def test_download_with_one_changed_character_fails_at_its_offset(self) -> None:
        def changed(content: bytes) -> bytes:
            text = bytearray(base64.b64encode(content))
            text[1000] = ord("B") if text[1000] == ord("A") else ord("A")
            return bytes(text)
        self.assertCorruptAt(changed, 1000, "differs")

    def test_download_line_wrapped_as_json_escapes_fails_where_the_first_line_ends(self) -> None:
        # What json.dumps makes of base64.encodebytes(): 76 characters, then the escape \n.
        self.assertCorruptAt(lambda content: base64.encodebytes(content).replace(b"\n", b"\\n"), 76, "escape")

    def test_download_line_wrapped_with_raw_newlines_fails_where_the_first_line_ends(self) -> None:
        self.assertCorruptAt(base64.encodebytes, 76, "differs")

    def test_download_with_escaped_slashes_fails_at_the_first_slash(self) -> None:
        first_slash = stress_base64().index(b"/")
        self.assertCorruptAt(lambda content: base64.b64encode(content).replace(b"/", b"\\/"), first_slash, "escape")

    def test_download_with_truncated_text_fails_where_it_ends(self) -> None:
        size = len(stress_base64())
        self.assertCorruptAt(lambda content: base64.b64encode(content)[:-4], size - 4, "ends")

    def test_download_with_extra_characters_fails_where_the_content_should_end(self) -> None:
        size = len(stress_base64())
        self.assertCorruptAt(lambda content: base64.b64encode(content) + b"AAAA", size, "past")

    def test_download_of_the_exact_text_succeeds(self) -> None:
        """The same fake, sending the canonical text: the failures above are the changes, not the fake."""
        result = self.stress(self.corrupting("none"), "download", "thread")
        self.assertEqual((result["succeed"], result["failed"]), (CLIENTS, 0), result["errors"])

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
        """The read-back of unconfirmed uploads passes when the server kept every byte
        (sent with sendfile, then with the decoding clients)."""
        for client_work in ("verify", "decode"):
            with self.subTest(client_work):
                server = self.corrupting("none", report=False)
                result = self.stress(server, "upload", "process", client_work)
                self.assertEqual((result["succeed"], result["failed"]), (CLIENTS, 0), result["errors"])
                self.assertEqual(len([n for n in server.store if n.startswith("stress-upload")]), 0)


# ---------------------------------------------------------------------- the cheap client's pieces

class CanonicalEncodingTest(unittest.TestCase):

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="loadgen-test-")
        self.addCleanup(tmp.cleanup)
        self.content = os.path.join(tmp.name, "content.bin")

    def write_content(self, data: bytes) -> str:
        with open(self.content, "wb") as f:
            f.write(data)
        return hashlib.sha256(data).hexdigest()

    def assertEncodes(self, data: bytes, sha256: str) -> str:
        encoding = canonical_encoding(self.content, sha256)
        with open(encoding.path, "rb") as f:
            self.assertEqual(f.read(), base64.b64encode(data))
        self.assertEqual((encoding.size, encoding.content_size, encoding.content_sha256),
                         (len(base64.b64encode(data)), len(data), sha256))
        return encoding.path

    def test_built_once_then_rebuilt_whenever_it_does_not_match_its_content(self) -> None:
        data = bytes(range(256)) * 700 + b"\xfb\xff"           # 179,202 bytes: more than one piece, padded
        sha256 = self.write_content(data)
        path = self.assertEncodes(data, sha256)
        built = os.stat(path).st_mtime_ns
        self.assertEncodes(data, sha256)
        self.assertEqual(os.stat(path).st_mtime_ns, built, "a matching encoding was rebuilt")
        with open(path, "r+b") as f:                          # one character changed
            f.seek(5000)
            f.write(b"A" if f.read(1) != b"A" else b"B")
        self.assertEncodes(data, sha256)
        with open(path, "ab") as f:                           # longer than it should be
            f.write(b"AAAA")
        self.assertEncodes(data, sha256)
        other = data[::-1]                                    # the content itself changed
        self.assertEncodes(other, self.write_content(other))
        os.unlink(path + ".sha256")                           # no record of it
        self.assertEncodes(other, hashlib.sha256(other).hexdigest())


class VerifiedReplyTest(unittest.TestCase):
    """The download check fed every way a reply can be cut into receives."""

    DATA = bytes(range(200, 256)) + b"\xfc\xff"            # its base64 has '/' and '+' and ends in '='

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="loadgen-test-")
        self.addCleanup(tmp.cleanup)
        content = os.path.join(tmp.name, "content.bin")
        with open(content, "wb") as f:
            f.write(self.DATA)
        self.encoding = canonical_encoding(content, hashlib.sha256(self.DATA).hexdigest())
        self.expected = open(self.encoding.path, "rb")
        self.addCleanup(self.expected.close)

    def check(self, reply: bytes, pieces: list[bytes]) -> tuple[_VerifiedReply, dict]:
        verified, parser, fields = _VerifiedReply(self.expected.fileno(), self.encoding.size), ReplyParser(), {}
        for piece in pieces:
            self.assertFalse(verified.done)
            buffer = bytearray(piece) + b"~" * 7      # what lies past the received length is never read
            verified.feed(parser, buffer, len(piece), fields)
        self.assertTrue(verified.done, reply)
        return verified, fields

    def every_split(self, reply: bytes):
        """The reply whole, and cut in two and in three at every pair of places."""
        yield [reply]
        for i in range(1, len(reply)):
            for j in range(i, len(reply)):
                yield [piece for piece in (reply[:i], reply[i:j], reply[j:]) if piece]

    def test_the_exact_text_passes_however_it_arrives(self) -> None:
        text = base64.b64encode(self.DATA)
        for key in ("data_file", "data"):
            reply = get_reply(text, key=key)
            for pieces in self.every_split(reply):
                verified, fields = self.check(reply, pieces)
                self.assertEqual(fields["status"], "OK")
                self.assertIsNone(verified.content().error, pieces)
                self.assertEqual(verified.content().key, key)

    def test_a_difference_is_found_at_its_offset_however_it_arrives(self) -> None:
        text = base64.b64encode(self.DATA)
        slash = text.index(b"/")
        cases = [(text[:10] + (b"B" if text[10:11] == b"A" else b"A") + text[11:], 10, "differs"),
                 (text.replace(b"/", b"\\/"), slash, "escape"),
                 (text[:20] + b"\\n" + text[20:], 20, "escape"),
                 (text[:-1], len(text) - 1, "ends"),
                 (text + b"=", len(text), "past")]
        for bad, offset, words in cases:
            reply = get_reply(bad)
            for pieces in self.every_split(reply):
                verified, _ = self.check(reply, pieces)
                error = verified.content().error
                self.assertIsNotNone(error, pieces)
                self.assertRegex(error, rf"offset {offset}\b")
                self.assertIn(words, error)

    def test_an_error_reply_keeps_its_message(self) -> None:
        reply = b'{"status": "ERROR", "data": "file not found: a \\"quoted\\" name"}\r\n\r\n'
        for pieces in self.every_split(reply):
            verified, fields = self.check(reply, pieces)
            self.assertEqual(fields["status"], "ERROR")
            self.assertEqual(verified.message(), 'file not found: a "quoted" name')


if __name__ == "__main__":
    unittest.main()
