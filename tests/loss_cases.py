"""The reference-case table of tests/test_losses.py: every loss family, every option, every
reduction, on an unbatched (or scalar) input, a batch and an empty batch.

Each `Case` is one call of one loss, made the same for torch and for the reference in
float32 or float64 from its own seeded generator. The input makers and the table live here,
apart from the tests, so that test_losses.py reads top to bottom as the explanation; this is
a plain module (not a test file), imported there as `loss_cases`, as test_distributed.py
imports distributed_ranks.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

# --- input makers: (input shape, dtype, generator, keyword arguments) -> (input, target) -------

Shape = tuple[int, ...]
Maker = Callable[[Shape, torch.dtype, torch.Generator, dict[str, Any]], tuple[Tensor, Tensor]]


def class_dim(shape: Shape) -> int:
    return 0 if len(shape) == 1 else 1


def normal(shape: Shape, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype)


def uniform(shape: Shape, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=dtype)


def regression(shape, dtype, gen, kwargs):
    return normal(shape, dtype, gen), normal(shape, dtype, gen)


def probabilities(shape, dtype, gen, kwargs):
    # Inside [0.05, 0.95], so that neither log is near its clamp or its pole.
    return 0.05 + 0.9 * uniform(shape, dtype, gen), uniform(shape, dtype, gen)


def binary_logits(shape, dtype, gen, kwargs):
    return 3 * normal(shape, dtype, gen), uniform(shape, dtype, gen)


def signs(shape, dtype, gen, kwargs):
    target = 2 * torch.randint(0, 2, shape, generator=gen).to(dtype) - 1
    return normal(shape, dtype, gen), target


def distributions(shape, dtype, gen, kwargs):
    input, target = uniform(shape, dtype, gen).log(), uniform(shape, dtype, gen)
    if kwargs.get("log_target"):
        return input, target.log()
    target.view(-1)[:1] = 0  # pins 0 * log 0 = 0
    return input, target


def class_indices(shape, dtype, gen, kwargs):
    target_shape = tuple(n for d, n in enumerate(shape) if d != class_dim(shape))
    target = torch.randint(0, shape[class_dim(shape)], target_shape, generator=gen)
    return normal(shape, dtype, gen), target


def class_indices_with_ignored(shape, dtype, gen, kwargs):
    # Every third target from the second on: never all of them, a case torch treats apart.
    input, target = class_indices(shape, dtype, gen, kwargs)
    target.view(-1)[1::3] = kwargs.get("ignore_index", -100)
    return input, target


def log_probs_and_indices(maker: Maker) -> Maker:
    def make(shape, dtype, gen, kwargs):
        input, target = maker(shape, dtype, gen, kwargs)
        return input.log_softmax(class_dim(shape)), target

    return make


def class_probabilities(shape, dtype, gen, kwargs):
    target = normal(shape, dtype, gen).softmax(class_dim(shape))
    return normal(shape, dtype, gen), target


def margin_targets(shape, dtype, gen, kwargs):
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return normal(shape, dtype, gen), target


# Tensor-valued options, made per case and dtype: (input shape, dtype, generator) -> tensor.
def weight_per_class(shape, dtype, gen):
    return 0.5 + uniform(shape[class_dim(shape)], dtype, gen)


def weight_per_last_dim(shape, dtype, gen):
    return 0.5 + uniform(shape[-1:], dtype, gen)


def weight_per_element(shape, dtype, gen):
    return 0.5 + uniform(shape, dtype, gen)


# --- the table of reference cases --------------------------------------------------------------

SCALAR_OR_BATCH = {"scalar": (), "batch": (4, 3), "empty": (0, 3)}
CLASS_SHAPES = {"unbatched": (5,), "batch": (4, 5), "spatial": (2, 5, 3, 2), "empty": (0, 5)}
MARGIN_SHAPES = {"unbatched": (5,), "batch": (4, 5), "empty": (0, 5)}
REDUCTIONS = ("none", "mean", "sum")
SMOOTH = {"label_smoothing": 0.2}
CLASS_WEIGHT = {"weight": weight_per_class}
NLL_INPUT = log_probs_and_indices(class_indices)
NLL_INPUT_WITH_IGNORED = log_probs_and_indices(class_indices_with_ignored)

# name: (input shapes, reductions, {variant: (keyword arguments, maker)})
FAMILIES: dict[str, tuple[dict[str, Shape], tuple[str, ...], dict[str, tuple[dict, Maker]]]] = {
    "l1_loss": (
        SCALAR_OR_BATCH,
        REDUCTIONS,
        {
            "plain": ({}, regression),
            "weight": ({"weight": weight_per_element}, regression),
        },
    ),
    "mse_loss": (
        SCALAR_OR_BATCH,
        REDUCTIONS,
        {
            "plain": ({}, regression),
            "weight": ({"weight": weight_per_element}, regression),
        },
    ),
    "cross_entropy": (
        CLASS_SHAPES,
        REDUCTIONS,
        {
            "indices": ({}, class_indices),
            "indices-weight": (CLASS_WEIGHT, class_indices),
            "indices-ignored": ({}, class_indices_with_ignored),
            "indices-ignore_index=2": ({"ignore_index": 2}, class_indices_with_ignored),
            "indices-smoothing": (SMOOTH, class_indices),
            "indices-weight-ignore_index=2-smoothing": (
                {**CLASS_WEIGHT, "ignore_index": 2, **SMOOTH},
                class_indices_with_ignored,
            ),
            "probabilities": ({}, class_probabilities),
            "probabilities-weight": (CLASS_WEIGHT, class_probabilities),
            "probabilities-smoothing": (SMOOTH, class_probabilities),
            "probabilities-weight-smoothing": ({**CLASS_WEIGHT, **SMOOTH}, class_probabilities),
        },
    ),
    "nll_loss": (
        CLASS_SHAPES,
        REDUCTIONS,
        {
            "plain": ({}, NLL_INPUT),
            "weight": (CLASS_WEIGHT, NLL_INPUT),
            "ignored": ({}, NLL_INPUT_WITH_IGNORED),
            "weight-ignore_index=2": ({**CLASS_WEIGHT, "ignore_index": 2}, NLL_INPUT_WITH_IGNORED),
        },
    ),
    "binary_cross_entropy": (
        SCALAR_OR_BATCH,
        REDUCTIONS,
        {
            "plain": ({}, probabilities),
            "weight": ({"weight": weight_per_last_dim}, probabilities),
        },
    ),
    "binary_cross_entropy_with_logits": (
        SCALAR_OR_BATCH,
        REDUCTIONS,
        {
            "plain": ({}, binary_logits),
            "pos_weight": ({"pos_weight": weight_per_last_dim}, binary_logits),
            "weight": ({"weight": weight_per_last_dim}, binary_logits),
            "weight-pos_weight": (
                {"weight": weight_per_element, "pos_weight": weight_per_last_dim},
                binary_logits,
            ),
        },
    ),
    "hinge_embedding_loss": (
        SCALAR_OR_BATCH,
        REDUCTIONS,
        {
            "plain": ({}, signs),
            "margin=0.5": ({"margin": 0.5}, signs),
        },
    ),
    "multi_margin_loss": (
        MARGIN_SHAPES,
        REDUCTIONS,
        {
            "plain": ({}, margin_targets),
            "p=2": ({"p": 2}, margin_targets),
            "margin=0.5": ({"margin": 0.5}, margin_targets),
            "weight": ({"weight": weight_per_last_dim}, margin_targets),
            "p=2-margin=2-weight": (
                {"p": 2, "margin": 2.0, "weight": weight_per_last_dim},
                margin_targets,
            ),
        },
    ),
    "soft_margin_loss": (SCALAR_OR_BATCH, REDUCTIONS, {"plain": ({}, signs)}),
    "kl_div": (
        SCALAR_OR_BATCH,
        (*REDUCTIONS, "batchmean"),
        {
            "probabilities": ({}, distributions),
            "log_target": ({"log_target": True}, distributions),
        },
    ),
}


@dataclass(frozen=True)
class Case:
    """One call of one loss: the same arguments go to torch and to the reference."""

    name: str  # the torch.nn.functional name, also the key into REFERENCES
    variant: str  # the options, in words
    shape_label: str  # "scalar", "unbatched", "batch", "spatial" or "empty"
    shape: Shape  # of the input
    options: dict[str, Any]  # keyword arguments; a callable one is made into a tensor per dtype
    maker: Maker

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}-{self.shape_label}-{self.options['reduction']}"

    def arguments(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, dict[str, Any]]:
        gen = torch.Generator().manual_seed(0)  # per case, so xdist's order changes nothing
        kwargs = {
            key: value(self.shape, dtype, gen) if callable(value) else value
            for key, value in self.options.items()
        }
        input, target = self.maker(self.shape, dtype, gen, kwargs)
        return input, target, kwargs

    def warning(self) -> contextlib.AbstractContextManager:
        """kl_div's 'mean' warns, in torch and in the reference; anything else must not."""
        if self.name == "kl_div" and self.options["reduction"] == "mean":
            return pytest.warns(UserWarning, match="batchmean")
        return contextlib.nullcontext()


