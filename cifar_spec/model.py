"""The tutorial's CNN for CIFAR-10, with its input checked before any layer runs.

The layers are exactly the tutorial's: three 5x5 convolutions (padding 2, so
each keeps the spatial size), each followed by 2x2 max-pooling, then two
linear layers. 145,578 parameters. A wrong input (an MNIST image, a uint8
tensor straight from disk, an image without its batch dimension) would
otherwise fail deep inside a layer with a message about matrix shapes; here
it fails at the door with a message that says what to do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cifar_spec.cifar10_format import NUM_CLASSES

IMAGE_SHAPE = (3, 32, 32)  # (C, H, W) of one CIFAR-10 image


def check_images(images: Tensor, dtype: torch.dtype | None = None) -> None:
    """Raise ValueError unless `images` is a float batch of shape (N, 3, 32, 32) holding values.

    With `dtype` (the model's), the images must be of that dtype too: a float64
    or float16 batch would otherwise fail inside the first convolution.
    """
    if images.device.type == "meta":
        raise ValueError(
            "the images are on the meta device, which holds shapes but no values; "
            "create them on cpu or cuda"
        )
    if images.dim() != 4:
        hint = (
            " (one image? add a batch dimension with images.unsqueeze(0))"
            if images.dim() == 3
            else ""
        )
        raise ValueError(
            f"expected a batch of images of shape (N, 3, 32, 32), got {images.dim()} dimensions "
            f"{tuple(images.shape)}{hint}"
        )
    if images.shape[1] != IMAGE_SHAPE[0]:
        raise ValueError(
            f"expected 3 colour channels (RGB) in dimension 1, got {images.shape[1]} "
            f"in shape {tuple(images.shape)}"
        )
    if tuple(images.shape[2:]) != IMAGE_SHAPE[1:]:
        raise ValueError(
            f"expected 32x32 images (CIFAR-10), got {images.shape[2]}x{images.shape[3]}; "
            "resize the images to 32x32 first"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"expected floating-point images, got dtype {images.dtype}; "
            "convert with images.float() / 255 (as ToTensor() does)"
        )
    if dtype is not None and images.dtype != dtype:
        raise ValueError(
            f"expected {dtype} images, the model's dtype, got {images.dtype}; "
            f"convert with images.to({dtype})"
        )


class CifarNet(nn.Module):
    """The tutorial's network: (N, 3, 32, 32) images -> (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2),  # (N, 32, 32, 32)
            nn.MaxPool2d(2),  # (N, 32, 16, 16)
            nn.Conv2d(32, 32, 5, padding=2),  # (N, 32, 16, 16)
            nn.MaxPool2d(2),  # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 5, padding=2),  # (N, 64, 8, 8)
            nn.MaxPool2d(2),  # (N, 64, 4, 4)
            nn.Flatten(),  # (N, 1024)
            nn.Linear(1024, 64),  # (N, 64)
            nn.Linear(64, NUM_CLASSES),  # (N, 10)
        )

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.layers[0].weight.dtype)
        return self.layers(images)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_name(layer: nn.Module) -> str:
    """The layer as the tutorial writes it, e.g. ``Conv2d(3, 32, 5, padding=2)``."""
    if isinstance(layer, nn.Conv2d):
        return (
            f"Conv2d({layer.in_channels}, {layer.out_channels}, "
            f"{layer.kernel_size[0]}, padding={layer.padding[0]})"
        )
    if isinstance(layer, nn.MaxPool2d):
        return f"MaxPool2d({layer.kernel_size})"
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    return f"{type(layer).__name__}()"


def layer_summary(model: CifarNet) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer, output shape of one image, parameter count) for each layer, in order."""
    rows = []
    x = torch.zeros(1, *IMAGE_SHAPE)
    with torch.no_grad():
        for layer in model.layers:
            x = layer(x)
            rows.append((layer_name(layer), tuple(x.shape[1:]), count_parameters(layer)))
    return rows


def format_summary(model: CifarNet) -> str:
    """A one-screen table of the model: layer, output shape, parameters."""
    rows = layer_summary(model)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'layer':<{width}}  {'output shape':<14}  {'params':>8}"]
    for name, shape, params in rows:
        lines.append(f"{name:<{width}}  {str(shape):<14}  {params:>8,}")
    lines.append(f"{'total':<{width}}  {'':<14}  {count_parameters(model):>8,}")
    return "\n".join(lines)
