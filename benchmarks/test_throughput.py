"""Images per second of one training step, per device, variant and batch size.

Timed only under `pytest --benchmark-only`; otherwise each runs once as a
check that the variant trains (its loss is finite and the weights move).
"""

import pytest
import torch

from cifar_spec import bench

CASES = [
    pytest.param(device, name, batch, id=f"{device}-{name}-{batch}",
                 marks=[pytest.mark.cuda] if device == "cuda" else [])
    for device, batches in bench.BATCHES.items()
    for name in bench.VARIANTS
    for batch in batches
]


@pytest.mark.parametrize("device, variant, batch", CASES)
def test_training_step_throughput(benchmark, peaks, record, device, variant, batch):
    options = bench.VARIANTS[variant]
    reason = bench.unsupported(options, device)
    if reason:
        pytest.skip(reason)
    if benchmark.disabled and options.compile and batch != min(bench.BATCHES[device]):
        # Each batch size compiles anew (15-30 s on 2 cores); the untimed check
        # compiles the smallest only, the timed run compiles them all.
        pytest.skip("untimed run: torch.compile is checked at the smallest batch only")
    case = bench.build(options, device, batch)
    before = [p.detach().clone() for p in case.model.parameters()]
    if benchmark.disabled:
        loss = benchmark(case.steps, 1)
    else:
        steps, rounds = bench.plan_rounds(case)
        loss = benchmark.pedantic(case.steps, args=(steps,), rounds=rounds, iterations=1)
        row = bench.figures(case, benchmark.stats.stats.median / steps,
                            peaks(case.device, bench.precision(options)))
        benchmark.extra_info.update(row, steps_per_round=steps)
        record(row)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, case.model.parameters()))
