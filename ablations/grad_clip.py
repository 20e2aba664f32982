"""Trick ``grad_clip``: rescale the gradient when its norm exceeds a bound.

Before each optimizer step the gradients of all parameters are scaled down together so their
global L2 norm is at most ``max_norm`` (Pascanu et al. 2013, "On the difficulty of training
recurrent neural networks"), which keeps one bad batch from throwing the weights far.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from harness.training.hooks import HOOKS, HookContext, StepHook, setting
from harness.tricks import Trick, register

HOOK = "grad_clip"


class GradientClipping(StepHook):
    """Clip the global gradient norm of the optimized parameters to ``max_norm`` before a step."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.max_norm = setting(settings, "max_norm", HOOK)

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Scale the gradients down together when their norm exceeds ``max_norm``."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)


HOOKS.register(HOOK)(GradientClipping)

register(Trick(
    name="grad_clip",
    doc="Gradient clipping: global L2 norm at most 1 before each step (Pascanu et al. 2013).",
    options={
        "off": {f"trainer.hooks.{HOOK}": None},
        "on": {f"trainer.hooks.{HOOK}": {"max_norm": 1.0}},
    },
))
