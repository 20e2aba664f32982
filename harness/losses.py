"""Training losses by name.

A loss takes ``(logits, targets)``; targets are class indices ``[B]`` or class probabilities
``[B, classes]`` (soft or mixed targets from a batch hook).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.recipe import LossSpec
from harness.registry import Registry

LOSSES: Registry[Callable[[LossSpec], nn.Module]] = Registry("loss")


class CrossEntropy(nn.Module):
    """Cross-entropy against class indices or probabilities, with targets smoothed by ε.

    Smoothing replaces the target distribution t by (1-ε)·t + ε/classes, so the loss never asks
    for infinite logits. ε=0 is the plain loss on the targets as given, at no extra cost.

    Args:
        smoothing: ε in [0, 1).
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of a batch."""
        if self.smoothing:
            classes = logits.shape[1]
            if not targets.is_floating_point():
                targets = F.one_hot(targets, classes).to(logits.dtype)
            targets = targets * (1.0 - self.smoothing) + self.smoothing / classes
        return F.cross_entropy(logits, targets)


@LOSSES.register("cross_entropy")
def cross_entropy(spec: LossSpec) -> nn.Module:
    """Cross-entropy, with ``spec.smoothing`` applied to the targets."""
    return CrossEntropy(spec.smoothing)


def build_loss(spec: LossSpec) -> nn.Module:
    """Build the loss named by ``spec``."""
    return LOSSES.get(spec.name)(spec)
