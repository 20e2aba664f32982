"""Read a study back from MLflow (and its Optuna importances) into the runs table.

See :mod:`harness.report.tables` for the runs table's columns. Stores written by older versions
of the harness (without ``test_images`` or ``torch_seed``) still load: what they lack is NaN.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from harness.core.errors import UserError, unknown_choice
from harness.report.examples import ExampleResults
from harness.report.tables import Factors, option_text
from harness.study.designs import from_record
from harness.tracking.reader import runs_frame
from harness.tracking.schema import Artifact, Metric, Param, Tag

IMPORTANCE_COLUMNS = ("param", "importance")


def _json_tag(tags: Mapping[str, Any], name: str, where: str) -> Any:
    text = tags.get(name)
    if not isinstance(text, str):
        raise UserError(f"{where} has no tag {name}; was it written by harness.tracking?")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} tag {name} is not valid JSON ({error.msg})") from None


def _parent_meta(
    client: Any, experiment_id: str, experiment_name: str, parent_run_id: str | None
) -> dict[str, Any]:
    """Read factors, defaults and kind from the chosen parent run (default: the newest)."""
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    if not parents:
        raise UserError(f"experiment '{experiment_name}' has no parent run (harness.role=parent)")
    if parent_run_id is None:
        parent = parents[0]
    else:
        by_id = {run.info.run_id: run for run in parents}
        if parent_run_id not in by_id:
            raise unknown_choice(f"parent run of '{experiment_name}'", parent_run_id, by_id)
        parent = by_id[parent_run_id]
    tags = parent.data.tags
    where = f"parent run {parent.info.run_id}"
    factors_json = _json_tag(tags, Tag.FACTORS, where)
    if not isinstance(factors_json, dict) or not factors_json:
        raise UserError(f"{where} tag harness.factors is not a JSON object of trick → options")
    factors = {trick: [option_text(o) for o in options] for trick, options in factors_json.items()}
    defaults_json = _json_tag(tags, Tag.DEFAULTS, where) if Tag.DEFAULTS in tags else {}
    if not isinstance(defaults_json, dict):
        raise UserError(f"{where} tag harness.defaults is not a JSON object of trick → option")
    defaults = {trick: option_text(option) for trick, option in defaults_json.items()}
    for trick, options in factors.items():
        defaults.setdefault(trick, options[0])  # the first option is the neutral one by convention
    configs = _json_tag(tags, Tag.CONFIGS, where) if Tag.CONFIGS in tags else None
    command = _json_tag(tags, Tag.COMMAND, where) if Tag.COMMAND in tags else None
    return {
        "configs": configs,
        "command": command if isinstance(command, list) else None,
        "parent_run_id": parent.info.run_id,
        "n_parents": len(parents),
        "factors": factors,
        "defaults": {trick: defaults[trick] for trick in factors},
        "design": from_record(tags.get(Tag.DESIGN), tags.get(Tag.KIND), configs is not None),
        "optuna_storage": tags.get(Tag.OPTUNA_STORAGE),
        "optuna_study_name": tags.get(Tag.OPTUNA_STUDY),
        "alpha": _alpha(tags.get(Tag.ALPHA), where),
    }


def _alpha(text: str | None, where: str) -> float | None:
    """Return the error rate a parent's calls are made at (seeds=auto looks), None: the default."""
    if text is None:
        return None
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0.0 < alpha < 1.0:
        raise UserError(f"{where} tag {Tag.ALPHA} is not an error rate between 0 and 1: {text!r}")
    return alpha


