"""Running a study: one Optuna study per study file, every trial through ``harness.train.fit``.

A grid samples configs with BruteForceSampler; a search uses TPE and prunes with MedianPruner.
Storage is a JournalStorage file under ``mlruns/optuna/`` unless ``storage=`` names another.
Re-running the same command resumes: finished trials are skipped, and a trial that a killed or
interrupted process left behind is run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import RunConfig
from harness.data import PreparedData, prepare_data
from harness.errors import UserError
from harness.evaluate import Evaluation, evaluate
from harness.provenance import environment_tags
from harness.recipe import Recipe
from harness.tracking import Tag, Tracker, check_tracking_uri
from harness.train import device_name, fit, resolve_device
from harness.trial_logging import log_trial_outcome
from harness.tricks import TRICKS, apply_toggles

# Trial user attrs that mark why a FAIL happened. Only these are run again on resume; a diverged
# trial is a result (it would diverge again) and is never retried.
RETRY_FAILURES = ("interrupted", "crashed", "stale")

# BruteForceSampler has been "experimental" since Optuna 3.1; the warning says nothing to a user.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class TrialSummary:
    """One trial's outcome, for the printout at the end of a study."""

    number: int
    toggles: dict[str, str]
    seed: int
    status: str  # finished | diverged | pruned | crashed | interrupted | duplicate
    val_acc: float = math.nan
    test_acc: float = math.nan
    train_seconds: float = 0.0
    test: Evaluation | None = None
    run_id: str = ""


@dataclass
class StudyOutcome:
    """What ``run_study`` did."""

    name: str
    experiment: str
    parent_run_id: str
    optuna_study_name: str
    storage: str
    tracking_uri: str  # as checked and resolved once (absolute for SQLite)
    trials: list[TrialSummary] = field(default_factory=list)
    skipped: int = 0  # trials already finished before this invocation


def config_label(toggles: dict[str, str]) -> str:
    """Return ``"stem=deep,depth=resnet34"``: the name of a config in Optuna and MLflow."""
    return ",".join(f"{k}={v}" for k, v in toggles.items()) or "baseline"


def run_name(toggles: dict[str, str], seed: int) -> str:
    """Return a short MLflow run name: the non-default toggles, e.g. ``stem=deep s0``.

    The full toggles are params; the name only has to tell runs apart in the UI's narrow column.
    """
    changed = [f"{k}={v}" for k, v in toggles.items() if v != TRICKS.get(k).default]
    return f"{'+'.join(changed) or 'baseline'} s{seed}"


def study_key(cfg: RunConfig) -> str:
    """Return a short hash of everything that defines the study's trials.

    The same command gives the same key, so it resumes; a changed recipe, factor or seed list
    gives a new key, so results of different setups never mix in one Optuna study.
    """
    content = {
        "study": cfg.study.name, "budget": cfg.budget, "kind": cfg.study.kind,
        "recipe": cfg.recipe.to_dict(), "configs": list(cfg.configs), "seeds": list(cfg.seeds),
        "factors": cfg.factors, "fixed": cfg.fixed,
        "search": {k: dataclasses.asdict(v) for k, v in cfg.study.search.items()},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]


def check_storage(url: str | None) -> None:
    """Raise a UserError for a storage setting that cannot work, without opening anything."""
    if url is None or url.startswith(_RDB_PREFIXES):
        return
    if "://" in url:
        raise UserError(f"unsupported storage '{url}'; use a journal file path (.journal), "
                        f"sqlite:///PATH.db or postgresql://USER@HOST/DB")
    folder = Path(url.removeprefix("journal:")).parent
    if not folder.is_dir():
        raise UserError(f"storage '{url}': folder '{folder}' does not exist")


_RDB_PREFIXES = ("sqlite:///", "postgresql", "mysql")


