"""What every launcher shares: the Launch settings, the Launcher protocol, and worker slots.

A launcher is one module of this package that subclasses :class:`Launcher` and registers it in
:data:`LAUNCHERS`. It owns its ``key=value`` settings (e.g. ``slurm.*``), its checks of what the
study's trials and workers need of where they run, and how it starts the workers. The study's
launch (:mod:`harness.study.launch`) prepares the study, asks the launcher to run the workers,
and closes the study; it never branches on the launcher's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.core.registry import Registry

if TYPE_CHECKING:
    from harness.study.launchers.tasks import WorkerTask
    from harness.study.runner import Prepared, WorkerResult

STOP_GRACE_SECONDS = 60  # how long stopped workers get to mark their runs before SIGKILL
POLL_SECONDS = 1.0  # how often a launcher redraws the workers' lines


@dataclass(frozen=True)
class Launch:
    """How many workers a study gets and where they run.

    These are settings of a command, not of the study: the same study may run with one worker
    on a laptop and with 64 on a cluster, and its trials are the same.
    """

    workers: int | str = 1  # a number, or "auto": one per visible GPU (× trials_per_gpu)
    trials_per_gpu: int = 1
    launcher: str = "local"
    options: Any = None  # the launcher's own settings, as its ``parse`` built them

    @property
    def starter(self) -> Launcher:
        """The registered launcher of this launch, with its settings."""
        return LAUNCHERS.get(self.launcher)(self.options)


@dataclass(frozen=True)
class Slot:
    """What one local worker may use: a GPU (as CUDA_VISIBLE_DEVICES) and CPU cores."""

    index: int
    gpu: str | None
    cores: tuple[int, ...]


@dataclass(frozen=True)
class DeviceNeed:
    """What one trial's ranks need: ``devices`` of them, and whether BatchNorm syncs across."""

    devices: int
    sync_bn: bool = False


class Launcher:
    """Starts a study's workers somewhere. Subclasses override what differs.

    Args:
        options: What :meth:`parse` built from the launcher's settings.
    """

    name: ClassVar[str]
    # The launcher's own key=value settings: key -> (default, help), shown by --help.
    settings: ClassVar[dict[str, tuple[Any, str]]] = {}

    def __init__(self, options: Any = None) -> None:
        self.options = options

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> Any:
        """Check the launcher's settings in ``values``; return what its instances get.

        Every launcher's settings are checked, the chosen one's or not: a typo in a setting is
        reported even where another launcher runs.
        """
        return None

    def check_workers(self, workers: int | str) -> None:
        """Raise a UserError when this launcher cannot start ``workers`` (a number or auto)."""

    def check_can_start(self) -> None:
        """Raise a UserError when this machine cannot start workers this way."""

    def check_trials_fit(self, device: str, need: DeviceNeed, launch: Launch,
                         cuda_count: int | None) -> None:
        """Raise a UserError when ``launch.workers`` trials needing ``need`` cannot run at once."""
        raise NotImplementedError

    def uses_this_machine(self) -> bool:
        """Whether the workers run on this machine, so its cores and GPUs bound their number."""
        return True

    def visible_gpus(self, device: str) -> list[str]:
        """Return the GPUs the workers share round-robin ([] where each has its own)."""
        return []

    def in_process(self, workers: int) -> bool:
        """Whether the one worker runs in this process, with the data already loaded."""
        return False

    def run(self, prepared: Prepared, launch_id: str, tasks: Sequence[WorkerTask],
            gpus: Sequence[str], announce: Callable[[str], None]) -> list[WorkerResult | str]:
        """Run every worker task to its end; return each one's result or why it is missing."""
        raise NotImplementedError


LAUNCHERS: Registry[type[Launcher]] = Registry("launcher")


def launcher_settings() -> dict[str, tuple[Any, str]]:
    """Return every registered launcher's settings: key -> (default, help)."""
    return {key: spec for name in LAUNCHERS for key, spec in LAUNCHERS.get(name).settings.items()}


def visible_gpus(device: str) -> list[str]:
    """Return the GPUs of this machine workers may share: CUDA_VISIBLE_DEVICES, else every one."""
    if not device.startswith(("auto", "cuda")):
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []


def resolve_workers(workers: int | str, gpus: Sequence[str], trials_per_gpu: int) -> int:
    """Return the number of workers: ``auto`` is trials_per_gpu per visible GPU, else 1."""
    if workers == "auto":
        return len(gpus) * trials_per_gpu if gpus else 1
    return int(workers)


def worker_slots(workers: int, gpus: Sequence[str], cores: Sequence[int]) -> list[Slot]:
    """Share GPUs round-robin and cores in contiguous blocks among ``workers`` workers.

    With more workers than cores, each gets one core, round-robin. Worker i gets GPU
    ``gpus[i % len(gpus)]``, so ``workers = k × len(gpus)`` puts k workers on every GPU.
    """
    count = len(cores)
    slots = []
    for index in range(workers):
        share = (cores[index * count // workers:(index + 1) * count // workers]
                 if workers <= count else [cores[index % count]])
        slots.append(Slot(index, gpus[index % len(gpus)] if gpus else None, tuple(share)))
    return slots


def slot_text(slot: Slot) -> str:
    """Return a slot as the launch line shows it, e.g. ``w0 cores 0-3 gpu 1``."""
    cores = f"cores {slot.cores[0]}-{slot.cores[-1]}" if len(slot.cores) > 1 \
        else f"core {slot.cores[0]}"
    return f"w{slot.index} {cores}" + (f" gpu {slot.gpu}" if slot.gpu is not None else "")


def with_slots(tasks: Sequence[WorkerTask], slots: Sequence[Slot]) -> list[WorkerTask]:
    """Return ``tasks`` with each given its slot."""
    from dataclasses import replace

    return [replace(task, slot=slot) for task, slot in zip(tasks, slots)]

