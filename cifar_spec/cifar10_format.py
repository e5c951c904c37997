"""CIFAR-10's python format on disk, and the checks every file passes before anything parses it.

The layout and the published md5s are torchvision's (a test holds the two equal), spelled
out here so that checking or writing the format never imports torchvision, which takes
seconds (it pulls in torch._dynamo) and which a timing worker never needs.

Both real CIFAR-10 and the synthetic stand-in are pickles, which can run code. So before
torchvision parses a folder, ``check_files`` reads every file in it with the one reader of
untrusted files and the restricted unpickler (``safe_pickle``), checks what it holds, and
(for real CIFAR-10) its published md5.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

from cifar_spec.errors import DataError
from cifar_spec.files import read_untrusted
from cifar_spec.safe_pickle import load_pickle

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
NUM_CLASSES = len(CLASSES)  # the model's outputs; defined here, so the format needs no torch
# CIFAR-10's published layout and md5s, as torchvision's CIFAR10 declares them.
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

# A batch file is read whole: real CIFAR-10's are 31 MB (10,000 images of 3,072 bytes
# and their names). Ours are larger per image: protocol 2 stores the pixels as a latin-1
# string written in UTF-8, so a byte >= 128 takes two (4,676 bytes an image measured,
# 6,144 at most). 10,000 images a file, as CIFAR-10's, keep them under the limit.
BATCH_LIMIT = 64 << 20

MAX_FILE_IMAGES = 10_000


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


# The way out of a damaged folder of real CIFAR-10: torchvision downloads only into a folder
# that lacks it, so the damaged one goes first.
DAMAGED_FIX = f"delete the folder, then {FIXES}"


def check_file(
    path: Path, raw: bytes, parse: bool, published_md5: str | None, fix: str = DAMAGED_FIX
) -> str:
    """The md5 of `raw` (the bytes of `path`), after checking them; DataError names the file
    and `fix`, the way out."""
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
            f"({type(error).__name__}: {error}); {fix}"
        ) from None
    problem = (meta_problem if path.name == META_FILE else batch_problem)(entry)
    if problem:
        raise DataError(f"{path} is not in CIFAR-10's format: {problem}; {fix}")
    return digest


def check_files(
    folder: Path, train: bool, synthetic: bool, rewrite: str | None = None
) -> dict[str, str]:
    """Read every file torchvision will open, unpickling the split's and the meta safely.

    A damaged or missing file's error says how to get it again: for a synthetic folder
    `rewrite` (how it was written), for real CIFAR-10 the download.

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
                f"({name}: {error.strerror}): {rewrite or FIXES}"
            ) from None
        published = None if synthetic else PUBLISHED_MD5[name]
        parse = name in split or name == META_FILE
        checksums[name] = check_file(path, raw, parse, published, rewrite or DAMAGED_FIX)
    return checksums