def open_storage(url: str | None, study_name: str) -> tuple[optuna.storages.BaseStorage, str]:
    """Open the Optuna storage: a journal file by default, or any Optuna storage URL.

    Returns:
        The storage and a printable description of where it is.
    """
    if url is None:
        path = Path("mlruns") / "optuna" / f"{study_name}.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        url = str(path)
    check_storage(url)
    if url.startswith(_RDB_PREFIXES):
        try:
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=60, grace_period=300, failed_trial_callback=None,
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL to the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot open storage '{url}': {first}") from None
        return storage, url
    path = Path(url.removeprefix("journal:"))
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend), str(path)


def _owner_attrs() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after: float) -> bool:
    """Return whether a RUNNING trial's process is gone.

    On this host the pid tells (this very process runs no trial while it repairs, so its own
    pid counts as gone); elsewhere the heartbeat, refreshed every epoch, must be recent.
    """
    attrs = trial.user_attrs
    if attrs.get("host") == socket.gethostname():
        pid = int(attrs.get("pid", -1))
        return pid == os.getpid() or not _pid_alive(pid)
    return time.time() - float(attrs.get("heartbeat", 0)) > stale_after


def repair_and_requeue(study: optuna.Study, tracker: Tracker, stale_after: float) -> int:
    """Fail trials whose process died, and queue again every trial that should run again.

    A trial left RUNNING by a killed process would otherwise count as visited for ever (the
    BruteForceSampler trap); FAIL plus ``enqueue_trial`` makes the next run redo it.

    Returns:
        The number of trials queued again.
    """
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, stale_after):
            storage.set_trial_user_attr(trial._trial_id, "failure", "stale")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            tracker.close_if_running([trial.user_attrs.get("mlflow_run_id", "")],
                                     "its process died; the trial is run again")
    trials = study.get_trials(deepcopy=False)
    settled = {_key(t.params) for t in trials if _settled(t)}
    waiting = {_key(t.system_attrs.get("fixed_params", {})) for t in trials
               if t.state == TrialState.WAITING}
    queued = 0
    for trial in trials:
        if (trial.state == TrialState.FAIL and trial.user_attrs.get("failure") in RETRY_FAILURES
                and _key(trial.params) not in settled | waiting and trial.params):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            waiting.add(_key(trial.params))
            queued += 1
    return queued


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _settled(trial: FrozenTrial) -> bool:
    """Return whether a trial is a result that must not be run again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return trial.user_attrs.get("failure") != "duplicate"
    return trial.state == TrialState.FAIL and trial.user_attrs.get("failure") not in (
        *RETRY_FAILURES, None)


def make_sampler(cfg: RunConfig) -> optuna.samplers.BaseSampler:
    """BruteForce for a grid (every config × seed once), TPE for a search."""
    if cfg.study.kind == "grid":
        return optuna.samplers.BruteForceSampler(seed=cfg.seeds[0])
    return optuna.samplers.TPESampler(seed=cfg.seeds[0])


def make_pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    """MedianPruner on the per-epoch objective for searches that ask for it; none otherwise."""
    if cfg.study.kind == "optuna" and cfg.study.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def planned_trials(cfg: RunConfig) -> list[tuple[dict[str, str], int]]:
    """Return the (toggles, seed) of every trial a grid will run; empty for a search."""
    return [(config, seed) for config in cfg.configs for seed in cfg.seeds]


def torch_seed(toggles: dict[str, str], replicate: int) -> int:
    """Return the seed a trial trains with, derived from its config and its replicate seed.

    Configs that shared one seed would share their initial weights wherever their networks
    agree, and their batch order and augmentation draws: partner configs would then differ by
    nearly the same amount every time, and an effect's spread over partners would hide the noise
    a new seed brings. Deriving the seed from (config, replicate) makes every trial an
    independent draw, while the same config and replicate always get the same seed. The derived
    seed is logged (``Recipe.seed``, tag ``harness.torch_seed``), so a run is reproducible from
    what MLflow holds.
    """
    content = json.dumps({"config": dict(sorted(toggles.items())), "replicate": replicate},
                         sort_keys=True)
    return int.from_bytes(hashlib.sha256(content.encode()).digest()[:4], "big") % (2**31)


def trial_recipe(cfg: RunConfig, toggles: dict[str, str], seed: int,
                 numeric: dict[str, float] | None = None) -> Recipe:
    """Return the recipe of one trial: the base recipe, numeric search values, then toggles.

    ``seed`` is the replicate seed of the study's ``seeds``; the recipe's seed is derived from
    it and the toggles (:func:`torch_seed`).
    """
    recipe = cfg.recipe
    if numeric:
        values = recipe.to_dict()
        for key, value in numeric.items():
            section, name = key.split(".", 1)
            values[section][name] = value
        recipe = Recipe.from_dict(values)
    recipe = apply_toggles(recipe, toggles)
    return dataclasses.replace(recipe, seed=torch_seed(toggles, seed))


class StudyRunner:
    """Runs the trials of one study and logs each to MLflow.

    Args:
        cfg: The validated configuration.
        announce: Where progress lines go (``print`` by default).
    """

    def __init__(self, cfg: RunConfig, announce: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.announce = announce
        self.device = resolve_device(cfg.device)
        # Both URLs are checked before anything is written; the resolved one is used from here.
        self.tracking_uri = check_tracking_uri(cfg.tracking_uri)
        check_storage(cfg.storage)
        self.key = study_key(cfg)
        self.name = f"{cfg.study.name}-{cfg.budget}"
        self.labels = {config_label(c): c for c in cfg.configs}
        self.outcome: StudyOutcome | None = None
        self._data_cache: dict[Any, PreparedData] = {}

    def data(self, recipe: Recipe) -> PreparedData:
        """Return the prepared data of a recipe, loaded once per data spec and device."""
        key = (recipe.data, str(self.device))
        if key not in self._data_cache:
            self._data_cache.clear()  # one dataset on the device at a time
            self._data_cache[key] = prepare_data(recipe.data, self.device)
        return self._data_cache[key]

    def run(self) -> StudyOutcome:
        """Run every trial still to do, then close the parent run."""
        cfg = self.cfg
        # Load the data before anything is written, so a bad data path fails cleanly.
        base_data = self.data(cfg.recipe)
        self.storage, self.storage_text = open_storage(cfg.storage, cfg.study.name)
        self.tracker = Tracker(self.tracking_uri)
        # Optuna logs every failed trial with its traceback, Ctrl-C included; the harness prints
        # one line per failure instead and keeps the traceback in the run's artifacts.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.create_study(
            study_name=f"{self.name}-{self.key}", storage=self.storage,
            sampler=make_sampler(cfg), pruner=make_pruner(cfg),
            direction=cfg.study.direction, load_if_exists=True,
        )
        experiment_id = self.tracker.experiment(self.name)
        parent = self.tracker.parent_run(
            experiment_id, self.key, f"{self.name}",
            tags=self._parent_tags(study, base_data),
            params={"study": cfg.study.name, "budget": cfg.budget, "kind": cfg.study.kind,
                    "seeds": list(cfg.seeds), "configs": len(cfg.configs) or cfg.n_trials},
        )
        # The whole study config as one file, rather than params that crowd the UI's columns.
        self.tracker.log_json(parent, {
            "study": cfg.study.name, "description": cfg.study.description,
            "kind": cfg.study.kind, "budget": cfg.budget, "seeds": list(cfg.seeds),
            "factors": cfg.factors, "fixed": cfg.fixed, "configs": list(cfg.configs),
            "n_trials": cfg.n_trials, "objective": cfg.study.objective,
            "base_recipe": cfg.recipe.to_dict(), "command_line": list(cfg.overrides),
        }, "study_config.json")
        self.outcome = StudyOutcome(self.name, self.name, parent, study.study_name,
                                    self.storage_text, self.tracker.uri)
        requeued = repair_and_requeue(study, self.tracker, cfg.stale_after)
        remaining = self._remaining(study)
        self.outcome.skipped = self._total() - remaining if cfg.study.kind == "grid" else (
            sum(_settled(t) for t in study.get_trials(deepcopy=False)))
        if requeued:
            self.announce(f"resuming: {requeued} interrupted trial(s) queued again")
        if self.outcome.skipped:
            self.announce(f"resuming: {self.outcome.skipped} trial(s) already done, "
                          f"{remaining} to run")
        try:
            if remaining > 0:
                study.optimize(self._objective(experiment_id, parent), n_trials=remaining,
                               catch=(Exception,), gc_after_trial=False)
        except KeyboardInterrupt:
            self._fail_own_running(study)
            self.tracker.end(parent, "KILLED")
            raise
        self.tracker.end(parent, "FINISHED")
        return self.outcome

    def _total(self) -> int:
        if self.cfg.study.kind == "grid":
            return len(self.cfg.configs) * len(self.cfg.seeds)
        return int(self.cfg.n_trials or 0)

    def _remaining(self, study: optuna.Study) -> int:
        trials = study.get_trials(deepcopy=False)
        live = sum(t.state == TrialState.RUNNING for t in trials)
        if self.cfg.study.kind == "grid":
            done = {_key(t.params) for t in trials if _settled(t)}
            return max(self._total() - len(done) - live, 0)
        return max(self._total() - sum(_settled(t) for t in trials) - live, 0)

    def _fail_own_running(self, study: optuna.Study) -> None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("pid") == os.getpid():
                study._storage.set_trial_user_attr(trial._trial_id, "failure", "interrupted")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _parent_tags(self, study: optuna.Study, data: PreparedData) -> dict[str, str]:
        cfg = self.cfg
        defaults = {name: TRICKS.get(name).default for name in cfg.factors}
        return {
            Tag.STUDY: cfg.study.name, Tag.BUDGET: cfg.budget,
            Tag.KIND: cfg.study.kind, Tag.FACTORS: json.dumps(cfg.factors),
            Tag.DEFAULTS: json.dumps(defaults), Tag.FIXED: json.dumps(cfg.fixed),
            **({Tag.CONFIGS: json.dumps([{k: c[k] for k in cfg.factors}
                                               for c in cfg.configs])}
               if cfg.study.configs is not None else {}),
            Tag.OPTUNA_STORAGE: self.storage_text,
            Tag.OPTUNA_STUDY: study.study_name,
            Tag.DEVICE: device_name(self.device), Tag.DATASET_DIGEST: data.digest,
            Tag.NOTE: cfg.study.description,
        }

    def _objective(self, experiment_id: str, parent: str) -> Callable[[optuna.Trial], float]:
        cfg = self.cfg

        def objective(trial: optuna.Trial) -> float:
            numeric: dict[str, float] = {}
            if cfg.study.kind == "grid":
                label = trial.suggest_categorical("config", list(self.labels))
                seed = trial.suggest_categorical("seed", list(cfg.seeds))
                toggles = dict(self.labels[label])
                self._guard_duplicate(trial)
            else:
                toggles = dict(cfg.fixed)
                for name, options in cfg.factors.items():
                    toggles[name] = trial.suggest_categorical(name, options)
                for key, span in cfg.study.search.items():
                    numeric[key] = trial.suggest_float(key, span.low, span.high, log=span.log)
                seed = cfg.seeds[trial.number % len(cfg.seeds)]
            for key, value in _owner_attrs().items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("toggles", toggles)
            recipe = trial_recipe(cfg, toggles, seed, numeric)
            return self._run_trial(trial, recipe, toggles, seed, numeric, experiment_id, parent)

        return objective

    def _guard_duplicate(self, trial: optuna.Trial) -> None:
        # Two workers can draw the same config at once; the later one steps aside.
        mine = _key(trial.params)
        for other in trial.study.get_trials(deepcopy=False):
            if other.number != trial.number and _settled(other) and _key(other.params) == mine:
                trial.set_user_attr("failure", "duplicate")
                raise optuna.TrialPruned(f"config already done by trial {other.number}")

    def _run_trial(self, trial: optuna.Trial, recipe: Recipe, toggles: dict[str, str],
                   seed: int, numeric: dict[str, float], experiment_id: str,
                   parent: str) -> float:
        cfg = self.cfg
        label = config_label(toggles)
        summary = TrialSummary(trial.number, toggles, seed, "crashed")
        assert self.outcome is not None
        self.outcome.trials.append(summary)
        data = self.data(recipe)
        tags = {
            Tag.STUDY: cfg.study.name, Tag.BUDGET: cfg.budget,
            Tag.TOGGLES: json.dumps(toggles), Tag.SEED: str(seed),
            Tag.CONFIG: label, Tag.TRIAL: str(trial.number),
            Tag.DEVICE: device_name(self.device), Tag.DATASET_DIGEST: data.digest,
            Tag.STUDY_KEY: self.key, Tag.TORCH_SEED: str(recipe.seed),
        }
        tags.update(environment_tags())
        flat = {("torch_seed" if k == "seed" else k): v for k, v in recipe.flat().items()
                if not k.startswith("toggles.")}
        params = {**toggles, "seed": seed, **numeric, **flat}
        run_id = self.tracker.start_trial(experiment_id, parent, run_name(toggles, seed), tags,
                                          params)
        summary.run_id = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.log_json(run_id, recipe.to_dict(), "recipe.json")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(run_id, metrics, step=epoch)
            trial.set_user_attr("heartbeat", time.time())
            value = metrics.get(cfg.study.objective)
            if cfg.study.kind == "optuna" and value is not None:
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{cfg.study.objective} {value:.2f} at epoch "
                                             f"{epoch} is below the median")

        self.announce(f"trial {trial.number}: {label} seed={seed}")
        try:
            result = fit(recipe, data, device=self.device, callbacks=[on_epoch],
                         progress=cfg.progress, description=f"trial {trial.number}")
        except optuna.TrialPruned as exc:
            self._close(run_id, trial, summary, "pruned", str(exc), "KILLED")
            raise
        except KeyboardInterrupt:
            self._close(run_id, trial, summary, "interrupted", "stopped by the user", "KILLED")
            raise
        except Exception as exc:
            self.tracker.log_text(run_id, traceback.format_exc(), "traceback.txt")
            self._close(run_id, trial, summary, "crashed", f"{type(exc).__name__}: {exc}",
                        "FAILED")
            self.announce(f"  crashed: {type(exc).__name__}: {exc} (traceback.txt in run "
                          f"{run_id}); the study goes on")
            raise
        test = evaluate(result.model, data.test_x, data.test_y, data.classes,
                        recipe.trainer.eval_batch_size, result.placement.autocast_dtype,
                        result.placement.memory_format)
        log_trial_outcome(self.tracker, run_id, recipe, data, result, test)
        summary.status = result.status
        summary.test = test
        summary.test_acc = test.accuracy
        summary.train_seconds = result.train_seconds
        last = result.history[-1] if result.history else {}
        summary.val_acc = last.get("val_acc", math.nan)
        if result.status == "diverged":
            self._close(run_id, trial, summary, "diverged", result.reason, "FAILED")
            self.announce(f"  diverged: {result.reason}")
            return math.nan  # Optuna records FAIL; BruteForce counts it as visited
        self.tracker.end(run_id, "FINISHED")
        self.announce(f"  test {test.accuracy:.2f}%  val {summary.val_acc:.2f}%  "
                      f"{result.train_seconds:.0f} s  {result.images_per_second:.0f} img/s")
        objective = last.get(cfg.study.objective)
        if objective is None:  # no val split: fall back to training accuracy, never test
            objective = last.get("train_acc", math.nan)
        return float(objective)

    def _close(self, run_id: str, trial: optuna.Trial, summary: TrialSummary, failure: str,
               reason: str, status: str) -> None:
        summary.status = failure
        trial.set_user_attr("failure", failure)
        self.tracker.set_tags(run_id, {Tag.FAILURE: failure,
                                       Tag.FAILURE_REASON: reason[:5000]})
        self.tracker.end(run_id, status)
