"""CIFAR-10 on disk, a learnable stand-in in the same format, and a split held on a device.

Real CIFAR-10 is read by torchvision's own ``CIFAR10`` class. Where it cannot
be downloaded (CI, this project's machines), ``write_synthetic_cifar10`` writes
a data set in CIFAR-10's exact on-disk format whose images carry a per-class
pattern under noise, so that the tutorial's CNN learns it the way it learns
the real thing.

Both sets are pickles, which can run code. So before torchvision parses a
folder, ``check_files`` reads every file in it with the restricted unpickler
(``files.load_pickle``), checks what it holds, and (for real CIFAR-10) its
published md5. ``CheckedCIFAR10`` then holds torchvision's parser to the md5s
of the bytes just checked, so a file swapped in between is refused too.

``DeviceData`` holds a whole split as one float tensor on the training device:
converted once, batched by indexing, shuffled by a seeded generator. That takes
the per-sample ``DataLoader`` work out of the training loop.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cifar_spec.files import (
    LOCK_FILE,
    PROBE_PREFIX,
    cannot_write,
    check_writable,
    folder_lock,
    load_pickle,
    parse_json,
    read_untrusted,
    write_atomically,
    write_text_atomically,
)
from cifar_spec.model import NUM_CLASSES

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-10's published layout and md5s, as torchvision's CIFAR10 declares them (a test holds
# the two equal). Spelled out here so that importing this module does not import torchvision,
# which takes seconds (it pulls in torch._dynamo) and which a timing worker never needs.
BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
PUBLISHED_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
FIXES = (
    "download it with --download (needs internet), "
    "or train on the synthetic stand-in with --synthetic"
)
MARKER = "synthetic.json"  # tells our files from real CIFAR-10, which we never overwrite
MARKER_LIMIT = 4096  # bytes: the marker is one short line
# A batch file is read whole: real CIFAR-10's are 31 MB (10,000 images of 3,072 bytes
# and their names). Ours are larger per image: protocol 2 stores the pixels as a latin-1
# string written in UTF-8, so a byte >= 128 takes two (4,676 bytes an image measured,
# 6,144 at most). 10,000 images a file, as CIFAR-10's, keep them under the limit.
BATCH_LIMIT = 64 << 20
MAX_FILE_IMAGES = 10_000


class DataError(RuntimeError):
    """The data set is missing or unreadable; the message names the path and the fix."""


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
        raise ValueError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    if seed < 0:
        raise ValueError(f"the data set's seed must be >= 0, got {seed}")
    if n_train > 5 * MAX_FILE_IMAGES or n_test > MAX_FILE_IMAGES:
        raise ValueError(
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


def is_class_index(value: object) -> bool:
    # bool is an int to Python, and a float 3.0 would be truncated: neither is a label.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def batch_problem(entry: object) -> str | None:
    """What is wrong with an unpickled data_batch_N or test_batch, or None."""
    if not isinstance(entry, dict) or not {"data", "labels"} <= entry.keys():
        return "it is not a dict with 'data' and 'labels'"
    data, labels = entry["data"], entry["labels"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        return "'data' is not a uint8 array of shape (N, 3072)"
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 else None
    if not isinstance(labels, list):
        return "'labels' is not a list"
    wrong = next((x for x in labels if not is_class_index(x)), None)
    if wrong is not None:
        return f"labels must be integer class indices, found {type(wrong).__name__} {wrong!r}"
    if len(labels) != len(data):
        return f"{len(labels)} labels for {len(data)} images"
    if labels and (min(labels) < 0 or max(labels) >= NUM_CLASSES):
        return f"labels from {min(labels)} to {max(labels)}, not in [0, {NUM_CLASSES})"
    return None


def meta_problem(entry: object) -> str | None:
    """What is wrong with an unpickled batches.meta, or None."""
    names = entry.get("label_names") if isinstance(entry, dict) else None
    if not (
        isinstance(names, list)
        and len(names) == NUM_CLASSES
        and all(isinstance(n, str) for n in names)
    ):
        return f"'label_names' is not a list of {NUM_CLASSES} class names"
    return None


def check_file(path: Path, raw: bytes, parse: bool, published_md5: str | None) -> str:
    """The md5 of `raw` (the bytes of `path`), after checking them; DataError names the file."""
    digest = hashlib.md5(raw).hexdigest()
    if published_md5 is not None and digest != published_md5:
        raise DataError(
            f"{path} does not match CIFAR-10's published md5: it is damaged or "
            f"was changed; delete {path.parent}, then download it again"
        )
    if not parse:  # the other split: only its md5 is read, by torchvision too
        return digest
    try:
        entry = load_pickle(raw, path)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        MemoryError,
    ) as error:
        raise DataError(
            f"{path} is truncated or not in CIFAR-10's format "
            f"({type(error).__name__}: {error}); delete the folder, then "
            f"{FIXES}"
        ) from None
    problem = (meta_problem if path.name == META_FILE else batch_problem)(entry)
    if problem:
        raise DataError(
            f"{path} is not in CIFAR-10's format: {problem}; delete the folder, then {FIXES}"
        )
    return digest


def check_files(folder: Path, train: bool, synthetic: bool) -> dict[str, str]:
    """Read every file torchvision will open, unpickling the split's and the meta safely.

    Returns their md5s, which torchvision then checks again right before its
    own reads, so the bytes it parses are the bytes checked here.
    """
    split = TRAIN_FILES if train else [TEST_FILE]
    checksums = {}
    for name in TRAIN_FILES + [TEST_FILE, META_FILE]:
        path = folder / name
        try:
            raw = read_untrusted(path, BATCH_LIMIT, "a CIFAR-10 batch")
        except OSError as error:
            raise DataError(
                f"no readable CIFAR-10 under {folder.parent.resolve()} "
                f"({name}: {error.strerror}): {FIXES}"
            ) from None
        published = None if synthetic else PUBLISHED_MD5[name]
        checksums[name] = check_file(path, raw, name in split or name == META_FILE, published)
    return checksums


@functools.cache
def torchvision_classes() -> dict[str, type]:
    """torchvision's CIFAR10 and our CheckedCIFAR10, built on first use (see `__getattr__`)."""
    from torchvision.datasets import CIFAR10

    class CheckedCIFAR10(CIFAR10):
        """torchvision's CIFAR-10 parser, held to the md5s of files `check_files` has read safely.

        Only the checksum constants change (as in torchvision's own CIFAR100), per
        instance: torchvision refuses any file whose bytes are not the ones checked.
        """

        def __init__(self, root: str | Path, train: bool, checksums: dict[str, str]) -> None:
            self.train_list = [[name, checksums[name]] for name in TRAIN_FILES]
            self.test_list = [[TEST_FILE, checksums[TEST_FILE]]]
            self.meta = {**CIFAR10.meta, "md5": checksums[META_FILE]}
            super().__init__(str(root), train=train)

    # Named as if defined at the top, so that pickle finds it through `__getattr__`.
    CheckedCIFAR10.__qualname__ = "CheckedCIFAR10"
    return {"CIFAR10": CIFAR10, "CheckedCIFAR10": CheckedCIFAR10}


