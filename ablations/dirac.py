"""Trick ``dirac``: start each 3×3 convolution as a partial identity.

airbench (Jordan 2024) sets the first C_in filters of every 3×3 convolution to the
identity (Dirac delta) after PyTorch's initialisation, so each block starts by passing its input
through, while the remaining filters keep their random start (after DiracNets, Zagoruyko &
Komodakis 2017). It applies to convolutions that keep the resolution: odd square kernels,
stride 1, "same" padding, no groups.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.parts import INITIALIZERS
from harness.tricks import Trick, appended, register, removed

INITIALIZER = "dirac"


def _keeps_resolution(conv: nn.Conv2d) -> bool:
    height, width = conv.kernel_size
    same = conv.padding == "same" or conv.padding == (height // 2, width // 2)
    return height == width and height % 2 == 1 and conv.stride == (1, 1) and same and (
        conv.groups == 1)


@INITIALIZERS.register(INITIALIZER)
def dirac_init(model: nn.Module) -> None:
    """Make the first C_in filters of every resolution-keeping conv the identity."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and _keeps_resolution(module):
                nn.init.dirac_(module.weight[:module.in_channels])


register(Trick(
    name="dirac",
    doc="Dirac (partial identity) init of the 3×3 convolutions (Jordan 2024, airbench; "
        "Zagoruyko & Komodakis 2017).",
    options={
        "off": {"model.post_init": removed(INITIALIZER)},
        "on": {"model.post_init": appended(INITIALIZER)},
    },
))
