"""The tutorial's loss numbers, each reference loss against torch, and the traps users fall into.

The table of reference cases is the heart of it: every loss family, every option, every
reduction, on an unbatched (or scalar) input, a batch and an empty batch, in float32 and
float64; values and input gradients compared with torch, and a float64 ``gradcheck`` of each
reference. The pinned behaviours at the end run on torch and on the reference alike, except
where the two deliberately differ.
"""

import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from loss_cases import CASES, GRADCHECK_CASES, VALUE_CASES, input_grad  # the reference cases
from torch import Tensor, nn

from cifar_spec.losses import REFERENCES, tutorial_example, tutorial_tensors

# The reference and torch sum the same few dozen terms in other orders and use other, equally
# stable formulas (logsumexp against a fused log_softmax, logaddexp against log1p(exp)), so
# they differ by some tens of ulps: float32's ulp is 1.2e-7 and float64's 2.2e-16, hence
# bounds a hundred-odd times wider, still far below any real difference in semantics.
TOLERANCE = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
EXACTLY = {"rtol": 0.0, "atol": 0.0}


# --- the tutorial's example ------------------------------------------------------------------


def test_the_tutorial_tensors_are_its_inputs_and_targets_as_one_float32_1x1x1x3_image():
    inputs, targets = tutorial_tensors()
    torch.testing.assert_close(inputs, torch.tensor([[[[1.0, 2.0, 3.0]]]]), **EXACTLY)
    torch.testing.assert_close(targets, torch.tensor([[[[1.0, 2.0, 5.0]]]]), **EXACTLY)


def test_l1_loss_of_the_tutorial_example_is_two_thirds():
    l1, _ = tutorial_example()
    torch.testing.assert_close(l1, torch.tensor(2 / 3, dtype=torch.float32), **EXACTLY)


def test_mse_loss_of_the_tutorial_example_is_four_thirds():
    _, mse = tutorial_example()
    torch.testing.assert_close(mse, torch.tensor(4 / 3, dtype=torch.float32), **EXACTLY)


TUTORIAL_LOSSES = {"l1": (0, nn.L1Loss(), "l1_loss"), "mse": (1, nn.MSELoss(), "mse_loss")}


@pytest.mark.parametrize(
    "index, module, name", TUTORIAL_LOSSES.values(), ids=TUTORIAL_LOSSES.keys()
)
def test_the_tutorial_loss_equals_its_nn_module_and_its_reference(index, module, name):
    inputs = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    targets = torch.tensor([1.0, 2.0, 5.0]).view(1, 1, 1, 3)
    expected = tutorial_example()[index]
    torch.testing.assert_close(module(inputs, targets), expected, **EXACTLY)
    torch.testing.assert_close(REFERENCES[name](inputs, targets), expected, **EXACTLY)


# --- the table of reference cases (tests/loss_cases.py) ------------------------------------------


def test_the_table_covers_all_ten_references():
    assert {case.name for case in CASES} == set(REFERENCES)
    assert len(REFERENCES) == 10


@pytest.mark.parametrize("name", REFERENCES)
def test_each_reference_takes_the_arguments_of_its_torch_namesake_with_the_same_defaults(name):
    ours = inspect.signature(REFERENCES[name]).parameters
    theirs = inspect.signature(getattr(F, name)).parameters
    current = {k: p for k, p in theirs.items() if k not in ("size_average", "reduce")}
    assert list(ours) == list(current)
    assert {k: p.default for k, p in ours.items()} == {k: p.default for k, p in current.items()}
    # Up to torch's first deprecated argument, a positional call binds alike; past it, ours
    # are keyword-only, so a positional call meant for torch fails instead of binding wrong.
    positional = [k for k, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)[: len(positional)]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", VALUE_CASES, ids=[case.id for case in VALUE_CASES])
