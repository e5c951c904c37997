"""Reference loss functions: the tutorial's example and a slow, obvious twin of each torch loss.

The tutorial introduces losses with one example, L1 and MSE of ``[1, 2, 3]`` against
``[1, 2, 5]`` (2/3 and 4/3). ``REFERENCES`` then holds, for each loss family the tutorial's
readers meet, a reference written with plain tensor arithmetic and no torch loss function,
keyed by its ``torch.nn.functional`` namesake and taking the same arguments. The tests check
each reference against torch for every reduction and option, so a change in torch's semantics
shows up as a failing comparison against code a reader can verify by eye.

The deprecated ``size_average`` and ``reduce`` arguments are left out; every argument torch
places after them is keyword-only here, so a positional call can never bind to the wrong one.
"""

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

_REDUCTIONS = ("none", "mean", "sum")


def tutorial_tensors() -> tuple[Tensor, Tensor]:
    """The tutorial's ``(inputs, targets)``, shaped ``(1, 1, 1, 3)`` as in its NCHW example."""
    inputs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32).view(1, 1, 1, 3)
    targets = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float32).view(1, 1, 1, 3)
    return inputs, targets


def tutorial_example() -> tuple[Tensor, Tensor]:
    """The tutorial's ``(l1, mse)``: only the last element is off, by 2, so 2/3 and 4/3."""
    inputs, targets = tutorial_tensors()
    return nn.L1Loss()(inputs, targets), nn.MSELoss()(inputs, targets)


# --- shared pieces -----------------------------------------------------------------------


