"""The conformance checker: each small server here breaks one requirement and the right case catches it.

The servers are written here, in-process (a thread per connection, files in a
dict), so a check of a few cases takes well under a second; the checker
reaches them as it reaches any server already running (``--attach``).  Our own
two servers are checked on a subset of cases through run_experiment.py, which
starts and stops them as the sweep does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fileshare.conformance import (CASES, REQUIREMENTS, Case, Implementation, Outcome,  # noqa: E402
                                   check, run_case, select)
from fileshare.conformance.model import Verdict, breach, summary_counts  # noqa: E402
from fileshare.conformance.wire import Probe  # noqa: E402
from fileshare.harness import AttachedServer  # noqa: E402

TERMINATOR = b"\r\n\r\n"
CASE_TIMEOUT = 1.0
STRICT_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class FakeServer(socketserver.ThreadingTCPServer):
    """A keep-alive server of the protocol, correct on the cases used here unless ``defect`` says otherwise.

    Defects: escape (takes names with '/' or '..'), corrupt-get (one byte of every GET
    flipped), lenient-base64 (decodes what is not base64), one-per-connection (closes
    after each reply), silent (never answers), no-terminator (replies without CR LF CR LF),
    data-key (GET content under "data"), trickle (a reply byte every 50 ms, forever).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, defect: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.defect = defect
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)

    def _name_ok(self, name: str) -> bool:
        return self.defect == "escape" or bool(name) and "/" not in name and name not in (".", "..")

    def answer(self, request: bytes) -> dict:
        try:
            command, _, rest = request.decode("utf-8").partition(" ")
        except UnicodeDecodeError:
            return {"status": "ERROR", "data": "not UTF-8"}
        with self.lock:
            if command == "LIST":
                return {"status": "OK", "data": sorted(self.files)}
            if command in ("GET", "DELETE"):
                if not self._name_ok(rest) or rest not in self.files:
                    return {"status": "ERROR", "data": f"no file {rest!r}"}
                if command == "DELETE":
                    del self.files[rest]
                    return {"status": "OK", "data": "deleted"}
                content = bytearray(self.files[rest])
                if self.defect == "corrupt-get" and content:
                    content[len(content) // 2] ^= 0x01
                key = "data" if self.defect == "data-key" else "data_file"
                return {"status": "OK", "data_namafile": rest, key: base64.b64encode(content).decode()}
            if command == "UPLOAD":
                name, _, text = rest.partition(" ")
                if not self._name_ok(name):
                    return {"status": "ERROR", "data": "bad name"}
                if self.defect != "lenient-base64" and not STRICT_BASE64.fullmatch(text):
                    return {"status": "ERROR", "data": "bad base64"}
                try:
                    content = base64.b64decode(text)
                except (binascii.Error, ValueError):
                    return {"status": "ERROR", "data": "bad base64"}
                self.files[name] = content
                return {"status": "OK", "data": f"{name} uploaded"}
        return {"status": "ERROR", "data": f"unknown command {command!r}"}


class _FakeHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: FakeServer = self.server        # type: ignore[assignment]
        sock = self.request
        sock.settimeout(30)
        buffer = b""
        try:
            while True:
                while TERMINATOR not in buffer:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        return
                    buffer += chunk
                request, _, buffer = buffer.partition(TERMINATOR)
                if server.defect == "silent":
                    continue
                reply = json.dumps(server.answer(request)).encode() + TERMINATOR
                if server.defect == "no-terminator":
                    reply = reply[:-len(TERMINATOR)]
                if server.defect == "trickle":
                    for index in range(len(reply) * 100):       # bounded: ends when the checker hangs up
                        sock.sendall(reply[index % len(reply):][:1])
                        time.sleep(0.05)
                    return
                sock.sendall(reply)
                if server.defect == "one-per-connection":
                    return
        except OSError:
            return


class FakeServerTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="conformance-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def fake(self, defect: str = "") -> FakeServer:
        server = FakeServer(defect)
        self.addCleanup(server.close)
        return server

    def outcomes(self, server: FakeServer, patterns: str) -> dict[str, object]:
        impl = Implementation("fake", "in-process", lambda root: AttachedServer("fake", "127.0.0.1", server.port, 2),
                              workers=2)
        base = self.tmp / f"run-{len(list(self.tmp.iterdir()))}"
        base.mkdir()
        run = check(impl, select(CASES, patterns), CASE_TIMEOUT, 5.0, base)
        return run.results


class BreachesCaughtTest(FakeServerTestCase):
    """Each defect flips the case that checks its requirement, to the outcome its level calls for."""

    CASES = "1.2.1,2.1.1,2.3.1,3.1.1,4.2.1,4.2.5,6.1.1,6.2.1"

    def test_the_correct_fake_passes_the_cases_used_here(self) -> None:
        results = self.outcomes(self.fake(), self.CASES)
        self.assertEqual({cid: r.outcome for cid, r in results.items()},
                         {cid: Outcome.OK for cid in self.CASES.split(",")},
                         {cid: r.actual for cid, r in results.items()})

    def assert_caught(self, defect: str, patterns: str, expected: dict[str, Outcome]) -> dict:
        results = self.outcomes(self.fake(defect), patterns)
        self.assertEqual({cid: results[cid].outcome for cid in expected}, expected,
                         {cid: results[cid].actual for cid in expected})
        for cid in expected:
            if expected[cid] is not Outcome.OK:
                self.assertTrue(results[cid].expected and results[cid].actual, results[cid])
        return results

    def test_a_name_outside_the_folder_accepted(self) -> None:
        results = self.assert_caught("escape", "3.1.1", {"3.1.1": Outcome.FAILED})
        self.assertEqual(results["3.1.1"].requirement, "3.1")

    def test_one_corrupt_byte_in_a_get(self) -> None:
        results = self.assert_caught("corrupt-get", "6.1.1", {"6.1.1": Outcome.FAILED})
        self.assertIn("first difference at byte 5000", results["6.1.1"].actual)

    def test_invalid_base64_accepted(self) -> None:
        results = self.assert_caught("lenient-base64", "4.2.1,4.2.5",
                                     {"4.2.1": Outcome.FAILED, "4.2.5": Outcome.FAILED})
        self.assertEqual(results["4.2.5"].requirement, "4.2")

    def test_closing_after_one_request_is_the_variant_not_a_failure(self) -> None:
        results = self.assert_caught("one-per-connection", "2.1.1,2.3.1,6.1.1",
                                     {"2.1.1": Outcome.NON_STRICT, "2.3.1": Outcome.NON_STRICT, "6.1.1": Outcome.OK})
        self.assertIn("one request per connection", results["2.1.1"].actual)

    def test_a_server_that_never_answers_fails_in_bounded_time(self) -> None:
        results = self.assert_caught("silent", "5.1.1", {"5.1.1": Outcome.FAILED})
        self.assertIn(f"no reply within {CASE_TIMEOUT:g} s", results["5.1.1"].actual)

    def test_a_reply_without_its_terminator(self) -> None:
        results = self.assert_caught("no-terminator", "1.2.1", {"1.2.1": Outcome.FAILED})
        self.assertIn("without the CR LF CR LF terminator", results["1.2.1"].actual)

    def test_content_under_data_is_non_strict_and_still_verified(self) -> None:
        results = self.assert_caught("data-key", "6.1.1,6.2.1", {"6.1.1": Outcome.OK, "6.2.1": Outcome.NON_STRICT})
        self.assertIn("content under data (a variant)", results["6.2.1"].actual)

    def test_a_reply_trickling_forever_ends_with_the_case_budget(self) -> None:
        server = self.fake("trickle")
        case = Case("5.1.1", "LIST within a budget of one second", lambda p: p.names() and None, budget=1.0)
        probe = Probe(("127.0.0.1", server.port), CASE_TIMEOUT, case.budget, case_id=case.id)
        result = run_case(case, probe)
        self.assertEqual(result.outcome, Outcome.FAILED)
        self.assertIn("time is up", result.actual)


class ModelTest(unittest.TestCase):
    def test_outcome_follows_the_level_of_the_requirement(self) -> None:
        self.assertEqual(breach("6.1", "e", "a").outcome, Outcome.FAILED)
        self.assertEqual(breach("6.2", "e", "a").outcome, Outcome.NON_STRICT)
        self.assertEqual(breach("7.4", "e", "a").outcome, Outcome.INFORMATIONAL)
        with self.assertRaises(ValueError):
            Verdict("99.9", "e", "a")

    def test_selection_by_pattern(self) -> None:
        ids = [c.id for c in select(CASES, "3.*")]
        self.assertTrue(ids and all(i.startswith("3.") for i in ids))
        self.assertEqual([c.id for c in select(CASES, "6.1,7.1.3")], ["6.1.1", "7.1.3"])
        self.assertEqual(select(CASES, "42.*"), [])
        self.assertLess([c.id for c in select(CASES, None)].index("2.5.2"),
                        [c.id for c in select(CASES, None)].index("10.1.1"))

    def test_ids_are_unique_and_cite_a_requirement(self) -> None:
        ids = [c.id for c in CASES]
        self.assertEqual(len(ids), len(set(ids)))
        for case in CASES:
            self.assertIn(case.requirement, REQUIREMENTS, case.id)
        self.assertEqual(summary_counts([])["FAILED"], 0)

    def test_the_specification_states_every_requirement_at_its_level(self) -> None:
        text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
        stated = dict(re.findall(r"^- \*\*(\d+\.\d+) (MUST|SHOULD|MAY)\.\*\*", text, re.MULTILINE))
        self.assertEqual(stated, {number: level for number, (level, _) in REQUIREMENTS.items()})


class CommandLineTest(FakeServerTestCase):
    def conformance(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "run_experiment.py"), "--conformance",
                               "--case-timeout", str(CASE_TIMEOUT), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))

    def test_exit_status_json_and_markdown(self) -> None:
        good, bad = self.fake(), self.fake("corrupt-get")
        for server, status in ((good, 0), (bad, 1)):
            with self.subTest(defect=server.defect):
                out = self.tmp / f"out-{status}" / "report.md"
                proc = self.conformance("--attach", f"127.0.0.1:{server.port}", "--models", "theirs",
                                        "--cases", "5.1.1,6.1.1,8.2.1,9.2.1", "--output", str(out))
                self.assertEqual(proc.returncode, status, proc.stderr)
                record = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
                self.assertEqual([c["id"] for c in record["cases"]], ["5.1.1", "6.1.1", "8.2.1", "9.2.1"])
                theirs = record["implementations"]["theirs"]
                self.assertEqual(set(theirs["cases"]["6.1.1"]),
                                 {"outcome", "requirement", "level", "expected", "actual", "duration_s"})
                self.assertEqual(theirs["cases"]["8.2.1"]["outcome"], "OK")
                self.assertEqual(theirs["cases"]["9.2.1"]["outcome"], "UNIMPLEMENTED")
                self.assertEqual(theirs["summary"]["FAILED"], status)
                markdown = out.read_text(encoding="utf-8")
                self.assertIn("| case | requirement | theirs |", markdown)
                self.assertIn("### 9. STATS", markdown)
                self.assertIn("| 9.2.1 STATS answers OK with succeeded, failed and connections | 9.2 MUST | "
                              "UNIMPLEMENTED |", markdown)
                self.assertIn("**9.2.1** STATS answers OK with succeeded, failed and connections: UNIMPLEMENTED",
                              markdown)
                self.assertIn(f"theirs: 4 cases: {4 - 1 - status} OK, 0 NON-STRICT, {status} FAILED",
                              proc.stdout)
        self.assertIn("| 6.1.1 GET of a present file brings its exact bytes | 6.1 MUST | **FAILED** |", markdown)
        self.assertIn("- actual: 10000 bytes, first difference at byte 5000", markdown)
        self.assertIn("FAILED: 6.1.1", proc.stdout)

    def test_our_servers_pass_a_subset(self) -> None:
        proc = self.conformance("--models", "thread,process", "--cases", "1.3.2,2.3,3.1,4.2.5,7.6.1,10.3.2")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        summary = [line for line in proc.stdout.splitlines() if "cases:" in line]
        self.assertEqual(summary, [f"{model}: 11 cases: 11 OK, 0 NON-STRICT, 0 FAILED, 0 INFORMATIONAL, "
                                   f"0 UNIMPLEMENTED" + line[line.index(" ("):] for model, line in
                                   zip(("thread", "process"), summary)])
        self.assertTrue((self.tmp / "conformance.json").exists() and (self.tmp / "conformance.md").exists())

    def test_list_cases_and_a_selection_of_nothing(self) -> None:
        proc = subprocess.run([sys.executable, str(REPO / "run_experiment.py"), "--list-cases", "--cases", "4.2"],
                              capture_output=True, text=True, timeout=30, cwd=str(self.tmp))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual([line.split()[0] for line in proc.stdout.splitlines()],
                         [f"4.2.{n}" for n in range(1, 7)])
        proc = self.conformance("--cases", "42.*")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("selects no case", proc.stderr)
        self.assertFalse((self.tmp / "conformance.json").exists())


if __name__ == "__main__":
    unittest.main()
