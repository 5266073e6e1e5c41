"""Other implementations of the protocol: measured by our harness, and served by our servers.

The foreign servers here are small ones written for these tests, imitating how
other implementations behave on the wire: one request per connection and then
close, a GET's content under ``data``, a bare OK for an upload, no STATS and no
DELETE, a fixed port and no readiness line.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    from .support import sigint_as_at_a_terminal
except ImportError:                     # run as a script from tests/
    from support import sigint_as_at_a_terminal
from fileshare.client import ClientError, FileClient  # noqa: E402
from fileshare.harness import (ForeignServer, ServerProcess, ServerStartError, cmdline,  # noqa: E402
                               descendants, free_port, port_accepts, process_alive, process_group_pids)

TERMINATOR = b"\r\n\r\n"

# One request per connection, answered and closed; content in "data"; a bare OK for
# an upload; LIST; everything else (STATS, DELETE) an ERROR.  Options make it
# announce itself, take a fixed port, keep a child that ignores SIGTERM, or exit
# once after a number of connections (remembered in its folder, so a restart lives).
MINI_SERVER = r'''
import argparse, base64, json, os, signal, socket, subprocess, sys
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--announce", action="store_true")
parser.add_argument("--stubborn-child", action="store_true")
parser.add_argument("--die-after", type=int)
args = parser.parse_args()
store = os.environ.get("FILES_DIR") or "store"
os.makedirs(store, exist_ok=True)
port = args.port if args.port is not None else int(os.environ["SERVER_PORT"])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(64)
if args.stubborn_child:
    subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "time.sleep(120)"])
if args.announce:
    print("starting up", flush=True)
    print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
marker = os.path.join(store, ".died-once")
served = 0
while True:
    if args.die_after is not None and served >= args.die_after and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    conn, _ = listener.accept()
    served += 1
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    parts = buf.split(b"\r\n\r\n")[0].decode().split(" ", 2)
    try:
        if parts[0] == "LIST":
            reply = {"status": "OK", "data": sorted(os.listdir(store))}
        elif parts[0] == "GET":
            with open(os.path.join(store, parts[1]), "rb") as f:
                reply = {"status": "OK", "data": base64.b64encode(f.read()).decode()}
        elif parts[0] == "UPLOAD":
            with open(os.path.join(store, parts[1]), "wb") as f:
                f.write(base64.b64decode(parts[2] if len(parts) > 2 else ""))
            reply = {"status": "OK", "data": "Uploaded"}
        else:
            reply = {"status": "ERROR", "data": "Unknown"}
    except Exception as exc:
        reply = {"status": "ERROR", "data": str(exc)}
    try:
        conn.sendall(json.dumps(reply).encode() + b"\r\n\r\n")
    except OSError:
        pass
    conn.close()
'''


class ForeignTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="foreign-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.script = self.tmp / "mini_server.py"
        self.script.write_text(MINI_SERVER)
        self.root = self.tmp / "root"
        self.root.mkdir()

    def mini(self, *options: str) -> list[str]:
        return [sys.executable, str(self.script), *options]

    def foreign(self, command: list[str], port: int | None = None, workers: int = 3) -> ForeignServer:
        server = ForeignServer("mini", command, self.root, workers, port=port)
        self.addCleanup(server.stop)
        return server


class ForeignServerTest(ForeignTestCase):
    def test_fixed_port_and_no_readiness_line_ready_when_port_accepts(self) -> None:
        port = free_port()
        server = self.foreign(self.mini("--port", str(port), "--stubborn-child"), port=port).start(20)
        self.assertEqual(server.address, ("127.0.0.1", port))
        self.assertEqual(os.readlink(f"/proc/{server.pid}/cwd"), os.path.realpath(server.workdir))
        with open(f"/proc/{server.pid}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        self.assertEqual((environ[b"MAX_WORKERS"], environ[b"SERVER_PORT"], environ[b"FILES_DIR"]),
                         (b"3", str(port).encode(), str(self.root).encode()))
        with FileClient(*server.address, timeout=10) as client:
            self.assertEqual(client.list(), [])
        workdir, pgid = server.workdir, server.pid
        self.assertGreaterEqual(len(process_group_pids(pgid)), 2)      # the child that ignores SIGTERM
        server.stop()
        self.assertEqual(process_group_pids(pgid), [])
        self.assertFalse(os.path.exists(workdir))
        self.assertFalse(port_accepts("127.0.0.1", port))

    def test_readiness_line_gives_the_port(self) -> None:
        # It binds a port of its own choosing, so only its line can tell where it is.
        server = self.foreign(self.mini("--port", "0", "--announce")).start(20)
        with FileClient(*server.address, timeout=10) as client:
            self.assertEqual(client.list(), [])

    def test_a_server_that_never_comes_up_is_a_clear_error(self) -> None:
        server = self.foreign([sys.executable, "-c", "import time; time.sleep(60)"])
        with self.assertRaisesRegex(ServerStartError, r"did not print 'listening on HOST:PORT' nor accept"):
            server.start(1.0)
        self.assertEqual(process_group_pids(server.pid), [])

    def test_a_server_that_exits_says_why(self) -> None:
        server = self.foreign([sys.executable, "-c", "import sys; sys.exit('no such data folder')"])
        with self.assertRaisesRegex(ServerStartError, r"exited with status 1 .*no such data folder"):
            server.start(20)

    def test_a_fixed_port_already_taken_is_refused_before_starting(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            server = self.foreign(self.mini("--port", str(port)), port=port)
            with self.assertRaisesRegex(ServerStartError, "already accepts connections"):
                server.start(5)
            self.assertIsNone(server.proc)


class ClientAgainstForeignTest(ForeignTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.foreign(self.mini("--announce", "--port", "0")).start(20)

    def test_kept_connection_closed_by_the_server_is_reopened_for_safe_requests(self) -> None:
        content = os.urandom(100_000)
        with FileClient(*self.server.address, timeout=10) as client:
            uploaded = client.upload(_file(self.tmp / "a.bin", content), "a.bin")
            self.assertFalse(uploaded.server_confirmed)        # a bare OK: nothing to check it against
            self.assertEqual(client.list(), ["a.bin"])         # same client, the server closed after the upload
            result = client.get("a.bin", self.tmp / "copy.bin")
            self.assertEqual(result.bytes, len(content))
            self.assertEqual((self.tmp / "copy.bin").read_bytes(), content)
            with self.assertRaises(ClientError) as caught:
                client.stats()
            self.assertEqual(caught.exception.kind, "server")

    def test_an_upload_on_a_closed_connection_is_not_repeated(self) -> None:
        with FileClient(*self.server.address, timeout=10) as client:
            client.list()
            with self.assertRaises(ClientError) as caught:
                client.upload(_file(self.tmp / "b.bin", b"x" * 10), "b.bin")
            self.assertEqual(caught.exception.kind, "reset")
        with FileClient(*self.server.address, timeout=10) as client:
            self.assertEqual(client.list(), [])


class StressAgainstForeignTest(ForeignTestCase):
    def stress(self, server: ForeignServer, op: str) -> tuple[dict, str]:
        proc = subprocess.run([sys.executable, str(REPO / "stress_test.py"), "--op", op, "--size-mb", "0.5",
                               "--clients", "3", "--port", str(server.port), "--timeout", "30"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout), proc.stderr

    def test_download_and_upload_without_stats_or_delete(self) -> None:
        server = self.foreign(self.mini("--announce", "--port", "0")).start(20)
        for op in ("download", "upload"):
            with self.subTest(op=op):
                result, stderr = self.stress(server, op)
                self.assertEqual((result["succeed"], result["failed"]), (3, 0), result["errors"])
                self.assertIsNone(result["server_succeeded"])
                self.assertIsNone(result["server_failed"])
                self.assertIn("could not report its request counts", result["notes"][0])
        cleanup = [note for note in result["notes"] if note.startswith("cleanup")]
        self.assertEqual(len(cleanup), 1)
        self.assertIn("could not remove 3 uploaded test file(s)", cleanup[0])
        self.assertEqual(stderr.count("could not remove"), 1)
        self.assertEqual(len([n for n in os.listdir(self.root) if n.startswith("stress-upload-")]), 3)


class ServeTheirClientsTest(unittest.TestCase):
    """--get-key data: a client that knows only 'data' downloads from our servers."""

    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="getkey-test-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        self.content = os.urandom(300_000)
        (self.root / "f.bin").write_bytes(self.content)

    def reply_to_get(self, server: ServerProcess) -> dict:
        # The way such a client reads: one connection, read to the terminator, parse it whole.
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"GET f.bin" + TERMINATOR)
            data = b""
            while TERMINATOR not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.split(TERMINATOR)[0])

    def test_get_key_data_by_flag_and_by_environment(self) -> None:
        for model, extra, env in (("thread", ["--get-key", "data"], None),
                                  ("process", [], dict(os.environ, GET_REPLY_KEY="data"))):
            quiet = [*extra, "--log-level", "WARNING"]
            with self.subTest(model=model), ServerProcess(model, self.root, 2, extra_args=quiet, env=env) as server:
                reply = self.reply_to_get(server)
                self.assertEqual(base64.b64decode(reply["data"]), self.content)
                self.assertEqual(reply["data_namafile"], "f.bin")
                self.assertNotIn("data_file", reply)
                with FileClient(*server.address, timeout=10) as client:     # ours reads either key
                    self.assertEqual(client.get("f.bin", self.root / "copy").bytes, len(self.content))

    def test_default_key_is_data_file(self) -> None:
        with ServerProcess("thread", self.root, 2, extra_args=["--log-level", "WARNING"]) as server:
            reply = self.reply_to_get(server)
        self.assertEqual(base64.b64decode(reply["data_file"]), self.content)
        self.assertNotIn("data", reply)

    def test_an_unknown_key_in_the_environment_is_refused(self) -> None:
        proc = subprocess.run([sys.executable, str(REPO / "file_server_multithreadpool.py"), "--port", "0",
                               "--root", str(self.root)], env=dict(os.environ, GET_REPLY_KEY="content"),
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("GET_REPLY_KEY must be one of data_file, data", proc.stderr)


class ExperimentWithForeignTest(ForeignTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.output = self.tmp / "out" / "results.csv"

    def sweep(self, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "run_experiment.py"), "--output", str(self.output),
                               "--root", str(self.root), "--sizes", "0.5", "--server-workers", "2", "--repeat", "1",
                               *args],
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))

    def rows(self) -> list[dict]:
        with open(self.output, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def cells(self) -> list[dict]:
        with open(self.output.with_suffix(".jsonl"), encoding="utf-8") as f:
            return [r for r in map(json.loads, f) if r["type"] == "cell"]

    def test_foreign_server_beside_ours_fixed_port_no_stats(self) -> None:
        port = free_port()
        proc = self.sweep("--server-command", f"mini=python {self.script.name} --port {port}",
                          "--server-port", str(port), "--models", "thread,mini", "--interleave",
                          "--client-workers", "1,2")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        rows = self.rows()
        self.assertEqual([r["Model concurrency"] for r in rows], ["thread", "mini"] * 4)
        for row in rows:
            self.assertEqual(row["Jumlah client gagal"], "0", row)
            counted = (row["Jumlah server sukses"], row["Jumlah server gagal"])
            self.assertEqual(counted, ("", "") if row["Model concurrency"] == "mini"
                             else (row["Jumlah client worker pool"], "0"))
        self.assertIn("the mini server could not report its request counts", proc.stdout)
        self.assertFalse(port_accepts("127.0.0.1", port))

    def test_a_server_that_never_comes_up_fails_its_cells_and_the_sweep_goes_on(self) -> None:
        proc = self.sweep("--server-command", "never=python -c 'import time; time.sleep(60)'",
                          "--models", "never,thread", "--server-start-timeout", "1", "--client-workers", "1",
                          "--ops", "download")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        never, thread = self.rows()
        self.assertEqual((never["Jumlah client sukses"], never["Jumlah client gagal"]), ("0", "1"))
        self.assertEqual((thread["Jumlah client sukses"], thread["Jumlah client gagal"]), ("1", "0"))
        reason = self.cells()[0]["result"]["errors"]["other"]["example"]
        self.assertIn("the server did not start", reason)
        self.assertIn("never server did not print 'listening on HOST:PORT'", proc.stderr)

    def test_a_server_that_dies_mid_sweep_is_replaced(self) -> None:
        # Preparing a download costs it 3 connections (GET, UPLOAD, STATS): it dies before the client's GET.
        proc = self.sweep("--server-command", f"mini=python {self.script.name} --die-after 3", "--models", "mini",
                          "--client-workers", "1,2", "--ops", "download")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        first, second = self.rows()
        self.assertEqual(first["Jumlah client gagal"], "1")
        self.assertEqual((second["Jumlah client sukses"], second["Jumlah client gagal"]), ("2", "0"))
        self.assertIn("the server died during this cell", self.cells()[0]["result"]["notes"])
        self.assertIn("the mini server died during", proc.stderr)

    def test_resume_skips_the_foreign_cells_already_done(self) -> None:
        command = ["--server-command", f"mini=python {self.script.name} --announce", "--ops", "download"]
        first = self.sweep(*command, "--client-workers", "1")
        self.assertEqual(first.returncode, 0, first.stderr)
        again = self.sweep(*command, "--client-workers", "1,2", "--resume")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual([(r["Nomor"], r["Model concurrency"], r["Jumlah client worker pool"]) for r in self.rows()],
                         [("1", "thread", "1"), ("2", "process", "1"), ("3", "mini", "1"),
                          ("4", "thread", "2"), ("5", "process", "2"), ("6", "mini", "2")])

    def test_ctrl_c_stops_the_foreign_server_and_its_whole_group(self) -> None:
        proc = subprocess.Popen([sys.executable, str(REPO / "run_experiment.py"), "--output", str(self.output),
                                 "--root", str(self.root), "--server-workers", "2", "--models", "mini",
                                 "--server-command", f"mini=python {self.script.name} --announce --stubborn-child",
                                 "--sizes", "0.25,0.5,1,2", "--client-workers", "1,2", "--repeat", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(self.tmp),
                                start_new_session=True, preexec_fn=sigint_as_at_a_terminal)
        self.addCleanup(lambda: proc.poll() is None and (os.killpg(proc.pid, signal.SIGKILL), proc.wait(10)))
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (self.output.exists() and len(self.rows()) >= 1):
            seen |= descendants(proc.pid)
            time.sleep(0.02)
        seen |= descendants(proc.pid)
        self.assertTrue(any(self.script.name in cmdline(pid) for pid in seen), "no mini server seen")
        self.assertTrue(any("signal.SIG_IGN" in cmdline(pid) for pid in seen), "no stubborn child seen")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(60), 130)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(process_alive(pid) for pid in seen):
            time.sleep(0.05)
        self.assertEqual([pid for pid in seen if process_alive(pid)], [], "processes outlived the sweep")

    def test_attach_to_a_running_server_leaves_it_running(self) -> None:
        with ServerProcess("thread", self.tmp / "attached", 3, extra_args=["--log-level", "WARNING"]) as server:
            proc = self.sweep("--attach", f"127.0.0.1:{server.port}", "--models", "theirs",
                              "--server-workers", "7", "--client-workers", "2")
            self.assertTrue(server.alive())      # nothing was stopped there
        self.assertEqual(proc.returncode, 0, proc.stderr)
        rows = self.rows()
        self.assertEqual([(r["Model concurrency"], r["Operasi"], r["Jumlah server worker pool"]) for r in rows],
                         [("theirs", "download", "7"), ("theirs", "upload", "7")])
        for row in rows:
            self.assertEqual((row["Jumlah client sukses"], row["Jumlah server sukses"]), ("2", "2"), row)

    def test_attach_to_a_server_that_dies_stops_the_sweep_and_resume_runs_the_rest(self) -> None:
        args = ["--models", "theirs", "--server-workers", "3", "--ops", "download", "--sizes", "0.25,0.5,1",
                "--client-workers", "1,2"]
        server = ServerProcess("thread", self.tmp / "attached", 3, extra_args=["--log-level", "WARNING"]).start()
        self.addCleanup(server.stop)
        proc = subprocess.Popen([sys.executable, str(REPO / "run_experiment.py"), "--output", str(self.output),
                                 "--root", str(self.root), "--repeat", "1", "--attach", f"127.0.0.1:{server.port}",
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(self.tmp), start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and (os.killpg(proc.pid, signal.SIGKILL), proc.wait(10)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (self.output.exists() and len(self.rows()) >= 1):
            time.sleep(0.02)
        server.stop()
        out, err = proc.communicate(timeout=60)
        self.assertNotEqual(proc.returncode, 0, err)
        self.assertIn("does not accept connections", err.replace("stopped accepting connections",
                                                                "does not accept connections"))
        self.assertIn("--resume", err)
        rows = self.rows()
        self.assertGreaterEqual(len(rows), 1)
        self.assertLess(len(rows), 6)
        self.assertEqual([r["Jumlah client gagal"] for r in rows], ["0"] * len(rows), "a cell with no server "
                         "was recorded as measured")
        with ServerProcess("thread", self.tmp / "attached", 3, extra_args=["--log-level", "WARNING"]) as again:
            resumed = self.sweep("--attach", f"127.0.0.1:{again.port}", *args, "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        rows = self.rows()
        self.assertEqual(len(rows), 6)
        self.assertEqual([r["Jumlah client gagal"] for r in rows], ["0"] * 6)

    def test_attach_and_model_names_are_checked(self) -> None:
        for args, message in ((["--attach", "127.0.0.1:6667"], "--attach measures one server"),
                              (["--models", "nobody"], "unknown model 'nobody'"),
                              (["--server-command", "thread=python x.py"], "one of our own models"),
                              (["--server-command", "noname"], "invalid NAME=COMMAND value")):
            with self.subTest(args=args):
                proc = self.sweep(*args, timeout=30)
                self.assertEqual(proc.returncode, 2)
                self.assertIn(message, proc.stderr)
                self.assertFalse(self.output.exists())


def _file(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


if __name__ == "__main__":
    unittest.main()
