"""Trick ``stem``: the ResNet's input stem, plain or the Bag-of-Tricks deep stem.

The deep stem is the one the seed tried (``_resnet_stem(3, 32, 32, 64)``) after He et al. 2019,
"Bag of Tricks for Image Classification with Convolutional Neural Networks", §4.2 (ResNet-C):
three 3×3 conv-BN-ReLU layers, the first strided, then a strided 3×3 max pool. It downsamples by
4, so a 32×32 CIFAR image reaches the first stage at 8×8 instead of 32×32: cheaper, coarser.
"""

from __future__ import annotations

from torch import nn

from harness.models.parts import STEMS, conv_bn_relu
from harness.tricks import Trick, register


@STEMS.register("deep")
def deep_stem(in_channels: int, out_channels: int) -> nn.Module:
    """Return conv3×3/2 → conv3×3 → conv3×3 (each with BN-ReLU) → max pool 3×3/2.

    The seed's widths 32, 32, 64 feed a 64-wide ResNet; here they are half, half and all of the
    ResNet's first-stage width, so a narrow CPU net (width 8) gets a proportionally narrow stem.

    Args:
        in_channels: Image channels (1 or 3).
        out_channels: The ResNet's width, i.e. the channels of its first stage.

    Returns:
        A module mapping [B, in_channels, H, W] to [B, out_channels, H/4, W/4] (rounded up).
    """
    hidden = max(out_channels // 2, 1)
    return nn.Sequential(
        conv_bn_relu(in_channels, hidden, stride=2),
        conv_bn_relu(hidden, hidden),
        conv_bn_relu(hidden, out_channels),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


register(Trick(
    name="stem",
    doc="Deep stem: three 3×3 conv-BN-ReLU then max pool, 4× downsampling (He et al. 2019; seed).",
    options={
        "none": {"model.stem": "conv3x3"},
        "deep": {"model.stem": "deep"},
    },
))
