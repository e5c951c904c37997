"""cifar_spec: the executable specification of a short PyTorch training tutorial.

One module per concept: ``losses`` (reference loss functions), ``model`` (the
tutorial's CNN), ``cifar10`` (CIFAR-10 through torchvision, every file checked
first; it imports torchvision, so it is not imported here), ``synthetic`` (a
learnable stand-in in CIFAR-10's format), ``data`` (a split on a device),
``files`` and ``safe_pickle`` (the one reader, the atomic writer, the lock, the
unpickler), ``step`` (the training step, its options and the rule for them),
``sgd``, ``manual_backward`` and ``cuda_graph`` (three of those options), ``labels``
and ``memory`` (the checks of a batch and of the memory a run needs), ``loop`` (``fit``),
``checkpoint`` (the run folder), ``distributed``, ``tutorial`` (the tutorial's own
loop), ``errors``, ``plot``, ``cli`` and the harness ``bench``. See README.md.
"""

import importlib

# The public names, each from the module that defines it, imported on first use (PEP 562):
# `import cifar_spec.files` or `.errors` must not import torch (2.7 s of CPU on a Zen 1),
# which every process of ours that only writes a file or checks a Python would pay.
EXPORTS = {
    "DeviceData": "cifar_spec.data",
    "to_device": "cifar_spec.data",
    "TrainConfig": "cifar_spec.loop",
    "fit": "cifar_spec.loop",
    "REFERENCES": "cifar_spec.losses",
    "tutorial_example": "cifar_spec.losses",
    "CifarNet": "cifar_spec.model",
    "StepOptions": "cifar_spec.step",
    "default_step": "cifar_spec.step",
    "make_step": "cifar_spec.step",
    "train_step": "cifar_spec.step",
    "unsupported": "cifar_spec.step",
    "write_synthetic_cifar10": "cifar_spec.synthetic",
}

__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'cifar_spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value  # found once; later lookups never come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})
