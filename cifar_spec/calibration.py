"""The stand-in measured against CIFAR-10's published figures: `cifar-spec data calibrate`.

Each measurement is the one the published figure came from, run on a data set
in CIFAR-10's format (the stand-in, or real CIFAR-10 for comparison): the
test split's pixel statistics, a linear softmax on raw pixels, this model on
the train split at batch 64, and the tutorial's own run on the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifar_spec import published
from cifar_spec.cifar10 import load_cifar10
from cifar_spec.data import DeviceData, to_device
from cifar_spec.errors import NonFiniteLoss
from cifar_spec.loop import TrainConfig, check_data, new_run, train_epoch
from cifar_spec.model import NUM_CLASSES


@dataclass(frozen=True)
class PixelStatistics:
    mean: tuple[float, float, float]  # per channel, pixels / 255
    sd: tuple[float, float, float]  # per channel, over every pixel of the split
    brightness_sd: float  # sd of the images' mean brightness: how much scenes differ
    clipped: float  # share of values at 0 or 255
    spectrum_slope: float  # of log power against log frequency: about -2 in photographs
    class_counts: tuple[int, ...]


def spectrum_slope(images: np.ndarray) -> float:
    """Least-squares slope of the radially averaged power spectrum on log-log axes, over the
    frequencies between the coarsest and the pixel grid's (2 to 12 cycles an image)."""
    grey = images.astype(np.float64).mean(axis=-1)  # (N, 32, 32)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(grey)) ** 2).mean(axis=0)
    f = np.fft.fftfreq(32) * 32
    radius = np.rint(np.hypot(f[:, None], f[None, :])).astype(int)
    rings = np.arange(2, 13)
    ring_power = [power[radius == r].mean() for r in rings]
    return float(np.polyfit(np.log(rings), np.log(ring_power), 1)[0])


def pixel_statistics(images: np.ndarray, labels: list[int]) -> PixelStatistics:
    """`images` (N, 32, 32, 3) uint8, as torchvision's CIFAR10 holds them."""
    pixels = images.astype(np.float64) / 255
    return PixelStatistics(
        mean=tuple(round(float(x), 4) for x in pixels.mean(axis=(0, 1, 2))),
        sd=tuple(round(float(x), 4) for x in pixels.std(axis=(0, 1, 2))),
        brightness_sd=round(float(pixels.mean(axis=(1, 2, 3)).std()), 4),
        clipped=round(float(((images == 0) | (images == 255)).mean()), 4),
        spectrum_slope=round(spectrum_slope(images), 2),
        class_counts=tuple(np.bincount(labels, minlength=NUM_CLASSES).tolist()),
    )


def accuracy(model: Callable, data: DeviceData, batch_size: int = 1000) -> float:
    with torch.no_grad():
        right = sum(
            (model(images).argmax(dim=1) == labels).sum().item()
            for images, labels in data.batches(batch_size)
        )
    return right / len(data)


def linear_probe(train: DeviceData, test: DeviceData, epochs: int = 20, seed: int = 0) -> float:
    """Test accuracy of a softmax regression on raw pixels (standardised with the train
    split's per-pixel mean and sd), trained with Adam: how much a linear model can see."""
    torch.manual_seed(seed)
    flat = lambda d: d.images.flatten(1)  # noqa: E731
    mean, sd = flat(train).mean(0), flat(train).std(0) + 1e-3
    probe = nn.Linear(3 * 32 * 32, NUM_CLASSES)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-4, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for images, labels in train.batches(256, generator):
            loss = nn.functional.cross_entropy(probe((images.flatten(1) - mean) / sd), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return accuracy(lambda images: probe((images.flatten(1) - mean) / sd), test)


def model_accuracy(train: DeviceData, test: DeviceData, epochs: int = 10, seed: int = 0) -> float:
    """Test accuracy of this model trained on the train split as the course's full training
    lesson does: batch 64, SGD lr 0.01, file order, 10 epochs."""
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.01, seed=seed)
    run = new_run(config)
    for epoch in range(1, epochs + 1):
        train_epoch(run.step, train, config.batch_size, epoch)
    run.model.eval()
    return accuracy(run.model, test)


