"""Trick ``label_smoothing``: train against softened one-hot targets.

With smoothing ε the target puts 1-ε on the true class and spreads ε uniformly over all classes,
so the net is not pushed towards infinite logits (Szegedy et al. 2016, "Rethinking the Inception
Architecture", §7; He et al. 2019, "Bag of Tricks", §5.2 use ε=0.1; Jordan 2024's airbench uses
ε=0.2). The seed lists it among the tricks it tried. The harness's cross-entropy reads
``loss.smoothing``, so an option is just the value of ε.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="label_smoothing",
    doc="Label smoothing ε of the cross-entropy targets (Szegedy et al. 2016; He et al. 2019; "
        "Jordan 2024).",
    options={epsilon: {"loss.smoothing": float(epsilon)} for epsilon in ("0.0", "0.1", "0.2")},
))
