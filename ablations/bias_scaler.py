"""Trick ``bias_scaler``: a 64× learning rate for the biases of the norm layers.

airbench (Jordan 2024) trains BN biases at 64 times the base lr, with their weight decay
divided by 64 so the decay each step applies stays the same. With γ frozen, as in airbench's
net, the biases are all a BN layer learns, and they move too slowly at the base lr.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="bias_scaler",
    doc="Scaled bias lr: norm-layer biases at 64× the lr, same decay per step (Jordan 2024, "
        "airbench).",
    options={
        "off": {"optimizer.norm_bias_lr_factor": 1.0},
        "on": {"optimizer.norm_bias_lr_factor": 64.0},
    },
))
