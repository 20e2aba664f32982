"""A study as a queue of Optuna trials: filled once, claimed once, queued again when lost.

A grid enqueues every config × seed as a WAITING trial; workers claim waiting trials instead of
sampling them. A search asks its sampler (TPE) for each new trial, up to ``n_trials``. Every
change below happens under the study's queue lock (:mod:`harness.study.storage`), so two
processes never fill the same cell twice or claim one trial twice, on any storage, for any
number of workers on any number of hosts.

What a finished trial means for its cell (its queue key):

- COMPLETE, PRUNED, or FAIL because it diverged: a **result**, never run again;
- FAIL because it crashed, was interrupted (Ctrl-C) or ``stopped`` by a fault (a full disk, a
  store unreachable past ``retry_window``): queued again when a study (re)starts,
  not during the run that saw it fail, so a trial that crashes every time does not loop;
- FAIL because its process died (``stale``; also a FAIL without a reason, which is Optuna's
  heartbeat failing it): queued again at once, so a live worker re-runs it;
- FAIL as a ``duplicate``: a second claim of a cell that was already taken; it never ran.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.study.plan import Plan, queue_key
from harness.study.storage import has_heartbeat, record_heartbeat

FAILURE_ATTR = "failure"  # why a trial is FAIL: diverged | crashed | interrupted | stale | ...
OWNER_ATTR = "owner"  # {machine, pid, worker, launch} of the process that claimed the trial
PROGRESS_ATTR = "progress"  # {epoch, epochs, images_per_sec}, written after every epoch
RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run; on a waiting retry, the run it replaces
HEARTBEAT_ATTR = "heartbeat"  # seconds since the epoch, on storages without Optuna's heartbeat
IDENTITY_ATTR = "identity"  # what the trial computes (harness.study.identity)
REUSED_ATTR = "reused_from"  # on an adopted result: the parent run that trained it

RESULT_FAILURES = ("diverged",)
STOPPED = "stopped"  # a fault stopped its worker: a full disk, or a store gone too long
RETRY_AT_START = ("crashed", "interrupted", STOPPED)
DUPLICATE = "duplicate"
STALE = "stale"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """The process that claims trials: where it runs and which worker of which launch it is."""

    machine: str
    pid: int
    worker: int = 0
    launch: str = ""

    @classmethod
    def here(cls, worker: int = 0, launch: str = "") -> Owner:
        """Return the owner for this process."""
        return cls(this_machine(), os.getpid(), worker, launch)

    def attrs(self) -> dict[str, Any]:
        """Return the owner as a JSON-able user attr."""
        return {"machine": self.machine, "pid": self.pid, "worker": self.worker,
                "launch": self.launch}


def this_machine() -> str:
    """Return a name for the process namespace this runs in: the host and its pid namespace.

    Two containers can share a host name yet not see each other's processes; only a process in
    the same namespace may judge a trial's owner dead by its pid.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after: float, timed: bool, now: float) -> bool:
    """Return whether a RUNNING trial's process is gone.

    In this pid namespace the pid tells at once (this process runs no trial while it repairs,
    so its own pid counts as gone). Otherwise, when ``timed``, the trial's ``heartbeat`` user
    attr (or the claim, before the first beat) must be under ``stale_after`` seconds old. On an
    RDB storage Optuna's own heartbeat judges the other hosts, and ``timed`` is False.
    """
    owner = trial.user_attrs.get(OWNER_ATTR) or {}
    if owner.get("machine") == this_machine():
        pid = int(owner.get("pid", -1))
        if pid == os.getpid() or not _pid_alive(pid):
            return True
    if not timed and owner:
        return False
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(trial.user_attrs.get(HEARTBEAT_ATTR, started)) > stale_after


def key_of(trial: FrozenTrial) -> str | None:
    """Return the queue key of a trial (its params, or the params it was enqueued with)."""
    params = trial.params or trial.system_attrs.get("fixed_params")
    return queue_key(params) if params else None


