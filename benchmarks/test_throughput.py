"""Images per second of one training step, per device, variant and batch size.

Timed only under `pytest --benchmark-only`; otherwise each runs once as a
check that the variant trains (its loss is finite and the weights move).
"""

import pytest
import torch

from cifar_spec.bench import cases, measure, records
from cifar_spec.bench.records import Case

ROUNDS = 10  # pytest-benchmark's rounds in this process, each ROUND_SECONDS or one step

CASES = [
    pytest.param(
        device,
        name,
        batch,
        id=f"{device}-{name}-{batch}",
        marks=[pytest.mark.cuda] * (device == "cuda")
        # Outside --benchmark-only the smallest compiled case still compiles (45-65 s on a
        # Zen 4 core): started last, it ended make test on one core while the other idled.
        + [pytest.mark.slow] * ("compile" in name and batch == min(batches)),
    )
    for device, batches in records.BATCHES.items()
    for name in cases.VARIANTS
    for batch in batches
]


def time_in_this_process(benchmark, case: cases.StepBench) -> None:
    """pytest-benchmark's record: the time of one step, rounds of several steps.

    Every round starts from the weights the case was built with, as in the workers
    (cases.py says why): pytest-benchmark's teardown runs after each round, outside
    its clock (its setup would too, but it refuses iterations > 1).
    """
    steps = measure.steps_per_round(measure.warm_up(case.step, case.device))

    def end_round() -> None:
        case.check()
        case.restore()

    case.restore()
    benchmark.pedantic(
        measure.synchronized_every(case.step, case.device, steps),
        rounds=ROUNDS,
        iterations=steps,
        warmup_rounds=1,
        teardown=end_round,
    )


@pytest.mark.parametrize("device, variant, batch", CASES)
def test_training_step_throughput(
    benchmark, suite, record, counts, record_count, device, variant, batch
):
    options = cases.VARIANTS[variant]
    reason = cases.skip_reason(options, device)
    if reason:
        pytest.skip(reason)
    if benchmark.disabled and options.compile and batch != min(records.BATCHES[device]):
        # Each batch size compiles anew (15-30 s on 2 cores); the untimed check
        # compiles the smallest only, the timed run compiles them all.
        pytest.skip("untimed run: torch.compile is checked at the smallest batch only")
    case = cases.build(options, device, batch)
    before = [p.detach().clone() for p in case.model.parameters()]
    if benchmark.disabled:
        benchmark(case.step)
    else:
        time_in_this_process(benchmark, case)
        if suite is not None:
            row = suite.measure(Case(device, variant, batch))
            benchmark.extra_info.update(row)
            record(row)
        counted = counts.row(Case(device, variant, batch)) if counts else None
        if counted:
            benchmark.extra_info["instructions_per_step"] = counted["instructions_per_step"]
            record_count(counted)
    loss = case.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, case.model.parameters()))
