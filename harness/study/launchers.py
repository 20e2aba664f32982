"""Starting a study's workers: in this process, as local processes, or as a Slurm job array.

``workers=1`` (the default) runs the one worker in this process. ``workers=N`` starts N worker
processes here: each gets its own GPU, round-robin (``trials_per_gpu=k`` packs k onto each), and
its share of the CPU cores, pinned by affinity so its torch threads never fight another
worker's. ``launcher=slurm`` submits the workers as one job array through submitit;
``slurm.cluster=local`` runs that array through submitit's local executor instead. Every worker,
wherever it runs, is an ordinary worker on the shared storage and tracking store.

A worker that a fault stops (a full disk, a store unreachable past ``retry_window``) ends with
one line and its own exit code (:mod:`harness.core.faults`); a full disk stops the other local
workers too. The launcher then leaves the stores as they are, for the next start to repair.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.checks import check_can_submit
from harness.core.devices import resolve_device, usable_cores
from harness.core.errors import UserError
from harness.core.faults import EXIT_DISK_FULL
from harness.study.launch import Launch, SlurmSettings
from harness.study.plan import Plan
from harness.study.progress import WorkerBoard
from harness.study.queue import FAILURE_ATTR, OWNER_ATTR, RUN_ATTR, Owner, QueueState
from harness.study.runner import (
    Prepared,
    StudyOutcome,
    StudySession,
    Worker,
    WorkerResult,
    prepare_study,
)
from harness.tracking.store import check_tracking_uri

STOP_GRACE_SECONDS = 60  # how long stopped workers get to mark their runs before SIGKILL
POLL_SECONDS = 1.0  # how often the launcher redraws the workers' lines


@dataclass(frozen=True)
class Slot:
    """What one local worker may use: a GPU (as CUDA_VISIBLE_DEVICES) and CPU cores."""

    index: int
    gpu: str | None
    cores: tuple[int, ...]


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker process needs; pickled to it."""

    plan: Plan
    index: int
    parent_run_id: str
    launch: str
    slot: Slot | None = None


def visible_gpus(device: str) -> list[str]:
    """Return the GPUs workers may share: CUDA_VISIBLE_DEVICES, else every CUDA device."""
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


def run_worker_task(task: WorkerTask) -> WorkerResult:
    """Run one worker of a launch in this process: the body of a local or Slurm worker."""
    from harness.tricks import load_tricks

    load_tricks()
    if task.slot is not None:
        if task.slot.gpu is not None:  # read by CUDA when it first starts, which is later
            os.environ["CUDA_VISIBLE_DEVICES"] = task.slot.gpu
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, task.slot.cores)  # fit() gives torch this many threads
    session = StudySession(task.plan)
    worker = Worker(task.plan, session, task.parent_run_id, Owner.here(task.index, task.launch),
                    announce=lambda text: print(text, flush=True))
    return worker.run()


def run_study(plan: Plan, launch: Launch, announce: Callable[[str], None] = print
              ) -> StudyOutcome:
    """Prepare a study, run its workers as ``launch`` says, and close its parent run.

    Returns:
        What this command did. ``interrupted`` is set when Ctrl-C stopped it; the runs in flight
        are then KILLED and their trials queued again by the next start.
    """
    if launch.launcher == "slurm":  # before any store is opened: a refusal changes nothing
        check_can_submit(launch.slurm.cluster)
    plan = dataclasses.replace(plan, tracking_uri=check_tracking_uri(plan.tracking_uri))
    gpus = visible_gpus(plan.device) if launch.launcher == "local" else []
    workers = resolve_workers(launch.workers, gpus, launch.trials_per_gpu)
    in_process = launch.launcher == "local" and workers == 1
    if not in_process and plan.device.startswith("cuda:"):
        raise UserError(f"device={plan.device} pins one GPU; with several workers choose the "
                        f"GPUs with CUDA_VISIBLE_DEVICES and use device=cuda")
    launch_id = uuid.uuid4().hex[:12]
    device = resolve_device(plan.device) if in_process else "cpu"
    prepared = prepare_study(plan, device, announce)
    plan = prepared.session.plan  # now with the data digest that trial identities need
    if in_process:
        worker = Worker(plan, prepared.session, prepared.parent_run_id, Owner.here(0, launch_id),
                        announce, fit_progress=plan.progress, data=prepared.data)
        results: list[WorkerResult | str] = [worker.run()]
    else:
        tasks = [WorkerTask(plan, i, prepared.parent_run_id, launch_id) for i in range(workers)]
        if launch.launcher == "local":
            slots = worker_slots(workers, gpus, usable_cores())
            tasks = [WorkerTask(t.plan, t.index, t.parent_run_id, launch_id, slot)
                     for t, slot in zip(tasks, slots)]
            announce(f"{workers} workers: " + ", ".join(_slot_text(s) for s in slots))
            results = LocalProcesses(prepared, launch_id, announce).run(tasks)
        else:
            if launch.slurm.cluster == "local":
                slots = worker_slots(workers, [], usable_cores())
                tasks = [WorkerTask(t.plan, t.index, t.parent_run_id, launch_id, slot)
                         for t, slot in zip(tasks, slots)]
            results = SubmititArray(prepared, launch_id, launch.slurm, announce).run(tasks)
    return _finish(prepared, launch_id, results)


