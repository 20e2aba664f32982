"""Learning-rate schedules by name, as multipliers of the peak lr per optimizer step.

The loop applies them through ``torch.optim.lr_scheduler.LambdaLR``, stepped after every
optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from harness.core.registry import Registry
from harness.recipe import ScheduleSpec

# (spec, total_steps, steps_per_epoch) -> (step -> multiplier of the peak lr)
SCHEDULES: Registry[Callable[[ScheduleSpec, int, int], Callable[[int], float]]] = Registry(
    "schedule"
)


@SCHEDULES.register("constant")
def constant(spec: ScheduleSpec, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Keep the peak lr throughout, as the seed trained."""
    return lambda step: 1.0


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(spec: ScheduleSpec, total_steps: int,
                  steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup for ``warmup_epochs``, then cosine decay to ``final_lr_fraction``.

    Warmup keeps early large-lr steps from blowing up freshly initialised BN nets (Goyal et al.
    2017); cosine is He et al. 2019's schedule.
    """
    warmup = min(int(round(spec.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    floor = spec.final_lr_fraction

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return multiplier


def build_schedule(spec: ScheduleSpec, total_steps: int,
                   steps_per_epoch: int) -> Callable[[int], float]:
    """Return the lr multiplier for each optimizer step of a run."""
    return SCHEDULES.get(spec.name)(spec, total_steps, steps_per_epoch)
