"""Trick ``cutmix``: paste a box from another image, and mix the targets by its area.

Each batch takes, from a shuffled copy of itself, one box covering a share 1-λ of the image
(λ ~ Beta(α, α), centre uniform, clipped at the border); each target becomes λ·y_i + (1-λ)·y_j
with λ recomputed from the box as pasted (Yun et al. 2019, "CutMix"; α=1 is theirs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ablations.mixup import BatchMixer
from harness.training.hooks import HOOKS, HookContext
from harness.tricks import Trick, register

HOOK = "cutmix"


class CutMix(BatchMixer):
    """Paste one box per batch from each image's partner."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        super().__init__(settings, context, HOOK)

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                        epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the images with the partners' box pasted in, and the area-mixed targets."""
        share, partners = self.draw(len(images), images.device)
        height, width = images.shape[2:]
        cut = math.sqrt(1.0 - share)
        centre_y, centre_x = self.rng.integers(height), self.rng.integers(width)
        top, bottom = _span(centre_y, cut * height, height)
        left, right = _span(centre_x, cut * width, width)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[partners, :, top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / (height * width)
        return mixed, self.mix_targets(targets, partners, kept)


def _span(centre: int, length: float, size: int) -> tuple[int, int]:
    half = int(length / 2)
    return max(centre - half, 0), min(centre + half, size)


HOOKS.register(HOOK)(CutMix)

register(Trick(
    name="cutmix",
    doc="CutMix: paste a random box from another image, targets mixed by area (Yun et al. "
        "2019).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"alpha": 1.0}},
    },
))
