"""Running a study's trials: open the study once per process, then claim, train and log.

``prepare_study`` is what a command does before any worker starts: it checks the data, creates
the Optuna study and the MLflow parent run (under the queue lock, so concurrent commands make
one of each) and fills the queue. A ``Worker`` then claims trial after trial until the queue is
drained, trains each through ``harness.training.trainer.fit`` and logs it to one MLflow child run.

A worker rides through a short outage of the tracking server or the database: every storage call
it makes is retried for ``retry_window`` (:class:`~harness.core.faults.Outage`), and MLflow writes
wait in the tracker's outbox while training goes on. A trial is told done only once its logs reached
MLflow. Past the window, or on a full disk, the worker stops with its trial marked so that the
next start queues it again (:attr:`WorkerResult.stopped`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.core.devices import resolve_device
from harness.core.faults import (
    EXIT_DISK_FULL,
    EXIT_UNREACHABLE,
    DiskFull,
    Outage,
    StoreUnreachable,
    full_path,
    is_disk_full,
)
from harness.data import PreparedData, prepare_data
from harness.recipe import Recipe
from harness.study.plan import Plan, config_label, run_name
from harness.study.queue import (
    FAILURE_ATTR,
    IDENTITY_ATTR,
    PROGRESS_ATTR,
    RUN_ATTR,
    STALE,
    STOPPED,
    Filled,
    Heartbeat,
    Owner,
    TrialQueue,
)
from harness.study.reuse import adopt_finished, earlier_study, reused_count, supersede
from harness.study.storage import default_storage, heartbeat_interval, open_storage, queue_lock
from harness.tracking.provenance import environment_tags
from harness.tracking.schema import Tag, study_tags, trial_params, trial_tags
from harness.tracking.store import Tracker
from harness.tracking.trial_logging import log_trial_outcome
from harness.training.evaluate import Evaluation
from harness.training.placement import device_name
from harness.training.trainer import fit
from harness.tricks import TRICKS

# BruteForceSampler and the heartbeat are "experimental" in Optuna; the warning says nothing to
# a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class TrialSummary:
    """One trial's outcome, for the printout at the end of a study."""

    number: int
    toggles: dict[str, str]
    seed: int
    status: str  # finished | diverged | pruned | crashed | interrupted | stopped
    val_acc: float = math.nan
    test_acc: float = math.nan
    train_seconds: float = 0.0
    test: Evaluation | None = None
    run_id: str = ""
    worker: int = 0


@dataclass
class WorkerResult:
    """What one worker did: its trials, and whether Ctrl-C or a fault stopped it."""

    worker: int
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: bool = False
    stopped: str = ""  # why a fault stopped it (a full disk, a store gone too long), one line
    exit_code: int = 0  # EXIT_DISK_FULL or EXIT_UNREACHABLE when stopped


@dataclass
class StudyOutcome:
    """What one command did to a study, over all of its workers."""

    name: str
    experiment: str
    parent_run_id: str
    optuna_study_name: str
    storage: str
    tracking_uri: str  # as checked and resolved once (absolute for SQLite)
    trials: list[TrialSummary] = field(default_factory=list)
    skipped: int = 0  # trials already finished before this command
    requeued: int = 0  # trials that earlier commands left crashed, interrupted or dead
    interrupted: bool = False
    lost_workers: list[str] = field(default_factory=list)  # workers that died, and how
    still_running: int = 0  # trials other commands were still running when this one ended
    stopped: str = ""  # the fault that stopped the study, one line (see WorkerResult.stopped)
    exit_code: int = 0  # its exit code: EXIT_DISK_FULL or EXIT_UNREACHABLE
    stopped_workers: int = 0  # workers the fault stopped

    @property
    def crashed(self) -> int:
        """Trials of this command that crashed."""
        return sum(t.status == "crashed" for t in self.trials)


def make_sampler(plan: Plan) -> optuna.samplers.BaseSampler:
    """Return the study's sampler, as its design says."""
    return plan.design.sampler(plan)


def make_pruner(plan: Plan) -> optuna.pruners.BasePruner:
    """Return the study's pruner, as its design says."""
    return plan.design.pruner(plan)