def is_result(trial: FrozenTrial) -> bool:
    """Return whether a trial is a result: its cell is done and must not run again."""
    failure = trial.user_attrs.get(FAILURE_ATTR)
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.PRUNED:
        return failure != DUPLICATE
    return trial.state == TrialState.FAIL and failure in RESULT_FAILURES


def covers(trial: FrozenTrial, at_start: bool) -> bool:
    """Return whether a trial keeps its cell from being queued again."""
    if trial.state in (TrialState.WAITING, TrialState.RUNNING) or is_result(trial):
        return True
    return (not at_start and trial.state == TrialState.FAIL
            and trial.user_attrs.get(FAILURE_ATTR) in RETRY_AT_START)


def spends(trial: FrozenTrial) -> bool:
    """Return whether a trial uses up one of a search's ``n_trials`` in this run."""
    return trial.state != TrialState.WAITING and covers(trial, at_start=False)


@dataclass(frozen=True)
class QueueState:
    """How far a study is: results, trials running now, trials waiting, trials spent."""

    queued: bool  # the design queues every cell up front (else a sampler suggests trials)
    done: int
    running: int
    waiting: int
    spent: int  # running, done, or failed in a way this run does not retry
    total: int

    @property
    def drained(self) -> bool:
        """Nothing is left to claim and nothing runs: a worker may stop."""
        left = self.waiting if self.queued else self.total - self.spent
        return self.running == 0 and left <= 0


@dataclass(frozen=True)
class Filled:
    """What filling the queue found: cells already done and cells queued again."""

    done: int
    requeued: int


