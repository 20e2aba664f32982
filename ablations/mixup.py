"""Trick ``mixup``: train on convex combinations of image pairs and of their targets.

Each batch is mixed with a shuffled copy of itself: x = λ·x_i + (1-λ)·x_j and the target
λ·y_i + (1-λ)·y_j, with one λ ~ Beta(α, α) per batch (Zhang et al. 2018, "mixup: Beyond
Empirical Risk Minimization"; α=1 is their CIFAR-10 setting). Targets become class
probabilities, which the harness's cross-entropy takes as they are. :class:`BatchMixer` is shared
with ``cutmix``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from harness.training.hooks import HOOKS, HookContext, StepHook, class_probabilities, setting
from harness.tricks import Trick, register

HOOK = "mixup"


class BatchMixer(StepHook):
    """Draws, per batch, a λ ~ Beta(α, α) and a partner for every image, and mixes targets.

    Args:
        settings: ``alpha``, the Beta distribution's parameter.
        context: The run; its generator seeds the draws.
        hook: The hook's name, for error messages.
    """

    def __init__(self, settings: Mapping[str, float], context: HookContext, hook: str) -> None:
        self.alpha = setting(settings, "alpha", hook)
        self.num_classes = context.num_classes
        self.generator = context.generator
        # torch has no seeded Beta sampler; one seed from the run's generator keeps runs exact.
        seed = torch.randint(2**31 - 1, (1,), generator=self.generator,
                             device=self.generator.device)
        self.rng = np.random.default_rng(int(seed))

    def draw(self, batch: int, device: torch.device) -> tuple[float, torch.Tensor]:
        """Return λ and a random partner index for each of ``batch`` images."""
        share = float(self.rng.beta(self.alpha, self.alpha))
        partners = torch.randperm(batch, generator=self.generator, device=self.generator.device)
        return share, partners.to(device)

    def mix_targets(self, targets: torch.Tensor, partners: torch.Tensor,
                    share: float) -> torch.Tensor:
        """Return ``share``·targets + (1 - ``share``)·the partners' targets, as probabilities."""
        probabilities = class_probabilities(targets, self.num_classes)
        return probabilities * share + probabilities[partners] * (1.0 - share)


class Mixup(BatchMixer):
    """Blend every image with its partner, pixel by pixel."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        super().__init__(settings, context, HOOK)

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                        epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mixed images and their mixed targets."""
        share, partners = self.draw(len(images), images.device)
        mixed = images * share + images[partners] * (1.0 - share)
        return mixed, self.mix_targets(targets, partners, share)


HOOKS.register(HOOK)(Mixup)

register(Trick(
    name="mixup",
    doc="mixup: train on blends of image pairs and their targets, λ ~ Beta(1, 1) (Zhang et al. "
        "2018).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"alpha": 1.0}},
    },
))
