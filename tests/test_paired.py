"""Paired rounds: the order of the rounds, and the ratio each quad of them gives."""

import pytest

from cifar_spec.bench.paired import BLOCK, measure_pairs, quad_ratios


class Recorded:
    """An arm that logs when it runs and takes as long as it is told."""

    def __init__(self, name: str, log: list[str], seconds: float = 1.0) -> None:
        self.name, self.log, self.seconds = name, log, seconds

    def round(self) -> tuple[float, None]:
        self.log.append(self.name)
        return self.seconds, None


def test_a_quad_cancels_a_lean_toward_whichever_arm_runs_first():
    # B is truly 1.1x A's time, and whichever arm runs second in a pair pays 13% more.
    ab = (1.0, 1.1 * 1.13)  # A first, B second
    ba = (1.13, 1.1)  # B first, A second
    assert [b / a for a, b in (ab, ba)] == pytest.approx([1.243, 0.973], abs=1e-3)
    assert quad_ratios([ab, ba, ab]) == pytest.approx([1.1])  # the lone last pair is left out


def test_blocks_open_with_each_arm_in_turn_and_alternate_a_b_b_a_within():
    log: list[str] = []
    measure_pairs([(Recorded("A", log), Recorded("B", log))], min_pairs=2 * BLOCK)
    first, second = "".join(log[: 2 * BLOCK]), "".join(log[2 * BLOCK : 4 * BLOCK])
    assert first == "ABBA" * (BLOCK // 2) and second == "BAAB" * (BLOCK // 2)


def test_each_arm_follows_a_round_of_the_other_as_often_over_two_blocks():
    log: list[str] = ["other worker"]
    measure_pairs([(Recorded("A", log), Recorded("B", log))], min_pairs=2 * BLOCK)
    after_other = {arm: 0 for arm in "AB"}
    for before, now in zip(log, log[1:]):
        after_other[now] += before != now
    assert after_other["A"] == after_other["B"]


def test_the_speed_ratio_of_paired_samples_is_taken_per_quad():
    log: list[str] = []
    samples = measure_pairs([(Recorded("A", log, 2.0), Recorded("B", log, 3.0))], min_pairs=BLOCK)
    ratio = samples.ratio()
    assert ratio.median == pytest.approx(1.5) and ratio.samples == BLOCK // 2