def __getattr__(name: str) -> type:
    # `data.CIFAR10` and `data.CheckedCIFAR10` import torchvision when first asked for.
    if name in ("CIFAR10", "CheckedCIFAR10"):
        return torchvision_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def download_cifar10(root: Path) -> None:
    """Fetch and unpack CIFAR-10 into `root` through torchvision, holding the folder's lock."""
    from torchvision.datasets.utils import download_and_extract_archive

    CIFAR10 = torchvision_classes()["CIFAR10"]
    try:
        with folder_lock(root, "a CIFAR-10 download"):
            download_and_extract_archive(
                CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
            )
    except (OSError, RuntimeError) as error:  # no network, a refused connection, a bad md5
        raise DataError(
            f"could not download CIFAR-10 into {root.resolve()} ({error}); "
            "train on the synthetic stand-in with --synthetic"
        ) from None


def load_cifar10(root: str | Path, train: bool, download: bool = False) -> CIFAR10:
    """The split through torchvision's parser, every file checked first; the synthetic set if
    `root` holds a complete one, else real CIFAR-10 (downloaded first if asked and missing)."""
    root = Path(root)
    folder = root / BASE_FOLDER
    synthetic = is_synthetic(root)
    if synthetic and synthetic_settings(root) is None:
        raise DataError(
            f"the synthetic set in {folder} was never completed (a write cut short); "
            f"write it again with `cifar-spec data synth --root {root}`"
        )
    if download and not synthetic and not (folder / META_FILE).exists():
        download_cifar10(root)
    checksums = check_files(folder, train, synthetic)
    try:
        dataset = torchvision_classes()["CheckedCIFAR10"](root, train, checksums)
    except RuntimeError:  # torchvision's "corrupted": a file changed since it was checked
        raise DataError(
            f"a file under {folder} changed while it was being read; is another "
            "process writing there? Load it again when it is done"
        ) from None
    check_split(dataset, root)
    return dataset


def check_split(dataset: CIFAR10, root: str | Path) -> None:
    """Catch what parses file by file but not as a whole, before any training starts."""
    if dataset.data.shape[1:] != (32, 32, 3) or len(dataset.targets) != len(dataset.data):
        raise DataError(
            f"CIFAR-10 under {Path(root).resolve()} is not valid: "
            f"{len(dataset.targets)} labels for images of shape {dataset.data.shape}"
        )


def describe_split(dataset: CIFAR10) -> str:
    """Which data this is, as a checkpoint keeps it: the split and, if synthetic, its settings."""
    split = "train split" if dataset.train else "test split"
    settings = synthetic_settings(dataset.root)
    if settings is None:
        return f"the CIFAR-10 {split}"
    return (
        f"the synthetic {split} (seed {settings['seed']}, {settings['n_train']} train and "
        f"{settings['n_test']} test images)"
    )


@dataclass(frozen=True)
class DeviceData:
    """A whole split on one device: images (N, 3, 32, 32) float in [0, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor
    split: str = "unnamed data"  # which data this is, as describe_split says it

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> DeviceData:
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def to(self, device: str | torch.device) -> DeviceData:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def record(self) -> dict:
        """What a checkpoint keeps of the data it trained on, to refuse resuming on other data."""
        labels = self.labels.cpu().numpy().astype("<i8").tobytes()
        return {
            "split": self.split,
            "images": len(self),
            "labels_sha256": hashlib.sha256(labels).hexdigest()[:16],
        }

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in order, or in a random order drawn from `generator` when one is given."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield (
                    self.images[start : start + batch_size],
                    self.labels[start : start + batch_size],
                )
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]


def to_device(
    dataset: CIFAR10, device: str | torch.device = "cpu", limit: int | None = None
) -> DeviceData:
    """Convert once, exactly as ToTensor() does (HWC uint8 -> CHW float / 255), and move."""
    data, labels = dataset.data, dataset.targets
    if limit is not None:
        data, labels = data[:limit], labels[:limit]
    images = torch.from_numpy(np.ascontiguousarray(data)).to(device)  # (N, 32, 32, 3) uint8
    images = images.permute(0, 3, 1, 2).contiguous().float().div(255)  # (N, 3, 32, 32)
    labels = torch.tensor(labels, dtype=torch.long, device=device)
    return DeviceData(images, labels, describe_split(dataset))
