"""Trick ``no_bias_decay``: apply weight decay to conv and linear weights only.

Biases and BN γ/β carry no capacity that L2 regularisation should curb; decaying γ just shrinks
activations the next layer rescales back (He et al. 2019, "Bag of Tricks", §3.1, after Jia et al.
2018). The harness puts the excluded kinds in a weight_decay=0 parameter group.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="no_bias_decay",
    doc="No bias decay: exempt biases and norm parameters from weight decay (He et al. 2019).",
    options={
        "off": {"optimizer.decay_excludes": ()},
        "on": {"optimizer.decay_excludes": ("bias", "norm")},
    },
))
