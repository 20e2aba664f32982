"""airbench's network, the ``depth=airbench`` option.

From Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (``airbench94``).

A 2×2 convolution with 2·C·4 filters (24 for RGB) and a GELU, then three blocks of
conv3×3 → max pool 2 → BN → GELU → conv3×3 → BN → GELU of widths w, 4w, 4w (64/256/256 at the
paper's ``model.width=64``), a global max pool, a bias-free linear layer and a 1/9 scale on the
logits. BN has no trainable γ, ε=1e-12 and a running-average momentum of 0.4 (airbench's 0.6
weight on the old statistics). The first layer is left to PyTorch's initialisation here: the
``whitening`` trick makes it airbench's frozen patch-whitening layer, ``dirac`` gives the 3×3
convolutions their partial identity init, and airbench's recipe is ``studies/airbench.yaml``.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.parts import ARCHITECTURES
from harness.recipe import ModelSpec

FIRST_KERNEL = 2  # the first layer sees 2×2 patches
LOGIT_SCALE = 1 / 9  # airbench's output scale: keeps early logits, and so the loss, calm
BN_MOMENTUM = 0.4  # PyTorch's momentum: the weight of the new batch's statistics
BN_EPS = 1e-12


def _norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    norm.weight.requires_grad_(False)  # γ stays 1: airbench trains the BN biases only
    return norm


class ConvGroup(nn.Module):
    """conv3×3 → max pool 2 → BN → GELU → conv3×3 → BN → GELU; halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output, at half the input's resolution."""
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """2×2 first layer → three ConvGroups (w, 4w, 4w) → global max pool → linear → ×1/9.

    Args:
        num_classes: Width of the classifier.
        in_channels: 3 for RGB, 1 for grayscale.
        width: Channels of the first block; the other two have four times as many.
    """

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        # Twice the patch dimension: the whitening trick fills it with eigenvectors and their
        # negatives, so the GELU after it loses no sign.
        first_width = 2 * in_channels * FIRST_KERNEL**2
        self.first = nn.Conv2d(in_channels, first_width, FIRST_KERNEL, bias=True)
        self.activation = nn.GELU()
        widths = (width, 4 * width, 4 * width)
        self.blocks = nn.Sequential(ConvGroup(first_width, widths[0]),
                                    ConvGroup(widths[0], widths[1]),
                                    ConvGroup(widths[1], widths[2]))
        # At 32×32 the blocks leave 3×3, which airbench max-pools whole; adaptive pooling does
        # the same there and fits other image sizes.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch [B, C, H, W]."""
        x = self.blocks(self.activation(self.first(x)))
        return self.fc(torch.flatten(self.pool(x), 1)) * LOGIT_SCALE


@ARCHITECTURES.register("airbench")
def airbench_net(spec: ModelSpec, num_classes: int, in_channels: int,
                 image_size: tuple[int, int]) -> nn.Module:
    """Build airbench's network at ``spec.width`` (stem and shortcut do not apply)."""
    return AirbenchNet(num_classes, in_channels, spec.width)
