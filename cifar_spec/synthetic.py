"""A stand-in for CIFAR-10 that trains like it, written in CIFAR-10's exact on-disk format.

Where CIFAR-10 cannot be downloaded (CI, this project's machines),
``write_synthetic_cifar10`` writes images built as photographs are: a scene
with a natural spectrum (power falling as 1/f^2) and its own brightness,
colour and contrast, and over it one of its class's objects, shifted and
mirrored. Their pixel statistics are CIFAR-10's, and how much of an image the
class decides was calibrated by measurement, so that the tutorial's run on the
test split follows CIFAR-10's published loss curve (docs/training.md). One
knob, `signal`, makes it harder or easier. torchvision's own parser reads it
(``cifar10.load_cifar10``). A marker file tells our folders from real CIFAR-10,
which is never overwritten.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_spec import published
from cifar_spec.cifar10_format import (
    BASE_FOLDER,
    CLASSES,
    MAX_FILE_IMAGES,
    META_FILE,
    NUM_CLASSES,
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

MARKER = "synthetic.json"  # tells our files from real CIFAR-10, which we never overwrite

MARKER_LIMIT = 4096  # bytes: the marker is one short line

# The generator's version, kept in the marker: a set an older generator wrote
# (with other images for the same seed) is written again rather than trained on.
GENERATOR = 2

CIFAR10_MEAN = np.array(published.PIXEL_MEAN, dtype=np.float32)  # the scenes' average colour

# How much of an image the class decides, at signal 1.0: the object's opacity
# over its scene, and how far the class tints the scene's colour. Calibrated
# by measurement (`cifar-spec data calibrate`, benchmarks/RESULTS.md) so that the
# tutorial's run trains on it as on CIFAR-10.
OPACITY = 0.38
CONTEXT = 0.038
OBJECTS_PER_CLASS = 6  # poses of a class: few enough to learn, many enough not to memorise
MAX_SHIFT = 4  # pixels an object moves either way, as a photographer's framing varies
# Per channel, so that each channel's sd after clipping lands on CIFAR-10's (published.PIXEL_SD).
GAIN = np.array([1.067, 1.054, 1.147], dtype=np.float32)
MAX_SIGNAL = 2.5  # opacity 0.95: beyond it an object would hide its scene entirely


@dataclass(frozen=True)
class ClassLook:
    """What every image of a class shares: its objects (OBJECTS_PER_CLASS a class, class by
    class) and the tint of its scenes."""

    shapes: np.ndarray  # (objects, 2, 1024): each object's soft mask and texture
    colours: np.ndarray  # (objects, 3): each object's colour, against its scene
    tints: np.ndarray  # (NUM_CLASSES, 3): each class's scene colour, summing to 0 over classes


def natural_noise(rng: np.random.Generator, n: int, channels: int, exponent: float) -> np.ndarray:
    """(n, channels, 32, 32) Gaussian fields with amplitude ~ 1/f**exponent, each of sd 1.

    Exponent 1 is natural images' spectrum: power falling as 1/f^2, most of an
    image's variation in its coarse shapes rather than in pixel-to-pixel noise.
    """
    fy = np.fft.fftfreq(32)[:, None]
    fx = np.fft.rfftfreq(32)[None, :]
    amplitude = np.hypot(fy, fx)
    amplitude[0, 0] = np.inf  # no constant part: a field's mean is the scene colour's business
    amplitude = (1 / amplitude**exponent).astype(np.float32)
    coefficients = np.empty((n, channels, 32, 17), dtype=np.complex64)
    coefficients.real = rng.standard_normal(coefficients.shape, dtype=np.float32)
    coefficients.imag = rng.standard_normal(coefficients.shape, dtype=np.float32)
    coefficients *= amplitude
    fields = np.fft.irfft2(coefficients, s=(32, 32))  # float32 in, float32 out (numpy >= 2)
    return fields / fields.std(axis=(-2, -1), keepdims=True)


def class_look(seed: int) -> ClassLook:
    """Each class's objects (a soft blob with a texture and a colour, in several poses) and
    scene tint; drawn from `seed` alone, so the train and test splits share them."""
    rng = np.random.default_rng([seed, 1])
    count = NUM_CLASSES * OBJECTS_PER_CLASS
    yy, xx = np.mgrid[0:32, 0:32] - 15.5
    centred = np.exp(-(yy**2 + xx**2) / (2 * 9.0**2))  # objects sit near the middle
    blobs = natural_noise(rng, count, 1, exponent=1.5)[:, 0] + 3 * centred
    masks = 1 / (1 + np.exp(-3 * (blobs - 1.5)))
    textures = 0.12 * natural_noise(rng, count, 1, exponent=1.0)[:, 0]
    colours = rng.normal(0, 0.18, (count, 3))
    tints = rng.normal(0, 1, (NUM_CLASSES, 3))
    shapes = np.stack([masks, textures], axis=1).reshape(count, 2, 1024)
    return ClassLook(shapes.astype(np.float32), colours, tints - tints.mean(axis=0))


def placements(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 1, 1024) flat pixel indices: each image's object shifted and, half the time, mirrored."""
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(2, n, 1, 1))
    mirrored = rng.random((n, 1, 1)) < 0.5
    columns = np.arange(32)[None, None, :]
    rows = (np.arange(32)[None, :, None] - dy) % 32
    columns = (np.where(mirrored, 31 - columns, columns) - dx) % 32
    return (rows * 32 + columns).reshape(n, 1, 1024)