def test_each_reference_equals_torch(case, dtype):
    input, target, kwargs = case.arguments(dtype)
    with case.warning():
        expected = getattr(F, case.name)(input, target, **kwargs)
    with case.warning():
        actual = REFERENCES[case.name](input, target, **kwargs)
    # An empty batch's mean is 0/0, nan, in both.
    torch.testing.assert_close(actual, expected, equal_nan=True, **TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_reference_has_the_input_gradient_of_torch_in_float64(case):
    # float64 only: there a wrong gradient cannot hide inside float32's rounding.
    expected = input_grad(getattr(F, case.name), case, torch.float64)
    actual = input_grad(REFERENCES[case.name], case, torch.float64)
    torch.testing.assert_close(actual, expected, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[case.id for case in GRADCHECK_CASES])
def test_each_reference_passes_gradcheck_in_float64(case):
    input, target, kwargs = case.arguments(torch.float64)
    input.requires_grad_(True)

    def loss(x: Tensor) -> Tensor:
        return REFERENCES[case.name](x, target, **kwargs)

    with case.warning():
        assert torch.autograd.gradcheck(loss, (input,))


# --- behaviours users trip over ------------------------------------------------------------

ENGINES = ("torch", "reference")


def engine_fn(engine: str, name: str) -> Callable[..., Tensor]:
    return getattr(F, name) if engine == "torch" else REFERENCES[name]


def logits_and_classes(batch: int = 6, classes: int = 5) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=gen)
    return logits, torch.randint(0, classes, (batch,), generator=gen)


CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": torch.tensor([0.5, 2.0, 1.0, 1.5, 0.7])},
    "ignore_index=2": {"ignore_index": 2},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("options", CE_OPTIONS.values(), ids=CE_OPTIONS.keys())
