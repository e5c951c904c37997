"""The statistics of a timing: a median with a 95% confidence interval, its spread, a verdict.

Step times are skewed (a round can only be slowed, never sped up, by the rest
of the machine) and come in clusters: each worker process has state of its own
(where its tensors landed, which kernels it picked) that can move all its
timings together, by up to 40% on a shared 2-core runner. So:

- a figure is a median, never a mean;
- within one process its confidence interval comes from order statistics
  (distribution-free: the ranks of the sorted sample that bracket the median
  with binomial probability >= 95%);
- across processes it is the wider of a two-level bootstrap (draw processes
  with replacement, then samples within each) and a t-interval of the
  processes' own medians, so that the luck of one process widens the interval
  instead of hiding in it (the bootstrap alone is too narrow with 2-4
  processes: same-environment compares on a loaded machine gave intervals that
  excluded 1);
- the spread is IQR / median; above NOISY_SPREAD a figure is marked noisy;
- an interval says what it is (`Estimate.confidence`, one rule in
  `interval_confidence`): one process's order statistics reach 95% only from
  SAMPLES_FOR_95 samples; below, the whole range covers the median with
  probability 1 - 2^(1 - n) (50% for two), and the tables mark it as such.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

CONFIDENCE = 0.95


NOISY_SPREAD = 0.10  # IQR / median above which a figure is marked noisy


BOOTSTRAP_RESAMPLES = 2000


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, linear between the two nearest order statistics."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> float:
    """Interquartile range over the median: 0.1 means the middle half spans 10% of it."""
    middle = statistics.median(values)
    return (quantile(values, 0.75) - quantile(values, 0.25)) / middle if middle else math.inf


def rank_coverage(n: int, lo: int, hi: int) -> float:
    """P(x[lo] <= median <= x[hi]) for n sorted samples of a continuous distribution.

    The number of samples below the true median is Binomial(n, 1/2); the
    interval holds the median when that number is above lo and at most hi.
    """
    return sum(math.comb(n, i) for i in range(lo + 1, hi + 1)) / 2**n


def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted sample with P(x[lo] <= median <= x[hi]) >= confidence:
    the narrowest symmetric pair that holds that much mass.

    For n < SAMPLES_FOR_95 no pair reaches 95% and the whole range is returned;
    `order_confidence` says how much it does reach.
    """
    for lo in range((n - 1) // 2, -1, -1):
        if rank_coverage(n, lo, n - 1 - lo) >= confidence:
            return lo, n - 1 - lo
    return 0, max(0, n - 1)


def order_confidence(n: int) -> float:
    """The real confidence of the order-statistics interval of n samples: at or above 95%
    from SAMPLES_FOR_95 on; below, that of their whole range, 1 - 2^(1 - n) (50% for 2)."""
    return rank_coverage(n, *median_ci_ranks(n))


SAMPLES_FOR_95 = 6  # the fewest samples of one process whose range covers the median 95%


def median_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Order-statistics confidence interval of the median of one sample."""
    ordered = sorted(values)
    lo, hi = median_ci_ranks(len(ordered), confidence)
    return ordered[lo], ordered[hi]


Groups = Sequence[Sequence[float]]  # samples, one list per process


def resample(groups: list[list[float]], rng: random.Random) -> list[float]:
    """One bootstrap draw: processes with replacement, then samples within each drawn one."""
    drawn = []
    for group in rng.choices(groups, k=len(groups)):
        drawn.extend(rng.choices(group, k=len(group)))
    return drawn


def bootstrap(
    sides: list[list[list[float]]],
    statistic: Callable[..., float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic(*draws)`: each resample draws every side (its groups)
    in turn, two levels deep. The one bootstrap of the harness: a median, or a ratio of two."""
    rng = random.Random(seed)  # a fixed seed: the same samples give the same interval
    values = [statistic(*[resample(side, rng) for side in sides]) for _ in range(resamples)]
    tail = (1 - confidence) / 2
    return quantile(values, tail), quantile(values, 1 - tail)


def clustered_median_ci(
    groups: Groups,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled median, drawing groups, then values in each.

    With one group this is the order-statistics interval (the bootstrap adds
    nothing there but noise).
    """
    groups = [list(g) for g in groups if len(g)]
    if len(groups) == 1:
        return median_ci(groups[0], confidence)
    return bootstrap([groups], statistics.median, confidence, resamples, seed)


# Student's t at 97.5% for 1..30 degrees of freedom (a two-sided 95% interval); 1.96 beyond.
T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_975(df: float) -> float:
    return T_975[max(1, math.floor(df)) - 1] if df < len(T_975) + 1 else 1.96


def t_interval(center: float, *sides: Groups) -> tuple[float, float]:
    """`center` -/x a t-interval of the processes' own medians, on the log scale: of one side
    (k - 1 degrees of freedom), or Welch's of two (runs minutes apart).

    The bootstrap draws from the few processes it has and so cannot see how
    much a new process would differ: with 2 or 3 processes it is far too
    narrow. This interval widens with the processes' disagreement and with
    how few they are (t = 12.7 for two, 4.3 for three).
    """
    logs = [[math.log(statistics.median(g)) for g in side if len(g)] for side in sides]
    parts = [statistics.variance(x) / len(x) for x in logs]
    total = sum(parts)
    if total == 0:
        return center, center
    if len(logs) == 1:
        df = len(logs[0]) - 1
    else:  # Welch-Satterthwaite
        df = total**2 / sum(p**2 / (len(x) - 1) for p, x in zip(parts, logs))
    half = t_975(df) * math.sqrt(total)
    return center * math.exp(-half), center * math.exp(half)


def widest(*intervals: tuple[float, float]) -> tuple[float, float]:
    """The interval that covers every one given: the lowest low to the highest high."""
    return min(low for low, _ in intervals), max(high for _, high in intervals)


ORDER_STATISTICS = "order statistics"
BOOTSTRAP_AND_T = (
    "the wider of a two-level bootstrap (processes, then samples) and a t-interval "
    "of the processes' medians"
)
BOOTSTRAP = "a two-level bootstrap (processes, then samples)"


@dataclass(frozen=True)
class Estimate:
    """A median with its confidence interval and spread, from samples grouped by process.

    `confidence` is what the interval really is: 0.95 for the intervals across processes,
    the exact coverage of the order-statistics interval of one process (below 0.95 under
    SAMPLES_FOR_95 samples), or None where it is known only to fall short of 0.95.
    """

    median: float
    low: float
    high: float
    spread: float
    samples: int
    processes: int
    confidence: float | None = CONFIDENCE
    method: str = BOOTSTRAP_AND_T

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    @property
    def short(self) -> bool:
        """The interval is not a 95% confidence interval: too few samples for one."""
        return self.confidence is None or self.confidence < CONFIDENCE

    def inverted(self) -> Estimate:
        """The same estimate of 1/x (a time ratio as a speed-up); the interval flips."""
        return replace(self, median=1 / self.median, low=1 / self.high, high=1 / self.low)

    def scaled(self, factor: float) -> Estimate:
        """The same estimate of factor * x."""
        return replace(
            self, median=factor * self.median, low=factor * self.low, high=factor * self.high
        )

    def as_dict(self) -> dict:
        return {
            "median": self.median,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "spread": self.spread,
            "noisy": self.noisy,
            "samples": self.samples,
            "processes": self.processes,
            "ci_method": self.method,
            "ci_note": self.note,
        }

    @property
    def note(self) -> str:
        """What an interval short of 95% is, for a table's legend and the JSON; else ''."""
        if not self.short:
            return ""
        if self.confidence is None:
            return (
                f"a bootstrap over one process of fewer than {SAMPLES_FOR_95} samples on a "
                "side: below 95%, not a 95% CI"
            )
        return (
            f"the range of {self.samples} samples of one process, a {self.confidence:.0%} "
            f"interval, not a 95% CI (that takes {SAMPLES_FOR_95} samples, or 2 processes)"
        )


def interval_confidence(*sides: list[int]) -> float | None:
    """What an interval is, from each side's samples per process: the one rule.

    Across processes on every side: 95%, by construction (the t-interval widens for few
    processes). One side of one process: the exact coverage of its order-statistics
    interval. Two sides, one of them a single process: 95% if each such side has
    SAMPLES_FOR_95 samples; else None, short of 95% by an amount no formula here gives.
    """
    if all(len(sizes) > 1 for sizes in sides):
        return CONFIDENCE
    if len(sides) == 1:
        return order_confidence(sides[0][0])
    if all(len(sizes) > 1 or sizes[0] >= SAMPLES_FOR_95 for sizes in sides):
        return CONFIDENCE
    return None


def estimate(groups: Groups) -> Estimate:
    """The pooled median of every group's samples, its interval (95%, or what it is) and spread.

    The interval: order statistics for one process; for several, the wider of
    the two-level bootstrap and the t-interval of the processes' medians.
    """
    groups = [list(g) for g in groups if len(g)]
    pooled = [v for g in groups for v in g]
    if not pooled:
        raise ValueError("no samples to estimate from")
    center = statistics.median(pooled)
    interval = clustered_median_ci(groups)
    if len(groups) > 1:
        interval = widest(interval, t_interval(center, groups))
    method = BOOTSTRAP_AND_T if len(groups) > 1 else ORDER_STATISTICS
    confidence = interval_confidence([len(g) for g in groups])
    return Estimate(center, *interval, spread(pooled), len(pooled), len(groups), confidence, method)


def ratio_of_medians(base: Groups, new: Groups) -> Estimate:
    """new / base of two unpaired samples (runs minutes apart), each grouped by process.

    The interval: the wider of the two-level bootstrap of both sides, drawn
    independently, and Welch's t-interval of their processes' medians. The
    spread is that of `new`.
    """
    base = [list(g) for g in base if len(g)]
    new = [list(g) for g in new if len(g)]
    if not base or not new:
        raise ValueError("no samples to compare")
    pooled_new = [v for g in new for v in g]
    ratio = statistics.median(pooled_new) / statistics.median(v for g in base for v in g)
    interval = bootstrap([new, base], lambda n, b: statistics.median(n) / statistics.median(b))
    method = BOOTSTRAP
    if len(base) > 1 and len(new) > 1:
        interval = widest(interval, t_interval(ratio, base, new))
        method = BOOTSTRAP_AND_T
    confidence = interval_confidence([len(g) for g in base], [len(g) for g in new])
    return Estimate(
        ratio, *interval, spread(pooled_new), len(pooled_new), len(new), confidence, method
    )
