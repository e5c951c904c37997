"""The tutorial's training run: the same sums as its own loop, its loss curve, its three causes."""

import inspect
import logging
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from precision import FLOAT32_LONG_RUN, FLOAT64, float64_sums  # how runs compare

from cifar_spec import loop
from cifar_spec.cifar10 import load_cifar10
from cifar_spec.data import to_device
from cifar_spec.errors import NonFiniteLoss
from cifar_spec.loop import TrainConfig, evaluate, fit, new_run, train_epoch
from cifar_spec.step import StepOptions, default_step, make_step, unsupported
from cifar_spec.synthetic import write_synthetic_cifar10
from cifar_spec.tutorial import tutorial_epoch, tutorial_setup

TUTORIAL = TrainConfig(epochs=3, limit=200)  # the tutorial's settings, on 200 images


@pytest.fixture
def root(synthetic_root):
    return synthetic_root


@pytest.fixture(scope="module")
def tutorial_sums(test_split):
    return fit(TUTORIAL, test_split, log=None)


def tutorials_own_loop(root, n_images, epochs, seed):
    model, loader, loss, optim = tutorial_setup(root, n_images, seed)
    return [tutorial_epoch(model, loader, loss, optim) for _ in range(epochs)]


def test_fit_with_the_tutorials_step_gives_the_tutorials_own_loop_sums(root, test_split):
    expected = tutorials_own_loop(root, 200, 3, TUTORIAL.seed)
    plain = fit(replace(TUTORIAL, step=StepOptions()), test_split, log=None)
    # The same kernels on the same values in the same order: every step agrees
    # bit for bit. Both add the float32 losses in float64; only the order of
    # those additions may differ, a few units in the 16th digit.
    torch.testing.assert_close(plain, expected, rtol=1e-12, atol=0)


def test_fits_fast_default_takes_the_tutorial_steps_path_the_same_sums_in_float64(test_split):
    # The same 600 steps in float64, where no pooling tie is broken another way
    # (tests/precision.py); with the test above, fit's default is the tutorial's own loop.
    run = lambda options: float64_sums(test_split, options, 3, 200, 1, 0.01)  # noqa: E731
    torch.testing.assert_close(run(default_step("cpu")), run(StepOptions()), **FLOAT64)


def test_fit_with_its_fast_default_gives_the_tutorials_float32_sums_but_for_pooling_ties(
    root, tutorial_sums
):
    expected = tutorials_own_loop(root, 200, 3, TUTORIAL.seed)
    # In float32 the default's kernels break the odd max-pooling tie the other way, which
    # moves the sums by up to 3.3e-5 (tests/precision.py); a wrong loss, step or order moves
    # them by percents.
    torch.testing.assert_close(tutorial_sums, expected, **FLOAT32_LONG_RUN)


def test_the_loss_falls_over_the_first_epochs_at_the_tutorials_settings(tutorial_sums, test_split):
    assert tutorial_sums[0] > tutorial_sums[1] > tutorial_sums[2]
    assert fit(TUTORIAL, test_split, log=None) == tutorial_sums  # deterministic


def test_a_learning_rate_far_too_large_makes_the_loss_diverge_where_001_does_not(
    tutorial_sums, test_split
):
    with pytest.raises(NonFiniteLoss, match=r"nan at epoch 1, step \d+"):
        fit(TrainConfig(epochs=3, limit=200, lr=0.3), test_split, log=None)
    assert all(torch.isfinite(torch.tensor(tutorial_sums)))


def test_the_same_images_in_another_order_give_another_loss_curve(tutorial_sums, test_split):
    shuffled = fit(TrainConfig(epochs=3, limit=200, shuffle=True), test_split, log=None)
    assert shuffled != tutorial_sums
    # The order changes the path, not the destination's neighbourhood: the
    # first epoch's sums differ by well under 5%.
    torch.testing.assert_close(shuffled[0], tutorial_sums[0], rtol=0.05, atol=0)
    assert fit(TrainConfig(epochs=3, limit=200, shuffle=True), test_split, log=None) == shuffled


