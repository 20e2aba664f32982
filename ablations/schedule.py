"""Trick ``schedule``: a constant lr, or linear warmup then cosine decay.

The seed trained at a constant lr. He et al. 2019 ("Bag of Tricks", §3.1 and §5.1) warm up
linearly (Goyal et al. 2017) and then follow a cosine curve (Loshchilov & Hutter 2017).
Warmup length is the base recipe's ``schedule.warmup_epochs`` when it sets one; otherwise 0.1
epoch, because the paper's 5 epochs would swallow a 2-epoch CPU run whole, and a tenth of an
epoch (about 35 steps of 128 on CIFAR-10) is enough to ride out the first large steps.
"""

from __future__ import annotations

import dataclasses

from harness.recipe import ScheduleSpec
from harness.tricks import Trick, register

DEFAULT_WARMUP_EPOCHS = 0.1


def _warmup_cosine(spec: ScheduleSpec) -> ScheduleSpec:
    warmup = spec.warmup_epochs if spec.warmup_epochs > 0 else DEFAULT_WARMUP_EPOCHS
    return dataclasses.replace(spec, name="warmup_cosine", warmup_epochs=warmup)


register(Trick(
    name="schedule",
    doc="LR schedule: constant (the seed's) or linear warmup then cosine decay (He et al. 2019).",
    options={
        "constant": {"schedule": lambda spec: dataclasses.replace(spec, name="constant")},
        "warmup_cosine": {"schedule": _warmup_cosine},
    },
))
