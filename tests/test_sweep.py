"""The sweep's order and repeats, the CSV formula, and reports and comparisons of repeated runs.

Everything here runs on made-up runs (no servers), so the verdicts are known in advance.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fileshare import stats  # noqa: E402
from fileshare.report import (agreement_table, band_text, compare_summary, csv_row, findings,  # noqa: E402
                              load_run)
from fileshare.sweep import Cell, RepeatPolicy, Sweep, plan, repair_tail, run_order  # noqa: E402

MIB = 2 ** 20


def run_result(mbps: float, clients: int = 1, size_mb: float = 1.0, wall: float = 0.5, round_number=None,
               other_cores: float = 0.0) -> dict:
    """One stress test's result with aggregate throughput ``mbps``."""
    result = {"op": "upload", "size_mb": size_mb, "size_bytes": round(size_mb * MIB), "clients": clients,
              "succeed": clients, "failed": 0, "total_time_s": wall, "throughput_Bps": size_mb * MIB / wall,
              "wall_time_s": wall, "aggregate_throughput_Bps": mbps * 1e6, "errors": {},
              "server_succeeded": clients, "server_failed": 0,
              "usage": {"server_cores": 1.0, "client_cores": 0.2, "other_cores": other_cores, "steal_cores": 0.0,
                        "window_s": wall, "over": "transfer"}}
    if round_number is not None:
        result["round"] = round_number
    return result


