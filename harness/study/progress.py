"""One line per worker: its trial, its epoch, its images/s, read back from the study's storage.

Workers write their progress into the trial they run (a user attr, after every epoch), so the
command that launched them shows the same lines whether they are local processes or Slurm tasks.
In a terminal the lines stay in place and change; in a log, a worker's line is printed whenever it
reaches a new epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from harness.study.plan import config_label
from harness.study.queue import OWNER_ATTR, PROGRESS_ATTR


def worker_line(worker: int, trial: FrozenTrial | None) -> str:
    """Return a worker's line, e.g. ``w1  trial 7  stem=deep,... seed=0  epoch 2/3  812 img/s``."""
    if trial is None:
        return f"w{worker}  idle"
    toggles = trial.user_attrs.get("toggles") or {}
    label = config_label(toggles) if toggles else "starting"
    seed = trial.params.get("seed", "")
    progress = trial.user_attrs.get(PROGRESS_ATTR) or {}
    text = f"w{worker}  trial {trial.number}  {label}" + (f" seed={seed}" if seed != "" else "")
    if progress:
        text += (f"  epoch {progress['epoch']}/{progress['epochs']}  "
                 f"{progress['images_per_sec']:.0f} img/s")
    return text


class WorkerBoard:
    """Shows the workers of one launch, one line each.

    Args:
        study: The study the workers claim from.
        workers: How many workers the launch has.
        launch: The launch's id, as the workers write it into the trials they own.
        live: Redraw the lines in place (a terminal); otherwise print each change once.
        emit: Where lines go when not live.
    """

    def __init__(self, study: optuna.Study, workers: int, launch: str, live: bool,
                 emit: Callable[[str], None] = print) -> None:
        self.study = study
        self.launch = launch
        self.workers = workers
        self.live = live
        self.emit = emit
        self._shown: dict[int, str] = {}
        self._bars = [tqdm(total=0, position=i, bar_format="{desc}", leave=False,
                           dynamic_ncols=True, file=sys.stdout) for i in range(workers)] \
            if live else []

    def write(self, text: str) -> None:
        """Print a message above the lines (or as it is, in a log)."""
        if self.live:
            tqdm.write(text, file=sys.stdout)
        else:
            self.emit(text)

    def refresh(self) -> None:
        """Read the running trials of this launch and update every worker's line."""
        running: dict[int, FrozenTrial] = {}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get(OWNER_ATTR) or {}
            if owner.get("launch") == self.launch:
                running[int(owner.get("worker", 0))] = trial
        for worker in range(self.workers):
            line = worker_line(worker, running.get(worker))
            if line == self._shown.get(worker):
                continue
            self._shown[worker] = line
            if self.live:
                self._bars[worker].set_description_str(line)
            elif worker in running and (running[worker].user_attrs.get(PROGRESS_ATTR)):
                self.emit(line)

    def close(self) -> None:
        """Remove the live lines."""
        for bar in self._bars:
            bar.close()
