"""The statistics of a timing: intervals on known samples, the spread, the four verdicts."""

import math

import pytest

from cifar_spec.bench import records, stats


def test_the_95_percent_interval_of_a_median_of_ten_is_the_2nd_to_the_9th_value():
    # P(2 <= Binomial(10, 1/2) <= 8) = 1 - 2 * 11/1024 = 0.979; one rank narrower gives 0.891.
    assert stats.median_ci_ranks(10) == (1, 8)
    assert stats.median_ci(list(range(10, 0, -1))) == (2, 9)


@pytest.mark.parametrize("n", [6, 10, 24, 50, 101])
def test_the_order_statistics_interval_covers_the_median_with_at_least_95_percent(n):
    lo, hi = stats.median_ci_ranks(n)
    # P(lo < count of values below the median <= hi) under Binomial(n, 1/2)
    covered = sum(math.comb(n, i) for i in range(lo + 1, hi + 1)) / 2**n
    assert covered >= 0.95
    narrower = sum(math.comb(n, i) for i in range(lo + 2, hi)) / 2**n
    assert narrower < 0.95  # and it is the narrowest such pair


def test_fewer_than_six_values_give_their_whole_range():
    assert stats.median_ci([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0)


def test_the_spread_is_the_interquartile_range_over_the_median():
    assert stats.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert stats.spread([7.0] * 9) == 0.0


def test_one_process_uses_the_order_statistics_interval():
    values = [1.0 + i / 100 for i in range(20)]
    assert stats.clustered_median_ci([values]) == stats.median_ci(values)


def test_an_unlucky_process_widens_the_interval_instead_of_hiding_in_it():
    steady = [[1.0 + i / 1000 for i in range(20)] for _ in range(3)]
    one_slow = steady[:2] + [[1.5 + i / 1000 for i in range(20)]]
    low, high = stats.clustered_median_ci(steady)
    low_slow, high_slow = stats.clustered_median_ci(one_slow)
    assert high - low < 0.02
    assert high_slow > 1.4  # some resamples draw the slow process twice


def test_the_interval_is_the_same_for_the_same_samples():
    groups = [[1.0, 1.1, 0.9, 1.05], [1.2, 1.0, 1.1, 0.95]]
    assert stats.clustered_median_ci(groups) == stats.clustered_median_ci(groups)


def test_an_estimate_of_no_samples_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        stats.estimate([[], []])


def test_a_spread_above_ten_percent_is_noisy():
    assert stats.estimate([[1.0, 1.0, 1.3, 1.3]]).noisy
    assert not stats.estimate([[1.0, 1.01, 1.02, 1.03]]).noisy


def ratio(low, high):
    return stats.Estimate((low + high) / 2, low, high, 0.01, 20, 2)


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (1.08, 1.20, records.REGRESSION),  # wholly above 1.05
        (0.80, 0.93, records.IMPROVEMENT),  # wholly below 0.95
        (0.97, 1.04, records.NO_CHANGE),  # inside both bounds
        (1.02, 1.09, records.INCONCLUSIVE),  # straddles 1.05
        (0.90, 1.00, records.INCONCLUSIVE),  # straddles 0.95
    ],
    ids=["regression", "improvement", "no-change", "straddles-above", "straddles-below"],
)
def test_the_verdict_reads_the_interval_against_the_threshold(low, high, expected):
    assert records.verdict(low, high, 0.05) == expected


def test_a_speed_up_is_the_inverted_time_ratio_with_its_interval_flipped():
    inverted = stats.Estimate(0.8, 0.5, 1.0, 0.1, 10, 1).inverted()
    assert (inverted.median, inverted.low, inverted.high) == (1.25, 1.0, 2.0)


def test_two_runs_of_the_same_distribution_give_a_ratio_interval_around_one():
    base = [[1.0 + (i * 7 % 10) / 100 for i in range(30)] for _ in range(3)]
    same = [[v for v in reversed(g)] for g in base]
    r = stats.ratio_of_medians(base, same)
    assert r.low <= 1.0 <= r.high and r.high - r.low < 0.1