class StudySession:
    """One process's handle on a study: storage, Optuna study, queue lock and MLflow store.

    Opening creates what does not exist yet (the journal or database tables, the Optuna study,
    the MLflow experiment) under the queue lock, so processes that start together on a fresh
    store create each one once.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.storage_url = plan.storage or default_storage(plan.study, plan.tracking_uri)
        if plan.storage is None:
            Path(self.storage_url).parent.mkdir(parents=True, exist_ok=True)
        self.lock = queue_lock(self.storage_url)
        local = None if self.storage_url.startswith("postgresql") else \
            self.storage_url.removeprefix("sqlite:///").removeprefix("journal:")
        self.storage_outage = Outage(f"the Optuna storage {_shown(self.storage_url)}",
                                     plan.retry_window, _say, [local] if local else [])
        # Optuna logs every failed trial with its traceback, Ctrl-C included; the harness prints
        # one line per failure instead and keeps the traceback in the run's artifacts.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with self.lock:
            self.storage = open_storage(self.storage_url, plan.stale_after)
            self.study = optuna.create_study(
                study_name=plan.optuna_study_name, storage=self.storage,
                sampler=make_sampler(plan), pruner=make_pruner(plan),
                direction=plan.direction, load_if_exists=True,
            )
            self.tracker = Tracker(plan.tracking_uri, plan.retry_window, _say)
            self.experiment_id = self.tracker.experiment(plan.name)

    @property
    def paths(self) -> list[str]:
        """The local paths this process writes its stores to, to name the full one."""
        return [*self.storage_outage.paths, *self.tracker.outage.paths]

    def queue(self, owner: Owner) -> TrialQueue:
        """Return the study's queue for ``owner``; trials it finds dead get their run closed."""
        return TrialQueue(self.study, self.storage, self.plan, self.lock, owner,
                          self._close_dead_run)

    def _close_dead_run(self, trial: FrozenTrial) -> None:
        self.tracker.close_if_running([trial.user_attrs.get(RUN_ATTR, "")], STALE,
                                      "its process died; the trial is run again")


def _say(text: str) -> None:
    print(text, flush=True)


def _shown(url: str) -> str:
    """Return a storage URL without its password, for a message."""
    head, at, host = url.rpartition("@")
    if not at or ":" not in head.partition("://")[2]:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.split(':')[0]}:***@{host}"


@dataclass
class Prepared:
    """A study ready for its workers: session, parent run, and what the queue held."""

    session: StudySession
    parent_run_id: str
    data: PreparedData
    filled: Filled


def prepare_study(plan: Plan, device: Any, announce: Callable[[str], None] = print) -> Prepared:
    """Check the data, open the study, find or create its parent run and fill its queue.

    Args:
        plan: The study.
        device: Where the base data is loaded (the in-process worker's device, or the CPU).
        announce: Where the "resuming" lines go.
    """
    # Load the data before anything is written, so a bad data path fails cleanly. Its digest
    # completes the plan: every trial's identity needs it (harness.study.identity).
    data = prepare_data(plan.recipe.data, device)
    plan = earlier_study(dataclasses.replace(plan, data_digest=data.digest))
    session = StudySession(plan)
    tracker = session.tracker
    with session.lock:
        parent = tracker.parent_run(
            session.experiment_id, plan.key, plan.name, tags=_parent_tags(plan, session, data),
            params={"study": plan.study, "budget": plan.budget, "kind": plan.design.study_kind,
                    "seeds": list(plan.seeds), "configs": len(plan.configs) or plan.n_trials},
        )
        queue = session.queue(Owner.here())
        queue.repair()
        finish_told_runs(session)
        adopt_finished(plan, session.study, tracker, session.experiment_id, parent)
        filled = queue.fill(at_start=True)
        reused = reused_count(session.study)
    # The whole study config as one file, rather than params that crowd the UI's columns.
    tracker.log_json(parent, plan.study_config(), "study_config.json")
    to_run = max(plan.total_trials - filled.done, 0)
    if filled.requeued:
        announce(f"resuming: {filled.requeued} interrupted trial(s) queued again")
    if reused:
        announce(f"growing: {reused} reused, {to_run} to run (finished runs of the same trials, "
                 f"found by identity, are adopted, not trained again)")
    if filled.done > reused:
        announce(f"resuming: {filled.done - reused} trial(s) already done, {to_run} to run")
    return Prepared(session, parent, data, filled)