def record(row: int, model: str, pool: int, op: str, size: float, clients: int, rates: list[float]) -> dict:
    samples = [dict(run_result(r, clients, size, round_number=i), op=op) for i, r in enumerate(rates)]
    middle = sorted(samples, key=lambda s: s["aggregate_throughput_Bps"])[(len(samples) - 1) // 2]
    return {"type": "cell", "row": row, "model": model, "server_workers": pool, "op": op, "size_mb": size,
            "clients": clients, "client_pool": "thread", "client_work": "verify", "result": middle,
            "samples": samples}


ENVIRONMENT = {"type": "environment", "python": "3.11.7", "implementation": "CPython", "cpu_count": 2,
               "start": "2026-01-01T00:00:00+00:00", "argv": [],
               "repeats": RepeatPolicy().as_dict(),
               "calibration_start": {"base64_decode_MBps": 300.0}, "calibration_end": {"base64_decode_MBps": 270.0},
               "calibration_drift": -0.1}

THREAD = [100.0, 102.0, 98.0, 101.0]
# (pool, op, size, clients) -> process rates, run by run beside THREAD's
CELLS = {
    (1, "upload", 10, 1): [200.0, 205.0, 195.0, 202.0],    # process clearly faster: x2.00
    (1, "upload", 10, 5): [25.0, 26.0, 24.0, 25.0],        # thread clearly faster: x0.25, the largest difference
    (5, "upload", 10, 1): [104.0, 106.0, 103.0, 105.0],    # significant, but within the noise band: x1.04
    (5, "upload", 10, 5): [60.0, 400.0, 90.0, 300.0],      # x1.5 on average, far too spread: no clear difference
    (5, "download", 10, 1): [130.0, 131.0, 129.0, 130.0],  # process faster: x1.30
}


def made_up_run(cells: dict = CELLS) -> list[dict]:
    records, row = [ENVIRONMENT], 0
    for (pool, op, size, clients), process in cells.items():
        for model, rates in (("thread", THREAD), ("process", process)):
            row += 1
            records.append(record(row, model, pool, op, size, clients, rates))
    return records


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class OrderTest(unittest.TestCase):
    def test_rounds_alternate_abba_and_cells_alternate_who_starts(self) -> None:
        first = [m for r in range(4) for m in run_order(["thread", "process"], r, 0)]
        self.assertEqual(first, ["thread", "process", "process", "thread"] * 2)
        second = [m for r in range(2) for m in run_order(["thread", "process"], r, 1)]
        self.assertEqual(second, ["process", "thread", "thread", "process"])
        self.assertEqual(run_order(["a", "b", "c"], 1), ["c", "b", "a"])

    def test_plan_groups_cells_by_server_pool_size(self) -> None:
        cells = plan([1, 5], ["download", "upload"], [10], [1, 5])
        self.assertEqual([c.server_workers for c in cells], [1, 1, 1, 1, 5, 5, 5, 5])
        self.assertEqual(cells[1], Cell(1, "download", 10, 5))

    def test_the_sweep_runs_each_cell_on_every_model_in_turn(self) -> None:
        calls: list[tuple[str, str]] = []

        class Recorded(Sweep):
            def _run_one(self, cell: Cell, model: str) -> dict:
                calls.append((cell.op, model))
                return run_result(100.0, wall=5.0)     # long runs: the minimum number of runs is enough

        args = argparse.Namespace(output="unused.csv", client_pool_type="thread", client_work="verify")
        sweep = Recorded(args, [], ["thread", "process"], "/nonexistent", {}, RepeatPolicy(3, 6, 1.0, warmup=1))
        runs, warmups = sweep._measure(Cell(1, "download", 10, 1), ["thread", "process"], 0)
        runs2, _ = sweep._measure(Cell(1, "upload", 10, 1), ["thread", "process"], 1)
        models = [m for _, m in calls]
        # A warm-up of each (discarded), then three rounds ABBA; the next cell starts with the other model.
        self.assertEqual(models[:8], ["thread", "process", "process", "thread", "thread", "process", "process",
                                      "thread"])
        self.assertEqual(models[8:], ["process", "thread", "thread", "process", "process", "thread",
                                      "thread", "process"])
        self.assertEqual(calls[:8], [("download", m) for m in models[:8]])
        self.assertEqual([len(warmups[m]) for m in warmups], [1, 1])
        self.assertEqual([s["round"] for s in runs["process"]], [0, 1, 2])
        self.assertEqual([len(runs2[m]) for m in runs2], [3, 3])
        self.assertNotEqual(sweep._record(1, Cell(1, "upload", 10, 1), "thread", runs2, [])["measured_at"], "")


class RepeatPolicyTest(unittest.TestCase):
    def test_short_spread_cells_get_more_runs_up_to_the_most(self) -> None:
        policy = RepeatPolicy(min_runs=3, max_runs=6, min_time=1.0, tight=0.05)
        spread = [run_result(r, wall=0.05) for r in (100.0, 150.0, 80.0, 120.0, 90.0, 140.0)]
        self.assertFalse(policy.settled(spread[:2]))
        self.assertFalse(policy.settled(spread[:3]))          # 0.15 s measured, interval wide
        self.assertTrue(policy.settled(spread[:6]))           # the most
        long = [run_result(r, wall=0.4) for r in (100.0, 150.0, 80.0)]
        self.assertTrue(policy.settled(long))                 # 1.2 s measured
        tight = [run_result(r, wall=0.05) for r in (100.0, 100.5, 99.5)]
        self.assertTrue(policy.settled(tight))                # interval within 5%
        failed = [dict(run_result(0.0), succeed=0, aggregate_throughput_Bps=None)] * 3
        self.assertTrue(policy.settled(failed))               # more failed runs tell nothing new
        self.assertTrue(RepeatPolicy(1, 1).settled(spread[:1]))

    def test_expected_runs_for_the_eta(self) -> None:
        policy = RepeatPolicy(min_runs=3, max_runs=6, min_time=1.0, warmup=1)
        self.assertEqual(policy.expected_runs(10.0), 4)
        self.assertEqual(policy.expected_runs(0.25), 5)
        self.assertEqual(policy.expected_runs(0.01), 7)


class CsvFormulaTest(unittest.TestCase):
    def test_throughput_per_client_is_bytes_of_successful_clients_over_the_sum_of_their_times(self) -> None:
        # Five clients of 10 MiB took 2 s on average (10 s in all): 50 MiB / 10 s, whatever the mean of rates.
        result = {"size_mb": 10, "size_bytes": 10 * MIB, "succeed": 5, "failed": 1, "total_time_s": 2.0,
                  "throughput_Bps": 9e9, "server_succeeded": 5, "server_failed": 1}
        row = csv_row({"row": 1, "model": "thread", "op": "download", "size_mb": 10, "clients": 6,
                       "server_workers": 5, "result": result})
        self.assertEqual(row[6:8], ["2.0000", f"{50 * MIB / 10.0:.0f}"])
        no_client = dict(result, succeed=0, total_time_s=None)
        self.assertEqual(csv_row({"row": 2, "model": "thread", "op": "download", "size_mb": 10, "clients": 6,
                                  "server_workers": 5, "result": no_client})[6:8], ["", ""])


class ReportVerdictTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="sweep-report-")
        self.addCleanup(self.tmp.cleanup)
        self.run_ = load_run(write(Path(self.tmp.name) / "run.jsonl", made_up_run()))
        self.lines = findings(self.run_)

    def line(self, start: str) -> str:
        found = [line for line in self.lines if line.startswith(start)]
        self.assertEqual(len(found), 1, (start, self.lines))
        return found[0]

    def test_verdicts_come_from_the_samples(self) -> None:
        self.assertEqual(self.line("**Upload**"), "**Upload**, 4 cells: process faster in 1, thread faster in 1, "
                                                  "no clear difference in 2.")
        self.assertEqual(self.line("**Download**"), "**Download**, 1 cell: process faster in 1 (10 MB, 1 client: "
                                                    f"{self._interval('download', 1, 5)}), thread faster in 0, no "
                                                    "clear difference in 0.")

    def _interval(self, op: str, clients: int, pool: int) -> str:
        from fileshare.report import comparisons, interval_text
        ratio = comparisons(self.run_)[(op, 10.0, clients, pool)].ratio
        return interval_text(ratio)

    def test_findings_by_server_pool_size_cite_only_significant_cells_with_intervals(self) -> None:
        pool1 = self.line("Upload, server pool of 1 ")
        self.assertIn("process faster in 1 (10 MB, 1 client: x2.00, 95% CI x", pool1)
        self.assertIn("thread faster in 1 (10 MB, 5 clients: x0.25, 95% CI x", pool1)
        pool5 = self.line("Upload, server pool of 5 ")
        self.assertIn("process faster in 0, thread faster in 0, no clear difference in 2", pool5)
        self.assertNotIn("x1.04", pool5)            # significant, but inside the noise band: not cited

    def test_the_largest_difference_is_the_largest_significant_one_even_when_thread_wins(self) -> None:
        largest = self.line("Upload, largest difference")
        self.assertTrue(largest.startswith("Upload, largest difference: 10 MB, 5 clients, server pool of 1: "
                                           "process 25 MB/s, thread 100 MB/s"), largest)
        self.assertIn("process/thread x0.25, 95% CI x", largest)
        # The spread cell's x1.5 is no difference at all, so it is never the largest.
        self.assertNotIn("server pool of 5", largest)

    def test_the_stated_noise_band_is_the_one_the_verdicts_use(self) -> None:
        method = self.lines[0]
        self.assertIn(band_text(), method)
        low, high = (float(x) for x in re.search(r"outside x([0-9.]+) to x([0-9.]+)", method).groups())
        exact = re.search(r"\(x1/([0-9.]+) to x([0-9.]+): within", method).groups()
        self.assertEqual((float(exact[0]), float(exact[1])), (1 + stats.NOISE, 1 + stats.NOISE))
        self.assertAlmostEqual(low, 1 / (1 + stats.NOISE), places=2)
        self.assertAlmostEqual(high, 1 + stats.NOISE, places=2)
        sure = 1e-4
        for ratio, expected in ((1 + stats.NOISE, stats.UNCLEAR), ((1 + stats.NOISE) * 1.001, stats.FASTER_B),
                                (1 / (1 + stats.NOISE), stats.UNCLEAR), (1 / (1 + stats.NOISE) / 1.001, stats.FASTER_A)):
            self.assertEqual(stats.verdict(stats.Ratio(ratio, (ratio - sure, ratio + sure), True)), expected)

    def test_noise_cpu_and_calibration_are_reported(self) -> None:
        self.assertIn("Machine speed (base64 decoding): 300 MB/s at the start, 270 MB/s at the end (drift -10.0%).",
                      self.lines)
        self.assertIn("1 of 5 cells may be unstable", self.line("1 of 5 cells"))
        self.assertIn("Upload with 5 clients, cores used (CPU seconds / seconds, over the timed transfer, over every "
                      "run of those cells): thread server median 1.00, at most 1.00; process server median 1.00, "
                      "at most 1.00; the clients median 0.20.", self.lines)

    def test_cores_from_a_file_before_timed_windows_say_they_cover_the_whole_stress_test(self) -> None:
        records = made_up_run()
        for r in records[1:]:
            for s in r["samples"]:
                del s["usage"]["over"]
        lines = findings(load_run(write(Path(self.tmp.name) / "old.jsonl", records)))
        cores = [line for line in lines if "cores used" in line]
        self.assertTrue(cores)
        self.assertTrue(all("over the whole stress test, start-up, preparation and clean-up included" in line
                            for line in cores), cores)
        self.assertFalse([line for line in cores if "coarse" in line], cores)
        for r in records[1:]:
            for s in r["samples"]:
                s["usage"]["window_s"] = 0.02
        cores = [line for line in findings(load_run(write(Path(self.tmp.name) / "short.jsonl", records)))
                 if "cores used" in line]
        self.assertTrue(all("(coarse: windows of a median 0.02 s" in line for line in cores), cores)

    def test_a_sweep_that_stopped_early_says_so_first(self) -> None:
        self.assertFalse([line for line in self.lines if "Incomplete" in line])
        records = made_up_run()
        records[0] = dict(ENVIRONMENT, completed=False, end="2026-01-01T00:05:00+00:00")
        lines = findings(load_run(write(Path(self.tmp.name) / "stopped.jsonl", records)))
        self.assertTrue(lines[0].startswith("**Incomplete sweep**: it stopped early"), lines[0])
        self.assertIn("10 model cells", lines[0])
        # A later session that finished (a --resume) makes it complete.
        records.insert(3, dict(ENVIRONMENT, completed=True, end="2026-01-01T00:09:00+00:00"))
        lines = findings(load_run(write(Path(self.tmp.name) / "resumed.jsonl", records)))
        self.assertFalse([line for line in lines if "Incomplete" in line])

    def test_unpaired_cells_are_named_where_the_method_says_paired(self) -> None:
        self.assertNotIn("Not paired", self.lines[0])
        records = made_up_run()
        records[2]["measured_at"] = "later"         # process of the first cell, finished by a --resume
        method = findings(load_run(write(Path(self.tmp.name) / "resumed.jsonl", records)))[0]
        self.assertIn("paired round by round", method)
        self.assertIn("Not paired in 1 cell,", method)
        self.assertIn("Welch's interval: upload 10 MB, 1 client, server pool of 1.", method)

    def test_a_short_transfer_is_judged_disturbed_by_the_longer_window(self) -> None:
        quiet = {"window_s": 1.0, "other_cores": 0.0, "over": "stress_test"}
        busy = {"window_s": 0.01, "other_cores": 2.0, "over": "transfer"}     # one stray tick of /proc
        self.assertIs(stats.noise_usage({"usage": busy, "usage_whole_run": quiet}), quiet)
        self.assertIs(stats.noise_usage({"usage": busy}), busy)
        long_busy = dict(busy, window_s=stats.MIN_CPU_WINDOW_S)
        self.assertIs(stats.noise_usage({"usage": long_busy, "usage_whole_run": quiet}), long_busy)

    def test_a_single_run_per_cell_says_no_interval_could_be_computed(self) -> None:
        single = {key: rates[:1] for key, rates in CELLS.items()}
        records = made_up_run(single)
        for r in records[1:]:
            r["samples"] = r["samples"][:1]
        lines = findings(load_run(write(Path(self.tmp.name) / "one.jsonl", records)))
        self.assertIn("no interval could be computed", lines[0])
        self.assertFalse(any("largest difference" in line for line in lines))


    def test_a_file_from_before_repeats_is_not_said_to_be_made_with_repeat_1(self) -> None:
        records = made_up_run({key: rates[:1] for key, rates in CELLS.items()})
        del records[0]["repeats"]                    # an environment from before repeated runs
        for r in records[1:]:
            r["samples"] = r["samples"][:1]
        method = findings(load_run(write(Path(self.tmp.name) / "old.jsonl", records)))[0]
        self.assertNotIn("--repeat 1", method)
        self.assertIn("no interval could be computed", method)


    def test_a_failed_client_in_a_run_other_than_the_median_is_reported(self) -> None:
        # Honest numbers: a client that got a wrong byte failed, whichever run it was in. The CSV row is the
        # median run, but the report's failures must count every run made.
        records = made_up_run()
        slow = records[1]["samples"][-1]              # not the median run, which the CSV row shows
        slow.update(succeed=0, failed=1, errors={"corrupt": {"count": 1, "example": "byte 7 differs"}})
        records[1]["warmups"] = [dict(records[1]["samples"][0], failed=1, succeed=0)]
        self.assertEqual(records[1]["result"]["failed"], 0)
        lines = findings(load_run(write(Path(self.tmp.name) / "failed.jsonl", records)))
        self.assertFalse([line for line in lines if line.startswith("No client failed")], lines)
        failures = [line for line in lines if "client transfers failed" in line]
        self.assertEqual(len(failures), 1, lines)
        transfers = sum(r["clients"] * (len(r["samples"]) + len(r.get("warmups") or [])) for r in records[1:])
        self.assertTrue(failures[0].startswith(f"2 of {transfers} client transfers failed, in 1 of 10 cells "
                                               "(thread: 2)"), failures)