def build_cases() -> list[Case]:
    cases = []
    for name, (shapes, reductions, variants) in FAMILIES.items():
        for variant, (options, maker) in variants.items():
            for shape_label, shape in shapes.items():
                for reduction in reductions:
                    kwargs = {**options, "reduction": reduction}
                    cases.append(Case(name, variant, shape_label, shape, kwargs, maker))
    return cases


def torch_value_is_defined(case: Case) -> bool:
    # torch's CPU multi_margin_loss never writes the result of an empty batch's mean or sum,
    # so it returns uninitialised memory (seen: 0, 1e-4, -1.3e10); nothing can be compared
    # with it, and the reference's 0 and nan are pinned by a test of their own instead.
    return not (
        case.name == "multi_margin_loss"
        and case.shape_label == "empty"
        and case.options["reduction"] != "none"
    )


CASES = build_cases()
VALUE_CASES = [case for case in CASES if torch_value_is_defined(case)]
# Every reduction is a fixed linear map of the 'none' loss, so the 'none' Jacobian is the one
# gradcheck needs to see; the empty batch has no Jacobian at all.
GRADCHECK_CASES = [
    case for case in CASES if case.shape_label != "empty" and case.options["reduction"] == "none"
]


def input_grad(fn: Callable[..., Tensor], case: Case, dtype: torch.dtype) -> Tensor:
    """The loss's input gradient under a random cotangent, so 'none' weighs each element apart."""
    input, target, kwargs = case.arguments(dtype)
    input.requires_grad_(True)
    with case.warning():
        loss = fn(input, target, **kwargs)
    cotangent = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (grad,) = torch.autograd.grad(loss, input, cotangent)
    return grad
