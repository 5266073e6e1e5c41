"""The benchmark runs end to end (its --quick mode: a few seconds, numbers meaningless).

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


if __name__ == "__main__":
    unittest.main()
