"""Trick ``depth``: which network, from the seed's tutorial CNN to ResNet-34.

ResNet-18 and ResNet-34 are the CIFAR ResNets of He et al. 2016 (basic blocks, (2, 2, 2, 2) and
(3, 4, 6, 3) per stage); ``simplecnn`` is the seed's PyTorch-tutorial net, the floor every trick
should beat.
"""

from __future__ import annotations

import dataclasses

from harness.tricks import Trick, register

register(Trick(
    name="depth",
    doc="Architecture: CIFAR ResNet-18, ResNet-34 (He et al. 2016) or the seed's tutorial CNN.",
    options={
        "resnet18": {"model": lambda model: dataclasses.replace(model, arch="resnet18")},
        "resnet34": {"model": lambda model: dataclasses.replace(model, arch="resnet34")},
        "simplecnn": {"model": lambda model: dataclasses.replace(model, arch="simplecnn")},
    },
))
