"""One training step, as the tutorial runs it: gradients appear, SGD moves, runs repeat."""

import pytest
import torch
from torch import nn

from cifar_spec.model import CifarNet
from cifar_spec.train import train_step


def make_run(device, seed=0, batch=4):
    torch.manual_seed(seed)
    model = CifarNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))
    return model, optimizer, images, labels


def test_every_grad_is_none_before_the_first_backward(device):
    model, *_ = make_run(device)
    assert all(p.grad is None for p in model.parameters())


def test_after_one_step_every_grad_is_finite_and_shaped_like_its_parameter(device):
    model, optimizer, images, labels = make_run(device)
    train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_zero_grad_sets_every_grad_back_to_none(device):
    model, optimizer, images, labels = make_run(device)
    train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_one_sgd_step_moves_each_parameter_by_exactly_minus_lr_times_grad(device):
    model, optimizer, images, labels = make_run(device)
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
    for old, p in zip(before, model.parameters()):
        # SGD's update is p + (-lr) * grad with a single rounding (torch.add with
        # alpha); `old - 0.01 * grad` rounds twice and can differ in the last bit.
        assert torch.equal(p.detach(), torch.add(old, p.grad, alpha=-0.01))
        assert not torch.equal(p.detach(), old)


def test_the_step_returns_the_loss_detached_from_the_graph(device):
    model, optimizer, images, labels = make_run(device)
    loss = train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
    assert loss.shape == () and loss.grad_fn is None and not loss.requires_grad
    # Ten classes, untrained: the loss is near ln(10).
    assert 1.5 < loss.item() < 3.5


def test_the_same_seed_and_inputs_give_bit_identical_parameters_after_five_steps():
    runs = []
    for _ in range(2):
        model, optimizer, images, labels = make_run("cpu", seed=3)
        for _ in range(5):
            train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


BAD_LABELS = {
    "eleven": (torch.tensor([0, 11, 2, 3]), ValueError, r"\[0, 10\).*0 to 11"),
    "negative": (torch.tensor([0, -1, 2, 3]), ValueError, r"\[0, 10\).*-1 to 3"),
    "float": (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, r"torch.int64.*labels.long\(\)"),
    "one-hot": (torch.eye(10)[:4].long(), ValueError, r"one label per image.*\(4, 10\)"),
}


@pytest.mark.parametrize("labels, error, message", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_bad_labels_are_refused_before_anything_is_sent_to_a_device(labels, error, message):
    model, optimizer, images, _ = make_run("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    sent = []
    model.layers[0].register_forward_pre_hook(lambda *_: sent.append(True))
    with pytest.raises(error, match=message):
        train_step(model, images, labels, nn.CrossEntropyLoss(), optimizer)
    assert sent == []
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
