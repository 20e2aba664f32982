"""Trick ``zero_gamma``: start every residual block as the identity.

Setting γ of the BN that closes each residual branch to zero makes the block output
relu(shortcut(x)) at first, so a deep net trains like a shallow one early on (Goyal et al. 2017,
"Accurate, Large Minibatch SGD"; He et al. 2019, "Bag of Tricks", §3.1). Blocks mark that
BN as ``last_norm``; nets without one (the seed's CNN) are left unchanged.
"""

from __future__ import annotations

from torch import nn

from harness.models.parts import INITIALIZERS
from harness.tricks import Trick, appended, register, removed

_INITIALIZER = "zero_last_norm_gamma"


@INITIALIZERS.register(_INITIALIZER)
def zero_last_norm_gamma(model: nn.Module) -> None:
    """Zero the γ (weight) of every ``last_norm`` in ``model``; β stays as it is."""
    for module in model.modules():
        norm = getattr(module, "last_norm", None)
        # An affine=False norm has no γ to zero.
        if isinstance(norm, nn.Module) and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)


# post_init runs after ``init``, so a whole-net init cannot undo the zeros; removing only this
# entry keeps the other post-init steps of the base recipe.
register(Trick(
    name="zero_gamma",
    doc="Zero-γ: zero the last BN γ of every residual block (Goyal et al. 2017; He et al. 2019).",
    options={
        "off": {"model.post_init": removed(_INITIALIZER)},
        "on": {"model.post_init": appended(_INITIALIZER)},
    },
))
