"""Trick ``alternating_flip``: flip each image in every other epoch instead of at random.

airbench (Jordan 2024) derandomises the horizontal flip: each training image gets one
random bit for the whole run; it is mirrored in the odd epochs where the bit is set and in the
even epochs where it is not. Every pair of consecutive epochs then shows each image both ways,
where a random flip shows a quarter of them the same way twice. ``on`` replaces the random
``flip`` of ``augment.ops``; it flips even when the base recipe has no flip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness.training.hooks import HOOKS, HookContext, StepHook
from harness.tricks import Trick, register, removed

HOOK = "alternating_flip"


class AlternatingFlip(StepHook):
    """Mirror row r in epoch e exactly when its bit differs from e's parity."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        # The generator lives with the training data, where the batch rows index it.
        generator = context.generator
        self.bits = torch.randint(0, 2, (context.train_size,), generator=generator,
                                  device=generator.device).bool()

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                        epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch with its images mirrored by this epoch's pattern."""
        flip = self.bits[rows] ^ (epoch % 2 == 0)
        return torch.where(flip[:, None, None, None], images.flip(3), images), targets


HOOKS.register(HOOK)(AlternatingFlip)

register(Trick(
    name="alternating_flip",
    doc="Alternating flip: each image mirrored in every other epoch, not at random (Jordan "
        "2024, airbench).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {"augment.ops": removed("flip"), f"trainer.hooks.{HOOK}": {}},
    },
))
