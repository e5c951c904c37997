"""Attribution of a change in time: per operator and kernel, each side's seconds per step, the
difference with a 95% interval drawn as the verdict draws (workers, then steps), its share of
the step's change, appeared and vanished, and the remainder no operator holds, as its row."""

import json
import random
import statistics
import sys

import pytest
from profiles import MS, jitter, sides, worker  # made-up workers' profiled steps

from cifar_spec.bench import attribution, operators, stats
from cifar_spec.bench._handle import Worker
from cifar_spec.bench.attribution import REMAINDER, SMALLER, STEP, difference
from cifar_spec.bench.profiled import Profile
from cifar_spec.bench.records import TIME, Case, Judged


def row(rows, name):
    return next(r for r in rows if r.operator == name)


def test_the_operator_that_got_slower_is_named_first_with_an_interval_that_excludes_zero():
    base, cand = sides(1.0, 3.0)
    step, rows = attribution.diff(base, cand)
    first = rows[0]
    assert first.operator == "aten::max_pool2d_with_indices"
    assert first.parent == "aten::max_pool2d"
    assert first.delta == pytest.approx(2.0 * MS, rel=0.02)
    assert 0 < first.low < first.delta < first.high
    assert first.share == pytest.approx(first.delta / step.delta)
    assert first.share > 0.9


def test_an_unchanged_operators_interval_includes_zero():
    base, cand = sides(1.0, 3.0)
    _, rows = attribution.diff(base, cand)
    for name in ("aten::mkldnn_convolution", "aten::addmm"):
        r = row(rows, name)
        assert r.low <= 0 <= r.high, r
        assert abs(r.delta) < 0.02 * 5.0 * MS  # within the values' own 2% jitter


def test_the_remainder_is_the_steps_change_less_every_operators_and_says_how_much_is_explained():
    base, cand = sides(1.0, 3.0)
    for p in cand:  # the candidate also spends 0.5 ms more per step outside any operator
        p.step[:] = [s + 0.5 * MS for s in p.step]
    step, rows = attribution.diff(base, cand)
    remainder = rows[-1]
    assert remainder.operator == REMAINDER
    operators_change = sum(r.delta for r in rows if r.operator != REMAINDER)
    assert remainder.delta == pytest.approx(step.delta - operators_change)
    assert remainder.delta == pytest.approx(0.5 * MS)
    assert attribution.explained(step, rows) == pytest.approx(operators_change / step.delta)
    assert attribution.explained(step, rows) == pytest.approx(0.8, abs=0.01)  # 2 ms of 2.5


def test_an_operator_run_by_one_side_only_is_flagged_appeared_or_vanished_with_zero_on_the_other():
    rng = random.Random(3)
    base = [worker({"aten::addmm": jitter(rng, 1.0), "aten::cumsum": jitter(rng, 0.4)}, 0.2)]
    cand = [worker({"aten::addmm": jitter(rng, 1.0), "aten::cummax": jitter(rng, 0.9)}, 0.2)]
    _, rows = attribution.diff(base * 2, cand * 2)
    appeared, vanished = row(rows, "aten::cummax"), row(rows, "aten::cumsum")
    assert (appeared.presence, appeared.baseline) == (operators.APPEARED, 0.0)
    assert (vanished.presence, vanished.candidate) == (operators.VANISHED, 0.0)
    assert appeared.low > 0 and vanished.high < 0
    assert row(rows, "aten::addmm").presence == ""


def test_workers_not_steps_are_the_unit_a_worker_slower_in_every_step_widens_the_interval():
    """Two candidate workers 40% apart, each steady within itself: steps alone would call the
    pooling's 20% change certain; the workers' disagreement says it is not."""
    base = [worker({"aten::max_pool2d_with_indices": [1.0 * MS] * 8}, 0.1) for _ in range(2)]
    cand = [worker({"aten::max_pool2d_with_indices": [ms * MS] * 8}, 0.1) for ms in (1.0, 1.4)]
    delta, low, high = difference(
        [p.operators["aten::max_pool2d_with_indices"] for p in base],
        [p.operators["aten::max_pool2d_with_indices"] for p in cand],
    )
    assert delta == pytest.approx(0.2 * MS)
    assert low < 0 < high  # Welch's t with one degree of freedom: 0.2 +- 12.7 x 0.2 ms
    steps_only = stats.bootstrap(
        [
            [sum((p.operators["aten::max_pool2d_with_indices"] for p in side), [])]
            for side in (cand, base)
        ],
        lambda c, b: statistics.fmean(c) - statistics.fmean(b),
    )
    assert steps_only[0] > 0  # what pooling the steps of both workers would have said