class TrialQueue:
    """The queue of one study, shared by every worker through its storage.

    Who judges a trial that runs on another host is chosen per storage: Optuna's heartbeat on
    an RDB storage (``fail_stale_trials``, whose ``RetryHeartbeatStaleTrialCallback`` queues the
    trial again), the harness's own ``heartbeat`` user attr on a journal, which has no heartbeat
    in Optuna. On one host the owner's pid tells first, on either.

    Args:
        study: The Optuna study.
        storage: The storage the harness opened for the study (``open_storage``). Optuna wraps
            an RDB storage in a cache inside the study, which hides what kind it is.
        plan: The study's plan (its grid cells, its trial count).
        lock: The queue lock of the study's storage.
        owner: The process that claims through this queue.
        on_stale: Called with each trial that this queue declares dead (to close its run).
    """

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, plan: Plan,
                 lock: AbstractContextManager[None], owner: Owner,
                 on_stale: Callable[[FrozenTrial], None] = lambda _: None) -> None:
        self.study = study
        self.storage = storage
        self.plan = plan
        self.lock = lock
        self.owner = owner
        self.on_stale = on_stale
        self.optuna_heartbeat = has_heartbeat(storage)

    def trials(self) -> list[FrozenTrial]:
        """Return every trial of the study, fresh from the storage."""
        return self.study.get_trials(deepcopy=False)

    def state(self) -> QueueState:
        """Return how far the study is."""
        trials = self.trials()
        return QueueState(self.plan.design.queued, self._done(trials),
                          sum(t.state == TrialState.RUNNING for t in trials),
                          sum(t.state == TrialState.WAITING for t in trials),
                          sum(map(spends, trials)), self.plan.total_trials)

    def _done(self, trials: list[FrozenTrial]) -> int:
        if self.plan.design.queued:  # one result per cell, whatever an old store holds
            return len({key_of(t) for t in trials if is_result(t)})
        return sum(map(is_result, trials))

    def repair(self) -> int:
        """Fail every RUNNING trial whose process is gone; return how many. Hold the lock."""
        failed = self._fail_heartbeat_stale() if self.optuna_heartbeat else 0
        now = time.time()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_stale(trial, self.plan.stale_after, self._timed(trial), now):
                try:
                    self.storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, STALE)
                    self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # it ended meanwhile: nothing to repair
                self.on_stale(trial)
                failed += 1
        return failed

    def _timed(self, trial: FrozenTrial) -> bool:
        # A trial with a heartbeat user attr on an RDB storage was claimed by a harness from
        # before Optuna's heartbeat was used; it has no heartbeat row, so only its attr tells.
        return not self.optuna_heartbeat or HEARTBEAT_ATTR in trial.user_attrs

    def _fail_heartbeat_stale(self) -> int:
        """Let Optuna fail and queue again the trials whose heartbeat stopped; return how many.

        Their MLflow runs are closed through ``on_stale``, which Optuna knows nothing of.
        """
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        failed = 0
        for trial in running:
            now = self.storage.get_trial(trial._trial_id)
            # A FAIL without a reason is Optuna's heartbeat; a worker's own end names one.
            if now.state == TrialState.FAIL and FAILURE_ATTR not in now.user_attrs:
                self.on_stale(trial)
                failed += 1
        return failed

    def fill(self, at_start: bool) -> Filled:
        """Queue every cell that no trial covers; return what was found. Hold the lock.

        ``at_start`` (a command starting the study) also queues again the cells whose last
        trial crashed or was interrupted.
        """
        trials = self.trials()
        covered = {key_of(t) for t in trials if covers(t, at_start)}
        failed = {key_of(t): t for t in trials if t.state == TrialState.FAIL}
        if self.plan.design.queued:
            wanted = {cell.key: cell.params for cell in self.plan.cells()}
        else:
            wanted = {key: dict(t.params) for key, t in failed.items() if key and t.params}
        requeued = 0
        for key, params in wanted.items():
            if key in covered:
                continue
            previous = failed.get(key)
            attrs = {} if previous is None else {
                "retry_of": previous.number, RUN_ATTR: previous.user_attrs.get(RUN_ATTR, "")}
            self.study.enqueue_trial(params, user_attrs=attrs)
            covered.add(key)
            requeued += previous is not None
        return Filled(self._done(trials), requeued)

    def claim(self) -> optuna.Trial | None:
        """Claim the next trial for this process, or None when there is none. Hold the lock.

        A grid pops a waiting trial; a search pops a waiting retry or asks its sampler for a new
        trial while fewer than ``n_trials`` are done or running. A popped cell that another
        trial already holds (running or done) is marked a duplicate and skipped.
        """
        while True:
            trials = self.trials()
            if self.plan.design.queued:
                if not any(t.state == TrialState.WAITING for t in trials):
                    return None
            elif sum(map(spends, trials)) >= self.plan.total_trials:
                return None
            taken = {key_of(t) for t in trials if t.state == TrialState.RUNNING or is_result(t)}
            with warnings.catch_warnings():  # "heartbeat is meant for Study.optimize": we beat
                warnings.simplefilter("ignore")
                trial = self.study.ask()
            frozen = self.storage.get_trial(trial._trial_id)
            key = key_of(frozen)
            if key is not None and key in taken:
                self.storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, DUPLICATE)
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            self.storage.set_trial_user_attr(trial._trial_id, OWNER_ATTR, self.owner.attrs())
            record_heartbeat(self.storage, trial._trial_id, time.time())
            return trial

    def next(self) -> optuna.Trial | None:
        """Repair, fill and claim in one hold of the lock: a worker's step between trials."""
        with self.lock:
            self.repair()
            self.fill(at_start=False)
            return self.claim()



class Heartbeat(AbstractContextManager["Heartbeat"]):
    """Tells the storage every ``interval`` seconds, from a thread, that a trial's process lives.

    Epochs can take minutes; a thread keeps the beat regular whatever the training does.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int,
                 interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                record_heartbeat(self.storage, self.trial_id, time.time())
            except Exception as exc:  # noqa: BLE001 - a missed beat must not stop training
                log.warning("heartbeat of trial %s not recorded: %s", self.trial_id, exc)
