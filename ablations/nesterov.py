"""Trick ``nesterov``: Nesterov momentum for SGD.

The gradient is taken at the point momentum is about to carry the weights to, which damps the
oscillation of plain momentum (Sutskever et al. 2013, after Nesterov 1983). airbench trains with
it. Adam ignores the setting.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="nesterov",
    doc="Nesterov momentum for SGD (Sutskever et al. 2013).",
    options={
        "off": {"optimizer.nesterov": False},
        "on": {"optimizer.nesterov": True},
    },
))