class PairingTest(unittest.TestCase):
    def test_rounds_pair_only_within_one_measurement_of_the_cell(self) -> None:
        from fileshare.report import pair_ratio
        a = record(1, "thread", 1, "upload", 10, 1, [100.0, 200.0, 50.0])
        b = record(2, "process", 1, "upload", 10, 1, [150.0, 300.0, 75.0])
        self.assertTrue(pair_ratio(a, b).paired)
        self.assertEqual(stats.verdict(pair_ratio(a, b)), stats.FASTER_B)
        a["measured_at"], b["measured_at"] = "2026-01-01T00:00:00", "2026-01-01T01:00:00"   # e.g. after --resume
        self.assertFalse(pair_ratio(a, b).paired)
        self.assertEqual(stats.verdict(pair_ratio(a, b)), stats.UNCLEAR)


class ChartIntervalTest(unittest.TestCase):
    def test_the_aggregate_chart_draws_each_points_interval(self) -> None:
        import xml.etree.ElementTree as ET
        from fileshare.chart import write_chart
        records = made_up_run()[1:]
        with tempfile.TemporaryDirectory(prefix="sweep-chart-") as tmp:
            path = Path(tmp) / "chart.svg"
            write_chart(records, path)
            titles = [t.text or "" for t in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}title")]
        with_interval = [t for t in titles if "MB/s in total (95% CI of the mean" in t]
        self.assertEqual(len(with_interval), len(records))
        self.assertIn("process, 1 client: 130 MB/s in total (95% CI of the mean 129 to 131)", with_interval)


