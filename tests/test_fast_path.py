"""The fast path: what each speed option keeps of the tutorial's result, and what it trades."""

import pytest
import torch

from cifar_spec import bench
from cifar_spec.data import load_cifar10, to_device, write_synthetic_cifar10
from cifar_spec.model import CifarNet
from cifar_spec.train import (StepOptions, TrainConfig, fast_exact_step, fit, make_step,
                              plain_sgd_update, prepare_model)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=5, n_test=200, seed=0)
    return to_device(load_cifar10(root, train=False))


def test_the_default_step_is_float32_channels_last_with_a_written_out_backward_on_a_cpu():
    assert fast_exact_step("cpu") == StepOptions(channels_last=True, manual_backward=True)
    assert fast_exact_step("cuda") == StepOptions(channels_last=True, cuda_graph=True)


def run_steps(options, images, labels, steps=5):
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.01), options)
    losses = torch.stack([step(images, labels) for _ in range(steps)])
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("batch", [1, 4], ids=["batch-1", "batch-4"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_the_written_out_backward_trains_like_autograd_to_float32_rounding(batch, channels_last):
    images, labels = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    options = StepOptions(channels_last=channels_last, manual_backward=True)
    losses, params = run_steps(options, images, labels)
    expected_losses, expected_params = run_steps(StepOptions(), images, labels)
    # The same kernels; only a few roundings happen in another order (e.g. the
    # softmax gradient), ~1e-7 relative per step over five steps.
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.equal(params[0], CifarNet().layers[0].weight)  # it did train
    for p, q in zip(params, expected_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))


REFUSALS = {
    "another-model": (lambda: TwoLayers(), lambda ps: torch.optim.SGD(ps, lr=0.1),
                      "for CifarNet as the tutorial defines it"),
    "momentum": (CifarNet, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                 "plain SGD"),
    "adam": (CifarNet, lambda ps: torch.optim.Adam(ps), "plain SGD"),
}


@pytest.mark.parametrize("model, optimizer, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_the_written_out_backward_refuses_what_it_was_not_written_for(model, optimizer, message):
    net = model()
    with pytest.raises(ValueError, match=message):
        make_step(net, optimizer(net.parameters()), StepOptions(manual_backward=True))


def test_the_written_out_backward_refuses_another_loss():
    net = CifarNet()
    with pytest.raises(ValueError, match="other losses need the autograd step"):
        make_step(net, torch.optim.SGD(net.parameters(), lr=0.1), StepOptions(manual_backward=True),
                  loss_fn=torch.nn.functional.nll_loss)


def test_the_plain_sgd_update_moves_parameters_bit_for_bit_like_sgd_step():
    runs = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = CifarNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        update = plain_sgd_update(optimizer) if fast else optimizer.step
        images, labels = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            update()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    lambda ps: torch.optim.SGD(ps, lr=0.01, weight_decay=1e-4),
    lambda ps: torch.optim.Adam(ps),
], ids=["momentum", "weight-decay", "adam"])
def test_any_other_optimizer_keeps_its_own_step(make):
    assert plain_sgd_update(make(CifarNet().parameters())) is None


def test_the_sgd_update_follows_a_learning_rate_changed_mid_run():
    model = CifarNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    update = plain_sgd_update(optimizer)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = model.layers[0].bias.detach().clone()
    optimizer.param_groups[0]["lr"] = 0.5
    update()
    assert torch.equal(model.layers[0].bias.detach(), before - 0.5)


def sums(test_split, **step):
    config = TrainConfig(epochs=2, limit=100, batch_size=4, lr=0.05, step=StepOptions(**step))
    return fit(config, test_split, log=None)


@pytest.mark.parametrize("step", [dict(channels_last=True),
                                  dict(channels_last=True, manual_backward=True)],
                         ids=["channels-last", "channels-last-written-out-backward"])
def test_the_exact_options_compute_the_same_loss_sums_as_the_plain_step(test_split, step):
    # Other kernels, other summation order: float32 rounding, nothing more.
    torch.testing.assert_close(sums(test_split, **step), sums(test_split), rtol=1e-5, atol=0)


def test_with_bfloat16_the_loss_still_falls_and_stays_within_2_percent_of_float32(test_split):
    exact, bf16 = sums(test_split), sums(test_split, channels_last=True, bf16=True)
    assert bf16[0] > bf16[1]
    # bfloat16 keeps 8 bits of mantissa (relative rounding 0.4%) in each
    # convolution and matmul; over two epochs the sums drift, but by well under 2%.
    torch.testing.assert_close(bf16, exact, rtol=0.02, atol=0)
    assert bf16 != exact  # and it is a real trade: not the same numbers


