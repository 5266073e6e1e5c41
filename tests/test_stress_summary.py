"""stress_test's summary of known client outcomes: every figure of its JSON result, computed by hand here."""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stress_test import ClientOutcome, Settings, summarize  # noqa: E402

MIB = 2 ** 20


class SummaryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.settings = Settings("download", 1.0, 5, "thread", "127.0.0.1", 6667, 30.0)
        # Three clients succeeded in 1, 2 and 6 s (mean 3, median 2); two failed, one of them early.
        self.outcomes = [
            ClientOutcome(True, started=10.0, seconds=1.0, bytes=MIB),
            ClientOutcome(True, started=10.5, seconds=2.0, bytes=MIB),
            ClientOutcome(False, started=10.1, seconds=0.3, error_kind="reset", error="first reset"),
            ClientOutcome(True, started=10.2, seconds=6.0, bytes=MIB),
            ClientOutcome(False, started=10.4, seconds=0.1, error_kind="reset", error="second reset"),
        ]
        self.result = summarize(self.settings, self.outcomes, {"succeeded": 10, "failed": 1},
                                {"succeeded": 13, "failed": 3}, client_cpu_s=0.75)

    def test_times_are_the_mean_over_successful_clients(self) -> None:
        self.assertEqual(self.result["total_time_s"], 3.0)          # the mean README promises, not the median 2
        self.assertEqual(self.result["latency_s"], {"min": 1.0, "p50": 2.0, "p90": 6.0, "p99": 6.0, "max": 6.0})

    def test_throughputs(self) -> None:
        # Per client as the original: bytes of successful clients / the sum of their times.
        self.assertAlmostEqual(self.result["throughput_Bps"], 3 * MIB / 9.0)
        # Aggregate: those bytes / wall time from the first start (10.0) to the last end (10.2 + 6).
        self.assertAlmostEqual(self.result["wall_time_s"], 6.2)
        self.assertAlmostEqual(self.result["aggregate_throughput_Bps"], 3 * MIB / 6.2)

    def test_counts_errors_and_server_deltas(self) -> None:
        self.assertEqual((self.result["succeed"], self.result["failed"]), (3, 2))
        self.assertEqual(self.result["errors"], {"reset": {"count": 2, "example": "first reset"}})
        self.assertEqual((self.result["server_succeeded"], self.result["server_failed"]), (3, 2))
        self.assertEqual(self.result["client_cpu_s"], 0.75)
        self.assertEqual((self.result["size_bytes"], self.result["clients"]), (MIB, 5))

    def test_no_success_and_no_server_counts(self) -> None:
        failed = [ClientOutcome(False, started=1.0, seconds=0.5, error_kind="refused", error="no")]
        result = summarize(self.settings, failed, None, None)
        self.assertEqual((result["total_time_s"], result["throughput_Bps"]), (None, None))
        self.assertEqual(result["aggregate_throughput_Bps"], 0.0)           # nothing moved in 0.5 s
        self.assertEqual((result["server_succeeded"], result["server_failed"]), (None, None))
        self.assertEqual(result["errors"], {"refused": {"count": 1, "example": "no"}})


if __name__ == "__main__":
    unittest.main()