def _check_reduction(reduction: str, valid: tuple[str, ...] = _REDUCTIONS) -> None:
    if reduction not in valid:
        names = ", ".join(repr(name) for name in valid)
        raise ValueError(f"reduction must be one of {names}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply an already validated reduction; the mean of nothing is nan, as in torch."""
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _warn_if_broadcast(input: Tensor, target: Tensor) -> None:
    # An (N, 1) prediction against an (N,) target silently becomes an (N, N) loss; torch
    # warns about it and so do we, because the result is almost never what was meant.
    if input.shape != target.shape:
        warnings.warn(
            f"Using a target size ({target.shape}) that differs from the input size "
            f"({input.shape}); the two are broadcast, which is rarely intended.",
            UserWarning,
            stacklevel=3,
        )


def _log_softmax(logits: Tensor, dim: int) -> Tensor:
    # Subtracting logsumexp instead of taking log(softmax) keeps large logits finite.
    return logits - logits.logsumexp(dim, keepdim=True)


def _log_sigmoid(logits: Tensor) -> Tensor:
    # log(1 / (1 + e^-x)) = -log(e^0 + e^-x); logaddexp stays finite for |x| in the hundreds.
    return -torch.logaddexp(torch.zeros_like(logits), -logits)


def _class_dim(input: Tensor) -> int:
    """Classes are dim 0 of an unbatched ``(C,)`` input and dim 1 of ``(N, C, d1, ...)``."""
    return 0 if input.dim() == 1 else 1


def _per_class(weight: Tensor | None, like: Tensor) -> Tensor:
    """A ``(C,)`` weight (all ones if None), shaped to broadcast along ``like``'s class dim."""
    dim = _class_dim(like)
    if weight is None:
        weight = torch.ones(like.shape[dim], dtype=like.dtype, device=like.device)
    return weight.view([-1 if d == dim else 1 for d in range(like.dim())])


# --- regression ----------------------------------------------------------------------------


def _elementwise_reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    # A weighted mean divides by the total weight, so scaling every weight changes nothing.
    if weight is None:
        return _reduce(loss, reduction)
    if reduction == "mean":
        return (loss * weight).sum() / weight.sum()
    return _reduce(loss * weight, reduction)


def l1_loss(
    input: Tensor, target: Tensor, *, reduction: str = "mean", weight: Tensor | None = None
) -> Tensor:
    """Mean (or sum) absolute error ``|x - y|``, optionally weighted element by element."""
    _check_reduction(reduction)
    _warn_if_broadcast(input, target)
    return _elementwise_reduce((input - target).abs(), weight, reduction)


def mse_loss(
    input: Tensor, target: Tensor, *, reduction: str = "mean", weight: Tensor | None = None
) -> Tensor:
    """Mean (or sum) squared error ``(x - y)^2``, optionally weighted element by element."""
    _check_reduction(reduction)
    _warn_if_broadcast(input, target)
    return _elementwise_reduce((input - target) ** 2, weight, reduction)


# --- classification over C classes -----------------------------------------------------------


def _picked(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Per-element ``-w[y] * log_probs[y]`` and ``w[y]``, both 0 where ``y == ignore_index``.

    ``log_probs`` is ``(C,)`` or ``(N, C, d1, ...)``; ``target`` is ``()`` or ``(N, d1, ...)``.
    """
    kept = target != ignore_index
    safe_target = torch.where(kept, target, torch.zeros_like(target))  # gather needs 0 <= y < C
    by_class = log_probs.movedim(_class_dim(log_probs), -1)  # (..., C)
    picked = by_class.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    class_weight = torch.ones_like(by_class[..., 0]) if weight is None else weight[safe_target]
    element_weight = class_weight * kept
    return -picked * element_weight, element_weight


def _weighted_reduce(loss: Tensor, element_weight: Tensor, reduction: str) -> Tensor:
    # torch's weighted mean divides by the total weight of the targets it kept, not by N,
    # so that a rare, heavily weighted class does not inflate the average.
    if reduction == "mean":
        return loss.sum() / element_weight.sum()
    return _reduce(loss, reduction)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class indices, given log-probabilities ``input``."""
    _check_reduction(reduction)
    loss, element_weight = _picked(input, target, weight, ignore_index)
    return _weighted_reduce(loss, element_weight, reduction)


def _smoothed_index_loss(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, smoothing: float
) -> tuple[Tensor, Tensor]:
    """Per-element loss against the one-hot target mixed with uniform, and its weight.

    The uniform part is weighted class by class, ``sum_c w_c * -log p_c / C``, but the mean
    still divides by the kept ``w[y]`` alone: torch's formula. The same smoothed distribution
    given as probabilities has the same sum, yet its mean divides by the element count.
    """
    loss, element_weight = _picked(log_probs, target, weight, ignore_index)
    if smoothing == 0.0:
        return loss, element_weight
    dim = _class_dim(log_probs)
    uniform = -(log_probs * _per_class(weight, log_probs)).sum(dim) * (target != ignore_index)
    num_classes = log_probs.shape[dim]
    return (1 - smoothing) * loss + smoothing / num_classes * uniform, element_weight


def _probability_target_loss(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, smoothing: float, reduction: str
) -> Tensor:
    """Cross-entropy against a distribution per element; the mean is over elements, unweighted."""
    dim = _class_dim(log_probs)
    target = (1 - smoothing) * target + smoothing / log_probs.shape[dim]
    loss = -(target * _per_class(weight, log_probs) * log_probs).sum(dim)  # () or (N, d1, ...)
    return _reduce(loss, reduction)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of logits ``input`` against class indices or class probabilities.

    A floating-point ``target`` shaped like ``input`` is a distribution over classes (and
    ``ignore_index`` does not apply); an integer ``target`` holds class indices.
    """
    _check_reduction(reduction)
    log_probs = _log_softmax(input, _class_dim(input))
    if target.is_floating_point():
        return _probability_target_loss(log_probs, target, weight, label_smoothing, reduction)
    loss, element_weight = _smoothed_index_loss(
        log_probs, target, weight, ignore_index, label_smoothing
    )
    return _weighted_reduce(loss, element_weight, reduction)


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class hinge: ``sum_{j != y} w[y] * max(0, margin - x[y] + x[j])^p / C``.

    ``input`` is ``(C,)`` or ``(N, C)``, ``target`` is ``()`` or ``(N,)``.
    """
    _check_reduction(reduction)
    num_classes = input.shape[-1]
    score_of_target = input.gather(-1, target.unsqueeze(-1))  # (..., 1)
    violation = (margin - score_of_target + input).clamp(min=0) ** p  # (..., C)
    others = torch.arange(num_classes, device=input.device) != target.unsqueeze(-1)
    if weight is not None:
        violation = violation * weight[target].unsqueeze(-1)
    return _reduce((violation * others).sum(-1) / num_classes, reduction)


# --- binary and two-sided targets ------------------------------------------------------------


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None = None, *, reduction: str = "mean"
) -> Tensor:
    """BCE of probabilities ``input`` against targets in [0, 1].

    Each log is clamped at -100, as torch does, so a probability of exactly 0 or 1 costs at
    most 100 instead of inf; the logits form below needs no clamp.
    """
    _check_reduction(reduction)
    log_p = input.log().clamp(min=-100)
    log_not_p = (1 - input).log().clamp(min=-100)
    loss = -(target * log_p + (1 - target) * log_not_p)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """BCE of logits: ``-w * (pos_weight * y * log s(x) + (1 - y) * log(1 - s(x)))``.

    ``pos_weight`` scales only the positive term and broadcasts along the last (class) dim.
    """
    _check_reduction(reduction)
    positive = target * _log_sigmoid(input)
    if pos_weight is not None:
        positive = positive * pos_weight
    loss = -(positive + (1 - target) * _log_sigmoid(-input))  # log(1 - s(x)) = log s(-x)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def hinge_embedding_loss(
    input: Tensor, target: Tensor, margin: float = 1.0, *, reduction: str = "mean"
) -> Tensor:
    """``x`` where ``y = 1``, ``max(0, margin - x)`` where ``y = -1``.

    torch applies both branches to any other target (a 0 gets ``x + max(0, margin - x)``)
    without a word; a reference that says what the loss means refuses such targets instead.
    """
    _check_reduction(reduction)
    is_sign = (target == 1) | (target == -1)
    if not bool(is_sign.all()):
        found = sorted(set(target[~is_sign].tolist()))
        raise ValueError(f"hinge_embedding_loss expects targets of +1 or -1, got {found}")
    loss = torch.where(target == 1, input, (margin - input).clamp(min=0))
    return _reduce(loss, reduction)


