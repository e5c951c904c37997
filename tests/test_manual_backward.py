"""The manual backward: CifarNet's backward written out trains like autograd; refuses the rest."""

import pytest
import torch

from cifar_spec.loop import TrainConfig, fit
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions, make_step, prepare_model

MANUAL = StepOptions(one_call_sgd=True, manual_backward=True)


def run_steps(options, images, labels, steps=5):
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.01), options)
    losses = torch.stack([step(images, labels) for _ in range(steps)])
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("batch", [1, 4], ids=["batch-1", "batch-4"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_the_manual_backward_trains_like_autograd_to_float32_rounding(batch, channels_last):
    data = torch.Generator().manual_seed(batch)  # the same inputs whatever ran before
    images = torch.rand(batch, 3, 32, 32, generator=data)
    labels = torch.randint(0, 10, (batch,), generator=data)
    losses, params = run_steps(
        StepOptions(channels_last=channels_last, one_call_sgd=True, manual_backward=True),
        images,
        labels,
    )
    expected_losses, expected_params = run_steps(StepOptions(), images, labels)
    # The same kernels; only a few roundings happen in another order (e.g. the
    # softmax gradient), ~1e-7 relative per step over five steps.
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.equal(params[0], CifarNet().layers[0].weight)  # it did train
    # The weights differ by up to 1.6e-5 (160 random inputs, 5 steps): a rounding of a
    # gradient entry near 1 moves its weight by lr * 1e-7 a step, and conv1's weights, of
    # size ~0.1, sum hundreds of them. A wrong term would move them by lr * grad, ~1e-3.
    for p, q in zip(params, expected_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=5e-5)


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
        "give SGD exactly model.parameters()",
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


def test_the_manual_backward_computes_the_same_loss_sums_as_the_tutorials_step(test_split):
    def sums(options):
        config = TrainConfig(epochs=2, limit=100, batch_size=4, lr=0.05, step=options)
        return fit(config, test_split, log=None)

    options = StepOptions(channels_last=True, one_call_sgd=True, manual_backward=True)
    torch.testing.assert_close(sums(options), sums(StepOptions()), rtol=1e-5, atol=0)
