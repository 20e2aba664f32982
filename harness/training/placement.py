"""Where a run's tensors sit: the device's human name, precision and memory layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.devices import usable_cores
from harness.recipe import Recipe


def device_name(device: torch.device) -> str:
    """Return a human name for ``device``, e.g. ``cuda:NVIDIA H100`` or ``cpu:2 cores``.

    On the CPU it counts the cores this process may use, which is the thread count the loop
    trains with: a worker of ``workers=2`` on 2 cores is ``cpu:1 core``. The count belongs to
    the result: another thread count sums in another order, and CPU runs are reproducible bit
    for bit only at the same one.
    """
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        cores = len(usable_cores())
        return f"cpu:{cores} core{'' if cores == 1 else 's'}"
    return device.type


@dataclass(frozen=True)
class Placement:
    """How tensors and the model sit on the device: precision and memory layout."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    memory_format: torch.memory_format

    @classmethod
    def for_recipe(cls, recipe: Recipe, device: torch.device) -> Placement:
        """bf16 autocast and channels_last on CUDA under ``precision=auto``; fp32 elsewhere."""
        precision = recipe.trainer.precision
        use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        channels_last = device.type == "cuda"
        return cls(device, torch.bfloat16 if use_bf16 else None,
                   torch.channels_last if channels_last else torch.contiguous_format)
