"""Trick ``resnet_d``: the ResNet-D downsampling shortcut.

A strided 1×1 conv (ResNet-B's projection shortcut) reads only one pixel in four and discards the
rest. ResNet-D (He et al. 2019, "Bag of Tricks", §4.2) averages each 2×2 patch first, then
projects with a stride-1 1×1 conv, so the shortcut sees every input pixel.
"""

from __future__ import annotations

from torch import nn

from harness.models.parts import SHORTCUTS
from harness.tricks import Trick, register


@SHORTCUTS.register("avgpool")
def avgpool_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Return avg pool (stride × stride) → 1×1 conv → BN; no pool when ``stride`` is 1.

    ``ceil_mode`` keeps odd sizes in step with the strided 3×3 conv of the residual branch, and
    ``count_include_pad=False`` averages a border patch over its real pixels only.
    """
    pool = nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False) if (
        stride > 1) else nn.Identity()
    return nn.Sequential(
        pool,
        nn.Conv2d(in_channels, out_channels, 1, stride=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


register(Trick(
    name="resnet_d",
    doc="ResNet-D shortcut: 2×2 average pool, then a stride-1 1×1 conv (He et al. 2019).",
    options={
        "off": {"model.shortcut": "projection"},
        "on": {"model.shortcut": "avgpool"},
    },
))
