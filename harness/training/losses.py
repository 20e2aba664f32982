"""Training losses by name.

A loss takes ``(logits, targets)``; targets are class indices ``[B]`` or class probabilities
``[B, classes]`` (soft or mixed targets from a batch hook).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.core.registry import Registry
from harness.recipe import LossSpec

LOSSES: Registry[Callable[[LossSpec], nn.Module]] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(spec: LossSpec) -> nn.Module:
    """Cross-entropy against class indices or probabilities, the targets smoothed by ε.

    Smoothing replaces the target distribution t by (1-ε)·t + ε/classes, so the loss never asks
    for infinite logits; ε=0 is the plain loss on the targets as given.
    """
    return nn.CrossEntropyLoss(label_smoothing=spec.smoothing)


def build_loss(spec: LossSpec) -> nn.Module:
    """Build the loss named by ``spec``."""
    return LOSSES.get(spec.name)(spec)
