"""Model building blocks and the one function that turns a ModelSpec into a network."""

from __future__ import annotations

import torch
from torch import nn

from harness.core.errors import unknown_choice
from harness.models.parts import (
    ARCHITECTURES,
    DATA_INITIALIZERS,
    INITIALIZERS,
    SHORTCUTS,
    STEMS,
    conv_bn_relu,
)
from harness.models.resnet import BasicBlock, ResNet
from harness.models.simple_cnn import SimpleCNN
from harness.recipe import ModelSpec

__all__ = [
    "ARCHITECTURES", "DATA_INITIALIZERS", "INITIALIZERS", "SHORTCUTS", "STEMS", "BasicBlock",
    "ResNet", "SimpleCNN", "build_model", "conv_bn_relu",
]


def _resnet(blocks_per_stage: tuple[int, ...]):
    def build(spec: ModelSpec, num_classes: int, in_channels: int,
              image_size: tuple[int, int]) -> nn.Module:
        return ResNet(blocks_per_stage, num_classes, in_channels, spec.width,
                      STEMS.get(spec.stem), SHORTCUTS.get(spec.shortcut))

    return build


ARCHITECTURES.register("resnet18")(_resnet((2, 2, 2, 2)))
ARCHITECTURES.register("resnet34")(_resnet((3, 4, 6, 3)))


@ARCHITECTURES.register("simplecnn")
def _simple_cnn(spec: ModelSpec, num_classes: int, in_channels: int,
                image_size: tuple[int, int]) -> nn.Module:
    # The seed's net has fixed widths and no stem or shortcut, so those fields do not apply.
    return SimpleCNN(num_classes, in_channels, image_size)


def build_model(spec: ModelSpec, num_classes: int, in_channels: int = 3,
                image_size: tuple[int, int] = (32, 32),
                sample: torch.Tensor | None = None) -> nn.Module:
    """Build the network a ModelSpec describes, then run its initialisers in order.

    Args:
        spec: Architecture, width, parts and initialisers by name.
        num_classes: From the dataset.
        in_channels: From the dataset (1 or 3).
        image_size: (height, width) from the dataset.
        sample: Training images for the initialisers that learn from data
            (``DATA_INITIALIZERS``). None skips those: pass None only when trained weights are
            loaded right after, as a checkpoint does.

    Returns:
        The initialised model, on the CPU.
    """
    # Look every name up before building, so a bad name fails before any work is done.
    builder = ARCHITECTURES.get(spec.arch)
    STEMS.get(spec.stem)
    SHORTCUTS.get(spec.shortcut)
    names = (spec.init, *spec.post_init)
    for name in names:
        if name not in INITIALIZERS and name not in DATA_INITIALIZERS:
            raise unknown_choice("initializer", name, [*INITIALIZERS, *DATA_INITIALIZERS])
    model = builder(spec, num_classes, in_channels, image_size)
    for name in names:
        if name in INITIALIZERS:
            INITIALIZERS.get(name)(model)
        elif sample is not None:
            DATA_INITIALIZERS.get(name)(model, sample)
    return model
