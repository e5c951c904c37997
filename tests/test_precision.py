"""How the spec compares runs (tests/precision.py) and runs itself under every dispatch."""

import dispatch_matrix
import pytest
import torch
from precision import POOLING_MARGIN, decided_batch, pooling_margins, tolerance_used

from cifar_spec.model import CifarNet


def test_the_share_of_a_tolerance_used_is_the_largest_difference_over_what_is_allowed():
    # Allowed: 1e-3 + 1e-2 * |expected|. 1.001 against 1 uses 1e-3 / 0.011 of it; 3.006
    # against 3, 6e-3 / 0.031, the larger share.
    three = torch.tensor([3.0], dtype=torch.float64)
    used = tolerance_used([1.001, three + 0.006], [1.0, three], 1e-2, 1e-3)
    assert used == pytest.approx(6e-3 / (1e-3 + 1e-2 * 3))
    assert tolerance_used(torch.zeros(0), torch.zeros(0), 1e-5, 0.0) == 0.0
    # Python floats (the loss sums) are float64: 2 parts in 10^12 of 227 are seen.
    assert tolerance_used([227.0 * (1 + 2e-12)], [227.0], 1e-12, 0.0) == pytest.approx(2, rel=1e-3)


def test_a_uniform_image_ties_its_pooling_windows_and_a_decided_batch_ties_none():
    torch.manual_seed(0)
    model = CifarNet()
    grey = torch.full((1, 3, 32, 32), 0.5)  # away from the border, every window is alike
    assert pooling_margins(model, grey).item() == 0.0
    images, labels = decided_batch(2)
    assert (pooling_margins(model, images) > POOLING_MARGIN).all()
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2,)


@pytest.mark.parametrize(
    "machine, best, flags, aten, onednn",
    [
        ("x86_64", "AVX512", {"sse4_1", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
         ["default", "avx2", "avx512"], ["SSE41", "AVX2", "AVX512_CORE", None]),
        ("x86_64", "AVX2", {"sse4_1", "avx2", "avx512_vnni"},
         ["default", "avx2"], ["SSE41", "AVX2", None]),
        ("aarch64", "SVE256", set(), ["default", "sve256"], [None]),
    ],
    ids=["avx512", "avx2-only", "arm"],
)  # fmt: skip
def test_the_dispatch_matrix_takes_each_level_the_cpu_offers_and_no_level_above(
    monkeypatch, machine, best, flags, aten, onednn
):
    monkeypatch.setattr(dispatch_matrix.platform, "machine", lambda: machine)
    assert dispatch_matrix.aten_levels(best) == aten
    assert dispatch_matrix.onednn_levels(flags) == onednn
