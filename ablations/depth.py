"""Trick ``depth``: which network, from the seed's tutorial CNN to ResNet-34.

ResNet-18 and ResNet-34 are the CIFAR ResNets of He et al. 2016 (basic blocks, (2, 2, 2, 2) and
(3, 4, 6, 3) per stage); ``simplecnn`` is the seed's PyTorch-tutorial net, the floor every trick
should beat; ``airbench`` is Jordan 2024's three conv-pool-BN-GELU blocks behind a 2×2 first
layer (``ablations/airbench.py``).
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="depth",
    doc="Architecture: CIFAR ResNet-18, ResNet-34 (He et al. 2016), the seed's tutorial CNN or "
        "airbench's net (Jordan 2024).",
    options={arch: {"model.arch": arch} for arch in ("resnet18", "resnet34", "simplecnn",
                                                      "airbench")},
))
