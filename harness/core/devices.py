"""Which device ``auto`` means, and which cores this process may use: one home for both.

torch is imported inside the functions, so the command line's checks can ask without paying for
its import when they do not need it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def auto_device_type(cuda_count: int | None = None, mps: bool | None = None) -> str:
    """Return the device type ``device=auto`` picks: cuda, then mps, then cpu.

    Args:
        cuda_count: CUDA devices visible to this process; None asks torch.
        mps: Whether Apple's MPS backend is usable; None asks torch.
    """
    if cuda_count is None or mps is None:
        import torch

        if cuda_count is None:
            cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if mps is None:
            backend = getattr(torch.backends, "mps", None)
            mps = bool(backend and backend.is_available())
    return "cuda" if cuda_count else "mps" if mps else "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``; ``auto`` is :func:`auto_device_type`'s pick."""
    import torch

    return torch.device(auto_device_type() if name == "auto" else name)


def usable_cores() -> list[int]:
    """Return the ids of the cores this process may run on (affinity and cgroup masks included)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return list(range(os.cpu_count() or 1))