def _slot_text(slot: Slot) -> str:
    cores = f"cores {slot.cores[0]}-{slot.cores[-1]}" if len(slot.cores) > 1 \
        else f"core {slot.cores[0]}"
    return f"w{slot.index} {cores}" + (f" gpu {slot.gpu}" if slot.gpu is not None else "")


def _finish(prepared: Prepared, launch_id: str, results: Sequence[WorkerResult | str]
            ) -> StudyOutcome:
    """Abandon what stopped workers left, close the parent run and gather the outcome.

    After a fault the stores are left to the next start, which repairs them (a journal's torn
    last record included, see :mod:`harness.study.journal`).
    """
    session = prepared.session
    plan = session.plan
    done = [r for r in results if isinstance(r, WorkerResult)]
    interrupted = any(r.interrupted for r in done)
    stopped = [r for r in done if r.stopped]
    trials = sorted((t for r in done for t in r.trials), key=lambda t: t.number)
    outcome = StudyOutcome(
        plan.name, plan.name, prepared.parent_run_id, plan.optuna_study_name,
        session.storage_url, session.tracker.uri, trials, skipped=prepared.filled.done,
        requeued=prepared.filled.requeued, interrupted=interrupted,
        lost_workers=[r for r in results if isinstance(r, str)])
    if stopped:
        first = min(stopped, key=lambda r: r.exit_code)  # a full disk before an outage
        outcome.stopped, outcome.exit_code = first.stopped, first.exit_code
        # A journal record a full disk cut short is cut off (and kept aside) when the next
        # command opens the journal: harness.study.journal.
        outcome.stopped_workers = len(stopped)
        return outcome
    queue = session.queue(Owner.here(launch=launch_id))

    def close() -> QueueState:
        with session.lock:
            if interrupted or len(done) < len(results):
                _abandon(session, launch_id, "interrupted" if interrupted else "stale")
            queue.repair()
            return queue.state()

    state = session.storage_outage.call(close)
    if interrupted:
        session.tracker.end(prepared.parent_run_id, "KILLED")
    elif state.drained:
        session.tracker.end(prepared.parent_run_id, "FINISHED")
    session.tracker.flush()
    outcome.still_running = state.running
    return outcome


def _abandon(session: StudySession, launch_id: str, failure: str) -> None:
    """Fail the RUNNING trials a launch's workers left behind and close their runs."""
    from optuna.trial import TrialState

    storage = session.storage
    for trial in session.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (trial.user_attrs.get(OWNER_ATTR) or {}).get("launch") != launch_id:
            continue
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, failure)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        session.tracker.close_if_running([trial.user_attrs.get(RUN_ATTR, "")], failure,
                                         "its worker was stopped; the trial is run again")


class LocalProcesses:
    """Runs a launch's workers as child processes of this one, with one line each.

    Children start in their own session: a terminal's Ctrl-C reaches this process only, which
    then stops each worker exactly once (a second SIGINT could cut a worker's clean-up short).
    """

    def __init__(self, prepared: Prepared, launch_id: str,
                 announce: Callable[[str], None]) -> None:
        self.prepared = prepared
        self.launch_id = launch_id
        self.announce = announce

    def run(self, tasks: Sequence[WorkerTask]) -> list[WorkerResult | str]:
        """Start every worker, show their lines until all end, and collect their results."""
        plan = self.prepared.session.plan
        board = WorkerBoard(self.prepared.session.study, len(tasks), self.launch_id,
                            live=plan.progress and sys.stdout.isatty(), emit=self.announce) \
            if plan.progress else None
        emit = board.write if board is not None else self.announce
        with tempfile.TemporaryDirectory(prefix="harness-workers-") as folder:
            processes = [self._start(task, Path(folder)) for task in tasks]
            relays = [threading.Thread(target=_relay, args=(p, f"[w{t.index}] ", emit),
                                       daemon=True) for p, t in zip(processes, tasks)]
            for relay in relays:
                relay.start()
            try:
                while any(p.poll() is None for p in processes):
                    if board is not None:
                        board.refresh()
                    if any(p.returncode == EXIT_DISK_FULL for p in processes):
                        _stop(processes)  # the others would only fill the same disk
                    time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                _stop(processes)
            finally:
                for relay in relays:
                    relay.join(timeout=5)
                if board is not None:
                    board.close()
            return [_result(p, Path(folder), t.index) for p, t in zip(processes, tasks)]

    def _start(self, task: WorkerTask, folder: Path) -> subprocess.Popen[str]:
        path = folder / f"task-{task.index}.pkl"
        path.write_bytes(pickle.dumps(task))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if task.slot is not None:
            # OpenMP reads this once at start, before affinity is set in the worker.
            env["OMP_NUM_THREADS"] = str(len(task.slot.cores))
        return subprocess.Popen(
            [sys.executable, "-m", "harness.study.worker", str(path),
             str(folder / f"result-{task.index}.pkl")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)


def _relay(process: subprocess.Popen[str], prefix: str, emit: Callable[[str], None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        emit(prefix + line.rstrip("\n"))


def _stop(processes: Sequence[subprocess.Popen[str]]) -> None:
    """Send each live worker one SIGINT, and SIGKILL those that do not end in time."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _result(process: subprocess.Popen[str], folder: Path, index: int) -> WorkerResult | str:
    path = folder / f"result-{index}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    code = process.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return f"worker {index} died ({how})"


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
