"""Growing a study without redoing it: finished trials are adopted by identity, once each.

A changed seed list, a new factor or option, or a study file edited to a superset is a new study
configuration: a new Optuna study and a new parent run. Before its queue is filled, every grid
cell whose identity (:mod:`harness.study.identity`) already has a FINISHED run in the study's
MLflow experiment is **adopted**: the run gets the tag ``harness.adopted_by.<parent run id>``
(the report reads a study's own and its adopted runs) and the Optuna study a COMPLETE trial with
the run's objective, so the queue counts the cell as done and no worker trains it.

Runs of stores written before ``data.root`` left the identity carry identities that hash their
data root too. A cell is matched against that form as well, for each data root the store's runs
were trained from, so such a store's runs are found wherever the same data now lives; and a
study such a store holds resumes under the key it was begun with (:func:`earlier_study`).

One identity has one run that counts, store-wide: when a run finishes and an older FINISHED run
of its identity exists (``rerun=true``, or two studies that trained the same trial at once), the
older one gets ``harness.replaced_by`` and the new one ``harness.replaces``. Nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from harness.study.plan import Plan, study_key
from harness.study.queue import IDENTITY_ATTR, REUSED_ATTR, RUN_ATTR, covers, key_of
from harness.tracking.schema import Tag
from harness.tracking.store import Tracker

ROOT_PARAM = "data.root"  # the MLflow param of a trial run's data root (Recipe.flat)


def counted_runs(runs: Iterable[Run]) -> dict[str, Run]:
    """Return identity → the run that counts: FINISHED, not replaced, the newest of several."""
    counted: dict[str, Run] = {}
    for run in runs:
        tags = run.data.tags
        identity = tags.get(Tag.IDENTITY)
        if not identity or Tag.REPLACED_BY in tags or run.info.status != "FINISHED":
            continue
        if identity not in counted or (run.info.end_time or 0) > (
                counted[identity].info.end_time or 0):
            counted[identity] = run
    return counted


def objective_value(run: Run, objective: str) -> float | None:
    """Return a finished run's objective as its study recorded it, or None when it has none.

    A study without a validation split optimises the training accuracy (see the runner).
    """
    metrics = run.data.metrics
    value = metrics.get(objective, metrics.get("train_acc"))
    return float(value) if value is not None and math.isfinite(value) else None


def adopt_finished(plan: Plan, study: optuna.Study, tracker: Tracker, experiment_id: str,
                   parent_run_id: str) -> int:
    """Adopt the finished runs of this plan's grid cells that its Optuna study lacks.

    Call under the queue lock, before the queue is filled. ``rerun=true`` adopts nothing.

    Returns:
        How many cells were adopted now.
    """
    if not plan.design.queued or plan.rerun:
        return 0
    have = {key_of(t) for t in study.get_trials(deepcopy=False) if covers(t, at_start=True)}
    identities = {key: identity for key, identity in plan.cell_identities().items()
                  if key not in have}
    if not identities:
        return 0
    counted = counted_runs(tracker.finished_trials(experiment_id))
    roots = sorted({run.data.params.get(ROOT_PARAM) for run in counted.values()} - {None})
    labels = list(plan.labels())
    distributions = {"config": CategoricalDistribution(labels),
                     "seed": CategoricalDistribution(list(plan.seeds))}
    cells = {cell.key: cell for cell in plan.cells()}
    adopted = 0
    for key, identity in identities.items():
        run = counted.get(identity) or next(
            (counted[earlier] for earlier in plan.earlier_identities(cells[key], roots)
             if earlier in counted), None)
        value = None if run is None else objective_value(run, plan.objective)
        if run is None or value is None:
            continue
        # MLflow first: a crash between the two leaves a tagged run that the next start adopts
        # again (the same tag), never an Optuna result that the report cannot find.
        tracker.set_tags(run.info.run_id, {Tag.adopted_by(parent_run_id): "true"})
        study.add_trial(optuna.trial.create_trial(
            params=cells[key].params, distributions=distributions, value=value,
            user_attrs={RUN_ATTR: run.info.run_id, IDENTITY_ATTR: identity,
                        REUSED_ATTR: run.data.tags.get(Tag.PARENT, "")},
        ))
        adopted += 1
    return adopted


def earlier_study(plan: Plan) -> Plan:
    """Return ``plan`` with the key its store knows it by, when that store was begun before.

    Study keys hashed ``data.root`` until it left them: a parent run of that key, for the same
    data root, is the same study, and resumes under its key rather than starting a new one. Only
    reads, and opens nothing that does not exist yet.
    """
    uri = plan.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file() or path.stat().st_size == 0:  # nothing begun there yet
            return plan
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(plan.name)
    if experiment is None:
        return plan

    def has_parent(key: str) -> bool:
        return bool(client.search_runs(
            [experiment.experiment_id], max_results=1,
            filter_string=f"tags.`{Tag.STUDY_KEY}` = '{key}' and tags.`{Tag.ROLE}` = 'parent'"))

    earlier = study_key(plan, with_root=True)
    if has_parent(plan.key) or not has_parent(earlier):
        return plan
    return dataclasses.replace(plan, resumed_key=earlier)


def reused_count(study: optuna.Study) -> int:
    """Return how many results of a study are adopted runs rather than its own."""
    return sum(t.state == TrialState.COMPLETE and REUSED_ATTR in t.user_attrs
               for t in study.get_trials(deepcopy=False))


def supersede(tracker: Tracker, experiment_id: str, identity: str, run_id: str) -> list[str]:
    """Make ``run_id`` the one counted run of its identity; return the runs it replaced.

    The older FINISHED runs of the identity keep their status and metrics; they get
    ``harness.replaced_by`` and so stop counting in any report.
    """
    older = [run.info.run_id for run in tracker.runs_of_identity(experiment_id, identity)
             if run.info.run_id != run_id and Tag.REPLACED_BY not in run.data.tags]
    for old in older:
        tracker.set_tags(old, {Tag.REPLACED_BY: run_id})
    if older:
        tracker.set_tags(run_id, {Tag.REPLACES: ",".join(older)})
    return older