def synthetic_images(
    labels: np.ndarray, look: ClassLook, rng: np.random.Generator, signal: float = 1.0
) -> np.ndarray:
    """uint8 images, (N, 3072) in R, G, B planes: a natural-looking scene, its colour tinted by
    the class, with one of the class's objects placed over it.

    Scenes vary in brightness, colour and contrast from image to image, as
    photographs do; `signal` scales how much the class shows (0: not at all).
    """
    n = len(labels)
    scene = (
        CIFAR10_MEAN
        + 0.13 * rng.standard_normal((n, 1))  # brightness
        + 0.05 * rng.standard_normal((n, 3))  # colour cast
        + CONTEXT * signal * look.tints[labels]
    )[:, :, None]  # (n, 3, 1)
    contrast = rng.uniform(0.1, 0.3, (n, 1, 1))
    light = contrast * natural_noise(rng, n, 1, 1.0).reshape(n, 1, 1024)
    tint = 0.03 * natural_noise(rng, n, 3, 1.0).reshape(n, 3, 1024)
    which = labels * OBJECTS_PER_CLASS + rng.integers(0, OBJECTS_PER_CLASS, n)
    placed = np.take_along_axis(look.shapes[which], placements(rng, n), axis=2)
    mask, texture = placed[:, :1], placed[:, 1:]
    own = look.colours[which][:, :, None] + texture - 0.5 * light - tint  # object against scene
    pixels = scene + light + tint + OPACITY * signal * mask * own
    pixels = CIFAR10_MEAN[:, None] + GAIN[:, None] * (pixels - CIFAR10_MEAN[:, None])
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8).reshape(n, 3072)


def balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` labels, as even over the classes as `n` allows (CIFAR-10's test split: 1,000 each),
    in a random order."""
    return rng.permutation(np.arange(n) % NUM_CLASSES)


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


def check_synthetic_settings(n_train: int, n_test: int, seed: int, signal: float = 1.0) -> None:
    if not 0 <= signal <= MAX_SIGNAL:
        raise ConfigError(
            f"the signal must lie in [0, {MAX_SIGNAL}] (1 is CIFAR-10's difficulty, 0 no class "
            f"at all), got {signal}"
        )
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
    root: str | Path,
    n_train: int = 50_000,
    n_test: int = 10_000,
    seed: int = 0,
    signal: float = 1.0,
) -> Path:
    """Write the stand-in in CIFAR-10's on-disk format under `root`; same settings, same bytes.

    `signal` is the difficulty: 1.0 trains as CIFAR-10 does, less is harder,
    more is easier. The folder is locked while it is written: a second writer
    is refused.
    """
    check_synthetic_settings(n_train, n_test, seed, signal)
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
        look = class_look(seed)
        sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)] + [n_test]
        for name, size in zip(TRAIN_FILES + [TEST_FILE], sizes):
            labels = balanced_labels(rng, size)
            write_batch(
                folder / name,
                {
                    "batch_label": f"synthetic {name} (seed {seed}, signal {signal})",
                    "labels": labels.tolist(),
                    "data": synthetic_images(labels, look, rng, signal),
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
        settings = {
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "signal": signal,
            "generator": GENERATOR,
            "complete": True,
        }
        write_text_atomically(folder / MARKER, json.dumps(settings))
    return folder


def is_synthetic(root: str | Path) -> bool:
    return (Path(root) / BASE_FOLDER / MARKER).exists()


def why_unusable(root: str | Path) -> str:
    """Why the synthetic set under `root` (one whose settings are None) cannot be trained on."""
    settings = marker(Path(root) / BASE_FOLDER / MARKER)
    if settings is not None and settings.get("complete") is True:
        return "was written by an older cifar_spec (other images for the same seed)"
    return "was never completed (a write cut short)"


def synthetic_settings(root: str | Path) -> dict | None:
    """What a complete synthetic set under `root` was written with; None if there is none, or
    if the one there is an older generator's (other images for the same settings)."""
    settings = marker(Path(root) / BASE_FOLDER / MARKER)
    if settings is None or settings.get("complete") is not True:
        return None
    return settings if settings.get("generator") == GENERATOR else None


def rewrite_hint(root: str | Path) -> str:
    """How to write the synthetic set under `root` again, as `data synth` wrote it: the exact
    command, with the settings its marker keeps (the defaults where it keeps none)."""
    settings = marker(Path(root) / BASE_FOLDER / MARKER) or {}
    flags = "".join(
        f" --{name.replace('_', '-')} {settings[name]}"
        for name in ("n_train", "n_test", "seed", "signal")
        if name in settings
    )
    return f"write it again with `cifar-spec data synth --root {root}{flags}`"