@pytest.mark.slow
def test_a_tiny_training_set_is_memorised_while_the_held_out_loss_turns_back_up(root, test_split):
    config = TrainConfig(epochs=30, limit=50)
    train = to_device(load_cifar10(root, train=True)).head(config.limit)
    run = new_run(config)
    held_out = []
    for epoch in range(1, config.epochs + 1):
        train_epoch(run.step, train, config.batch_size, epoch)
        held_out.append(evaluate(run.model, test_split))
    best = min(range(len(held_out)), key=held_out.__getitem__)
    assert evaluate(run.model, train) < 0.05  # fit almost perfectly
    assert best < len(held_out) - 3  # the held-out minimum is passed ...
    assert held_out[-1] > held_out[best] * 1.1  # ... and the loss has risen since


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", -1.0),
        ("lr", float("nan")),
        ("lr", 1e308),
        ("limit", 0),
    ],
)
def test_bad_settings_are_refused_before_any_work(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_nan_found_after_the_epoch_is_still_reported_with_its_step(test_split):
    # On a GPU the step does not read the loss; the epoch checks all losses at its end.
    run = new_run(TrainConfig(limit=20))
    step = make_step(run.model, run.optimizer, check_finite=False)
    images = test_split.images[:20].clone()
    images[11] = float("inf")
    poisoned = type(test_split)(images, test_split.labels[:20])
    with pytest.raises(NonFiniteLoss, match=r"nan at epoch 4, step 11"):
        train_epoch(step, poisoned, 1, epoch=4)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.head(0), "no images to train on"),
        (lambda d: type(d)(d.images, d.labels.clone().fill_(10)), r"labels must lie in \[0, 10\)"),
        (lambda d: type(d)((d.images * 255).to(torch.uint8), d.labels), "/ 255"),
    ],
    ids=["empty", "label-out-of-range", "uint8-images"],
)
def test_fit_refuses_data_it_cannot_train_on_before_any_step(tmp_path, test_split, make, message):
    with pytest.raises(ValueError, match=message):
        fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), make(test_split.head(8)), log=None)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_steps_that_compile_are_timed_apart_from_the_epochs_images_per_second(
    test_split, monkeypatch, capsys
):

    # A clock that moves only in steps: 10 s for a step of a shape not met before (a
    # compile), 1 s for every other. 10 images in batches of 4: shapes 4, 4 and 2.
    clock = {"now": 0.0}
    real = loop.make_step

    def timed_step(model, optimizer, options, **kwargs):
        step = real(model, optimizer, replace(options, compile=False), **kwargs)
        seen = set()

        def run(images, labels):
            clock["now"] += 1.0 if images.shape in seen else 10.0
            seen.add(images.shape)
            return step(images, labels)

        return run

    monkeypatch.setattr(loop, "make_step", timed_step)
    monkeypatch.setattr(loop, "now", lambda: clock["now"])
    config = TrainConfig(epochs=2, limit=10, batch_size=4, step=StepOptions(compile=True))
    fit(config, test_split)
    first, second = (line for line in capsys.readouterr().out.splitlines() if "images/s" in line)
    assert first.endswith(" 4 images/s (compile 20.0 s apart)")  # 4 images in 1 s
    assert second.endswith(" 3 images/s")  # 10 images in 3 s, nothing apart


class Kept(logging.Handler):
    """The messages a logger passed on (torch's loggers need not reach the root's)."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_torchs_no_cuda_runtime_warning_is_dropped_only_while_a_cpu_run_compiles():
    from torch.utils import cpp_extension

    # The message as torch words it: were it reworded, this test would say so.
    assert loop.NO_CUDA_RUNTIME in inspect.getsource(cpp_extension._find_cuda_home)
    logger, kept = logging.getLogger(loop.CPP_EXTENSION_LOGGER), Kept()
    note = "No CUDA runtime is found, using CUDA_HOME='/usr/local'"
    logger.addHandler(kept)
    try:
        with loop.quiet_cuda_home(TrainConfig(step=StepOptions(compile=True))):
            logger.warning(note)
            logger.warning("another warning")
        logger.warning(note)  # after the run
        with loop.quiet_cuda_home(TrainConfig(step=StepOptions())):  # a run that compiles nothing
            logger.warning(note)
    finally:
        logger.removeHandler(kept)
    assert kept.messages == ["another warning", note, note]


@pytest.mark.slow
@pytest.mark.skipif(
    unsupported(StepOptions(compile=True), "cpu"), reason="torch.compile cannot run here"
)
def test_train_compile_on_a_cpu_times_its_compile_apart_and_says_nothing_of_cuda(tmp_path):
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=8)
    argv = ["train", "--compile", "--dry-run", "--device", "cpu", "--no-progress"]
    run = subprocess.run(
        [sys.executable, "-m", "cifar_spec", *argv, "--data-root", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert re.search(r"epoch   1/1 .* images/s \(compile \d+\.\d s apart\)\n", run.stdout)
    assert "CUDA" not in run.stderr
