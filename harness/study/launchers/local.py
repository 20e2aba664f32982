"""``launcher=local``: the workers run on this machine, in this process or as child processes.

``workers=1`` (the default) runs the one worker in this process. ``workers=N`` starts N worker
processes here: each gets its own GPU, round-robin (``trials_per_gpu=k`` packs k onto each), and
its share of the CPU cores, pinned by affinity so its torch threads never fight another
worker's. A full disk that stops one worker stops the others too: they would only fill it.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.checks import check_device_fit
from harness.core.devices import usable_cores
from harness.core.faults import EXIT_DISK_FULL
from harness.study.launchers.base import (
    LAUNCHERS,
    POLL_SECONDS,
    STOP_GRACE_SECONDS,
    DeviceNeed,
    Launch,
    Launcher,
    slot_text,
    visible_gpus,
    with_slots,
    worker_slots,
)

if TYPE_CHECKING:
    from harness.study.launchers.tasks import WorkerTask
    from harness.study.runner import Prepared, WorkerResult


@LAUNCHERS.register("local")
class LocalLauncher(Launcher):
    """Workers on this machine: one in this process, or N child processes with a slot each."""

    name = "local"

    def check_trials_fit(self, device: str, need: DeviceNeed, launch: Launch,
                         cuda_count: int | None) -> None:
        """Each rank of a trial needs a GPU of this machine's, ``trials_per_gpu`` trials each."""
        check_device_fit(device, need.devices, launch.workers, launch.trials_per_gpu,
                         sync_bn=need.sync_bn, cuda_count=cuda_count)

    def visible_gpus(self, device: str) -> list[str]:
        """Return this machine's GPUs, as CUDA_VISIBLE_DEVICES lists them."""
        return visible_gpus(device)

    def in_process(self, workers: int) -> bool:
        """One worker runs here, on the data the study already loaded."""
        return workers == 1

    def run(self, prepared: Prepared, launch_id: str, tasks: Sequence[WorkerTask],
            gpus: Sequence[str], announce: Callable[[str], None]) -> list[WorkerResult | str]:
        """Run the one worker here, or start one child process per task."""
        if self.in_process(len(tasks)):
            from harness.study.queue import Owner
            from harness.study.runner import Worker

            plan = prepared.session.plan
            worker = Worker(plan, prepared.session, prepared.parent_run_id,
                            Owner.here(0, launch_id), announce, fit_progress=plan.progress,
                            data=prepared.data)
            return [worker.run()]
        slots = worker_slots(len(tasks), gpus, usable_cores())
        announce(f"{len(tasks)} workers: " + ", ".join(slot_text(s) for s in slots))
        return LocalProcesses(prepared, launch_id, announce).run(with_slots(tasks, slots))


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
        from harness.study.progress import WorkerBoard

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
