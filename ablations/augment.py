"""Trick ``augment``: random crop and horizontal flip of training batches.

The standard CIFAR augmentation (He et al. 2016, §4.2): pad by ``augment.crop_padding`` pixels
(4 by default), crop back to size at a random offset, and flip half the images left to right.
The seed trained without augmentation (ToTensor and Normalize only), so ``none`` is its setting.
The ops are the harness's batched, on-device ones (``harness/data/augment.py``); this trick only
switches them on.
"""

from __future__ import annotations

from harness.tricks import Trick, register

register(Trick(
    name="augment",
    doc="Augmentation: none, or random crop with padding and horizontal flip (He et al. 2016).",
    options={
        "none": {"augment.ops": ()},
        "crop_flip": {"augment.ops": ("crop", "flip")},
    },
))