def soft_margin_loss(input: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Logistic loss of a +1/-1 target: ``log(1 + exp(-y * x))``."""
    _check_reduction(reduction)
    return _reduce(-_log_sigmoid(target * input), reduction)


# --- distributions -------------------------------------------------------------------------


def kl_div(
    input: Tensor, target: Tensor, *, reduction: str = "mean", log_target: bool = False
) -> Tensor:
    """Pointwise KL ``p * (log p - x)`` of target ``p`` from log-probabilities ``input``.

    ``batchmean`` (the sum over the batch size, dim 0) is the KL divergence per sample;
    ``mean`` divides by every element instead, and warns about it, as torch does.
    """
    _check_reduction(reduction, (*_REDUCTIONS, "batchmean"))
    if log_target:
        loss = target.exp() * (target - input)
    else:
        loss = torch.xlogy(target, target) - target * input  # 0 * log 0 taken as 0
    if reduction == "mean":
        warnings.warn(
            "kl_div with reduction='mean' divides by the number of elements, not the batch "
            "size; reduction='batchmean' gives the KL divergence.",
            UserWarning,
            stacklevel=2,
        )
    if reduction == "batchmean":
        return loss.sum() / input.shape[0] if input.dim() > 0 else loss.sum()
    return _reduce(loss, reduction)


REFERENCES: dict[str, Callable[..., Tensor]] = {
    "l1_loss": l1_loss,
    "mse_loss": mse_loss,
    "cross_entropy": cross_entropy,
    "nll_loss": nll_loss,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "hinge_embedding_loss": hinge_embedding_loss,
    "multi_margin_loss": multi_margin_loss,
    "soft_margin_loss": soft_margin_loss,
    "kl_div": kl_div,
}
