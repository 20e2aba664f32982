"""A CIFAR ResNet whose stem, blocks and shortcut are replaceable parts (He et al. 2016)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection.

    ``last_norm`` is the BN whose output joins the shortcut; initialisers may set its γ.

    Args:
        in_channels: Channels coming in.
        out_channels: Channels going out.
        stride: 2 to halve the resolution in the first conv.
        shortcut: Builds the path for ``x`` when the shape changes; identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 shortcut: Callable[[int, int, int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.last_norm = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = shortcut(in_channels, out_channels, stride) if changes_shape else (
            nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(residual(x) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.last_norm(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem → four stages of basic blocks (widths w, 2w, 4w, 8w) → global pool → linear.

    The first stage keeps the resolution, as in the CIFAR variant; each later stage halves it.

    Args:
        blocks_per_stage: e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-34.
        num_classes: Width of the classifier.
        in_channels: 3 for RGB, 1 for grayscale.
        width: Channels of the first stage.
        stem: Builds the stem from (in_channels, width).
        shortcut: Builds a block's shortcut when its shape changes.
    """

    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int, in_channels: int,
                 width: int, stem: Callable[[int, int], nn.Module],
                 shortcut: Callable[[int, int, int], nn.Module]) -> None:
        super().__init__()
        self.stem = stem(in_channels, width)
        stages = []
        channels = width
        for index, count in enumerate(blocks_per_stage):
            out_channels = width * 2**index
            blocks = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, shortcut))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch [B, C, H, W]."""
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))