@pytest.mark.slow
def test_a_compiled_step_computes_the_same_loss_sums_as_the_plain_step(test_split):
    if bench.unsupported(StepOptions(compile=True), "cpu"):
        pytest.skip(bench.unsupported(StepOptions(compile=True), "cpu"))
    torch.testing.assert_close(sums(test_split, compile=True), sums(test_split),
                               rtol=1e-5, atol=0)


CUDA_GRAPH_REFUSALS = {
    "on-a-cpu": (lambda ps: torch.optim.SGD(ps, lr=0.1), {}, "needs the model on a CUDA device"),
    "momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), {}, "plain SGD"),
    "adam": (lambda ps: torch.optim.Adam(ps), {}, "plain SGD"),
    "compiled": (lambda ps: torch.optim.SGD(ps, lr=0.1), {"compile": True},
                 "channels_last and bf16 only"),
}


@pytest.mark.parametrize("optimizer, more, message", CUDA_GRAPH_REFUSALS.values(),
                         ids=CUDA_GRAPH_REFUSALS.keys())
def test_a_cuda_graph_is_refused_where_its_capture_would_be_wrong(optimizer, more, message):
    model = CifarNet()
    with pytest.raises(ValueError, match=message):
        make_step(model, optimizer(model.parameters()), StepOptions(cuda_graph=True, **more))


def graph_run(options, batches, lrs):
    torch.manual_seed(0)
    model = prepare_model(CifarNet().cuda(), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=lrs[0])
    step = make_step(model, optimizer, options, check_finite=False)
    losses = []
    for (images, labels), lr in zip(batches, lrs):
        optimizer.param_groups[0]["lr"] = lr
        losses.append(step(images, labels))
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


# Each precision with the tolerance its rounding allows after five steps. In
# float32, cuDNN is held to deterministic algorithms without TF32, so the graph
# must replay the very kernels of the plain step (measured on an H200: TF32 alone
# moved parameters by up to 4.6e-5 between capture and eager). In TF32 (cuDNN's
# default) and bfloat16 the algorithms may differ, within their 10- and 7-bit
# mantissas.
GRAPH_PRECISIONS = {
    "float32": (False, dict(deterministic=True, allow_tf32=False), dict(rtol=1e-4, atol=1e-5)),
    "tfloat32": (False, dict(deterministic=False, allow_tf32=True), dict(rtol=5e-3, atol=5e-4)),
    "bfloat16": (True, dict(deterministic=False, allow_tf32=True), dict(rtol=2e-2, atol=2e-3)),
}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("bf16, cudnn, tol", GRAPH_PRECISIONS.values(), ids=GRAPH_PRECISIONS.keys())
def test_the_cuda_graph_step_trains_like_the_step_it_captures(bf16, cudnn, tol):
    # A new batch every step (the graph must read it), a last batch of another
    # size (a second graph) and a learning rate changed mid-run (a third).
    sizes, lrs = [32, 32, 32, 32, 7], [0.01, 0.01, 0.05, 0.05, 0.05]
    batches = [(torch.rand(n, 3, 32, 32, device="cuda"), torch.randint(0, 10, (n,), device="cuda"))
               for n in sizes]
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, **cudnn):
        plain = graph_run(StepOptions(channels_last=True, bf16=bf16), batches, lrs)
        graphed = graph_run(StepOptions(channels_last=True, bf16=bf16, cuda_graph=True),
                            batches, lrs)
    torch.testing.assert_close(graphed[0], plain[0], **tol)
    for a, b in zip(graphed[1], plain[1]):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_fit_on_cuda_with_its_default_graph_gives_the_cpu_loss_sums(test_split):
    # 100 images in batches of 3 end with a batch of 1, which gets a graph of its own.
    config = dict(epochs=2, limit=100, batch_size=3)
    cpu = fit(TrainConfig(**config), test_split, log=None)
    cuda = fit(TrainConfig(device="cuda", **config), test_split, log=None)
    # cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa), as the
    # tutorial's own code would on a GPU; over two epochs that stays within 1%.
    torch.testing.assert_close(cuda, cpu, rtol=1e-2, atol=0)
