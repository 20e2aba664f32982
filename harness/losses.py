"""Training losses by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from harness.errors import UserError
from harness.recipe import LossSpec
from harness.registry import Registry

LOSSES: Registry[Callable[[LossSpec], nn.Module]] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(spec: LossSpec) -> nn.Module:
    """Plain cross-entropy against one-hot targets."""
    if spec.smoothing:
        # Silently training without the smoothing asked for would make a wrong ablation row.
        raise UserError(f"loss.smoothing={spec.smoothing} has no effect on the plain "
                        f"cross_entropy loss; choose a loss that smooths targets")
    return nn.CrossEntropyLoss()


def build_loss(spec: LossSpec) -> nn.Module:
    """Build the loss named by ``spec``."""
    return LOSSES.get(spec.name)(spec)
