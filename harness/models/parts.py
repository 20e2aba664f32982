"""Registries of model parts. The harness fills the plain ones; tricks in ``ablations/`` add more.

Signatures:
    ARCHITECTURES: (spec, num_classes, in_channels, image_size) -> nn.Module
    STEMS:         (in_channels, out_channels) -> nn.Module  (may downsample)
    SHORTCUTS:     (in_channels, out_channels, stride) -> nn.Module  (used when shapes change)
    INITIALIZERS:  (model) -> None, changing weights in place
    DATA_INITIALIZERS: (model, images) -> None, changing weights in place from a sample of the
                   training images (normalised, on the data's device)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness.core.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")
STEMS: Registry[Callable[[int, int], nn.Module]] = Registry("stem")
SHORTCUTS: Registry[Callable[[int, int, int], nn.Module]] = Registry("shortcut")
INITIALIZERS: Registry[Callable[[nn.Module], None]] = Registry("initializer")
DATA_INITIALIZERS: Registry[Callable[[nn.Module, torch.Tensor], None]] = Registry(
    "data initializer")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Return a 3×3 convolution, batch norm and ReLU: the unit most stems are made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@STEMS.register("conv3x3")
def conv3x3_stem(in_channels: int, out_channels: int) -> nn.Module:
    """Build the CIFAR ResNet stem: one 3×3 conv-BN-ReLU at full resolution (He et al. 2016)."""
    return conv_bn_relu(in_channels, out_channels)


@SHORTCUTS.register("projection")
def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Build the standard ResNet-B shortcut: a strided 1×1 conv and BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


@INITIALIZERS.register("default")
def default_init(model: nn.Module) -> None:
    """Keep PyTorch's own initialisation (uniform with a=√5 gain for conv and linear)."""
