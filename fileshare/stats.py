"""Statistics of repeated runs, as small pure functions of samples (standard library only).

A sweep measures each cell several times on each model; this module says how
sure those numbers are, in the manner of hyperfine and pyperf: the median and
spread of one model's runs, a 95% confidence interval from Student's t (a table,
as pyperf keeps one), the ratio of two models with its interval, and a verdict
that calls a difference only when the interval excludes x1.00 and the ratio lies
outside a stated noise band.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

# Two-sided 95% quantiles of Student's t by degrees of freedom; between two rows the smaller number of
# degrees of freedom is used, which widens the interval rather than narrowing it.
T_TABLE_95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
    20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
    29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
T_INFINITY_95 = 1.960

# A ratio within this share of x1.00 either way (x1/1.1 to x1.1) is no clear difference even when its
# interval excludes x1.00: runs of one cell on a shared 2-core machine move that much between sweeps.
NOISE = 0.10
# A model's runs of one cell whose spread (standard deviation / mean) passes this may be unstable (pyperf's 10%).
UNSTABLE_SPREAD = 0.10

# A run during which the rest of the machine used this many cores, or lost this many to steal, was disturbed.
DISTURBED_CORES = 0.25
DISTURBED_STEAL = 0.10
# /proc counts CPU time in clock ticks (a hundredth of a second on Linux, per core), so cores over a shorter
# window than this are too coarse to call a run disturbed.
MIN_CPU_WINDOW_S = 0.25

FASTER_B, FASTER_A, UNCLEAR, NO_INTERVAL = "b faster", "a faster", "no clear difference", "no interval"


def t_quantile(df: float) -> float:
    """The 95% two-sided quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df > max(T_TABLE_95):
        return T_INFINITY_95
    return T_TABLE_95[max(d for d in T_TABLE_95 if d <= df)]


def mean_interval(values: Sequence[float]) -> Optional[tuple[float, float]]:
    """95% confidence interval of the mean of ``values``; None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """One model's runs of one cell."""
    n: int
    median: float
    low: float              # the smallest run
    high: float             # the largest run
    mean: float
    ci: Optional[tuple[float, float]]    # 95% CI of the mean; None with one run
    spread: Optional[float]              # standard deviation / mean; None with one run

    @property
    def unstable(self) -> bool:
        return self.spread is not None and self.spread > UNSTABLE_SPREAD

    def as_dict(self) -> dict:
        return {"n": self.n, "median": self.median, "min": self.low, "max": self.high, "mean": self.mean,
                "ci_low": self.ci[0] if self.ci else None, "ci_high": self.ci[1] if self.ci else None,
                "spread": self.spread}


def summarize(values: Sequence[float]) -> Optional[Summary]:
    """Median, min, max, mean, 95% CI and relative spread of ``values``; None when there are none."""
    if not values:
        return None
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) / mean if len(values) > 1 and mean > 0 else None
    return Summary(len(values), statistics.median(values), min(values), max(values), mean,
                   mean_interval(values), spread)


@dataclass(frozen=True)
class Ratio:
    """b / a with its 95% confidence interval (a geometric mean: ratios multiply, they do not add)."""
    value: float
    ci: Optional[tuple[float, float]]
    paired: bool            # from runs side by side (pairs), or from two independent sets of runs

    def as_dict(self) -> dict:
        return {"ratio": self.value, "ci_low": self.ci[0] if self.ci else None,
                "ci_high": self.ci[1] if self.ci else None, "paired": self.paired}


def paired_ratio(pairs: Sequence[tuple[float, float]]) -> Optional[Ratio]:
    """b / a from (a, b) runs made side by side: the interval of the mean log ratio of each pair.

    Pairing cancels what both runs of a pair shared (the machine's speed at that moment)."""
    logs = [math.log(b / a) for a, b in pairs if a > 0 and b > 0]
    if not logs:
        return None
    interval = mean_interval(logs)
    return Ratio(math.exp(statistics.fmean(logs)), None if interval is None else
                 (math.exp(interval[0]), math.exp(interval[1])), True)


def unpaired_ratio(a: Sequence[float], b: Sequence[float]) -> Optional[Ratio]:
    """b / a from independent runs (Welch's interval on the logs): for runs that were not made in pairs."""
    la, lb = [math.log(v) for v in a if v > 0], [math.log(v) for v in b if v > 0]
    if not la or not lb:
        return None
    value = math.exp(statistics.fmean(lb) - statistics.fmean(la))
    if len(la) < 2 or len(lb) < 2:
        return Ratio(value, None, False)
    va, vb = statistics.variance(la) / len(la), statistics.variance(lb) / len(lb)
    if va + vb == 0:
        return Ratio(value, (value, value), False)
    df = (va + vb) ** 2 / (va ** 2 / (len(la) - 1) + vb ** 2 / (len(lb) - 1))
    half = t_quantile(df) * math.sqrt(va + vb)
    return Ratio(value, (value * math.exp(-half), value * math.exp(half)), False)


def noise_band(noise: float = NOISE) -> tuple[float, float]:
    """The ratios that count as no clear difference however sure the interval is."""
    return 1 / (1 + noise), 1 + noise


def verdict(ratio: Optional[Ratio], noise: float = NOISE) -> str:
    """FASTER_B (b/a above the band), FASTER_A, UNCLEAR (interval holds x1.00, or ratio inside the band)
    or NO_INTERVAL (a single run, or nothing measured)."""
    if ratio is None or ratio.ci is None:
        return NO_INTERVAL
    low, high = noise_band(noise)
    if ratio.ci[0] <= 1 <= ratio.ci[1] or low <= ratio.value <= high:
        return UNCLEAR
    return FASTER_B if ratio.value > 1 else FASTER_A


def overlap(a: Optional[tuple[float, float]], b: Optional[tuple[float, float]]) -> Optional[bool]:
    """Whether two intervals share a point; None when either is missing."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def relative_half_width(summary: Optional[Summary]) -> Optional[float]:
    """Half the width of the interval as a share of the mean (how tight the interval is)."""
    if summary is None or summary.ci is None or summary.mean <= 0:
        return None
    return (summary.ci[1] - summary.ci[0]) / 2 / summary.mean


def noise_usage(sample: dict) -> Optional[dict]:
    """The cores that say whether a run was disturbed: those over its timed transfer (``usage``), unless that
    window is shorter than MIN_CPU_WINDOW_S and the sweep's longer window around the whole stress test
    (``usage_whole_run``) was recorded too."""
    usage, whole = sample.get("usage"), sample.get("usage_whole_run")
    if usage and whole and (usage.get("window_s") or 0) < MIN_CPU_WINDOW_S \
            and (whole.get("window_s") or 0) > (usage.get("window_s") or 0):
        return whole
    return usage


def disturbed(usage: Optional[dict]) -> bool:
    """Whether a run shared the machine with other work (``usage`` as the sweep records it per run)."""
    if not usage:
        return False
    others = (usage.get("other_cores") or 0) + (usage.get("idle_servers_cores") or 0)
    return others > DISTURBED_CORES or (usage.get("steal_cores") or 0) > DISTURBED_STEAL
