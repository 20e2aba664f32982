"""Trick ``schedule``: a constant lr, linear warmup then cosine decay, or a triangle.

The seed trained at a constant lr. He et al. 2019 ("Bag of Tricks", §3.1 and §5.1) warm up
linearly (Goyal et al. 2017) and then follow a cosine curve (Loshchilov & Hutter 2017).
Warmup length is the base recipe's ``schedule.warmup_epochs`` when it sets one; otherwise 0.1
epoch, because the paper's 5 epochs would swallow a 2-epoch CPU run whole, and a tenth of an
epoch (about 35 steps of 128 on CIFAR-10) is enough to ride out the first large steps.

``triangular`` is airbench's schedule (Jordan 2024; the one-cycle shape of Smith & Topin 2019):
linear from ``start_lr_fraction`` of the peak up to the peak at ``warmup_epochs``, then linear
down to ``final_lr_fraction`` at the last step (airbench: 0.2, 23% of the run, 0.07).
"""

from __future__ import annotations

from collections.abc import Callable

from harness.recipe import ScheduleSpec
from harness.training.schedules import SCHEDULES
from harness.tricks import Change, Trick, register

DEFAULT_WARMUP_EPOCHS = 0.1


@SCHEDULES.register("triangular")
def triangular(spec: ScheduleSpec, total_steps: int,
               steps_per_epoch: int) -> Callable[[int], float]:
    """Linear from ``start_lr_fraction`` up to 1 over the warmup, then down to the final one."""
    warmup = min(int(round(spec.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    start, end = spec.start_lr_fraction, spec.final_lr_fraction

    def multiplier(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return 1.0 + (end - 1.0) * progress

    return multiplier


_KEEP_OR_SHORT_WARMUP = Change(
    f"kept if above 0, else {DEFAULT_WARMUP_EPOCHS}",
    lambda epochs: epochs if epochs > 0 else DEFAULT_WARMUP_EPOCHS)

register(Trick(
    name="schedule",
    doc="LR schedule: constant (the seed's), warmup then cosine (He et al. 2019) or airbench's "
        "triangle (Jordan 2024).",
    options={
        "constant": {"schedule.name": "constant"},
        "warmup_cosine": {"schedule.name": "warmup_cosine",
                          "schedule.warmup_epochs": _KEEP_OR_SHORT_WARMUP},
        "triangular": {"schedule.name": "triangular",
                       "schedule.warmup_epochs": _KEEP_OR_SHORT_WARMUP},
    },
))
