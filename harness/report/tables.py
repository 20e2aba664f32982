"""The runs table, which runs are results, and configs.csv.

A ``runs`` table has one row per trial (child) run and these columns:

- ``run_id``, ``status`` (``FINISHED`` / ``FAILED`` / ``KILLED`` / ``RUNNING``), ``failure``
  (``diverged`` / ``crashed`` / ``pruned`` / ``interrupted`` / ``stale``; NaN when finished),
  ``seed`` (the replicate seed, int),
- one column per trick, named by the trick, holding the option as a string,
- ``test_acc``, ``val_acc``, ``test_loss``, ``test_acc_<class>`` (accuracies in percent, 0-100),
  and ``test_<name>`` for every other metric of :data:`harness.training.metrics.METRICS`,
  ``train_seconds``, ``epochs_completed``, ``test_images`` (NaN when not logged), ``device``.

Which runs count as results: finished runs, and diverged runs, because divergence is what the
toggles did (their accuracy is whatever was logged, else chance level). A run still RUNNING is
"running": another worker is on it. Crashed, pruned and interrupted runs say nothing about the
toggles; they are counted in ``n_excluded`` and a config left with no result is listed by
:func:`missing_configs`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.tracking.schema import Metric
from harness.training.metrics import METRICS, by_logged_name

Factors = Mapping[str, Sequence[str]]
"""Trick name → its options in study order; the first option is the neutral default."""

RESULT_FAILURES = ("diverged",)
"""Failures that still measure the toggles and count as results (at chance level if unlogged)."""

CONFIG_STAT_COLUMNS = (
    "seeds",
    "n_seeds",
    "test_acc_mean",
    "test_acc_std",
    "val_acc_mean",
    "test_loss_mean",
)
CONFIG_COST_COLUMNS = (
    "train_seconds_mean",
    "epochs_mean",
    "device",
    "n_failed",
    "failed",
    "n_excluded",
    "run_ids",
)
"""configs.csv is: the trick columns in study order, then CONFIG_STAT_COLUMNS, then
``test_<name>_mean`` for every other registered metric (``test_top5_mean``, ...), then one
``test_acc_<class>_mean`` per class in the order the runs table lists them, then
CONFIG_COST_COLUMNS. See :func:`config_columns`."""

SCORE = "score"
"""The :func:`cells` column the effects are computed on: the chosen metric, signed so that
higher is better (a loss is negated), so that one analysis serves every metric."""

DEFAULT_METRIC = Metric.TEST_ACC
"""The metric the report calls effects on unless told otherwise (``metric=`` on export)."""


def option_text(value: object) -> str:
    """Return an option as the tables spell it: JSON ``true`` → ``"true"``, 0.1 → ``"0.1"``."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def class_names(runs: pd.DataFrame) -> list[str]:
    """Return the class names of the ``test_acc_<class>`` columns, in the table's order."""
    prefix = Metric.PER_CLASS_PREFIX
    return [column[len(prefix) :] for column in runs.columns if column.startswith(prefix)]


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """Return ``runs[name]``, or an all-NaN column when the table has none."""
    if name in runs.columns:
        return runs[name]
    return pd.Series(np.nan, index=runs.index, dtype=float)


def _failures(runs: pd.DataFrame) -> pd.Series:
    return column(runs, "failure").astype(object).where(lambda s: s.notna(), None)


def is_result(runs: pd.DataFrame) -> pd.Series:
    """Return a boolean mask of the runs that count as results: finished or diverged."""
    failure = _failures(runs)
    finished = (column(runs, "status") == "FINISHED") & failure.isna()
    return finished | failure.isin(RESULT_FAILURES)


def is_running(runs: pd.DataFrame) -> pd.Series:
    """Return a boolean mask of the runs still RUNNING (in a live worker) and not marked failed."""
    return (column(runs, "status") == "RUNNING") & _failures(runs).isna()


