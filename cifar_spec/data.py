"""CIFAR-10 on disk, a learnable stand-in in the same format, and a split held on a device.

Real CIFAR-10 is read by torchvision's own ``CIFAR10`` class. Where it cannot
be downloaded (CI, this project's machines), ``write_synthetic_cifar10`` writes
a data set in CIFAR-10's exact on-disk format whose images carry a per-class
pattern under noise, so that the tutorial's CNN learns it the way it learns
the real thing. ``SyntheticCIFAR10`` only swaps the checksum constants, as
torchvision's ``CIFAR100`` does, so both sets go through one parsing path.

``DeviceData`` holds a whole split as one float tensor on the training device:
converted once, batched by indexing, shuffled by a seeded generator. That takes
the per-sample ``DataLoader`` work out of the training loop.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10

from cifar_spec.model import NUM_CLASSES

CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
MARKER = "synthetic.json"  # tells our files from real CIFAR-10, which we never overwrite


class DataError(RuntimeError):
    """The data set is missing or unreadable; the message names the path and the fix."""


class SyntheticCIFAR10(CIFAR10):
    """CIFAR-10's parser, without its checksums: generated files have none to match."""

    train_list = [[name, None] for name in TRAIN_FILES]
    test_list = [["test_batch", None]]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": None}


def class_patterns(seed: int) -> np.ndarray:
    """One smooth colour pattern per class, (10, 3, 32, 32), values in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, size=(NUM_CLASSES, 3, 4, 4))
    # Nearest upsampling of a 4x4 grid gives 8x8 blocks: coarse enough for
    # three poolings to keep it, fine enough that classes differ locally.
    return coarse.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)


def synthetic_images(labels: np.ndarray, patterns: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """uint8 images, (N, 3072) in R, G, B planes: the class pattern, shifted, under noise.

    The pattern is faint (10-35% of the signal) under strong noise, so that a
    first epoch at the tutorial's settings ends near ln(10) per image, as on
    real CIFAR-10, and a small training set can be memorised (overfit).
    """
    n = len(labels)
    dy, dx = rng.integers(-4, 5, size=(2, n, 1, 1, 1))
    rows = (np.arange(32)[None, None, :, None] - dy) % 32  # (N, 1, 32, 1)
    cols = (np.arange(32)[None, None, None, :] - dx) % 32  # (N, 1, 1, 32)
    images = patterns[labels[:, None, None, None], np.arange(3)[None, :, None, None], rows, cols]
    contrast = rng.uniform(0.1, 0.35, size=(n, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(size=images.shape, dtype=np.float32) * 0.8
    pixels = 127.5 + 127.5 * np.clip(contrast * images + noise * (1 - contrast), -1, 1)
    return pixels.round().astype(np.uint8).reshape(n, 3072)


def write_pickle(path: Path, obj: dict) -> None:
    """Write atomically: a reader never sees half a file, and a crash leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_writable(folder: Path) -> None:
    if (folder / "batches.meta").exists() and not (folder / MARKER).exists():
        raise DataError(
            f"{folder} already holds a CIFAR-10 data set that this project did not write; "
            "refusing to overwrite it: choose another --root"
        )


