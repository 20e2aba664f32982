"""Trick ``lookahead``: slow weights that follow the optimizer's fast ones every k steps.

Every ``every`` steps the slow weights move a share 1-d toward the fast ones, and the fast
weights restart from them (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step
back"). airbench (Jordan 2024) uses k=5 and d = decay^k · (t/T)^ramp at step t of T, with
decay=0.95 and ramp=3: at first the slow weights simply take the fast ones, and later they
average over the last few dozen steps. BN statistics follow too, as in airbench; ramp=0 is
Zhang et al.'s constant share. Evaluation and the checkpoint use the slow weights.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from harness.training.hooks import (
    HOOKS,
    HookContext,
    StepHook,
    WeightCopy,
    setting,
)
from harness.tricks import Trick, register

HOOK = "lookahead"


class Lookahead(StepHook):
    """Every ``every`` steps pull the slow weights toward the fast ones, and restart from them.

    The slow weights start as the model is when the hook is built, before the first step;
    evaluation uses them.

    Settings:
        every: k, steps between syncs.
        decay: Per-step decay; a sync keeps decay^k · (t/T)^ramp of the slow weights.
        ramp: Power of the run's progress t/T in that share.
    """

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.every = int(setting(settings, "every", HOOK))
        self.decay = setting(settings, "decay", HOOK)
        self.ramp = setting(settings, "ramp", HOOK)
        self.total_steps = max(context.total_steps, 1)
        self.slow = WeightCopy(context.model)

    def after_update(self, step: int) -> None:
        """On every k-th step, sync the slow and the fast weights."""
        if step % self.every == 0:
            progress = min(step / self.total_steps, 1.0)
            kept = self.decay**self.every * progress**self.ramp
            self.slow.move_toward_live(1.0 - kept)
            self.slow.copy_to_live()

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """Return the slow weights' model."""
        return self.slow.module


HOOKS.register(HOOK)(Lookahead)

register(Trick(
    name="lookahead",
    doc="Lookahead: slow weights synced every 5 steps, airbench's ramped share (Zhang et al. "
        "2019; Jordan 2024).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"every": 5.0, "decay": 0.95, "ramp": 3.0}},
    },
))
