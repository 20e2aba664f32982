"""``launcher=slurm``: the workers run as one Slurm job array, submitted through submitit.

Each task of the array is one worker, on a node of its own with its own GPUs
(``slurm.gpus_per_task``). ``slurm.cluster=local`` runs the same array through submitit's local
executor on this machine instead, for a machine without Slurm.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.checks import (
    check_can_submit,
    check_device_fit,
    check_slurm_partition,
    count,
    positive_int,
)
from harness.core.devices import usable_cores
from harness.core.errors import UserError, unknown_choice
from harness.study.launchers.base import (
    LAUNCHERS,
    POLL_SECONDS,
    DeviceNeed,
    Launch,
    Launcher,
    with_slots,
    worker_slots,
)

if TYPE_CHECKING:
    from harness.study.launchers.tasks import WorkerTask
    from harness.study.runner import Prepared, WorkerResult

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


@LAUNCHERS.register("slurm")
class SlurmLauncher(Launcher):
    """Workers as the tasks of one job array, each on a Slurm node of its own."""

    name = "slurm"
    settings = {
        "slurm.cluster": ("slurm", f"{' | '.join(CLUSTERS)}: local runs the job array on this "
                          f"machine"),
        "slurm.partition": (None, "Slurm partition of the workers' job array"),
        "slurm.time": (240, "minutes each Slurm task may run"),
        "slurm.gpus_per_task": (0, "GPUs of each Slurm task"),
        "slurm.cpus_per_task": (None, "CPU cores of each Slurm task; default: Slurm's"),
        "slurm.array_parallelism": (None, "Slurm tasks running at once; default: all"),
    }
    options: SlurmSettings

    def __init__(self, options: SlurmSettings | None = None) -> None:
        super().__init__(options if options is not None else SlurmSettings())

    @classmethod
    def parse(cls, values: Mapping[str, Any]) -> SlurmSettings:
        """Check the ``slurm.*`` settings."""
        if values["slurm.cluster"] not in CLUSTERS:
            raise unknown_choice("slurm.cluster", values["slurm.cluster"], CLUSTERS)
        partition = values["slurm.partition"]
        return SlurmSettings(
            cluster=values["slurm.cluster"],
            partition=None if partition is None else check_slurm_partition(str(partition)),
            time=positive_int("slurm.time", values["slurm.time"]),
            gpus_per_task=count("slurm.gpus_per_task", values["slurm.gpus_per_task"]),
            cpus_per_task=positive_int("slurm.cpus_per_task", values["slurm.cpus_per_task"],
                                       none_ok=True),
            array_parallelism=positive_int("slurm.array_parallelism",
                                           values["slurm.array_parallelism"], none_ok=True),
        )

    def check_workers(self, workers: int | str) -> None:
        """Refuse ``workers=auto`` (one per GPU here): a job array needs a number of tasks."""
        if workers == "auto":
            raise UserError("launcher=slurm needs a number of workers, e.g. workers=8")

    def check_can_start(self) -> None:
        """Submitit must be installed, and Slurm's tools here unless the array runs locally."""
        check_can_submit(self.options.cluster)

    def check_trials_fit(self, device: str, need: DeviceNeed, launch: Launch,
                         cuda_count: int | None) -> None:
        """Each task is one worker on a node of its own, with ``slurm.gpus_per_task`` GPUs."""
        gpus = self.options.gpus_per_task
        if device != "cpu" and 0 < gpus < need.devices:
            raise UserError(f"trainer.devices={need.devices} needs {need.devices} GPUs per "
                            f"worker; slurm.gpus_per_task={gpus}")
        check_device_fit("cuda" if device != "cpu" and gpus else "cpu", need.devices,
                         sync_bn=need.sync_bn, cuda_count=gpus)

    def uses_this_machine(self) -> bool:
        """Only ``slurm.cluster=local`` runs the array's tasks here."""
        return self.options.cluster == "local"

    def run(self, prepared: Prepared, launch_id: str, tasks: Sequence[WorkerTask],
            gpus: Sequence[str], announce: Callable[[str], None]) -> list[WorkerResult | str]:
        """Submit the array and wait for it; a local array shares this machine's cores."""
        if self.options.cluster == "local":
            tasks = with_slots(tasks, worker_slots(len(tasks), [], usable_cores()))
        return SubmititArray(prepared, launch_id, self.options, announce).run(tasks)


class SubmititArray:
    """Submits a launch's workers as one job array through submitit, and waits for it."""

    def __init__(self, prepared: Prepared, launch_id: str, slurm: SlurmSettings,
                 announce: Callable[[str], None]) -> None:
        self.prepared = prepared
        self.launch_id = launch_id
        self.slurm = slurm
        self.announce = announce

    def executor(self, tasks: int):  # noqa: ANN201 - submitit is imported only here
        """Return the configured submitit executor, or a UserError saying what is missing."""
        try:
            import submitit
        except ModuleNotFoundError:
            raise UserError("launcher=slurm needs submitit: pip install -e '.[slurm]'") from None
        slurm = self.slurm
        folder = Path(slurm.folder) / self.prepared.session.plan.name / "%j"
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=slurm.cluster)
        except RuntimeError as exc:  # e.g. no sbatch on this machine
            raise UserError(f"launcher=slurm: {str(exc).splitlines()[0]}; slurm.cluster=local "
                            f"runs the job array on this machine") from None
        parameters: dict[str, object] = {
            "timeout_min": slurm.time, "gpus_per_node": slurm.gpus_per_task,
            "tasks_per_node": 1, "name": self.prepared.session.plan.name}
        if slurm.cpus_per_task is not None:
            parameters["cpus_per_task"] = slurm.cpus_per_task
        if slurm.cluster == "slurm":
            parameters["slurm_array_parallelism"] = slurm.array_parallelism or tasks
            if slurm.partition:
                parameters["slurm_partition"] = slurm.partition
        executor.update_parameters(**parameters)
        return executor

    def run(self, tasks: Sequence[WorkerTask]) -> list[WorkerResult | str]:
        """Submit the array, show the workers' lines until every task ends, collect results."""
        from harness.study.launchers.tasks import run_worker_task
        from harness.study.progress import WorkerBoard
        from harness.study.runner import WorkerResult

        jobs = self.executor(len(tasks)).map_array(run_worker_task, list(tasks))
        self.announce(f"submitted {len(jobs)} worker task(s) (slurm.cluster="
                      f"{self.slurm.cluster}): job {jobs[0].job_id.split('_')[0]}, logs in "
                      f"{Path(self.slurm.folder) / self.prepared.session.plan.name}")
        plan = self.prepared.session.plan
        board = WorkerBoard(self.prepared.session.study, len(tasks), self.launch_id,
                            live=sys.stdout.isatty(), emit=self.announce) if plan.progress \
            else None
        try:
            while not all(job.done() for job in jobs):
                if board is not None:
                    board.refresh()
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            for job in jobs:
                job.cancel(check=False)
            return [WorkerResult(t.index, interrupted=True) for t in tasks]
        finally:
            if board is not None:
                board.close()
        return [self._result(job, task.index) for job, task in zip(jobs, tasks)]

    @staticmethod
    def _result(job: object, index: int) -> WorkerResult | str:
        try:
            return job.result()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a failed task is reported, not raised
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return f"worker {index} failed: {first}"