def result_runs(runs: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Return the runs that count as results, with a boolean ``failed`` column.

    Finished runs count; so do diverged runs, because divergence is an outcome of the toggles. A
    diverged run without a logged ``test_acc`` gets chance level: 100 / number of classes (NaN when
    the table has no per-class columns to count them by).
    """
    mask = is_result(runs)
    results = runs[mask.to_numpy()].copy()
    results["failed"] = _failures(results).isin(RESULT_FAILURES).to_numpy()
    classes = class_names(runs)
    chance = 100.0 / len(classes) if classes else math.nan
    test_acc = column(results, Metric.TEST_ACC).astype(float)
    results[Metric.TEST_ACC] = test_acc.where(~(results["failed"] & test_acc.isna()), chance)
    for name in [*factors, "device"]:
        if name not in results.columns:
            results[name] = pd.Series(dtype=object)
    return results


def cells(runs: pd.DataFrame, factors: Factors, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Average the results per (toggles, seed): a rerun of the same trial is one observation.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        metric: The logged metric to score cells on (a name
            :func:`~harness.training.metrics.by_logged_name` knows). Results without a
            value of a metric other than test accuracy (a diverged run's loss) are left out.

    Returns:
        Columns: the tricks, ``seed``, :data:`SCORE` (the metric, signed so that higher is
        better), ``train_seconds``, ``test_images``, and ``run_ids`` (a tuple of the runs
        averaged into the cell).
    """
    results = result_runs(runs, factors)
    chosen = by_logged_name(metric)
    if metric != Metric.TEST_ACC:
        results = results[column(results, metric).astype(float).notna().to_numpy()]
    keys = [*factors, "seed"]
    frame = results[keys].assign(
        **{SCORE: chosen.sign * column(results, metric).astype(float)},
        train_seconds=column(results, Metric.TRAIN_SECONDS).astype(float),
        test_images=column(results, Metric.TEST_IMAGES).astype(float),
        run_ids=column(results, "run_id").astype(object),
    )
    grouped = frame.groupby(keys, dropna=False, sort=False)
    table = grouped[[SCORE, "train_seconds", "test_images"]].mean()
    table["run_ids"] = grouped["run_ids"].agg(tuple)
    return table.reset_index()


def grid_order(frame: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Sort rows in grid order: first trick slowest, options in study order, unknown ones last."""
    if frame.empty or not factors:
        return frame.reset_index(drop=True)
    ranks = {
        f"__rank_{trick}": frame[trick].map(
            lambda value, options=list(options): (
                options.index(value) if value in options else len(options)
            )
        )
        for trick, options in factors.items()
    }
    ordered = frame.assign(**ranks).sort_values([*ranks, *factors], kind="stable")
    return ordered.drop(columns=list(ranks)).reset_index(drop=True)


def other_metrics() -> list[str]:
    """Return the logged names of the registered metrics configs.csv adds to its fixed ones."""
    fixed = {Metric.TEST_ACC, Metric.TEST_LOSS}
    return [METRICS.get(name).logged_as for name in METRICS
            if METRICS.get(name).logged_as not in fixed]


def config_columns(factors: Factors, classes: Sequence[str]) -> list[str]:
    """Return the column list of configs.csv for these tricks and class names."""
    per_class = [f"{Metric.PER_CLASS_PREFIX}{name}_mean" for name in classes]
    metrics = [f"{name}_mean" for name in other_metrics()]
    return [*factors, *CONFIG_STAT_COLUMNS, *metrics, *per_class, *CONFIG_COST_COLUMNS]


def _join(values: pd.Series) -> str:
    return ";".join(str(value) for value in values)


def config_table(runs: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Summarise each config (toggle combination with at least one result) over its seeds.

    Runs of the same config and seed are averaged first, so the mean and the sample standard
    deviation (ddof=1, NaN for one seed) are over seeds.

    Args:
        runs: One row per trial run (see the module doc).
        factors: Trick → options in study order.

    Returns:
        One row per config in grid order, columns :func:`config_columns`. ``n_failed`` counts the
        diverged runs included in the means (``failed`` is True when there is one), and
        ``n_excluded`` the crashed, pruned or interrupted runs that were left out (running ones
        are not counted: they are not over yet).
    """
    classes = class_names(runs)
    columns = config_columns(factors, classes)
    results = result_runs(runs, factors)
    if results.empty or not factors:
        return pd.DataFrame(columns=columns)
    tricks = list(factors)
    metrics = {
        "test_acc_mean": Metric.TEST_ACC,
        "val_acc_mean": Metric.VAL_ACC,
        "test_loss_mean": Metric.TEST_LOSS,
        **{f"{name}_mean": name for name in other_metrics()},
        **{f"{Metric.PER_CLASS_PREFIX}{name}_mean": f"{Metric.PER_CLASS_PREFIX}{name}"
           for name in classes},
        "train_seconds_mean": Metric.TRAIN_SECONDS,
        "epochs_mean": Metric.EPOCHS,
    }
    numeric = results[[*tricks, "seed"]].assign(
        **{source: column(results, source).astype(float) for source in metrics.values()}
    )
    per_seed = numeric.groupby([*tricks, "seed"], dropna=False, sort=True).mean().reset_index()
    by_config = per_seed.groupby(tricks, dropna=False, sort=False)
    table = by_config[list(metrics.values())].mean()
    table.columns = list(metrics)
    table["test_acc_std"] = by_config[Metric.TEST_ACC].std(ddof=1)
    table["n_seeds"] = by_config["seed"].nunique()
    table["seeds"] = by_config["seed"].agg(lambda s: _join(sorted(s.unique())))

    runs_by_config = results.groupby(tricks, dropna=False, sort=False)
    table["device"] = runs_by_config["device"].agg(
        lambda s: _join(sorted(s.dropna().astype(str).unique()))
    )
    table["n_failed"] = runs_by_config["failed"].sum().astype(int)
    table["failed"] = table["n_failed"] > 0
    table["run_ids"] = runs_by_config["run_id"].agg(_join)

    excluded = runs[~(is_result(runs) | is_running(runs)).to_numpy()]
    table["n_excluded"] = 0
    if not excluded.empty and set(tricks) <= set(excluded.columns):
        counts = excluded.groupby(tricks, dropna=False).size()
        table["n_excluded"] = counts.reindex(table.index).fillna(0).astype(int)
    return grid_order(table.reset_index(), factors)[columns]


def missing_configs(
    runs: pd.DataFrame, factors: Factors, configs: Sequence[Mapping[str, str]] | None = None
) -> list[dict[str, str]]:
    """Return the grid configs that have no result.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        configs: The study's own list of configs when it is not a full factorial (e.g. the
            seed study's four runs); None means every combination of options.

    Returns:
        Toggle dicts in grid order, e.g. ``[{"stem": "deep", "depth": "resnet34"}]``.
    """
    results = result_runs(runs, factors)
    present = set(results[list(factors)].itertuples(index=False, name=None)) if factors else set()
    if configs is None:
        planned = [tuple(c) for c in itertools.product(*factors.values())]
    else:
        planned = [tuple(option_text(c[t]) for t in factors) for c in configs]
    return [dict(zip(factors, combination)) for combination in planned
            if combination not in present]
