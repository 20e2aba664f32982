"""Prepared data made in memory: a few random normalised images, for tests of the loop."""

from __future__ import annotations

import torch

from harness.data import PreparedData


def tiny_data(train: int = 12, val: int = 6, test: int = 6, classes: int = 3, size: int = 16,
              channels: int = 3, seed: int = 0) -> PreparedData:
    """Return random images ``[N, channels, size, size]`` with labels cycling through classes."""
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(count, channels, size, size, generator=generator)
        return images, torch.arange(count) % classes

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = split(train), split(val), split(test)
    return PreparedData(train_x, train_y, val_x, val_y, test_x, test_y,
                        classes=[f"c{i}" for i in range(classes)], mean=(0.0,) * channels,
                        std=(1.0,) * channels, digest="tiny", source="memory")
