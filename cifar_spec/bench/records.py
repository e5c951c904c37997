"""The harness's shared records: a case, a judged case, the verdicts, a comparison, and the
cases each command measures when none are asked for.

A low module (no torch, no processes): every part of the harness, the formatters included,
names a case, a verdict and a judged case the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TIME, INSTRUCTIONS = "time", "instructions"  # the metrics a case is judged on


WORKERS = 3  # fresh processes per figure (per environment in compare): one unlucky one shows
COUNT_PROCESSES = 2  # counting workers per environment: enough to see whether they agree


# Batch sizes when none are asked for: bench and gate measure every size of BATCHES; compare,
# counting and bench-ddp the two of JUDGED_BATCHES (the tutorial's batch and a large one),
# since each case they judge costs minutes.
BATCHES = {"cpu": [1, 64, 256], "cuda": [1, 256, 1024, 4096]}
JUDGED_BATCHES = {"cpu": [1, 64], "cuda": [1, 256]}


def batches_help(sizes: dict[str, list[int]]) -> str:
    """'1 64 on CPU, 1 256 on CUDA': a default of the table above, as --help says it."""
    return ", ".join(f"{' '.join(map(str, b))} on {d.upper()}" for d, b in sizes.items())


@dataclass(frozen=True)
class Case:
    """What to build: a step variant at a batch size on a device, or a named loop."""

    device: str
    variant: str
    batch: int

    @classmethod
    def of(cls, row: dict) -> Case:
        """The case a saved or measured row is of."""
        return cls(row["device"], row["variant"], row["batch"])

    @property
    def key(self) -> str:
        return f"{self.device}-{self.variant}-{self.batch}"

    @property
    def name(self) -> str:
        """As tables print it: 'cpu eager batch 1'."""
        return f"{self.device} {self.variant} batch {self.batch}"

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


@dataclass(frozen=True)
class Judged:
    """One case judged on one metric: the ratio candidate / baseline with its interval, and the
    verdict (a skipped case has a reason instead).

    On time the interval is a 95% confidence interval; on instructions, the range over every
    counting process of both sides (`counts.py`). `baseline` and `candidate` are per step:
    seconds (medians) or instructions (means over processes). `figures` holds what the metric
    has beyond them, as saved in JSON; `top` the attribution of a moved case.
    """

    case: Case
    metric: str
    verdict: str
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    baseline: float | None = None
    candidate: float | None = None
    note: str = ""  # what the reader must know about the figures (processes that disagree)
    reason: str = ""  # why a skipped case was not judged
    moved: bool = False  # beyond the threshold: its attribution is printed, not only saved
    top: tuple = ()
    figures: dict = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        return {
            "device": self.case.device,
            "variant": self.case.variant,
            "batch": self.case.batch,
            "metric": self.metric,
            "verdict": self.verdict,
            "reason": self.reason,
            "note": self.note,
            "moved": self.moved,
            "ratio": self.ratio,
            "ratio_low": self.low,
            "ratio_high": self.high,
            **self.figures,
        }


def skipped(case: Case, metric: str, reason: str) -> Judged:
    return Judged(case, metric, SKIPPED, reason=reason)


def decide(*judged: list[Judged]) -> dict[Case, Judged]:
    """{case: the judged case that decides it}: the later lists win, so that counts, given
    last, decide where they ran (they repeat exactly; time on a shared CPU does not). A skip
    decides only a case nothing judged."""
    out: dict[Case, Judged] = {}
    for one in judged:
        for j in one:
            if j.verdict != SKIPPED or j.case not in out:
                out[j.case] = j
    return out


@dataclass
class Comparison:
    """What `compare` found: each metric's environments, threshold and judged cases."""

    environments: dict[str, dict] = field(default_factory=dict)  # metric: {side: info}
    thresholds: dict[str, float] = field(default_factory=dict)  # metric: threshold
    judged: dict[str, list[Judged]] = field(default_factory=dict)  # metric: judged cases

    @property
    def decided(self) -> dict[Case, Judged]:
        return decide(*(self.judged.get(m, []) for m in (TIME, INSTRUCTIONS)))

    @property
    def exit_code(self) -> int:
        return exit_code([j.verdict for j in self.decided.values()])

    def as_dict(self) -> dict:
        out: dict = {"metric": "both" if len(self.judged) == 2 else next(iter(self.judged))}
        if TIME in self.judged:
            out.update(
                environments=self.environments[TIME],
                threshold=self.thresholds[TIME],
                results=[j.as_dict() for j in self.judged[TIME]],
            )
        if INSTRUCTIONS in self.judged:
            out.setdefault("environments", self.environments[INSTRUCTIONS])
            out.update(
                counting_environments=self.environments[INSTRUCTIONS],  # one thread, callgrind
                instructions_threshold=self.thresholds[INSTRUCTIONS],
                counts=[j.as_dict() for j in self.judged[INSTRUCTIONS]],
            )
        out["verdicts"] = [
            {
                "device": c.device,
                "variant": c.variant,
                "batch": c.batch,
                "verdict": j.verdict,
                "decided_by": j.metric,
            }
            for c, j in self.decided.items()
        ]
        return out
