"""Trick ``init``: how weights are initialised before training.

``xavier`` is the seed's ``init_weights`` (Glorot & Bengio 2010): Xavier-uniform conv and linear
weights, zero biases, BN γ=1 and β=0. ``kaiming`` is what torchvision's ResNet does (He et al.
2015): Kaiming-normal conv weights scaled by fan-out for ReLU. ``default`` keeps PyTorch's own
Kaiming-uniform (a=√5) initialisation.
"""

from __future__ import annotations

from torch import nn

from harness.models.parts import INITIALIZERS
from harness.tricks import Trick, register

# BN layers of every dimensionality; γ=1, β=0 makes each start as a plain standardisation.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _reset_norm(module: nn.Module) -> None:
    if module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@INITIALIZERS.register("xavier")
def xavier_init(model: nn.Module) -> None:
    """Xavier-uniform conv and linear weights, zero biases, BN γ=1 β=0 (the seed's init)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BATCH_NORMS):
            _reset_norm(module)


@INITIALIZERS.register("kaiming")
def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) conv weights, zero conv biases, BN γ=1 β=0.

    Linear layers keep PyTorch's default, as in torchvision's ResNet: the classifier sees
    averaged features, not a ReLU stack, so the ReLU gain would only inflate its logits.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _BATCH_NORMS):
            _reset_norm(module)


register(Trick(
    name="init",
    doc="Weight init: PyTorch default, Xavier-uniform (the seed's) or Kaiming-normal fan-out.",
    options={name: {"model.init": name} for name in ("default", "xavier", "kaiming")},
))
