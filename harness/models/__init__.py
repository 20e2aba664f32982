"""Model building blocks and the one function that turns a ModelSpec into a network."""

from __future__ import annotations

from torch import nn

from harness.models.parts import (
    ARCHITECTURES,
    INITIALIZERS,
    SHORTCUTS,
    STEMS,
    conv_bn_relu,
)
from harness.models.resnet import BasicBlock, ResNet
from harness.models.simple_cnn import SimpleCNN
from harness.recipe import ModelSpec

__all__ = [
    "ARCHITECTURES", "INITIALIZERS", "SHORTCUTS", "STEMS", "BasicBlock", "ResNet", "SimpleCNN",
    "build_model", "conv_bn_relu",
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
                image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Build the network a ModelSpec describes, then run its initialisers in order.

    Args:
        spec: Architecture, width, parts and initialisers by name.
        num_classes: From the dataset.
        in_channels: From the dataset (1 or 3).
        image_size: (height, width) from the dataset.

    Returns:
        The initialised model, on the CPU.
    """
    # Look every name up before building, so a bad name fails before any work is done.
    builder = ARCHITECTURES.get(spec.arch)
    STEMS.get(spec.stem)
    SHORTCUTS.get(spec.shortcut)
    initializers = [INITIALIZERS.get(name) for name in (spec.init, *spec.post_init)]
    model = builder(spec, num_classes, in_channels, image_size)
    for initialize in initializers:
        initialize(model)
    return model