def write_synthetic_cifar10(root: str | Path, n_train: int = 50_000,
                            n_test: int = 10_000, seed: int = 0) -> Path:
    """Write a learnable data set in CIFAR-10's on-disk format under `root`; same seed, same bytes."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    folder = Path(root) / CIFAR10.base_folder
    check_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The marker goes first: a write cut short leaves a folder that is still ours.
    (folder / MARKER).write_text(json.dumps({"complete": False}))
    rng = np.random.default_rng(seed)
    patterns = class_patterns(seed)
    sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)] + [n_test]
    for name, size in zip(TRAIN_FILES + ["test_batch"], sizes):
        labels = rng.integers(0, NUM_CLASSES, size=size)
        write_pickle(folder / name, {
            "batch_label": f"synthetic {name} (seed {seed})",
            "labels": labels.tolist(),
            "data": synthetic_images(labels, patterns, rng),
            "filenames": [f"synthetic_{name}_{i:05d}.png" for i in range(size)],
        })
    write_pickle(folder / "batches.meta", {
        "label_names": CLASSES, "num_cases_per_batch": sizes[0], "num_vis": 3072,
    })
    (folder / MARKER).write_text(json.dumps({"n_train": n_train, "n_test": n_test, "seed": seed,
                                             "complete": True}))
    return folder


def is_synthetic(root: str | Path) -> bool:
    return (Path(root) / CIFAR10.base_folder / MARKER).exists()


def synthetic_settings(root: str | Path) -> dict | None:
    """What a complete synthetic set under `root` was written with; None if there is none."""
    try:
        settings = json.loads((Path(root) / CIFAR10.base_folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return settings if settings.get("complete") else None


def load_cifar10(root: str | Path, train: bool, download: bool = False) -> CIFAR10:
    """The split through torchvision's parser: the synthetic set if `root` holds it, else the real one."""
    cls = SyntheticCIFAR10 if is_synthetic(root) else CIFAR10
    fixes = ("download it with --download (needs internet), "
             "or train on the synthetic stand-in with --synthetic")
    try:
        dataset = cls(str(root), train=train, download=download and cls is CIFAR10)
    except RuntimeError as error:  # torchvision's "not found or corrupted"
        raise DataError(f"no readable CIFAR-10 under {Path(root).resolve()}: {fixes}") from error
    except OSError as error:  # a failed download: no network, a refused connection
        raise DataError(f"could not download CIFAR-10 into {Path(root).resolve()} ({error}); "
                        "train on the synthetic stand-in with --synthetic") from error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
        raise DataError(
            f"a CIFAR-10 file under {Path(root).resolve()} is truncated or not in CIFAR-10's "
            f"format ({type(error).__name__}: {error}); delete the folder, then {fixes}"
        ) from error
    check_split(dataset, root)
    return dataset


def check_split(dataset: CIFAR10, root: str | Path) -> None:
    """Catch files that parse but hold the wrong things, before any training starts."""
    labels = np.asarray(dataset.targets)
    problems = []
    if dataset.data.dtype != np.uint8:
        problems.append(f"images are {dataset.data.dtype}, not uint8")
    if len(labels) != len(dataset.data):
        problems.append(f"{len(labels)} labels for {len(dataset.data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        problems.append(f"labels from {labels.min()} to {labels.max()}, not in [0, 10)")
    if len(dataset.classes) != NUM_CLASSES:
        problems.append(f"{len(dataset.classes)} class names, not 10")
    if problems:
        raise DataError(f"CIFAR-10 under {Path(root).resolve()} is not valid: "
                        + "; ".join(problems))


@dataclass(frozen=True)
class DeviceData:
    """A whole split on one device: images (N, 3, 32, 32) float in [0, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> DeviceData:
        return DeviceData(self.images[:n], self.labels[:n])

    def to(self, device: str | torch.device) -> DeviceData:
        return DeviceData(self.images.to(device), self.labels.to(device))

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in order, or in a random order drawn from `generator` when one is given."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield self.images[start:start + batch_size], self.labels[start:start + batch_size]
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            yield self.images[index], self.labels[index]


def to_device(dataset: CIFAR10, device: str | torch.device = "cpu",
              limit: int | None = None) -> DeviceData:
    """Convert once, exactly as ToTensor() does (HWC uint8 -> CHW float / 255), and move."""
    data, labels = dataset.data, dataset.targets
    if limit is not None:
        data, labels = data[:limit], labels[:limit]
    images = torch.from_numpy(np.ascontiguousarray(data)).to(device)  # (N, 32, 32, 3) uint8
    images = images.permute(0, 3, 1, 2).contiguous().float().div(255)  # (N, 3, 32, 32)
    return DeviceData(images, torch.tensor(labels, dtype=torch.long, device=device))
