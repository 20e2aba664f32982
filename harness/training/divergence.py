"""Watching the training loss for NaN/inf without stalling the device.

A plain ``torch.isfinite(loss).item()`` makes the host wait until the GPU has caught up, which
empties its queue of kernels every time. On CUDA the watch instead copies the answer into pinned
host memory asynchronously and reads it at a later look, once an event says the copy landed:
a diverged run is noticed a few steps late (a NaN stays NaN in a running sum), never missed.
"""

from __future__ import annotations

import torch


class DivergenceWatch:
    """Answers "has the running loss stopped being finite?" every ``every`` steps.

    Args:
        device: Where the loss lives.
        every: Look at every this many steps; on the CPU a look costs nothing worth avoiding,
            on CUDA it enqueues one tiny copy.
    """

    def __init__(self, device: torch.device, every: int = 25) -> None:
        self.every = every
        self.asynchronous = device.type == "cuda"
        self._answer = torch.ones((), dtype=torch.bool, pin_memory=self.asynchronous)
        self._landed: torch.cuda.Event | None = None

    def diverged(self, step: int, loss_sum: torch.Tensor) -> bool:
        """Return True once a look has seen ``loss_sum`` non-finite; never blocks on CUDA."""
        if step % self.every:
            return False
        if not self.asynchronous:
            return not bool(torch.isfinite(loss_sum))
        seen_nan = False
        if self._landed is not None and self._landed.query():
            seen_nan = not bool(self._answer)
            self._landed = None
        if self._landed is None:
            self._answer.copy_(torch.isfinite(loss_sum), non_blocking=True)
            self._landed = torch.cuda.Event()
            self._landed.record()
        return seen_nan