@pytest.mark.parametrize(
    ("cand_means", "half"),
    [
        # Equal spreads and counts: Welch's degrees of freedom are 2(n - 1) = 4, t = 2.776445
        # (a printed t table), half-width t * sqrt(2 s^2 / n) with s^2 = 1, n = 3.
        ([2.0, 3.0, 4.0], 2.776445 * (2 / 3) ** 0.5),
        # A side with no spread: the other's n - 1 = 2 degrees of freedom, t = 4.302653.
        ([3.0, 3.0, 3.0], 4.302653 * (1 / 3) ** 0.5),
    ],
    ids=["equal-spreads", "one-side-flat"],
)
def test_welchs_interval_of_the_workers_means_has_a_printed_tables_width(cand_means, half):
    base = [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]  # workers' means 1, 2, 3: variance 1
    cand = [[m, m] for m in cand_means]
    low, high = attribution.welch_difference(1.0, base, cand)
    # stats.T_975 keeps 3 decimals: t off by at most 0.0005, over t >= 1.96, is 2.6e-4 of it.
    assert high - 1.0 == pytest.approx(half, rel=2.6e-4) and 1.0 - low == pytest.approx(high - 1.0)


def test_the_interval_is_the_wider_of_the_verdicts_bootstrap_and_welchs_t_of_the_workers_means():
    base = [[1.0, 1.1, 0.9], [1.2, 1.3, 1.1], [0.8, 0.9, 1.0]]
    cand = [[2.0, 2.2, 1.9], [2.6, 2.4, 2.5], [1.7, 1.9, 1.8]]
    delta, low, high = difference(base, cand)
    boot = stats.bootstrap([cand, base], lambda c, b: statistics.fmean(c) - statistics.fmean(b))
    means = [[statistics.fmean(g) for g in side] for side in (base, cand)]
    parts = [statistics.variance(m) / 3 for m in means]
    df = sum(parts) ** 2 / sum(p**2 / 2 for p in parts)
    half = stats.t_975(df) * sum(parts) ** 0.5
    assert delta == pytest.approx(statistics.fmean(sum(cand, [])) - statistics.fmean(sum(base, [])))
    assert (low, high) == pytest.approx((min(boot[0], delta - half), max(boot[1], delta + half)))


def test_operators_under_the_keep_fraction_of_the_step_are_pooled_in_one_row_and_still_add_up():
    rng = random.Random(5)
    ops = lambda extra: {  # noqa: E731
        "aten::addmm": jitter(rng, 10.0),
        "aten::view": jitter(rng, 0.001 + extra),
        "aten::t": jitter(rng, 0.002),
    }
    step, rows = attribution.diff([worker(ops(0.0), 0.3)] * 2, [worker(ops(0.004), 0.3)] * 2)
    names = [r.operator for r in rows]
    assert names == ["aten::addmm", SMALLER, REMAINDER]
    assert row(rows, SMALLER).delta == pytest.approx(0.004 * MS, rel=0.1)
    assert sum(r.delta for r in rows) == pytest.approx(step.delta)


CONV = "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nchw_kernel__5x_cudnn"
POOL = "at::native::max_pool_forward_nchw"


