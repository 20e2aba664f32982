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

import torch
from torch import nn

from harness.hooks import HOOKS, HookContext, OptimizerWrapper, StepHook, WeightCopy, setting
from harness.tricks import Trick, register

HOOK = "lookahead"


class LookaheadOptimizer(OptimizerWrapper):
    """Step the inner optimizer; every ``every`` steps pull the slow weights and restart.

    Args:
        inner: The optimizer of the fast weights.
        slow: The slow weights, a copy of the model.
        every: k, steps between syncs.
        decay: Per-step decay; a sync keeps decay^k · (t/T)^ramp of the slow weights.
        ramp: Power of the run's progress t/T in that share.
        total_steps: T.
    """

    def __init__(self, inner: torch.optim.Optimizer, slow: WeightCopy, every: int,
                 decay: float, ramp: float, total_steps: int) -> None:
        super().__init__(inner)
        self.slow, self.every, self.decay, self.ramp = slow, every, decay, ramp
        self.total_steps = max(total_steps, 1)
        self.steps = 0

    def step(self) -> None:
        """Take a fast step; on every k-th, sync the slow and the fast weights."""
        self.inner.step()
        self.steps += 1
        if self.steps % self.every == 0:
            progress = min(self.steps / self.total_steps, 1.0)
            kept = self.decay**self.every * progress**self.ramp
            self.slow.move_toward_live(1.0 - kept)
            self.slow.copy_to_live()


class Lookahead(StepHook):
    """Wrap the optimizer in :class:`LookaheadOptimizer`, and evaluate the slow weights."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.every = int(setting(settings, "every", HOOK))
        self.decay = setting(settings, "decay", HOOK)
        self.ramp = setting(settings, "ramp", HOOK)
        self.model = context.model
        self.total_steps = context.total_steps
        self.slow: WeightCopy | None = None

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Return the lookahead optimizer; the slow weights start as the model is now."""
        self.slow = WeightCopy(self.model)
        return LookaheadOptimizer(optimizer, self.slow, self.every, self.decay, self.ramp,
                                  self.total_steps)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """Return the slow weights' model (the model itself before any optimizer exists)."""
        return model if self.slow is None else self.slow.module


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