def test_a_run_thirty_percent_slower_gives_a_ratio_interval_above_one_point_two():
    base = [[1.0 + (i * 7 % 10) / 100 for i in range(30)] for _ in range(3)]
    slower = [[1.3 * v for v in g] for g in base]
    r = stats.ratio_of_medians(base, slower)
    assert r.median == pytest.approx(1.3) and r.low > 1.2
    assert records.verdict(r.low, r.high, 0.10) == records.REGRESSION


def test_the_process_interval_is_a_t_interval_of_the_processes_log_medians():
    groups = [[math.exp(-0.1)] * 5, [math.exp(0.1)] * 5]
    low, high = stats.t_interval(1.0, groups)
    half = 12.706 * 0.2 / math.sqrt(2) / math.sqrt(2)  # t(1) * sd(logs) / sqrt(2)
    assert (low, high) == pytest.approx((math.exp(-half), math.exp(half)))


def test_two_processes_that_disagree_by_twenty_percent_give_an_interval_spanning_both():
    est = stats.estimate([[1.0 + i / 1000 for i in range(10)], [1.2 + i / 1000 for i in range(10)]])
    assert est.low < 1.0 and est.high > 1.2
    assert records.verdict(est.low, est.high, 0.05) == records.INCONCLUSIVE


def test_two_runs_whose_processes_disagree_get_a_wide_gate_interval():
    base = [[1.0] * 10, [1.0] * 10, [1.0] * 10]
    new = [[1.0] * 10, [1.0] * 10, [1.5] * 10]  # one unlucky process in the new run
    r = stats.ratio_of_medians(base, new)
    assert r.median == 1.0 and r.high > 1.5
    assert records.verdict(r.low, r.high, 0.10) == records.INCONCLUSIVE


def test_six_samples_are_the_fewest_whose_order_statistics_interval_is_95_percent():
    assert stats.order_confidence(stats.SAMPLES_FOR_95) >= 0.95
    assert stats.order_confidence(stats.SAMPLES_FOR_95 - 1) < 0.95


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_below_six_samples_the_whole_range_covers_the_median_with_1_minus_2_to_the_1_minus_n(n):
    assert stats.order_confidence(n) == pytest.approx(1 - 2 ** (1 - n))


def test_an_interval_from_two_samples_of_one_process_says_it_is_a_50_percent_range():
    figure = stats.estimate([[1.0, 1.2]])
    assert figure.confidence == 0.5 and figure.short
    assert "the range of 2 samples of one process, a 50% interval, not a 95% CI" in figure.note
    saved = figure.as_dict()
    assert saved["confidence"] == 0.5 and saved["ci_note"] == figure.note
    assert saved["ci_method"] == "order statistics"


def test_a_speed_up_keeps_what_its_interval_is_when_inverted_and_scaled():
    figure = stats.estimate([[1.0, 1.2, 1.1]]).inverted().scaled(4)
    assert figure.confidence == 0.75 and "range of 3 samples" in figure.note


def test_intervals_across_processes_or_of_six_samples_are_95_percent_and_unmarked():
    across = stats.estimate([[1.0, 1.1], [1.05, 1.2]])
    one = stats.estimate([[1.0 + i / 100 for i in range(6)]])
    for figure in (across, one):
        assert figure.confidence >= 0.95 and not figure.short and figure.note == ""
        assert figure.as_dict()["ci_note"] == ""


def test_a_ratio_of_runs_with_a_one_process_side_of_few_samples_is_not_called_95_percent():
    short = stats.ratio_of_medians([[1.0, 1.1, 1.2, 1.05]], [[1.0, 1.1, 1.2, 1.05] * 2])
    assert short.confidence is None and short.short and "not a 95% CI" in short.note
    assert short.method == stats.BOOTSTRAP  # a bootstrap, not order statistics
    enough = stats.ratio_of_medians([[1.0 + i / 100 for i in range(8)]], [[1.1] * 8])
    assert enough.confidence == 0.95 and not enough.short