def _runs_from_search(frame: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Convert a runs table's columns (params.*, metrics.*, tags.*) to the runs schema."""
    n = len(frame)

    def column(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series([None] * n, index=frame.index)

    toggles = column(f"tags.{Tag.TOGGLES}").map(
        lambda text: json.loads(text) if isinstance(text, str) and text else {}
    )
    runs = pd.DataFrame(
        {
            "run_id": column("run_id"),
            "status": column("status"),
            "failure": column(f"tags.{Tag.FAILURE}"),
        }
    )
    seeds = column(f"tags.{Tag.SEED}").fillna(column(f"params.{Param.SEED}"))
    runs["seed"] = pd.to_numeric(seeds, errors="coerce").astype("Int64")
    for trick in factors:
        from_tag = toggles.map(lambda t, trick=trick: option_text(t[trick]) if trick in t else None)
        runs[trick] = from_tag.fillna(column(f"params.{trick}")).astype(object)
    for extra in ("lr_factor", "weight_decay"):  # Optuna's continuous parameters, when searched
        if f"params.{extra}" in frame.columns:
            runs[extra] = pd.to_numeric(frame[f"params.{extra}"], errors="coerce")
    metrics = sorted(c for c in frame.columns if c.startswith("metrics."))
    for name in metrics:
        runs[name[len("metrics.") :]] = frame[name].astype(float)
    for required in (Metric.TEST_ACC, Metric.VAL_ACC, Metric.TEST_LOSS, Metric.TRAIN_SECONDS,
                     Metric.EPOCHS, Metric.TEST_IMAGES):
        if required not in runs.columns:
            runs[required] = np.nan
    # Older runs did not log test_images; a test subset's size is in the recipe's params.
    subset = pd.to_numeric(column(f"params.{Param.TEST_SIZE}"), errors="coerce")
    runs[Metric.TEST_IMAGES] = runs[Metric.TEST_IMAGES].fillna(subset)
    runs["device"] = column(f"tags.{Tag.DEVICE}")
    runs["test_digest"] = column(f"tags.{Tag.TEST_DIGEST}")
    return runs.reset_index(drop=True)


def _study_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """Return the trial runs a parent counts: its own and those it adopted, once per identity.

    A grown study adopts the finished runs of trials it shares with earlier studies (tag
    ``harness.adopted_by.<parent>``, see :mod:`harness.study.reuse`). A FINISHED run that a later
    run of its identity replaced (``harness.replaced_by``) is swapped for its replacement, and of
    several FINISHED runs of one identity only the newest counts. Runs without an identity
    (written before identities existed) are all kept, as they always were.
    """
    def search(filter_string: str) -> pd.DataFrame:
        return runs_frame(tracking_uri, [experiment_id], filter_string)

    own = search(f"tags.`{Tag.ROLE}` = 'trial' and tags.`{Tag.PARENT}` = '{parent_run_id}'")
    adopted = search(f"tags.`{Tag.adopted_by(parent_run_id)}` = 'true'")
    found = [f for f in (own, adopted) if not f.empty]
    frame = pd.concat(found, ignore_index=True) if found else own
    replaced_column = f"tags.{Tag.REPLACED_BY}"
    for _ in range(10):  # a run re-run again and again: follow the chain a few links
        if frame.empty or replaced_column not in frame.columns:
            break
        replaced = (frame["status"] == "FINISHED") & frame[replaced_column].notna()
        if not replaced.any():
            break
        successors = sorted(set(frame.loc[replaced, replaced_column]) - set(frame["run_id"]))
        frame = frame.loc[~replaced]
        if successors:
            quoted = ", ".join(f"'{run_id}'" for run_id in successors)
            found = search(f"attributes.run_id IN ({quoted})")
            frame = pd.concat([frame, found], ignore_index=True)
    return _one_per_identity(frame.drop_duplicates("run_id"))


def _one_per_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the newest FINISHED run of each identity; every other run stays as it is."""
    column = f"tags.{Tag.IDENTITY}"
    if frame.empty or column not in frame.columns:
        return frame.reset_index(drop=True)
    finished = (frame["status"] == "FINISHED") & frame[column].notna()
    newest = frame.loc[finished].sort_values("end_time").drop_duplicates(column, keep="last")
    return pd.concat([frame.loc[~finished], newest]).sort_values("start_time") \
        .reset_index(drop=True)


def load_runs(
    tracking_uri: str, study: str, budget: str, parent_run_id: str | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load a study's trial runs from MLflow into the runs schema of this module.

    An experiment holds one parent run per distinct study configuration (a resumed study reopens
    its parent); only the trials of one parent are read (its own, and those it adopted from
    earlier studies, one run per trial identity), so runs of a differently restricted or fixed
    study never mix into the effects.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///mlruns/mlflow.db``.
        study: Study name; the experiment is ``f"{study}-{budget}"``.
        budget: Budget name, e.g. ``"cpu"``.
        parent_run_id: The study's parent run; default: the newest parent of the experiment.

    Returns:
        ``(runs, meta)``; ``meta`` has ``study, budget, experiment, experiment_id, tracking_uri,
        parent_run_id, n_parents, n_runs, factors, defaults, kind, optuna_storage,
        optuna_study_name, command`` (the study's command-line overrides, None for older stores)
        from the parent run's tags. A toggle missing from a run is filled with its default.

    Raises:
        UserError: The experiment does not exist (the message names those that do), the parent
            run is unknown, or there is no parent run or no trial run.
    """
    name = f"{study}-{budget}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        existing = sorted(e.name for e in client.search_experiments())
        listed = ", ".join(existing) if existing else "none"
        raise UserError(f"no experiment '{name}' at {tracking_uri}; experiments there: {listed}")
    meta = _parent_meta(client, experiment.experiment_id, name, parent_run_id)
    frame = _study_runs(tracking_uri, experiment.experiment_id, meta["parent_run_id"])
    if frame.empty:
        raise UserError(f"parent run {meta['parent_run_id']} of '{name}' has no trial runs yet")
    runs = _runs_from_search(frame, meta["factors"])
    for trick, default in meta["defaults"].items():
        runs[trick] = runs[trick].fillna(default)
    meta.update(
        study=study,
        budget=budget,
        experiment=name,
        experiment_id=experiment.experiment_id,
        tracking_uri=tracking_uri,
        n_runs=len(runs),
    )
    return runs, meta


def load_examples(tracking_uri: str, runs: pd.DataFrame) -> ExampleResults | None:
    """Read the per-example test results of the runs that logged them; None when none did.

    Runs written before per-example results were logged have no ``harness.test_digest`` tag and
    are skipped; so is a run whose artifact cannot be read (its effects then use the bound).
    """
    if "test_digest" not in runs.columns:
        return None
    logged = runs[runs["test_digest"].notna()]
    if logged.empty:
        return None
    client = mlflow.MlflowClient(tracking_uri)
    correct: dict[str, np.ndarray] = {}
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="harness-examples-") as folder, _quiet_downloads():
        for run_id, digest in zip(logged["run_id"], logged["test_digest"]):
            try:
                path = client.download_artifacts(run_id, Artifact.TEST_PREDICTIONS,
                                                 f"{folder}/{run_id}")
                with np.load(path) as saved:
                    correct[run_id] = saved["predicted"] == saved["labels"]
            except Exception:  # noqa: BLE001 - a missing or torn artifact: that run is bounded
                continue
            digests[run_id] = str(digest)
    return ExampleResults(correct, digests) if correct else None


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """Switch off MLflow's progress bar per download: one per run would flood the printout."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


# What a grow or settle command sets itself.
GROWTH_KEYS = ("study=", "budget=", "seeds=", "max_seeds=", "max_minutes=", "seed_offset=",
               "rerun=")


def study_command(meta: Mapping[str, Any]) -> list[str]:
    """Return the overrides that run a loaded study again, without its seeds.

    Its study and budget come first, then the rest of its command line without ``seeds=`` and
    ``rerun=``; the caller adds the seeds.

    Stores written before the command line was tagged give just the study and budget.
    """
    command = [str(arg) for arg in meta.get("command") or []]
    study = next((arg for arg in command if arg.startswith("study=")), f"study={meta['study']}")
    rest = [arg for arg in command if not arg.startswith(GROWTH_KEYS)]
    return [study, f"budget={meta['budget']}", *rest]


def optuna_importances(storage_url: str, study_name: str) -> pd.DataFrame | None:
    """Return Optuna's parameter importances of a study, or None when they cannot be computed.

    Args:
        storage_url: An RDB URL (``sqlite:///...``, ``postgresql://...``) or the path of a
            journal file.
        study_name: The Optuna study's name.

    Returns:
        Columns :data:`IMPORTANCE_COLUMNS`, most important first (importances sum to 1); None with
        fewer than two completed trials or when Optuna fails (missing storage, one value only).
    """
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage: Any = storage_url
        if "://" not in storage_url:
            backend = optuna.storages.journal.JournalFileBackend(str(Path(storage_url)))
            storage = optuna.storages.JournalStorage(backend)
        study = optuna.load_study(study_name=study_name, storage=storage)
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(completed) < 2:
            return None
        importances = optuna.importance.get_param_importances(study)
    except Exception:  # importances are optional: the report goes on without them
        return None
    if not importances:
        return None
    return pd.DataFrame(list(importances.items()), columns=list(IMPORTANCE_COLUMNS))
