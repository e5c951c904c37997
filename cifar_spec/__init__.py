"""cifar_spec: the executable specification of a short PyTorch training tutorial.

One module per concept: ``losses`` (reference loss functions), ``model`` (the
tutorial's CNN), ``cifar10`` (CIFAR-10 through torchvision, every file checked
first; it imports torchvision, so it is not imported here), ``synthetic`` (a
learnable stand-in in CIFAR-10's format), ``data`` (a split on a device),
``files`` and ``safe_pickle`` (the one reader, the atomic writer, the lock, the
unpickler), ``step`` (the training step, its options and the rule for them),
``manual_backward`` and ``cuda_graph`` (two of those options), ``loop`` (``fit``),
``checkpoint`` (the run folder), ``distributed``, ``tutorial`` (the tutorial's own
loop), ``errors``, ``plot``, ``cli`` and the harness ``bench``. See README.md.
"""

from cifar_spec.data import DeviceData, to_device
from cifar_spec.loop import TrainConfig, fit
from cifar_spec.losses import REFERENCES, tutorial_example
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions, default_step, make_step, train_step, unsupported
from cifar_spec.synthetic import write_synthetic_cifar10

__all__ = [
    "REFERENCES",
    "CifarNet",
    "DeviceData",
    "StepOptions",
    "TrainConfig",
    "default_step",
    "fit",
    "make_step",
    "to_device",
    "train_step",
    "tutorial_example",
    "unsupported",
    "write_synthetic_cifar10",
]
