"""The seed's SimpleCNN: the PyTorch tutorial network, sized from the dataset."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """conv 5×5 (6) → pool → conv 5×5 (16) → pool → 120 → 84 → classes.

    Args:
        num_classes: Width of the last layer.
        in_channels: 3 for RGB, 1 for grayscale.
        image_size: (height, width) of the input; the flattened size follows from it.
    """

    def __init__(self, num_classes: int, in_channels: int = 3,
                 image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        # Two unpadded 5×5 convs each lose 4 pixels, and each 2×2 pool halves what is left.
        height, width = (((s - 4) // 2 - 4) // 2 for s in image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"SimpleCNN needs images of at least 16×16, got {image_size}")
        self.fc1 = nn.Linear(16 * height * width, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch [B, C, H, W]."""
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)
