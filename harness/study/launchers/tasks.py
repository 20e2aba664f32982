"""One worker's task, and running it: the body of every worker a launcher starts elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.study.launchers.base import Slot
from harness.study.plan import Plan
from harness.study.queue import Owner
from harness.study.runner import StudySession, Worker, WorkerResult


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker process needs; pickled to it."""

    plan: Plan
    index: int
    parent_run_id: str
    launch: str
    slot: Slot | None = None


def run_worker_task(task: WorkerTask) -> WorkerResult:
    """Run one worker of a launch in this process: the body of a local or Slurm worker."""
    from harness.tricks import load_tricks

    load_tricks()
    if task.slot is not None:
        if task.slot.gpu is not None:  # read by CUDA when it first starts, which is later
            os.environ["CUDA_VISIBLE_DEVICES"] = task.slot.gpu
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, task.slot.cores)  # the loop gives torch this many threads
    session = StudySession(task.plan)
    worker = Worker(task.plan, session, task.parent_run_id, Owner.here(task.index, task.launch),
                    announce=lambda text: print(text, flush=True))
    return worker.run()
