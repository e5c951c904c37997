"""The manual backward: CifarNet's backward written out trains like autograd; refuses the rest."""

import pytest
import torch
from precision import FLOAT32_STEP, FLOAT64, decided_batch, float64_sums  # how runs compare

from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions, make_step, prepare_model

MANUAL = StepOptions(one_call_sgd=True, manual_backward=True)


def one_group(model):
    return torch.optim.SGD(model.parameters(), lr=0.01)


def run_steps(options, images, labels, steps, dtype=torch.float32, optimizer=one_group):
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options).to(dtype)
    step = make_step(model, optimizer(model), options)
    losses = torch.stack([step(images.to(dtype), labels) for _ in range(steps)])
    return [losses, *(p.detach().clone() for p in model.parameters())]


LAYOUTS = {"nchw": False, "channels-last": True}


@pytest.mark.parametrize("batch", [1, 4], ids=["batch-1", "batch-4"])
@pytest.mark.parametrize("channels_last", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_the_manual_backward_takes_autograds_five_steps_in_float64(batch, channels_last):
    data = torch.Generator().manual_seed(batch)
    images = torch.rand(batch, 3, 32, 32, generator=data)
    labels = torch.randint(0, 10, (batch,), generator=data)
    options = StepOptions(channels_last=channels_last, one_call_sgd=True, manual_backward=True)
    manual = run_steps(options, images, labels, 5, torch.float64)
    autograd = run_steps(StepOptions(), images, labels, 5, torch.float64)
    torch.manual_seed(0)
    assert not torch.equal(manual[1], CifarNet().layers[0].weight.double())  # it did train
    # A wrong term moves the weights by lr * grad, ~1e-4; float64 rounding by ~1e-17.
    torch.testing.assert_close(manual, autograd, **FLOAT64)


@pytest.mark.parametrize("batch", [1, 2], ids=["batch-1", "batch-2"])
@pytest.mark.parametrize("channels_last", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_one_float32_step_of_the_manual_backward_lands_within_float32_rounding_of_autograds(
    batch, channels_last
):
    images, labels = decided_batch(batch)  # every pooling window decided
    options = StepOptions(channels_last=channels_last, one_call_sgd=True, manual_backward=True)
    manual = run_steps(options, images, labels, 1)
    autograd = run_steps(StepOptions(), images, labels, 1)
    torch.testing.assert_close(manual, autograd, **FLOAT32_STEP)


def two_groups(model):
    """The linear layers at ten times the convolutions' rate, in a group listed first."""
    convolutions = [p for layer in model.layers[:6] for p in layer.parameters()]
    linear = [p for layer in model.layers[6:] for p in layer.parameters()]
    return torch.optim.SGD([{"params": linear, "lr": 0.1}, {"params": convolutions}], lr=0.01)


def test_the_manual_backward_updates_each_param_group_at_its_own_rate_as_optimizer_step_does():
    data = torch.Generator().manual_seed(2)
    images, labels = torch.rand(2, 3, 32, 32, generator=data), torch.tensor([3, 7])
    manual = run_steps(MANUAL, images, labels, 3, torch.float64, two_groups)
    autograd = run_steps(StepOptions(), images, labels, 3, torch.float64, two_groups)
    # One group's rate used for both would move the other's weights by 0.09 * grad, ~1e-3.
    torch.testing.assert_close(manual, autograd, **FLOAT64)


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))


REFUSALS = {
    "another-model": (
        lambda: TwoLayers(),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        "for CifarNet as the tutorial defines it",
    ),
    "momentum": (CifarNet, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "plain SGD"),
    "adam": (CifarNet, lambda ps: torch.optim.Adam(ps), "plain SGD"),
    "some-parameters": (
        CifarNet,
        lambda ps: torch.optim.SGD(list(ps)[:2], lr=0.1),
        "give SGD all of model.parameters",
    ),
}


@pytest.mark.parametrize("model, optimizer, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_the_manual_backward_refuses_what_it_was_not_written_for(model, optimizer, message):
    net = model()
    with pytest.raises(ValueError, match=message):
        make_step(net, optimizer(net.parameters()), MANUAL)


def test_the_manual_backward_refuses_another_loss():
    net = CifarNet()
    with pytest.raises(ValueError, match="other losses need autograd"):
        make_step(
            net,
            torch.optim.SGD(net.parameters(), lr=0.1),
            MANUAL,
            loss_fn=torch.nn.functional.nll_loss,
        )


def test_the_manual_backward_leaves_grad_alone():
    net = CifarNet()
    step = make_step(net, torch.optim.SGD(net.parameters(), lr=0.1), MANUAL)
    step(torch.rand(2, 3, 32, 32), torch.tensor([1, 2]))
    assert all(p.grad is None for p in net.parameters())


def test_the_manual_backward_computes_the_tutorial_steps_loss_sums_in_float64(test_split):
    def sums(options):  # 50 steps, in float64 (tests/precision.py)
        return float64_sums(test_split, options, 2, 100, 4, 0.05)

    options = StepOptions(channels_last=True, one_call_sgd=True, manual_backward=True)
    torch.testing.assert_close(sums(options), sums(StepOptions()), **FLOAT64)