def test_on_cuda_each_operator_lists_its_kernels_that_moved_most_with_their_own_intervals():
    rng = random.Random(11)

    def one(pool_ms: float, transpose: bool) -> Profile:
        conv = {CONV: jitter(rng, 2.0)}
        if transpose:  # the candidate's cuDNN transposes its input first: a kernel appears
            conv["cudnn::engines_precompiled::nchwToNhwcKernel"] = jitter(rng, 0.3)
        kernels = {
            "aten::cudnn_convolution": conv,
            "aten::max_pool2d_with_indices": {POOL: jitter(rng, pool_ms)},
        }
        ops = {op: [sum(v[i] for v in ks.values()) for i in range(8)] for op, ks in kernels.items()}
        return worker(ops, 0.4, kernels, device="cuda")

    base = [one(0.5, False) for _ in range(2)]
    cand = [one(1.5, True) for _ in range(2)]
    _, rows = attribution.diff(base, cand)
    assert [r.operator for r in rows[:2]] == [
        "aten::max_pool2d_with_indices",
        "aten::cudnn_convolution",
    ]
    pooling = rows[0].kernels[0]
    assert (pooling.function, pooling.detail) == (POOL, "<float, float>")
    assert 0 < pooling.low < pooling.delta < pooling.high
    appeared = rows[1].kernels[0]
    assert appeared.function == "cudnn::engines_precompiled::nchwToNhwcKernel"
    assert (appeared.presence, appeared.baseline) == (operators.APPEARED, 0.0)


def test_profiles_of_two_devices_are_refused():
    base, _ = sides(1.0, 1.0)
    cand = [worker({"aten::addmm": [MS] * 8}, 0.1, device="cuda")]
    with pytest.raises(ValueError, match="one device on both sides"):
        attribution.diff(base, cand)


@pytest.mark.parametrize("empty", ["baseline", "both"])
def test_a_side_without_profiles_is_refused_by_name(empty):
    base, cand = sides(1.0, 1.0)
    base, cand = [], ([] if empty == "both" else cand)
    with pytest.raises(ValueError, match="one device on both sides"):
        attribution.diff(base, cand)


def judged() -> Judged:
    case = Case("cpu", "eager", 16)
    return Judged(
        case, TIME, "regression", 1.3, 1.2, 1.4, 10 * MS, 13 * MS, figures={"estimates": {}}
    )


def test_a_judged_case_attributed_holds_its_top_operators_and_the_remainder_and_every_row_in_json():
    base, cand = sides(1.0, 3.0)
    done = attribution.attributed(judged(), base, cand, top=2)
    assert (done.verdict, done.ratio, done.baseline) == ("regression", 1.3, 10 * MS)
    assert [r.operator for r in done.top] == [
        "aten::max_pool2d_with_indices",
        *[r.operator for r in done.top[1:2]],
        REMAINDER,
    ]
    saved = json.loads(json.dumps(done.as_dict()))["attribution"]
    assert saved["step"]["operator"] == STEP
    assert [r["operator"] for r in saved["rows"]][-1] == REMAINDER
    assert len(saved["rows"]) == 4  # three operators and the remainder
    first = saved["rows"][0]
    assert first["delta_low"] > 0 and first["presence"] is None
    assert saved["explained"] == pytest.approx(1.0, abs=0.01)
    assert "estimates" in done.as_dict()  # the verdict's figures are kept beside it


def test_a_counted_operators_json_is_as_before_without_an_interval():
    counted = operators.OperatorDelta("aten::cumsum", None, 0.0, 5.0, 1.0, (0.0, 5.0))
    assert "delta_low" not in counted.as_dict() and "presence" not in counted.as_dict()


@pytest.mark.slow
def test_a_pooling_planted_slower_is_named_first_from_the_profiled_rounds_of_two_workers(
    slow_pooling_python,
):
    """Profiled for real, through workers, as compare will ask them: this Python, and this
    Python with every max_pool2d pooling 8 times, eager at batch 16, one worker each."""
    plant = slow_pooling_python(8)
    case = Case("cpu", "eager", 16)
    profiles = []
    for python in (sys.executable, str(plant)):
        with Worker(python, "profiled", threads=1) as w:
            w.call(case.request(), 300)
            reply = w.call({"op": "profile", "key": case.key, "steps": 6}, 300)
            profiles.append(Profile.from_dict(reply["profile"]))
    step, rows = attribution.diff([profiles[0]], [profiles[1]])
    printed = "\n".join(f"{r.operator} {r.delta:+.6f} [{r.low:+.6f}, {r.high:+.6f}]" for r in rows)
    first = rows[0]
    assert first.operator == "aten::max_pool2d_with_indices", printed
    assert first.parent == "aten::max_pool2d", printed
    assert first.low > 0, printed
    # Seven extra poolings: about seven times the baseline's own pooling time.
    assert first.candidate > 4 * first.baseline, printed
