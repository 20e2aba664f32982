"""Trick ``optimizer``: SGD with momentum, or Adam with the seed's settings.

The seed trained with SGD (momentum 0.9), then switched to
``Adam(lr=0.001, betas=(0.9, 0.98), eps=1e-9)`` (the Transformer's betas and eps, Vaswani et al.
2017). The base recipe's lr is by definition the one that suits SGD, so ``sgd`` keeps it, while
``adam`` sets the seed's 1e-3. Either is multiplied by ``optimizer.lr_factor``, which this trick
leaves alone so a study or the command line can rescale both.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="optimizer",
    doc="SGD with momentum at the base lr, or the seed's Adam at lr 1e-3; either × lr_factor.",
    options={
        "sgd": {"optimizer.name": "sgd", "optimizer.momentum": 0.9},
        "adam": {"optimizer.name": "adam", "optimizer.lr": 1e-3, "optimizer.betas": (0.9, 0.98),
                 "optimizer.eps": 1e-9},
    },
))
