"""run_experiment.py --report / --compare and the charts, on small JSON Lines files made here (no servers)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fileshare.chart import write_chart  # noqa: E402
from fileshare.report import CSV_COLUMNS, load_run  # noqa: E402
from run_experiment import DEFAULTS, NARROWED_OUTPUT, output_for  # noqa: E402

SCRIPT = str(REPO / "run_experiment.py")
SVG = "{http://www.w3.org/2000/svg}"


def cell(row: int, model: str, workers: int, op: str, size_mb: float, clients: int, total_mbps: float,
         failed: int = 0) -> dict:
    """A cell record as a sweep writes it, with the aggregate throughput ``total_mbps``."""
    ok = clients - failed
    seconds = size_mb * 1.048576 * ok / total_mbps if ok else None
    result = {"op": op, "size_mb": size_mb, "clients": clients, "pool": "thread", "succeed": ok, "failed": failed,
              "total_time_s": seconds, "throughput_Bps": total_mbps * 1e6 / max(ok, 1) if ok else None,
              "wall_time_s": seconds, "aggregate_throughput_Bps": total_mbps * 1e6 if ok else None,
              "latency_s": {"min": seconds, "p50": seconds, "p90": seconds, "p99": seconds, "max": seconds},
              "errors": {"reset": {"count": failed, "example": "reset"}} if failed else {},
              "server_succeeded": ok, "server_failed": 0}
    return {"type": "cell", "row": row, "model": model, "server_workers": workers, "op": op, "size_mb": size_mb,
            "clients": clients, "client_pool": "thread", "result": result, "samples": [result]}


ENVIRONMENT = {"type": "environment", "python": "3.14.0", "implementation": "CPython", "executable": "/opt/py/bin/python3.14t",
               "free_threaded": True, "gil_enabled": False, "cpu_count": 2, "platform": "Linux-test",
               "memory_bytes": 2 ** 33, "start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:01:00+00:00",
               "duration_s": 60.0, "commit": "abcdef1234567890", "dirty": False, "argv": ["--sizes", "1"]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sample_run(upload_gain: float = 1.5) -> list[dict]:
    """Downloads tie; uploads with 4 clients go ``upload_gain`` times faster on the process server."""
    records, row = [ENVIRONMENT], 0
    for model in ("thread", "process"):
        for op in ("download", "upload"):
            for clients in (1, 4):
                row += 1
                rate = 200.0 * (upload_gain if (model, op, clients) == ("process", "upload", 4) else 1)
                records.append(cell(row, model, 2, op, 1, clients, rate))
    return records


def svg_titles(path: Path) -> list[str]:
    root = ET.parse(path).getroot()          # raises if the SVG is not well-formed XML
    return [t.text or "" for t in root.iter(f"{SVG}title")]


def svg_texts(path: Path) -> str:
    return " ".join(t.text or "" for t in ET.parse(path).getroot().iter(f"{SVG}text"))


class ChartTest(unittest.TestCase):
    def test_svg_holds_the_three_views_for_every_cell_and_any_model_name(self) -> None:
        records = sample_run()[1:] + [cell(99, "foreign", 2, "upload", 1, 4, 150.0, failed=1)]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chart.svg"
            write_chart(records, path)
            titles, texts = svg_titles(path), svg_texts(path)
        for heading in ("Aggregate throughput", "Latency", "Throughput per client", "clients at once",
                        "total MB/s", "thread server", "process server", "foreign server"):
            self.assertIn(heading, texts)
        totals = [t for t in titles if "MB/s in total" in t]
        latencies = [t for t in titles if "p50" in t]
        per_client = [t for t in titles if "per client" in t]
        self.assertEqual(len(totals), len(records))
        self.assertEqual(len(latencies), len(records))
        self.assertEqual(len(per_client), len(records))
        self.assertIn("process, 4 clients: 300 MB/s in total", totals)
        self.assertIn("foreign, 4 clients: 150 MB/s in total", totals)

    def test_output_is_results_csv_only_for_the_full_default_matrix(self) -> None:
        class Args:
            output = None
        shuffled = {name: list(reversed(values)) for name, values in DEFAULTS.items()}
        self.assertEqual(output_for(Args(), shuffled), "results.csv")
        for name in DEFAULTS:
            narrowed = dict(DEFAULTS, **{name: DEFAULTS[name][:1]})
            self.assertEqual(output_for(Args(), narrowed), NARROWED_OUTPUT, name)
        Args.output = "mine.csv"
        self.assertEqual(output_for(Args(), DEFAULTS), "mine.csv")


class ReportTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="report-test-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.tmp)], check=False))

    def run_tool(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60,
                              cwd=str(self.tmp))

    def test_report_writes_markdown_with_environment_tables_chart_and_computed_findings(self) -> None:
        records = sample_run() + [cell(9, "thread", 2, "upload", 1, 8, 100.0, failed=3)]
        jsonl = write_jsonl(self.tmp / "run.jsonl", records)
        done = self.run_tool("--report", str(jsonl))
        self.assertEqual(done.returncode, 0, done.stderr)
        report = (self.tmp / "run.md").read_text()
        for fact in ("CPython 3.14.0 (/opt/py/bin/python3.14t)", "| free-threaded build | yes |",
                     "| GIL enabled | no |", "abcdef123456", "60 s", "python run_experiment.py --sizes 1",
                     "| client work | decode |"):
            self.assertIn(fact, report)
        self.assertIn("| " + " | ".join(CSV_COLUMNS) + " |", report)
        self.assertIn("| upload | 1 MB | 4 | 2 | 200 | 300 | 1/1 | x1.50 | - | no interval |  | 0/0 |", report)
        self.assertIn("| upload | 1 MB | 8 | 2 | 100 | - | 1/- | - | - | - |  | 3/- |", report)
        self.assertIn("![Aggregate throughput, latency and throughput per client](run.svg)", report)
        # One run per cell: no interval, so nothing is called a difference, not even the single x1.50.
        self.assertIn("One run per cell and model (a file from before repeated runs): no interval could be "
                      "computed", report)
        self.assertIn("**Upload**, 2 cells: no verdict, since no cell has an interval.", report)
        self.assertNotIn("largest difference", report)
        self.assertIn("3 of 28 client transfers failed, in 1 of 9 cells (thread: 3)", report)
        self.assertIn("Throughput per client", svg_texts(self.tmp / "run.svg"))
        self.assertIn("x1.50", done.stdout)

    def test_report_refuses_a_file_without_cells(self) -> None:
        jsonl = write_jsonl(self.tmp / "empty.jsonl", [ENVIRONMENT])
        done = self.run_tool("--report", str(jsonl))
        self.assertEqual(done.returncode, 2)
        self.assertIn("holds no cell results", done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertFalse((self.tmp / "empty.md").exists())

    def test_compare_matches_cells_and_shows_ratio_failures_and_missing(self) -> None:
        (self.tmp / "a").mkdir()
        (self.tmp / "b").mkdir()
        first = write_jsonl(self.tmp / "a" / "results.jsonl", sample_run(upload_gain=1.5))
        second_records = [r for r in sample_run(upload_gain=3.0) if r.get("clients") != 1 or r["op"] != "download"]
        second_records[-1]["result"]["failed"] = 2
        second = write_jsonl(self.tmp / "b" / "results.jsonl", second_records)
        done = self.run_tool("--compare", str(first), str(second), "--output", str(self.tmp / "out" / "cmp.md"))
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = {tuple(line.split()[:6]): line.split()[6:] for line in done.stdout.splitlines()
                 if line.split()[:1] in (["thread"], ["process"])}
        # process x2 upload 1 MB 4 clients: 300 MB/s then 600, the second run with 2 failed clients.
        self.assertEqual(lines[("process", "2", "upload", "1", "MB", "4")], ["300", "0", "600", "2", "x2.00", "-"])
        self.assertEqual(lines[("thread", "2", "download", "1", "MB", "1")], ["200", "0", "-", "-", "-", "-"])
        markdown = (self.tmp / "out" / "cmp.md").read_text()
        self.assertIn("results (a)", markdown)
        self.assertIn("| process | 2 | upload | 1 MB | 4 | 300 | 0 | 600 | 2 | x2.00 | - |", markdown)
        self.assertIn("CPython 3.14.0 (free-threaded, GIL off)", markdown)
        self.assertIn("process server, upload: x1.00 to x2.00", markdown)
        titles = svg_titles(self.tmp / "out" / "cmp.svg")
        self.assertTrue(any(t.startswith("results (b): upload, process server, 1 MB, 4 clients") and "600 MB/s" in t
                            for t in titles), titles)

    def test_compare_needs_two_runs(self) -> None:
        jsonl = write_jsonl(self.tmp / "one.jsonl", sample_run())
        done = self.run_tool("--compare", str(jsonl))
        self.assertEqual(done.returncode, 2)
        self.assertIn("two or more", done.stderr)

    def test_a_resumed_file_keeps_the_last_record_of_each_cell(self) -> None:
        records = sample_run() + [ENVIRONMENT, cell(20, "thread", 2, "download", 1, 1, 50.0)]
        run = load_run(write_jsonl(self.tmp / "run.jsonl", records))
        self.assertEqual(len(run.cells), 8)
        self.assertEqual(len(run.environments), 2)
        self.assertEqual(run.cells[("thread", 2, "download", 1.0, 1)]["row"], 20)


if __name__ == "__main__":
    unittest.main()
