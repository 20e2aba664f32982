"""Trick ``ema``: evaluate an exponential moving average of the weights.

After every optimizer step the average moves a share 1-d of the way to the live weights, with
d = min(decay, (1+t)/(10+t)) at step t, so early steps are not dominated by the random start
(Polyak & Juditsky 1992; the warmup is Tarvainen & Valpola 2017's). BN statistics are averaged
too, as timm's ModelEmaV2 does. Training is unchanged; every evaluation, and the run's
checkpoint, uses the averaged weights.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from harness.training.hooks import HOOKS, HookContext, StepHook, WeightCopy, setting
from harness.tricks import Trick, register

HOOK = "ema"


class WeightAverage(StepHook):
    """Keep an exponential moving average of the model, and evaluate it."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.decay = setting(settings, "decay", HOOK)
        self.average = WeightCopy(context.model)

    def after_step(self, step: int) -> None:
        """Move the average toward the weights this step left."""
        decay = min(self.decay, (1 + step) / (10 + step))
        self.average.move_toward_live(1.0 - decay)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """Return the averaged model."""
        return self.average.module


HOOKS.register(HOOK)(WeightAverage)

register(Trick(
    name="ema",
    doc="EMA of the weights (decay 0.999, warmed up), used for evaluation (Polyak & Juditsky "
        "1992).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"decay": 0.999}},
    },
))