class CompareAgreementTest(unittest.TestCase):
    def test_compare_flags_a_contradiction_and_counts_agreeing_cells(self) -> None:
        with tempfile.TemporaryDirectory(prefix="sweep-compare-") as tmp:
            first = load_run(write(Path(tmp) / "first.jsonl", made_up_run()))
            flipped = dict(CELLS)
            flipped[(1, "upload", 10, 1)] = [50.0, 51.0, 49.0, 50.0]      # now thread clearly faster
            second = load_run(write(Path(tmp) / "second.jsonl", made_up_run(flipped)))
            summary = compare_summary([first, second], ["first", "second"])
            table = agreement_table([first, second], ["first", "second"])
        self.assertIn("second and first agree in 4 of 5 cells (80%): their ratio intervals overlap.", summary)
        contradiction = [line for line in summary if "contradict" in line and "**" in line]
        self.assertEqual(len(contradiction), 1, summary)
        self.assertIn("**1 cell contradicts**", contradiction[0])
        self.assertIn("upload 10 MB, 1 client, server pool of 1", contradiction[0])
        flagged = [row for row in table.rows if row[-1] == "**yes**"]
        self.assertEqual([row[:4] for row in flagged], [["upload", "10 MB", "1", "1"]])


class CpuAccountingTest(unittest.TestCase):
    def test_cores_between_two_snapshots(self) -> None:
        from fileshare.harness import CpuSnapshot, cpu_use
        before = CpuSnapshot(10.0, (100.0, 5.0), {"thread": 1.0, "process": 2.0}, 0.5)
        after = CpuSnapshot(12.0, (104.0, 5.2), {"thread": 3.0, "process": 2.2}, 1.3)
        # 2 s: the thread server 2.0 CPU s, the idle process server 0.2, the clients 0.8, the machine 4.0
        # busy (so 1.0 of other work) and 0.2 stolen.
        self.assertEqual(cpu_use(before, after, "thread"),
                         {"window_s": 2.0, "server_cores": 1.0, "idle_servers_cores": 0.1, "client_cores": 0.4,
                          "other_cores": 0.5, "steal_cores": 0.1})
        # A server it cannot see (running elsewhere): no server cores, and the rest of the machine cannot be told.
        elsewhere = cpu_use(before, after, "attached")
        self.assertEqual((elsewhere["server_cores"], elsewhere["other_cores"]), (None, None))
        self.assertEqual(elsewhere["idle_servers_cores"], 1.1)
        # Without /proc/stat: no machine figures; a window of no time: nothing.
        self.assertNotIn("other_cores", cpu_use(CpuSnapshot(10.0, None, {}, 0.0), CpuSnapshot(11.0, None, {}, 0.5), "x"))
        self.assertEqual(cpu_use(after, after, "thread"), {})

    def test_a_servers_cpu_counts_its_grandchildren(self) -> None:
        # A server's workers need not be its children: a forkserver (Python 3.14's default start method),
        # or a --server-command through a wrapper, puts them one level further down. Their CPU is the
        # server's, not the rest of the machine's.
        import os
        import select
        import signal
        import subprocess
        from fileshare.harness import tree_cpu_seconds
        burner = ("import os, sys\n"
                  "if os.fork() == 0:\n"
                  "    if os.fork() == 0:\n"
                  "        for _ in range(10 ** 9):\n"
                  "            if sum(os.times()[:2]) >= 0.3: break\n"
                  "        print('burnt', flush=True)\n"
                  "        sys.stdin.read()\n"
                  "    os.wait()\n"
                  "else:\n"
                  "    os.wait()\n")
        top = subprocess.Popen([sys.executable, "-c", burner], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True)
        self.addCleanup(lambda: (os.killpg(top.pid, signal.SIGKILL), top.wait(10), top.stdin.close(),
                                 top.stdout.close()))
        ready, _, _ = select.select([top.stdout], [], [], 60)
        self.assertTrue(ready and top.stdout.readline().startswith(b"burnt"), "the grandchild never burnt its CPU")
        self.assertGreaterEqual(tree_cpu_seconds(top.pid), 0.25)


