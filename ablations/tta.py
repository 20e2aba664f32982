"""Trick ``tta``: test-time augmentation by mirrored and translated views.

airbench's evaluation (Jordan 2024, "multi-crop"): the logits are the mean of the image
and its mirror image, weighted one half, and of the same pair for the image shifted by
``translate`` pixels up-left and down-right (reflect padding), weighted one quarter each: six
views in all. ``translate=0`` leaves the mirror pair alone. Training is unchanged; only
evaluation (validation, test, the logged predictions) sees the views.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.training.evaluate import Infer
from harness.training.hooks import HOOKS, HookContext, StepHook, setting
from harness.tricks import Trick, register

HOOK = "tta"


def mirrored(infer: Infer, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Return the mean logits of ``images`` and of their mirror images."""
    return 0.5 * infer(model, images) + 0.5 * infer(model, images.flip(3))


class ViewAverage(StepHook):
    """Evaluate the mean logits of mirrored and translated views."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.shift = int(setting(settings, "translate", HOOK))

    def wrap_infer(self, infer: Infer) -> Infer:
        """Return an inference that averages the views' logits."""
        shift = self.shift

        def views(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
            logits = mirrored(infer, model, images)
            if shift == 0:
                return logits
            height, width = images.shape[2:]
            padded = F.pad(images, (shift,) * 4, mode="reflect")
            up_left = padded[:, :, :height, :width]
            down_right = padded[:, :, 2 * shift:2 * shift + height, 2 * shift:2 * shift + width]
            return 0.5 * logits + 0.25 * (mirrored(infer, model, up_left)
                                          + mirrored(infer, model, down_right))

        return views


HOOKS.register(HOOK)(ViewAverage)

register(Trick(
    name="tta",
    doc="Test-time augmentation: mean logits of 6 mirrored and 1-pixel-shifted views (Jordan "
        "2024, airbench).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"translate": 1.0}},
    },
))
