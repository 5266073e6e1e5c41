"""run_experiment.py end to end: real servers, real stress tests, real files."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fileshare.harness import cmdline, descendants, process_alive as alive  # noqa: E402
from run_experiment import CSV_COLUMNS, NARROWED_OUTPUT  # noqa: E402
try:
    from .support import sigint_as_at_a_terminal
except ImportError:                     # run as a script from tests/
    from support import sigint_as_at_a_terminal

SCRIPT = str(REPO / "run_experiment.py")


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


class ExperimentTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="experiment-test-"))
        self.output = self.tmp / "results.csv"
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.tmp)], check=False))

    def run_sweep(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A sweep with one run per cell unless ``args`` ask for more (a test needs no interval)."""
        repeat = [] if "--repeat" in args else ["--repeat", "1"]
        return subprocess.run([sys.executable, SCRIPT, "--output", str(self.output), *repeat, *args],
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))

    def run_tool(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """run_experiment.py with exactly ``args`` (no --output), in the test's folder."""
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.tmp))

    def start_sweep(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, SCRIPT, "--output", str(self.output), "--repeat", "1", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(self.tmp),
                                start_new_session=True, preexec_fn=sigint_as_at_a_terminal)

        def cleanup() -> None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        self.addCleanup(cleanup)
        return proc

    def wait_for_rows(self, proc: subprocess.Popen, count: int, seen: set[int], limit: float = 60) -> None:
        """Wait until the CSV has ``count`` data rows, noting every process below the sweep meanwhile."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            seen |= descendants(proc.pid)
            if self.output.exists() and len(read_csv(self.output)) - 1 >= count:
                return
            if proc.poll() is not None:
                self.fail(f"sweep ended early: {proc.stderr.read()}")
            time.sleep(0.02)
        self.fail(f"no {count} rows within {limit} s")

    def test_small_sweep_writes_measured_rows_jsonl_and_chart(self) -> None:
        done = self.run_sweep("--server-workers", "2", "--sizes", "0.25", "--client-workers", "1,3")
        self.assertEqual(done.returncode, 0, done.stderr)
        rows = read_csv(self.output)
        self.assertEqual(rows[0], CSV_COLUMNS)
        body = rows[1:]
        self.assertEqual(len(body), 8)   # 2 models x 1 pool x 2 ops x 1 size x 2 client counts
        self.assertEqual([r[0] for r in body], [str(i) for i in range(1, 9)])
        # Cell by cell, each on both models (the servers of one pool size run side by side).
        expected_order = [(m, o, c) for o in ("download", "upload") for c in ("1", "3") for m in ("thread", "process")]
        self.assertEqual([(r[1], r[2], r[4]) for r in body], expected_order)
        for row in body:
            self.assertEqual(row[3], "0.25 MB")
            self.assertEqual(row[5], "2")
            clients = int(row[4])
            self.assertEqual(row[8:10], [str(clients), "0"], row)           # every client succeeded
            self.assertEqual(row[10:12], [str(clients), "0"], row)          # the server counted each request
            self.assertGreater(float(row[6]), 0)
            self.assertGreater(float(row[7]), 0)
        lines = [json.loads(line) for line in self.output.with_suffix(".jsonl").read_text().splitlines()]
        self.assertEqual(lines[0]["type"], "environment")
        self.assertEqual(lines[0]["cpu_count"], os.cpu_count())
        cells = [line for line in lines if line["type"] == "cell"]
        self.assertEqual(len(cells), 8)
        self.assertEqual(cells[-1]["result"]["succeed"], 3)
        self.assertEqual(len(cells[-1]["samples"]), 1)
        # Every run's cores are those over its timed transfer, the server's (and the idle one's) included;
        # the window around the whole stress test is kept beside them.
        for cell in cells:
            for sample in cell["samples"]:
                usage, whole = sample["usage"], sample["usage_whole_run"]
                self.assertEqual((usage["over"], whole["over"]), ("transfer", "stress_test"), cell["model"])
                self.assertIsNotNone(usage["server_cores"])
                self.assertIsNotNone(usage["other_cores"])
                self.assertIn("idle_servers_cores", usage)
                self.assertLess(usage["window_s"], whole["window_s"])
        # The cheap verifying clients by default, recorded in every cell.
        self.assertEqual({(c["client_work"], c["result"]["client_work"]) for c in cells}, {("verify", "verify")})
        self.assertIn("<svg", self.output.with_suffix(".svg").read_text())
        self.assertIn("thread MB/s", done.stdout)
        self.assertEqual(done.stderr.count("ETA"), 4)                    # one progress line per cell

    def test_client_work_decode_reaches_every_stress_test(self) -> None:
        done = self.run_sweep("--models", "process", "--server-workers", "2", "--sizes", "0.25",
                              "--client-workers", "2", "--client-work", "decode")
        self.assertEqual(done.returncode, 0, done.stderr)
        cells = [json.loads(line) for line in self.output.with_suffix(".jsonl").read_text().splitlines()][1:]
        self.assertEqual([(c["op"], c["client_work"], c["result"]["client_work"], c["result"]["succeed"])
                          for c in cells], [("download", "decode", "decode", 2), ("upload", "decode", "decode", 2)])

    def test_resume_runs_only_missing_cells(self) -> None:
        first = self.run_sweep("--models", "thread", "--server-workers", "2", "--ops", "download",
                               "--sizes", "0.25", "--client-workers", "1")
        self.assertEqual(first.returncode, 0, first.stderr)
        before = read_csv(self.output)
        again = self.run_sweep("--models", "thread", "--server-workers", "2", "--ops", "download",
                               "--sizes", "0.25,0.5", "--client-workers", "1", "--resume")
        self.assertEqual(again.returncode, 0, again.stderr)
        after = read_csv(self.output)
        self.assertEqual(after[:2], before)                       # the old row is kept as it was
        self.assertEqual(len(after), 3)
        self.assertEqual(after[2][0], "2")                        # numbering continues
        self.assertEqual(after[2][3], "0.5 MB")
        self.assertEqual(again.stderr.count("ETA"), 1)            # only the missing cell ran

    def _resume_after(self, damage) -> tuple[list[list[str]], subprocess.CompletedProcess]:
        """A one-cell sweep, ``damage`` done to its files, then --resume of a two-cell sweep."""
        cells = ("--models", "thread", "--server-workers", "2", "--ops", "download", "--client-workers", "1")
        first = self.run_sweep(*cells, "--sizes", "0.25")
        self.assertEqual(first.returncode, 0, first.stderr)
        before = read_csv(self.output)
        damage(self.output, self.output.with_suffix(".jsonl"))
        again = self.run_sweep(*cells, "--sizes", "0.25,0.5", "--resume")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertNotIn("Traceback", again.stderr)
        after = read_csv(self.output)
        self.assertEqual(after[:2], before)                       # the finished row is kept as it was
        self.assertEqual([len(row) for row in after], [len(CSV_COLUMNS)] * 3)
        for line in self.output.with_suffix(".jsonl").read_text().splitlines():
            json.loads(line)                                      # every line whole
        self.assertTrue(self.output.with_suffix(".md").exists())
        report = self.run_tool("--report", str(self.output.with_suffix(".jsonl")))
        self.assertEqual(report.returncode, 0, report.stderr)
        return after, again

    def test_resume_after_files_that_lack_their_last_newline(self) -> None:
        def strip_newline(csv_path: Path, jsonl: Path) -> None:
            for path in (csv_path, jsonl):
                path.write_bytes(path.read_bytes().rstrip(b"\n"))
        after, _ = self._resume_after(strip_newline)
        self.assertEqual(after[2][3], "0.5 MB")

    def test_resume_after_a_cut_json_line(self) -> None:
        def cut(csv_path: Path, jsonl: Path) -> None:
            last = jsonl.read_text().splitlines()[-1]
            with open(jsonl, "a") as f:
                f.write(last[:len(last) // 2].replace('"row": 1', '"row": 2'))     # half a record, no newline
        after, again = self._resume_after(cut)
        self.assertIn("cut short", again.stderr)
        self.assertEqual([row[3] for row in after[1:]], ["0.25 MB", "0.5 MB"])

    def test_resume_refuses_a_damaged_file_with_the_documented_status(self) -> None:
        # README: exit status 2 for an unreadable file. A line damaged before the end is refused, not repaired.
        self.output.write_text(",".join(CSV_COLUMNS) + "\n1,thread,download,1 MB,1,2,0.0050,200000000,1,0,1,0\n")
        self.output.with_suffix(".jsonl").write_text('{"type": "environment"}\n{"type": "cell", "mod\n{}\n')
        before = (self.output.read_bytes(), self.output.with_suffix(".jsonl").read_bytes())
        again = self.run_sweep("--models", "thread", "--server-workers", "2", "--ops", "download", "--sizes", "1",
                               "--client-workers", "1,2", "--resume")
        self.assertEqual(again.returncode, 2, again.stderr)
        self.assertIn("line 2 is not a record", again.stderr)
        self.assertNotIn("Traceback", again.stderr)
        self.assertEqual((self.output.read_bytes(), self.output.with_suffix(".jsonl").read_bytes()), before)

    def test_resume_refuses_rows_made_by_other_clients(self) -> None:
        first = self.run_sweep("--models", "thread", "--server-workers", "2", "--ops", "download",
                               "--sizes", "0.25", "--client-workers", "1")
        self.assertEqual(first.returncode, 0, first.stderr)
        before = read_csv(self.output)
        again = self.run_sweep("--models", "thread", "--server-workers", "2", "--ops", "download",
                               "--sizes", "0.25,0.5", "--client-workers", "1", "--resume", "--client-work", "decode")
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("--client-work verify", again.stderr)
        self.assertEqual(read_csv(self.output), before)

    def test_ctrl_c_keeps_rows_and_leaves_no_process(self) -> None:
        proc = self.start_sweep("--models", "thread,process", "--server-workers", "2", "--ops", "download,upload",
                                "--sizes", "0.25,0.5,1", "--client-workers", "1,2")
        seen: set[int] = set()
        self.wait_for_rows(proc, 2, seen)
        seen |= descendants(proc.pid)
        self.assertTrue(any("file_server_" in cmdline(pid) for pid in seen), "no server seen under the sweep")
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        self.assertEqual(proc.returncode, 130)
        rows = read_csv(self.output)
        self.assertGreaterEqual(len(rows) - 1, 2)
        self.assertLess(len(rows) - 1, 24)
        for row in rows[1:]:
            self.assertEqual(len(row), len(CSV_COLUMNS))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in seen):
            time.sleep(0.05)
        self.assertEqual([pid for pid in seen if alive(pid)], [], "processes outlived the sweep")

    def test_a_second_ctrl_c_while_servers_stop_leaves_none_running(self) -> None:
        # The first Ctrl-C stops the servers one by one; a second one (an impatient person, a repeated
        # SIGTERM) arriving while the first server stops must not leave the others running.
        import argparse
        from fileshare.harness import ServerProcess
        from fileshare.sweep import RepeatPolicy, Sweep

        class InterruptedWhileStopping(ServerProcess):
            def stop(self, timeout: float = 20.0) -> int | None:
                raise KeyboardInterrupt

        args = argparse.Namespace(output=str(self.output), client_pool_type="thread", client_work="verify")
        sweep = Sweep(args, [], ["thread", "process"], str(self.tmp), {}, RepeatPolicy())
        first = InterruptedWhileStopping("thread", self.tmp, 1, extra_args=["--log-level", "WARNING"])
        second = ServerProcess("process", self.tmp, 1, extra_args=["--log-level", "WARNING"])
        for model, server in (("thread", first), ("process", second)):
            self.addCleanup(ServerProcess.stop, server)
            sweep.servers[model] = server
            server.start()
        with self.assertRaises(KeyboardInterrupt):
            sweep._stop_servers()
        for server in (first, second):
            try:
                server.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.fail(f"the {server.model} server outlived the interrupted sweep")

    def test_server_killed_mid_sweep_is_replaced(self) -> None:
        proc = self.start_sweep("--models", "thread", "--server-workers", "2", "--ops", "download",
                                "--sizes", "0.25,0.5,1", "--client-workers", "1,2,3")
        seen: set[int] = set()
        self.wait_for_rows(proc, 1, seen)
        servers = [pid for pid in descendants(proc.pid) if "file_server_multithreadpool" in cmdline(pid)]
        self.assertEqual(len(servers), 1)
        os.kill(servers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 0, err)
        rows = read_csv(self.output)[1:]
        self.assertEqual(len(rows), 9)
        self.assertEqual(rows[-1][8:12], ["3", "0", "3", "0"], "the replacement server did not serve")
        self.assertIn("server", err)

    def test_quick_and_narrowed_sweeps_leave_the_committed_results_alone(self) -> None:
        committed = {}
        for name in ("results.csv", "results.jsonl", "results.svg", "results.md"):
            (self.tmp / name).write_text(f"the real run's {name}\n")
            committed[name] = (self.tmp / name).read_text()
        quick = self.run_tool("--quick", "--repeat", "1")
        self.assertEqual(quick.returncode, 0, quick.stderr)
        self.assertEqual(len(read_csv(self.tmp / NARROWED_OUTPUT)) - 1, 8)
        narrowed = self.run_tool("--models", "thread", "--server-workers", "1", "--ops", "download",
                                 "--sizes", "0.25", "--client-workers", "1", "--repeat", "1")
        self.assertEqual(narrowed.returncode, 0, narrowed.stderr)
        self.assertEqual(len(read_csv(self.tmp / NARROWED_OUTPUT)) - 1, 1)
        for suffix in (".jsonl", ".svg", ".md"):
            self.assertTrue((self.tmp / NARROWED_OUTPUT).with_suffix(suffix).exists(), suffix)
        self.assertEqual({name: (self.tmp / name).read_text() for name in committed}, committed)

    def test_python_runs_servers_and_stress_tests_and_is_recorded(self) -> None:
        calls = self.tmp / "calls.log"
        wrapper = self.tmp / "python-wrapper"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)
        done = self.run_sweep("--models", "thread,process", "--server-workers", "1", "--ops", "upload",
                              "--sizes", "0.25", "--client-workers", "2", "--python", str(wrapper))
        self.assertEqual(done.returncode, 0, done.stderr)
        log = calls.read_text()
        for script in ("file_server_multithreadpool.py", "file_server_multiprocesspool.py", "stress_test.py"):
            self.assertIn(script, log)
        rows = read_csv(self.output)[1:]
        self.assertEqual([r[8:12] for r in rows], [["2", "0", "2", "0"]] * 2)
        env = json.loads(self.output.with_suffix(".jsonl").read_text().splitlines()[0])
        self.assertEqual(env["type"], "environment")
        self.assertEqual(env["python"], platform.python_version())
        self.assertEqual(env["implementation"], platform.python_implementation())
        self.assertEqual(env["executable"], sys.executable)     # asked of the interpreter, not the wrapper's name
        self.assertEqual(env["free_threaded"], bool(sysconfig.get_config_var("Py_GIL_DISABLED")))
        self.assertEqual(env["gil_enabled"], sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True)
        start, end = (datetime.datetime.fromisoformat(env[k]) for k in ("start", "end"))
        self.assertLessEqual(start, end)
        self.assertGreater(env["duration_s"], 0)
        self.assertLessEqual(env["duration_s"], (end - start).total_seconds() + 1)
        self.assertTrue(env["completed"])

    def test_python_that_cannot_serve_is_refused_with_one_line(self) -> None:
        old = self.tmp / "python3.10"
        old.write_text('#!/bin/sh\necho \'{"version_info": [3, 10, 12], "python": "3.10.12"}\'\n')
        old.chmod(0o755)
        for path, says in ((old, "is Python 3.10.12; the servers need 3.11 or newer"),
                           ("/bin/true", "is not a Python interpreter"),
                           (str(self.tmp / "missing"), "cannot run")):
            done = self.run_sweep("--quick", "--python", str(path))
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn(says, done.stderr)
            self.assertFalse(self.output.exists())


if __name__ == "__main__":
    unittest.main()
