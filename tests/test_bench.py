"""The benchmark runs end to end (its --quick mode: a few seconds, numbers meaningless): every
table, CPU per MB and the load generator in both client-work modes included.

Run with:  python -m unittest tests.test_bench -v
"""

from __future__ import annotations

import re
import subprocess
import sys
import unittest

from fileshare.harness import script_path


class BenchQuickTests(unittest.TestCase):

    def test_quick_run_prints_every_case_and_memory(self):
        proc = subprocess.run([sys.executable, str(script_path("bench/bench.py")), "--quick"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        out = proc.stdout
        for case in ("download, 1 client", "download, 4 clients", "upload, 1 client", "upload, 4 clients"):
            row = re.search(rf"^{re.escape(case)}\s+(.*)$", out, re.MULTILINE)
            self.assertIsNotNone(row, f"no row for {case!r} in:\n{out}")
            numbers = [float(x) for x in row.group(1).split()]
            # 4 speeds, 4 ratios, client RSS: all measured, so all positive.
            self.assertEqual(len(numbers), 9, row.group(0))
            self.assertTrue(all(n > 0 for n in numbers), row.group(0))
        for model in ("thread", "process"):
            self.assertRegex(out, rf"\n  {model}\s+\d+\.\d MiB\n")
        self.assertRegex(out, r"ms per MB")
        self.assertRegex(out, r"ms per client")
        for case in ("download, 1 client", "download, 4 clients", "upload, 1 client", "upload, 4 clients"):
            row = re.search(rf"^{re.escape(case)}\s+(\d.*%)$", out, re.MULTILINE)
            self.assertIsNotNone(row, f"no CPU row for {case!r} in:\n{out}")
            # Per server: its CPU ms/MB (a tick may round it to 0 on tiny files), the clients', their share.
            cpu = [float(x.rstrip("%")) for x in row.group(1).split()]
            self.assertEqual(len(cpu), 6, row.group(0))
            self.assertTrue(all(0 <= x for x in cpu) and cpu[1] > 0 and cpu[4] > 0, row.group(0))
        # The load generator in both client-work modes, against both servers, for both operations.
        cells = re.findall(r"^(download|upload)\s+(thread|process)\s+(decode|verify)\s+(.*%)$", out, re.MULTILINE)
        self.assertEqual(sorted(c[:3] for c in cells),
                         sorted((op, model, work) for op in ("download", "upload") for model in ("thread", "process")
                                for work in ("decode", "verify")), out)
        for *_, numbers in cells:
            values = [float(x.rstrip("%")) for x in numbers.split()]
            self.assertEqual(len(values), 6, numbers)        # MB/s, x decode, 2 x ms/MB, 2 shares
            self.assertTrue(values[0] > 0 and values[1] > 0 and values[3] > 0, numbers)


class ReceiveFloorQuickTests(unittest.TestCase):
    def test_quick_run_prints_both_clients(self):
        proc = subprocess.run([sys.executable, str(script_path("bench/receive_floor.py")), "--quick"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        for kind in ("receive only", "verify"):
            row = re.search(rf"^{kind}\s+(\d+)\s+(\d+\.\d+)\s+(\d+)%$", proc.stdout, re.MULTILINE)
            self.assertIsNotNone(row, f"no row for {kind!r} in:\n{proc.stdout}")
            # MB/s and CPU per MB were measured; the share may round to 0% on a slow moment.
            self.assertTrue(all(float(x) > 0 for x in row.groups()[:2]), row.group(0))


if __name__ == "__main__":
    unittest.main()


class SmallRequestsQuickTests(unittest.TestCase):
    def test_quick_run_prints_every_case_and_the_targets(self):
        proc = subprocess.run([sys.executable, str(script_path("bench/small_requests.py")), "--quick",
                               "--connections", "5"], capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        out = proc.stdout
        for mode in ("keep-alive", "per-connection"):
            for request in ("LIST", "GET 1 KiB"):
                for server in ("reference", "thread", "process"):
                    row = re.search(rf"^{mode}\s+{request}\s+5\s+{server}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+0$",
                                    out, re.MULTILINE)
                    self.assertIsNotNone(row, f"no row for {mode}, {request}, {server} in:\n{out}")
                    self.assertTrue(all(float(x) > 0 for x in row.groups()), row.group(0))
        self.assertRegex(out, r"5 keep-alive connections, LIST: process / thread \d")
        self.assertRegex(out, r"5 keep-alive connections, GET 1 KiB: process / thread \d")
