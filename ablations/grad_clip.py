"""Trick ``grad_clip``: rescale the gradient when its norm exceeds a bound.

Before each optimizer step the gradients of all parameters are scaled down together so their
global L2 norm is at most ``max_norm`` (Pascanu et al. 2013, "On the difficulty of training
recurrent neural networks"), which keeps one bad batch from throwing the weights far.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness.hooks import HOOKS, HookContext, OptimizerWrapper, StepHook, setting
from harness.tricks import Trick, register

HOOK = "grad_clip"


class ClippedOptimizer(OptimizerWrapper):
    """Clip the global gradient norm to ``max_norm``, then step."""

    def __init__(self, inner: torch.optim.Optimizer, max_norm: float) -> None:
        super().__init__(inner)
        self.max_norm = max_norm
        self.params = [p for group in inner.param_groups for p in group["params"]]

    def step(self) -> None:
        """Clip, then take the inner optimizer's step."""
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.inner.step()


class GradientClipping(StepHook):
    """Wrap the optimizer in :class:`ClippedOptimizer`."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.max_norm = setting(settings, "max_norm", HOOK)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Return the clipping optimizer."""
        return ClippedOptimizer(optimizer, self.max_norm)


HOOKS.register(HOOK)(GradientClipping)

register(Trick(
    name="grad_clip",
    doc="Gradient clipping: global L2 norm at most 1 before each step (Pascanu et al. 2013).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"max_norm": 1.0}},
    },
))
