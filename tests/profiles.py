"""Made-up workers' profiled steps (`profiled.Profile`), for the tests of attribution and of
the tables, gate and compare that show it."""

import random

from cifar_spec.bench.profiled import Profile

MS = 1e-3


def worker(ops: dict[str, list[float]], python_ms: float, kernels=None, device="cpu") -> Profile:
    """A worker's profile: the operators' seconds per step, and each step's time their sum
    plus `python_ms` that no operator holds."""
    steps = len(next(iter(ops.values())))
    step = [sum(v[i] for v in ops.values()) + python_ms * MS for i in range(steps)]
    return Profile(
        device,
        step,
        ops,
        {name: list(v) for name, v in ops.items()},
        {name: "aten::max_pool2d" if "with_indices" in name else None for name in ops},
        kernels or {},
        {k: "<float, float>" for by_op in (kernels or {}).values() for k in by_op},
    )


def jitter(rng: random.Random, ms: float, steps: int = 8, by: float = 0.02) -> list[float]:
    return [ms * MS * (1 + rng.uniform(-by, by)) for _ in range(steps)]


def sides(pool_ms: float, candidate_pool_ms: float, workers: int = 3):
    """Both sides of a case whose pooling takes `pool_ms`, then `candidate_pool_ms`; the
    convolution and the linear layer unchanged, every value a little noisy."""
    rng = random.Random(7)

    def one(pool: float) -> Profile:
        ops = {
            "aten::mkldnn_convolution": jitter(rng, 5.0),
            "aten::max_pool2d_with_indices": jitter(rng, pool),
            "aten::addmm": jitter(rng, 1.0),
        }
        return worker(ops, python_ms=0.5)

    return [one(pool_ms) for _ in range(workers)], [one(candidate_pool_ms) for _ in range(workers)]
