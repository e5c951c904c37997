"""The run folder and its checkpoints: what a run saves, what it never overwrites, what it resumes.

A run folder holds ``checkpoint.pt`` (everything needed to continue, after
each epoch), ``history.json`` and ``loss.png``. A new run refuses a folder
holding any of them, so no earlier run is lost; a resumed run refuses a
checkpoint that trained with other settings or on other data. Every file is
written by ``files.write_atomically``: a crash leaves the last whole one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from cifar_spec.errors import CheckpointError, UnsafeFile
from cifar_spec.files import (
    cannot_write,
    check_not_in_use,
    check_writable,
    read_untrusted,
    target_problem,
    write_atomically,
    write_text_atomically,
)

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
LOSS_PLOT = "loss.png"
RUN_FILES = (CHECKPOINT, HISTORY, LOSS_PLOT)  # what an earlier run leaves behind
# A checkpoint is read whole: the model and its momentum are under 1 MB, and the
# history adds a few hundred bytes an epoch.
CHECKPOINT_LIMIT = 64 << 20
# Each part of a checkpoint and the type it must have.
PARTS = {
    "model": dict,
    "optimizer": dict,
    "epoch": int,
    "history": list,
    "config": dict,
    "data": dict,
    "torch_rng": Tensor,
    "shuffle_rng": (Tensor, type(None)),
}
# Settings a resumed run must share with the checkpoint it resumes;
# epochs may grow and the device may change.
RESUME_MUST_MATCH = ("batch_size", "lr", "seed", "shuffle", "limit")


RUN_LOCK = "a training run"  # what a run folder's lock is held for, as a refusal names it


def check_run_folder(out: Path, resume: bool, locked: bool = False) -> None:
    """Before any work: `out` is (or can be made) a folder we can write, in use by no other run
    (unless this one has `locked` it), holding no earlier run's files unless resuming, and a
    checkpoint if resuming."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a folder; choose another --out")
    if resume and not out.exists():  # refused before a mistyped --out is made
        raise no_checkpoint(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out)
    except OSError as error:
        raise CheckpointError(cannot_write(f"to --out {out}", error)) from None
    if not locked:  # a live run's folder: what it holds is not yet what it will hold
        check_not_in_use(out, RUN_LOCK)
    # A FIFO or device where a file goes that is written, not read, would stop the run later.
    for name in (HISTORY, LOSS_PLOT):
        problem = target_problem(out / name)
        if problem:
            raise CheckpointError(problem)
    earlier = [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]
    if resume and CHECKPOINT not in earlier:
        raise no_checkpoint(out)
    if not resume and earlier:
        raise CheckpointError(
            f"{out} holds an earlier run ({', '.join(earlier)}); continue it "
            "with --resume, or choose another --out (nothing was overwritten)"
        )


def no_checkpoint(out: Path) -> CheckpointError:
    return CheckpointError(
        f"no checkpoint at {out / CHECKPOINT} to resume; start a new run without --resume"
    )


def save_checkpoint(out: Path, state: dict) -> None:
    # Serialized in memory first: torch.save's own writer reports a full disk as a
    # RuntimeError, where the atomic writer's OSError names the cause (and the last
    # checkpoint stays whole either way).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(out / CHECKPOINT, buffer.getvalue())


def save_history(out: Path, config: dict, history: list[dict]) -> None:
    write_text_atomically(
        out / HISTORY, json.dumps({"config": config, "epochs": history}, indent=2)
    )


def parts_problem(state: object) -> str | None:
    """What is missing or mistyped in a loaded checkpoint, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = sorted(PARTS.keys() - state.keys())
    if missing:
        return f"it lacks {', '.join(missing)}"
    for part, kind in PARTS.items():
        # bool is an int to Python: an epoch of True is a mistake, not epoch 1.
        if not isinstance(state[part], kind) or isinstance(state[part], bool):
            return f"its {part} is a {type(state[part]).__name__}"
    if state["epoch"] != len(state["history"]) or state["epoch"] < 1:
        return f"its epoch {state['epoch']} does not match its {len(state['history'])} epochs"
    return None


def model_problem(saved: dict, model: nn.Module) -> str | None:
    """How the saved weights differ from `model`'s (names, shapes, dtypes), or None."""
    expected = model.state_dict()
    if saved.keys() != expected.keys():
        return "its model is not the tutorial's CifarNet (other layers)"
    for name, value in saved.items():
        if (
            not isinstance(value, Tensor)
            or value.shape != expected[name].shape
            or value.dtype != expected[name].dtype
        ):
            return f"its model is not the tutorial's CifarNet ({name} differs)"
    return None


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """The checkpoint at `path`, every part present, typed, and shaped for `model`."""
    try:
        raw = read_untrusted(path, CHECKPOINT_LIMIT, "a checkpoint")
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {path} to resume; start a new run without --resume"
        ) from None
    except UnsafeFile:
        raise
    except Exception as error:  # torch raises several types for a bad zip or pickle
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}); it is truncated or "
            "not a cifar-spec checkpoint: move its folder away and start a new run"
        ) from None
    problem = parts_problem(state) or model_problem(state["model"], model)
    if problem:
        raise CheckpointError(
            f"{path} is not a cifar-spec checkpoint: {problem}; move its "
            "folder away and start a new run"
        )
    return state


def describe_data(record: dict) -> str:
    return (
        f"{record.get('split')} ({record.get('images')} images, labels "
        f"{record.get('labels_sha256')})"
    )


def check_resumable(state: dict, config: dict, data: dict, path: Path) -> None:
    """Refuse to resume a checkpoint with other settings, on other data, or already done."""
    saved = state["config"]
    diff = [
        f"{k}={saved.get(k)!r} there, {config[k]!r} here"
        for k in RESUME_MUST_MATCH
        if saved.get(k) != config[k]
    ]
    if diff:
        raise CheckpointError(f"cannot resume {path} with other settings: " + "; ".join(diff))
    if state["data"] != data:
        raise CheckpointError(
            f"cannot resume {path} on other data: it trained on {describe_data(state['data'])}, "
            f"this run has {describe_data(data)}; resume on its data, or start a new run"
        )
    if state["epoch"] >= config["epochs"]:
        raise CheckpointError(
            f"{path} has already trained {state['epoch']} epochs; ask for more with --epochs"
        )
