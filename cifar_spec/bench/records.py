"""The harness's shared records: what a case is, and the verdicts a judged case ends in.

A low module (no torch, no processes): every part of the harness, the formatters included,
names a case and a verdict the same way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """What to build: a step variant at a batch size on a device, or a named loop."""

    device: str
    variant: str
    batch: int

    @property
    def key(self) -> str:
        return f"{self.device}-{self.variant}-{self.batch}"

    def request(self) -> dict:
        return {
            "op": "build",
            "key": self.key,
            "device": self.device,
            "variant": self.variant,
            "batch": self.batch,
        }


# Verdicts on a ratio candidate / baseline (above 1: the candidate is slower, or executes more).
REGRESSION, IMPROVEMENT, NO_CHANGE, INCONCLUSIVE = (
    "regression",
    "improvement",
    "no change",
    "inconclusive",
)
SKIPPED = "skipped"  # a case that could not run: no verdict


def verdict(low: float, high: float, threshold: float) -> str:
    """What the interval [low, high] of a ratio says at a relative `threshold` (0.05 for 5%).

    Regression: the whole interval lies above 1 + threshold; improvement: below
    1 - threshold; no change: inside both bounds; otherwise it straddles a
    bound and more samples are needed. Times and counts are judged by it alike.
    """
    if low > 1 + threshold:
        return REGRESSION
    if high < 1 - threshold:
        return IMPROVEMENT
    if low >= 1 - threshold and high <= 1 + threshold:
        return NO_CHANGE
    return INCONCLUSIVE


def exit_code(verdicts: list[str]) -> int:
    """1 on any regression, else 3 when any case is inconclusive or none was judged, else 0:
    the exit code of compare and of the gate."""
    if REGRESSION in verdicts:
        return 1
    judged = [v for v in verdicts if v != SKIPPED]
    return 3 if not judged or INCONCLUSIVE in judged else 0