class RepairTailTest(unittest.TestCase):
    def test_a_whole_last_line_gets_its_newline_and_a_cut_one_is_removed(self) -> None:
        with tempfile.TemporaryDirectory(prefix="sweep-tail-") as tmp:
            path = Path(tmp) / "x.jsonl"
            path.write_text('{"a": 1}\n{"b": 2}')
            self.assertIn("added one", repair_tail(path, lambda line: json.loads(line) is not None))
            self.assertEqual(path.read_text(), '{"a": 1}\n{"b": 2}\n')
            self.assertIsNone(repair_tail(path, lambda line: True))
            path.write_text('{"a": 1}\n{"b": 2, "c"')

            def whole(line: str) -> bool:
                try:
                    json.loads(line)
                    return True
                except ValueError:
                    return False
            self.assertIn("cut short", repair_tail(path, whole))
            self.assertEqual(path.read_text(), '{"a": 1}\n')

    def test_a_csv_of_only_its_header_keeps_it(self) -> None:
        from fileshare.report import CSV_COLUMNS
        from fileshare.sweep import _csv_line_ok
        with tempfile.TemporaryDirectory(prefix="sweep-tail-") as tmp:
            path = Path(tmp) / "x.csv"
            path.write_text(",".join(CSV_COLUMNS))
            repair_tail(path, _csv_line_ok)
            self.assertEqual(path.read_text(), ",".join(CSV_COLUMNS) + "\n")
            path.write_text(",".join(CSV_COLUMNS) + "\n1,thread,download,10 MB")
            repair_tail(path, _csv_line_ok)
            self.assertEqual(path.read_text(), ",".join(CSV_COLUMNS) + "\n")


if __name__ == "__main__":
    unittest.main()
