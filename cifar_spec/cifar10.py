"""Real CIFAR-10 (or the stand-in) through torchvision's own parser, every file checked first.

``CheckedCIFAR10`` is torchvision's ``CIFAR10`` held to the md5s of the files that
``cifar10_format.check_files`` has just read safely: as torchvision's own CIFAR100,
it changes only constants, so a file swapped in between is refused too. This module
imports torchvision, which takes seconds: it is imported where data is read, never by
a timing worker or by `--help`.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from cifar_spec.cifar10_format import BASE_FOLDER, META_FILE, TEST_FILE, TRAIN_FILES, check_files
from cifar_spec.errors import DataError
from cifar_spec.files import folder_lock
from cifar_spec.synthetic import is_synthetic, rewrite_hint, synthetic_settings, why_unusable


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


def download_cifar10(root: Path) -> None:
    """Fetch and unpack CIFAR-10 into `root` through torchvision, holding the folder's lock."""
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
        raise DataError(f"the synthetic set in {folder} {why_unusable(root)}; {rewrite_hint(root)}")
    if download and not synthetic and not (folder / META_FILE).exists():
        download_cifar10(root)
    # Ours (its marker says so): written again as it was written, never downloaded over.
    checksums = check_files(folder, train, synthetic, rewrite_hint(root) if synthetic else None)
    try:
        dataset = CheckedCIFAR10(root, train, checksums)
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