def finish_told_runs(session: StudySession) -> int:
    """Close as FINISHED the runs of COMPLETE trials that are still RUNNING; return how many.

    A trial's logs reach MLflow before Optuna is told it is done, and its run is closed just
    after; a full disk or a lost server in between leaves a finished trial whose run says
    RUNNING. Everything but the status is there, so the status is all that is written.
    """
    running = session.tracker.client.search_runs(
        [session.experiment_id], max_results=50000,
        filter_string=f"tags.`{Tag.ROLE}` = 'trial' and attributes.status = 'RUNNING'")
    ids = {run.info.run_id for run in running}
    closed = 0
    for trial in session.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = trial.user_attrs.get(RUN_ATTR, "")
        if run_id in ids:
            session.tracker.end(run_id, "FINISHED")
            identity = trial.user_attrs.get(IDENTITY_ATTR)
            if identity:
                supersede(session.tracker, session.experiment_id, identity, run_id)
            closed += 1
    return closed


def _parent_tags(plan: Plan, session: StudySession, data: PreparedData) -> dict[str, str]:
    return study_tags(
        study=plan.study, budget=plan.budget, kind=plan.design.study_kind,
        design=plan.design.record(), factors=plan.factors,
        defaults={name: TRICKS.get(name).default for name in plan.factors}, fixed=plan.fixed,
        configs=plan.configs if plan.design.records_configs else None,
        optuna_storage=session.storage_url, optuna_study=plan.optuna_study_name,
        device=device_name(resolve_device(plan.device)), dataset_digest=data.digest,
        description=plan.description, command=plan.command_line)


