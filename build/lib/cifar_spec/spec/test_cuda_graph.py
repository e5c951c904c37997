"""The CUDA graph: refused where its capture would be wrong; trains like the step it captures."""

import pytest
import torch

from cifar_spec.loop import TrainConfig, fit
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions, make_step, prepare_model

GRAPH = StepOptions(one_call_sgd=True, cuda_graph=True)
REFUSALS = {
    "on-a-cpu": (lambda ps: torch.optim.SGD(ps, lr=0.1), GRAPH, "needs the model on a CUDA device"),
    "momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), GRAPH, "plain SGD"),
    "adam": (lambda ps: torch.optim.Adam(ps), GRAPH, "plain SGD"),
    "compiled": (
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        StepOptions(one_call_sgd=True, cuda_graph=True, compile=True),
        "not compile",
    ),
}


@pytest.mark.parametrize("optimizer, options, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_cuda_graph_is_refused_where_its_capture_would_be_wrong(optimizer, options, message):
    model = CifarNet()
    with pytest.raises(ValueError, match=message):
        make_step(model, optimizer(model.parameters()), options)


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
    batches = [
        (torch.rand(n, 3, 32, 32, device="cuda"), torch.randint(0, 10, (n,), device="cuda"))
        for n in sizes
    ]
    plain = StepOptions(channels_last=True, one_call_sgd=True, bf16=bf16)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, **cudnn):
        expected = graph_run(plain, batches, lrs)
        graphed = graph_run(
            StepOptions(channels_last=True, one_call_sgd=True, bf16=bf16, cuda_graph=True),
            batches,
            lrs,
        )
    torch.testing.assert_close(graphed[0], expected[0], **tol)
    for a, b in zip(graphed[1], expected[1]):
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
