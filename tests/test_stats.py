"""fileshare/stats.py on made-up samples: intervals, ratios, verdicts, the t-table's edges, a single run."""

from __future__ import annotations

import math
import statistics
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fileshare import stats  # noqa: E402
from fileshare.stats import Ratio  # noqa: E402


class TTableTest(unittest.TestCase):
    def test_known_quantiles_and_the_edges_of_the_table(self) -> None:
        self.assertEqual(stats.t_quantile(1), 12.706)
        self.assertEqual(stats.t_quantile(2), 4.303)
        self.assertEqual(stats.t_quantile(30), 2.042)
        # Between two rows the smaller df is used: the interval gets wider, never narrower.
        self.assertEqual(stats.t_quantile(2.6), 4.303)
        self.assertEqual(stats.t_quantile(35), stats.t_quantile(30))
        self.assertEqual(stats.t_quantile(120), 1.980)
        self.assertEqual(stats.t_quantile(121), 1.960)
        self.assertEqual(stats.t_quantile(10 ** 6), 1.960)
        with self.assertRaises(ValueError):
            stats.t_quantile(0.5)

    def test_the_table_only_falls_as_degrees_of_freedom_grow(self) -> None:
        values = [stats.t_quantile(df) for df in range(1, 200)]
        self.assertEqual(values, sorted(values, reverse=True))


class IntervalTest(unittest.TestCase):
    def test_interval_of_the_mean(self) -> None:
        low, high = stats.mean_interval([10.0, 12.0, 14.0])
        half = 4.303 * 2.0 / math.sqrt(3)            # t(2) * stdev / sqrt(n)
        self.assertAlmostEqual(low, 12.0 - half)
        self.assertAlmostEqual(high, 12.0 + half)

    def test_a_single_run_has_no_interval(self) -> None:
        self.assertIsNone(stats.mean_interval([5.0]))
        summary = stats.summarize([5.0])
        self.assertEqual((summary.n, summary.median, summary.low, summary.high), (1, 5.0, 5.0, 5.0))
        self.assertIsNone(summary.ci)
        self.assertIsNone(summary.spread)
        self.assertFalse(summary.unstable)
        self.assertIsNone(stats.summarize([]))
        self.assertEqual(stats.verdict(stats.paired_ratio([(100.0, 150.0)])), stats.NO_INTERVAL)

    def test_summary_median_min_max_and_spread(self) -> None:
        summary = stats.summarize([100.0, 130.0, 90.0, 110.0])
        self.assertEqual((summary.median, summary.low, summary.high, summary.n), (105.0, 90.0, 130.0, 4))
        self.assertAlmostEqual(summary.spread, statistics.stdev([100, 130, 90, 110]) / 107.5)
        self.assertTrue(summary.unstable)                     # spread over 10%
        self.assertFalse(stats.summarize([100.0, 101.0, 99.0]).unstable)


class RatioTest(unittest.TestCase):
    def test_paired_ratio_is_the_geometric_mean_with_its_interval(self) -> None:
        ratio = stats.paired_ratio([(100.0, 200.0), (100.0, 220.0), (100.0, 180.0)])
        self.assertAlmostEqual(ratio.value, (2.0 * 2.2 * 1.8) ** (1 / 3))
        logs = [math.log(2.0), math.log(2.2), math.log(1.8)]
        half = 4.303 * statistics.stdev(logs) / math.sqrt(3)
        self.assertAlmostEqual(ratio.ci[0], math.exp(statistics.fmean(logs) - half))
        self.assertAlmostEqual(ratio.ci[1], math.exp(statistics.fmean(logs) + half))
        self.assertTrue(ratio.paired)

    def test_pairing_cancels_drift_that_unpaired_runs_cannot(self) -> None:
        # The machine's speed swings x4 between rounds; within each round b is x1.5 of a.
        a = [100.0, 200.0, 50.0]
        b = [150.0, 300.0, 75.0]
        paired = stats.paired_ratio(list(zip(a, b)))
        self.assertAlmostEqual(paired.value, 1.5)
        self.assertEqual(stats.verdict(paired), stats.FASTER_B)
        unpaired = stats.unpaired_ratio(a, b)
        self.assertAlmostEqual(unpaired.value, 1.5)
        self.assertLess(unpaired.ci[0], 1.0)
        self.assertEqual(stats.verdict(unpaired), stats.UNCLEAR)

    def test_unpaired_ratio_of_single_runs_has_no_interval(self) -> None:
        self.assertIsNone(stats.unpaired_ratio([100.0], [150.0]).ci)
        self.assertIsNone(stats.unpaired_ratio([], [150.0]))


class VerdictTest(unittest.TestCase):
    def test_verdicts(self) -> None:
        self.assertEqual(stats.verdict(Ratio(1.5, (1.3, 1.7), True)), stats.FASTER_B)
        self.assertEqual(stats.verdict(Ratio(0.6, (0.5, 0.7), True)), stats.FASTER_A)
        self.assertEqual(stats.verdict(Ratio(1.5, (0.9, 2.5), True)), stats.UNCLEAR)      # the interval holds x1.00
        self.assertEqual(stats.verdict(Ratio(1.08, (1.05, 1.11), True)), stats.UNCLEAR)   # sure, but within noise
        self.assertEqual(stats.verdict(Ratio(1.5, None, True)), stats.NO_INTERVAL)
        self.assertEqual(stats.verdict(None), stats.NO_INTERVAL)

    def test_the_noise_band_is_one_over_one_plus_noise_to_one_plus_noise(self) -> None:
        low, high = stats.noise_band()
        self.assertAlmostEqual(low, 1 / (1 + stats.NOISE))
        self.assertAlmostEqual(high, 1 + stats.NOISE)
        sure = 0.001
        for value, expected in ((high, stats.UNCLEAR), (high * 1.001, stats.FASTER_B),
                                (low, stats.UNCLEAR), (low / 1.001, stats.FASTER_A)):
            with self.subTest(ratio=value):
                self.assertEqual(stats.verdict(Ratio(value, (value - sure, value + sure), True)), expected)

    def test_overlap(self) -> None:
        self.assertTrue(stats.overlap((1.0, 2.0), (1.5, 3.0)))
        self.assertTrue(stats.overlap((1.0, 2.0), (2.0, 3.0)))
        self.assertFalse(stats.overlap((1.0, 2.0), (2.1, 3.0)))
        self.assertIsNone(stats.overlap(None, (2.1, 3.0)))

    def test_disturbed(self) -> None:
        self.assertFalse(stats.disturbed(None))
        self.assertFalse(stats.disturbed({"other_cores": 0.1, "steal_cores": 0.0}))
        self.assertTrue(stats.disturbed({"other_cores": stats.DISTURBED_CORES + 0.01}))
        self.assertTrue(stats.disturbed({"other_cores": 0.0, "steal_cores": stats.DISTURBED_STEAL + 0.01}))
        self.assertTrue(stats.disturbed({"other_cores": 0.2, "idle_servers_cores": 0.1}))   # a busy idle server


if __name__ == "__main__":
    unittest.main()