def test_cross_entropy_of_logits_is_nll_loss_of_their_log_softmax(engine, options):
    logits, target = logits_and_classes()
    expected = F.nll_loss(F.log_softmax(logits, dim=1), target, **options)
    actual = engine_fn(engine, "cross_entropy")(logits, target, **options)
    torch.testing.assert_close(actual, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("engine", ENGINES)
def test_cross_entropy_takes_logits_so_shifting_a_samples_logits_changes_nothing(engine):
    logits, target = logits_and_classes()
    shift = 10 * torch.randn(6, 1, generator=torch.Generator().manual_seed(1))
    loss = engine_fn(engine, "cross_entropy")
    # A softmax cannot see a per-sample constant; logits near 10 carry ~1e-6 absolute error.
    shifted = loss(logits + shift, target)
    torch.testing.assert_close(shifted, loss(logits, target), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_weighted_cross_entropy_averages_indices_over_their_weights_but_probabilities_over_count(
    engine,
):
    logits, target = logits_and_classes()
    weight = CE_OPTIONS["weight"]["weight"]
    one_hot = (target.unsqueeze(1) == torch.arange(5)).float()  # the same targets, as rows
    loss = engine_fn(engine, "cross_entropy")
    by_index = loss(logits, target, weight, label_smoothing=0.2)
    by_probability = loss(logits, one_hot, weight, label_smoothing=0.2)
    # Equal sums, different denominators: the kept weights w[y] against the 6 samples.
    torch.testing.assert_close(
        by_index * weight[target].sum(), by_probability * 6, **TOLERANCE[torch.float32]
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_kl_div_warns_that_its_default_mean_reduction_is_not_batchmean(engine):
    input, target = torch.rand(4, 3).log(), torch.rand(4, 3)
    with pytest.warns(UserWarning, match="batchmean") as record:
        loss = engine_fn(engine, "kl_div")(input, target)
    assert len(record) == 1
    assert torch.isfinite(loss)


@pytest.mark.parametrize("engine", ENGINES)
def test_kl_div_mean_is_batchmean_divided_by_the_elements_per_sample(engine):
    gen = torch.Generator().manual_seed(0)
    input, target = torch.rand(4, 3, 5, generator=gen).log(), torch.rand(4, 3, 5, generator=gen)
    kl_div = engine_fn(engine, "kl_div")
    batchmean = kl_div(input, target, reduction="batchmean")
    with pytest.warns(UserWarning, match="batchmean"):
        mean = kl_div(input, target, reduction="mean")
    torch.testing.assert_close(mean * (3 * 5), batchmean, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("engine", ENGINES)
def test_binary_cross_entropy_clamps_its_log_so_a_zero_probability_costs_exactly_100(engine):
    probability = torch.sigmoid(torch.tensor([-200.0]))
    assert probability.item() == 0.0  # e^-200 underflows float32
    loss = engine_fn(engine, "binary_cross_entropy")(probability, torch.tensor([1.0]))
    torch.testing.assert_close(loss, torch.tensor(100.0), **EXACTLY)


@pytest.mark.parametrize("engine", ENGINES)
def test_binary_cross_entropy_with_logits_stays_exact_so_a_logit_of_minus_200_costs_200(engine):
    loss_fn = engine_fn(engine, "binary_cross_entropy_with_logits")
    loss = loss_fn(torch.tensor([-200.0]), torch.tensor([1.0]))
    torch.testing.assert_close(loss, torch.tensor(200.0), **EXACTLY)


BROADCAST_LOSSES = {"mse": ("mse_loss", lambda d: d**2), "l1": ("l1_loss", lambda d: d.abs())}
BROADCAST_WARNING = r"target size .*\[4\].* input size .*\[4, 1\]"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name, pointwise", BROADCAST_LOSSES.values(), ids=BROADCAST_LOSSES.keys())
def test_a_mismatched_target_shape_broadcasts_with_a_warning(engine, name, pointwise):
    gen = torch.Generator().manual_seed(0)
    prediction = torch.randn(4, 1, generator=gen)  # (N, 1), as a regression head gives
    target = torch.randn(4, generator=gen)  # (N,)
    with pytest.warns(UserWarning, match=BROADCAST_WARNING):
        loss = engine_fn(engine, name)(prediction, target)
    expected = pointwise(prediction - target).mean()  # over (N, N) pairs, not N samples
    torch.testing.assert_close(loss, expected, **TOLERANCE[torch.float32])


FIRST_BATCH_CASE = {
    name: next(case for case in CASES if case.name == name and case.shape_label == "batch")
    for name in REFERENCES
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", REFERENCES)
def test_an_invalid_reduction_raises_value_error(engine, name):
    input, target, kwargs = FIRST_BATCH_CASE[name].arguments(torch.float32)
    kwargs["reduction"] = "average"
    with pytest.raises(ValueError, match="average") as info:
        engine_fn(engine, name)(input, target, **kwargs)
    assert "reduction" in str(info.value)


@pytest.mark.parametrize("name", REFERENCES)
def test_the_reference_error_for_an_invalid_reduction_names_the_valid_values(name):
    input, target, kwargs = FIRST_BATCH_CASE[name].arguments(torch.float32)
    kwargs["reduction"] = "average"
    with pytest.raises(ValueError, match="'none', 'mean', 'sum'") as info:
        REFERENCES[name](input, target, **kwargs)
    assert ("'batchmean'" in str(info.value)) == (name == "kl_div")


def test_torch_hinge_embedding_loss_silently_applies_both_branches_to_a_target_of_zero():
    input = torch.tensor([0.25, -0.5, 2.0])
    loss = F.hinge_embedding_loss(input, torch.zeros(3), margin=1.0, reduction="none")
    # x + max(0, 1 - x): the "similar" and the "dissimilar" cost added together.
    torch.testing.assert_close(loss, torch.tensor([1.0, 1.0, 2.0]), **EXACTLY)


def test_the_reference_hinge_embedding_loss_refuses_targets_other_than_plus_or_minus_one():
    input, target = torch.tensor([0.25, -0.5, 2.0, 1.0]), torch.tensor([1.0, 0.0, -1.0, 2.0])
    with pytest.raises(ValueError) as info:
        REFERENCES["hinge_embedding_loss"](input, target)
    assert "+1 or -1" in str(info.value)  # what is expected
    assert "[0.0, 2.0]" in str(info.value)  # what came


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
def test_the_mean_loss_of_a_batch_whose_targets_are_all_ignored_is_nan(engine, name):
    input, target = torch.randn(3, 5), torch.full((3,), -100)
    loss = engine_fn(engine, name)(input, target)  # 0 / a total weight of 0
    assert torch.isnan(loss)


def test_torch_gives_an_all_ignored_batch_a_zero_gradient_despite_its_nan_loss():
    input = torch.randn(3, 5, requires_grad=True)
    F.cross_entropy(input, torch.full((3,), -100)).backward()
    # The reference's gradient there is 0 * (1 / 0) = nan, which is why the table never
    # ignores every target of a case.
    torch.testing.assert_close(input.grad, torch.zeros(3, 5), **EXACTLY)


EMPTY_BATCH = {"sum": ("sum", torch.tensor(0.0)), "mean": ("mean", torch.tensor(float("nan")))}


@pytest.mark.parametrize("reduction, expected", EMPTY_BATCH.values(), ids=EMPTY_BATCH.keys())
def test_the_reference_multi_margin_loss_of_an_empty_batch_sums_to_zero_and_averages_to_nan(
    reduction, expected
):
    input, target = torch.randn(0, 5), torch.zeros(0, dtype=torch.long)
    loss = REFERENCES["multi_margin_loss"](input, target, reduction=reduction)
    # What every other torch loss gives an empty batch; torch's own value here is undefined.
    torch.testing.assert_close(loss, expected, equal_nan=True, **EXACTLY)