class Worker:
    """Claims trials from a study's queue and runs them until the queue is drained.

    Args:
        plan: The study.
        session: This process's handle on the study.
        parent_run_id: The MLflow parent run the trials go under.
        owner: Who claims (this process, its worker number and launch).
        announce: Where progress lines go (``print`` by default).
        fit_progress: Show the training loop's own progress bars (one worker in a terminal).
        data: The base data, already on this worker's device, if the caller has it.
    """

    def __init__(self, plan: Plan, session: StudySession, parent_run_id: str, owner: Owner,
                 announce: Callable[[str], None] = print, fit_progress: bool = False,
                 data: PreparedData | None = None) -> None:
        self.plan = plan
        self.session = session
        self.parent_run_id = parent_run_id
        self.owner = owner
        self.announce = announce
        self.fit_progress = fit_progress
        self.device = resolve_device(plan.device)
        self.tracker = session.tracker
        self.storage = session.storage
        self.labels = plan.labels()
        self._data_cache: dict[Any, PreparedData] = {}
        if data is not None:
            self._data_cache[(plan.recipe.data, str(self.device))] = data
        self.beat_every = heartbeat_interval(plan.stale_after)
        self.db = session.storage_outage.call  # every Optuna storage call rides out an outage

    def data(self, recipe: Recipe) -> PreparedData:
        """Return the prepared data of a recipe, loaded once per data spec and device."""
        key = (recipe.data, str(self.device))
        if key not in self._data_cache:
            self._data_cache.clear()  # one dataset on the device at a time
            self._data_cache[key] = prepare_data(recipe.data, self.device)
        return self._data_cache[key]

    def run(self) -> WorkerResult:
        """Claim and run trials until none is left and none runs elsewhere.

        A worker with nothing to claim waits while other workers still run trials: if one of
        them dies, its trial is queued again and this worker runs it. Ctrl-C (SIGINT) marks the
        trial in flight interrupted, its run KILLED, and ends the worker with ``interrupted``.
        """
        result = WorkerResult(self.owner.worker)
        queue = self.session.queue(self.owner)
        waiting_said = False
        try:
            while True:
                trial = self.db(queue.next)
                if trial is None:
                    state = self.db(queue.state)
                    if state.drained:
                        return result
                    if not waiting_said:
                        self.announce(f"waiting: {state.running} trial(s) still running "
                                      f"elsewhere")
                        waiting_said = True
                    time.sleep(min(5.0, self.beat_every))
                    continue
                waiting_said = False
                self.run_trial(trial, result.trials)
        except KeyboardInterrupt:
            result.interrupted = True
            return result
        except (DiskFull, StoreUnreachable) as exc:
            result.stopped = str(exc)
            result.exit_code = EXIT_DISK_FULL if isinstance(exc, DiskFull) else EXIT_UNREACHABLE
            self.announce(f"stopped: {exc}")
            return result
        finally:
            with contextlib.suppress(DiskFull, StoreUnreachable):
                self.tracker.flush()  # what waits in the outbox, before the process ends

    def run_trial(self, trial: optuna.Trial, done: list[TrialSummary]) -> TrialSummary:
        """Train, evaluate and log one claimed trial, then tell Optuna how it ended.

        The summary goes into ``done`` as soon as the trial starts, so an interrupted trial is
        reported too.
        """
        plan = self.plan
        replaced = trial.user_attrs.get(RUN_ATTR)  # a retry names the run it replaces
        if replaced:
            self.tracker.close_if_running([replaced], STALE,
                                          "its process died; the trial is run again")
        toggles, seed, numeric = self.db(self._suggest, trial)
        self.db(trial.set_user_attr, "toggles", toggles)
        summary = TrialSummary(trial.number, toggles, seed, "crashed", worker=self.owner.worker)
        done.append(summary)
        run_id = ""
        try:
            with Heartbeat(self.storage, trial._trial_id, self.beat_every):
                recipe = plan.trial_recipe(toggles, seed, numeric)
                identity = plan.identity(recipe, seed)
                self.db(trial.set_user_attr, IDENTITY_ATTR, identity)
                data = self.data(recipe)
                run_id = self._start_run(trial, recipe, toggles, seed, numeric, data, identity)
                summary.run_id = run_id
                self.announce(f"trial {trial.number}: {config_label(toggles)} seed={seed}")
                value = self._train(trial, recipe, data, run_id, summary)
        except optuna.TrialPruned as exc:
            self._end(trial, summary, "pruned", str(exc), "KILLED", TrialState.PRUNED)
        except KeyboardInterrupt:
            self._end(trial, summary, "interrupted", "stopped by the user", "KILLED",
                      TrialState.FAIL)
            raise
        except (DiskFull, StoreUnreachable) as exc:
            self._stop(trial, summary, exc)
            raise
        except Exception as exc:
            if is_disk_full(exc):
                fault = DiskFull(full_path(exc, self.session.paths))
                self._stop(trial, summary, fault)
                raise fault from None
            if run_id:
                self.tracker.log_text(run_id, traceback.format_exc(), "traceback.txt")
            self._end(trial, summary, "crashed", f"{type(exc).__name__}: {exc}", "FAILED",
                      TrialState.FAIL)
            where = f" (traceback.txt in run {run_id})" if run_id else ""
            self.announce(f"  crashed: {type(exc).__name__}: {exc}{where}; the study goes on")
        else:
            if summary.status == "diverged":
                self.announce(f"  diverged: {value}")
                self._end(trial, summary, "diverged", str(value), "FAILED", TrialState.FAIL)
            elif self._tell(trial, value=float(value)):
                self.tracker.end(run_id, "FINISHED")
                self._supersede(identity, run_id)
        return summary

    def _stop(self, trial: optuna.Trial, summary: TrialSummary, fault: Exception) -> None:
        """Mark a trial that a fault stops so the next start queues it again: one try each.

        The store that failed may not take these writes; then the next start finds the trial
        RUNNING under a dead process, fails it as stale and queues it again all the same.
        """
        summary.status = STOPPED
        with contextlib.suppress(Exception):
            self.storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, STOPPED)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if summary.run_id:
            client = self.tracker.client.raw  # past the outbox, which may have given up
            with contextlib.suppress(Exception):
                client.set_tag(summary.run_id, Tag.FAILURE, STOPPED)
                client.set_tag(summary.run_id, Tag.FAILURE_REASON, str(fault)[:5000])
                client.set_terminated(summary.run_id, "KILLED")

    def _supersede(self, identity: str, run_id: str) -> None:
        """Make this run the one that counts for its identity, and say which it replaced."""
        replaced = supersede(self.tracker, self.session.experiment_id, identity, run_id)
        if replaced:
            self.announce(f"  replaces run {', '.join(replaced)} of the same trial (kept, tagged "
                          f"{Tag.REPLACED_BY}; reports count this run instead)")

    def _suggest(self, trial: optuna.Trial) -> tuple[dict[str, str], int, dict[str, float]]:
        return self.plan.design.suggest(trial, self.plan, self.labels)

    def _start_run(self, trial: optuna.Trial, recipe: Recipe, toggles: dict[str, str],
                   seed: int, numeric: dict[str, float], data: PreparedData,
                   identity: str) -> str:
        plan = self.plan
        tags = trial_tags(
            study=plan.study, budget=plan.budget, toggles=toggles, seed=seed,
            config=config_label(toggles), trial=trial.number, device=device_name(self.device),
            dataset_digest=data.digest, study_key=plan.key, torch_seed=recipe.seed,
            worker=self.owner.worker, identity=identity)
        tags.update(environment_tags())
        params = trial_params(toggles, seed, numeric, recipe.flat())
        run_id = self.tracker.start_trial(self.session.experiment_id, self.parent_run_id,
                                          run_name(toggles, seed), tags, params)
        self.db(trial.set_user_attr, RUN_ATTR, run_id)
        self.tracker.log_json(run_id, recipe.to_dict(), "recipe.json")
        return run_id

    def _train(self, trial: optuna.Trial, recipe: Recipe, data: PreparedData, run_id: str,
               summary: TrialSummary) -> float | str:
        """Fit and evaluate; return the objective, or the reason when the run diverged."""
        plan = self.plan
        epochs = recipe.trainer.epochs

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(run_id, metrics, step=epoch)  # buffered in an outage
            progress = {"epoch": epoch, "epochs": epochs,
                        "images_per_sec": round(metrics.get("images_per_sec", 0.0), 1)}
            try:  # only for the progress board: never worth waiting for the database
                trial.set_user_attr(PROGRESS_ATTR, progress)
            except Exception as exc:  # noqa: BLE001 - check() re-raises all but an outage
                self.session.storage_outage.check(exc)
            value = metrics.get(plan.objective)
            if plan.design.searches and value is not None:
                self.db(trial.report, value, epoch)
                if self.db(trial.should_prune):
                    raise optuna.TrialPruned(f"{plan.objective} {value:.2f} at epoch "
                                             f"{epoch} is below the median")

        result = fit(recipe, data, device=self.device, callbacks=[on_epoch],
                     progress=self.fit_progress, description=f"trial {trial.number}")
        test = result.evaluate(data.test_x, data.test_y, data.classes)  # with its hooks (TTA)
        log_trial_outcome(self.tracker, run_id, recipe, data, result, test)
        # Optuna hears that the trial is done only once MLflow holds all of it: a trial that
        # finished during an outage is recorded once, in full, or queued again.
        self.tracker.flush()
        summary.status = result.status
        summary.test = test
        summary.test_acc = test.accuracy
        summary.train_seconds = result.train_seconds
        last = result.history[-1] if result.history else {}
        summary.val_acc = last.get("val_acc", math.nan)
        if result.status == "diverged":
            return result.reason
        compiled = (f"  compiled in {result.compile_seconds:.0f} s"
                    if result.compile_tag == "compiled" else "")
        self.announce(f"  test {test.accuracy:.2f}%  val {summary.val_acc:.2f}%  "
                      f"{result.train_seconds:.0f} s  {result.images_per_second:.0f} img/s"
                      f"{compiled}")
        objective = last.get(plan.objective)
        if objective is None:  # no val split: fall back to training accuracy, never test
            objective = last.get("train_acc", math.nan)
        return float(objective)

    def _end(self, trial: optuna.Trial, summary: TrialSummary, failure: str, reason: str,
             run_status: str, state: TrialState) -> None:
        summary.status = failure

        def mark() -> None:
            # Declared dead by another worker meanwhile? _tell finds that out too.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr(FAILURE_ATTR, failure)

        self.db(mark)
        if self._tell(trial, state=state):
            self._close_run(summary.run_id, failure, reason, run_status)

    def _tell(self, trial: optuna.Trial, value: float | None = None,
              state: TrialState | None = None) -> bool:
        """Tell Optuna how a trial ended; False when another worker declared it dead meanwhile.

        Optuna is told before MLflow: a trial that was queued again and re-run elsewhere must not
        leave a second FINISHED run for its cell, so its run ends KILLED instead.
        """
        told = False
        expected = state or TrialState.COMPLETE

        def tell() -> None:
            nonlocal told
            # Optuna raises ValueError, not UpdateFinishedTrialError, for a trial that was
            # already finished when tell() read it; the second covers a failure in between.
            now = self.storage.get_trial(trial._trial_id).state
            if now.is_finished():
                if told and now == expected:  # our tell went through; its answer was lost
                    return
                raise optuna.exceptions.UpdateFinishedTrialError
            told = True
            self.session.study.tell(trial, value, state=state)

        try:
            self.db(tell)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._close_run(trial.user_attrs.get(RUN_ATTR, ""), STALE,
                            "declared dead by another worker; its re-run counts", "KILLED")
            return False
        return True

    def _close_run(self, run_id: str, failure: str, reason: str, status: str) -> None:
        if run_id:
            self.tracker.set_tags(run_id, {Tag.FAILURE: failure,
                                           Tag.FAILURE_REASON: reason[:5000]})
            self.tracker.end(run_id, status)