def tutorial_sums(
    test: DeviceData, epochs: int, seed: int, lr: float = published.TUTORIAL_LR
) -> list[float]:
    """The tutorial's run on `test` (batch 1, file order): per-epoch loss sums; a nan ends the
    list (the loss overflowed: the step stopped before its backward)."""
    check_data(test)
    sums: list[float] = []
    run = new_run(TrainConfig(epochs=epochs, seed=seed, lr=lr))
    for epoch in range(1, epochs + 1):
        try:
            sums.append(train_epoch(run.step, test, 1, epoch))
        except NonFiniteLoss:
            sums.append(float("nan"))
            break
    return sums


def curve_shape(sums: list[float]) -> str:
    """Per image, epoch 2 against 1, where the minimum is and what follows it."""
    finite = [s for s in sums if np.isfinite(s)]
    best = int(np.argmin(finite))
    after = ", ".join(f"{s / finite[best]:.2f}" for s in finite[best + 1 :]) or "none run"
    nan = f"; nan at epoch {len(finite) + 1}" if len(finite) < len(sums) else ""
    ratio = f"{finite[1] / finite[0]:.3f}" if len(finite) > 1 else "-"
    return f"e2/e1 {ratio}; minimum at epoch {best + 1}; later epochs / minimum: {after}{nan}"


def published_shape(epochs: int) -> str:
    """The published 20-epoch log's shape over its first `epochs` epochs."""
    sums = list(published.TWENTY_EPOCHS[:epochs])
    return curve_shape(sums + [float("nan")] * (epochs >= published.FIRST_NAN_EPOCH))


def calibration_table(
    root: str | Path,
    seeds: tuple[int, ...] = (0, 1),
    epochs: int = 5,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """The calibration table, in markdown: each published figure beside its measurement on
    the data set under `root` (on the first `limit` images of each split, for a quick look)."""
    log("reading the splits")
    train_split, test_split = (load_cifar10(root, train=t) for t in (True, False))
    stats = pixel_statistics(test_split.data[:limit], test_split.targets[:limit])
    train, test = to_device(train_split, limit=limit), to_device(test_split, limit=limit)
    log("a linear softmax on raw pixels")
    probe = linear_probe(train, test)
    log("this model on the train split, batch 64, 10 epochs")
    model = model_accuracy(train, test)
    cells = lambda xs: ", ".join(f"{x:.4f}" for x in xs)  # noqa: E731
    rows = [
        ("per-channel mean", cells(published.PIXEL_MEAN), cells(stats.mean)),
        ("per-channel sd", cells(published.PIXEL_SD), cells(stats.sd)),
        ("images a class (test split)", "1000 each", ", ".join(map(str, stats.class_counts))),
        ("sd of an image's brightness", "about 0.14", f"{stats.brightness_sd:.3f}"),
        ("values clipped at 0 or 255", "-", f"{stats.clipped:.1%}"),
        ("power spectrum slope (log-log)", "about -2", f"{stats.spectrum_slope:.2f}"),
        ("linear softmax, test accuracy", f"{published.LINEAR_PROBE_ACCURACY:.0%}", f"{probe:.1%}"),
        ("this model, batch 64, 10 epochs", f"{published.MODEL_ACCURACY:.0%}", f"{model:.1%}"),
    ]
    for seed in seeds:
        log(f"the tutorial's run, weight seed {seed}, {epochs} epoch{'s' * (epochs != 1)}")
        sums = tutorial_sums(test, epochs, seed)
        per_image = " ".join(f"{s / len(test):.3f}" for s in sums)
        rows.append(
            (
                f"tutorial's run, seed {seed}: loss an image by epoch",
                " ".join(
                    f"{s / published.TUTORIAL_IMAGES:.3f}" for s in published.TWENTY_EPOCHS[:epochs]
                ),
                per_image,
            )
        )
        rows.append(
            (f"tutorial's run, seed {seed}: shape", published_shape(epochs), curve_shape(sums))
        )
    lines = ["| figure | CIFAR-10 (published) | this data (measured) |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])
