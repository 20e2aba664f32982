"""Trick ``label_smoothing``: train against softened one-hot targets.

With smoothing ε the target puts 1-ε on the true class and spreads ε uniformly over all classes,
so the net is not pushed towards infinite logits (Szegedy et al. 2016, "Rethinking the Inception
Architecture", §7; He et al. 2019, "Bag of Tricks", §5.2 use ε=0.1). The seed lists it among the
tricks it tried.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from harness.losses import LOSSES
from harness.recipe import LossSpec
from harness.tricks import Trick, register


@LOSSES.register("smoothed_cross_entropy")
def smoothed_cross_entropy(spec: LossSpec) -> nn.Module:
    """Cross-entropy against targets smoothed by ``spec.smoothing``."""
    return nn.CrossEntropyLoss(label_smoothing=spec.smoothing)


def _smoothing(epsilon: float):
    def change(spec: LossSpec) -> LossSpec:
        # ε=0 is plain cross-entropy, so the neutral option names the harness's own loss.
        name = "smoothed_cross_entropy" if epsilon > 0 else "cross_entropy"
        return dataclasses.replace(spec, name=name, smoothing=epsilon)

    return change


register(Trick(
    name="label_smoothing",
    doc="Label smoothing ε of the cross-entropy targets (Szegedy et al. 2016; He et al. 2019).",
    options={
        "0.0": {"loss": _smoothing(0.0)},
        "0.1": {"loss": _smoothing(0.1)},
    },
))
