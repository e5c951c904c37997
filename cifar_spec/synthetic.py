"""A learnable stand-in for CIFAR-10, written in CIFAR-10's exact on-disk format.

Where CIFAR-10 cannot be downloaded (CI, this project's machines),
``write_synthetic_cifar10`` writes a data set whose images carry a per-class
pattern under noise, so that the tutorial's CNN learns it the way it learns
the real thing. torchvision's own parser reads it (``cifar10.load_cifar10``).
A marker file tells our folders from real CIFAR-10, which is never overwritten.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from cifar_spec.cifar10_format import (
    BASE_FOLDER,
    CLASSES,
    MAX_FILE_IMAGES,
    META_FILE,
    TEST_FILE,
    TRAIN_FILES,
)
from cifar_spec.errors import ConfigError, DataError
from cifar_spec.files import (
    LOCK_FILE,
    PROBE_PREFIX,
    cannot_write,
    check_writable,
    folder_lock,
    parse_json,
    read_untrusted,
    write_atomically,
    write_text_atomically,
)
from cifar_spec.model import NUM_CLASSES

MARKER = "synthetic.json"  # tells our files from real CIFAR-10, which we never overwrite

MARKER_LIMIT = 4096  # bytes: the marker is one short line


def class_patterns(seed: int) -> np.ndarray:
    """One smooth colour pattern per class, (10, 3, 32, 32), values in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, size=(NUM_CLASSES, 3, 4, 4))
    # Nearest upsampling of a 4x4 grid gives 8x8 blocks: coarse enough for
    # three poolings to keep it, fine enough that classes differ locally.
    return coarse.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)


def synthetic_images(
    labels: np.ndarray, patterns: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
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


def check_ours_to_write(folder: Path) -> None:
    """`folder` is missing, empty, or holds our marker; DataError naming what is there if not.

    A folder we did not write may hold real CIFAR-10 or a user's own files, and
    one behind a link is somewhere else again: neither is ever written into.
    """
    if folder.is_symlink():
        raise DataError(
            f"{folder} is a link (to {os.readlink(folder)}); the synthetic writer writes only "
            "into a folder of its own: remove the link or choose another --root"
        )
    if not folder.exists():
        return
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; remove it or choose another --root")
    # The lock and a probe are our own (another writer's, or one a killed run left).
    names = {
        entry.name
        for entry in os.scandir(folder)
        if entry.name != LOCK_FILE and not entry.name.startswith(PROBE_PREFIX)
    }
    if not names or MARKER in names and marker(folder / MARKER) is not None:
        return
    what = (
        "a CIFAR-10 data set"
        if META_FILE in names
        else f"files ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})"
    )
    raise DataError(
        f"{folder} already holds {what} that this project did not write; "
        "refusing to overwrite it: choose another --root"
    )


def marker(path: Path) -> dict | None:
    """The settings in our marker at `path` (complete or not), or None where it is not ours."""
    try:
        settings = parse_json(read_untrusted(path, MARKER_LIMIT, "a marker"), path, "a marker")
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) and "complete" in settings else None


def check_synthetic_settings(n_train: int, n_test: int, seed: int) -> None:
    if n_train < 0 or n_test < 0:
        raise ConfigError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    if seed < 0:
        raise ConfigError(f"the data set's seed must be >= 0, got {seed}")
    if n_train > 5 * MAX_FILE_IMAGES or n_test > MAX_FILE_IMAGES:
        raise ConfigError(
            f"at most {5 * MAX_FILE_IMAGES:,} training and {MAX_FILE_IMAGES:,} test images fit "
            f"CIFAR-10's files (each is read whole), got n_train={n_train}, n_test={n_test}"
        )


def write_batch(path: Path, batch: dict) -> None:
    # Protocol 2, as CIFAR-10's own files: what torchvision and the safe reader expect.
    write_atomically(path, lambda f: pickle.dump(batch, f, protocol=2))


def write_synthetic_cifar10(
    root: str | Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0
) -> Path:
    """Write a learnable data set in CIFAR-10's on-disk format under `root`; same seed, same bytes.

    The folder is locked while it is written: a second writer is refused.
    """
    check_synthetic_settings(n_train, n_test, seed)
    folder = Path(root) / BASE_FOLDER
    check_ours_to_write(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except OSError as error:
        raise DataError(cannot_write(f"the data set in {folder}", error)) from None
    with folder_lock(folder, "a synthetic data set"):
        check_ours_to_write(folder)  # again: another writer may have finished meanwhile
        # The marker goes first: a write cut short leaves a folder that is still ours.
        write_text_atomically(folder / MARKER, json.dumps({"complete": False}))
        rng = np.random.default_rng(seed)
        patterns = class_patterns(seed)
        sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)] + [n_test]
        for name, size in zip(TRAIN_FILES + [TEST_FILE], sizes):
            labels = rng.integers(0, NUM_CLASSES, size=size)
            write_batch(
                folder / name,
                {
                    "batch_label": f"synthetic {name} (seed {seed})",
                    "labels": labels.tolist(),
                    "data": synthetic_images(labels, patterns, rng),
                    "filenames": [f"synthetic_{name}_{i:05d}.png" for i in range(size)],
                },
            )
        write_batch(
            folder / META_FILE,
            {
                "label_names": CLASSES,
                "num_cases_per_batch": sizes[0],
                "num_vis": 3072,
            },
        )
        settings = {"n_train": n_train, "n_test": n_test, "seed": seed, "complete": True}
        write_text_atomically(folder / MARKER, json.dumps(settings))
    return folder


def is_synthetic(root: str | Path) -> bool:
    return (Path(root) / BASE_FOLDER / MARKER).exists()


def synthetic_settings(root: str | Path) -> dict | None:
    """What a complete synthetic set under `root` was written with; None if there is none."""
    settings = marker(Path(root) / BASE_FOLDER / MARKER)
    return settings if settings is not None and settings.get("complete") is True else None
