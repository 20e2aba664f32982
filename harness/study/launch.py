"""Where a study's workers run: how many, on which launcher, with which Slurm settings.

These are settings of a command, not of the study: the same study may run with one worker on a
laptop and with 64 on a cluster, and its trials are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAUNCHERS = ("local", "slurm")
CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SlurmSettings:
    """How ``launcher=slurm`` submits the job array (``slurm.*`` on the command line)."""

    cluster: str = "slurm"  # slurm | local (submitit's local executor, for a machine without)
    partition: str | None = None
    time: int = 240  # minutes each task may run
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    array_parallelism: int | None = None  # tasks running at once; default: all of them
    folder: str = "mlruns/submitit"  # submitit's job files and logs; shared by every node


@dataclass(frozen=True)
class Launch:
    """How many workers a study gets and where they run."""

    workers: int | str = 1  # a number, or "auto": one per visible GPU (× trials_per_gpu)
    trials_per_gpu: int = 1
    launcher: str = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
