"""Turn a study's trial runs into tables, per-trick effects and the 80/20 Pareto verdict.

Everything here but :func:`load_runs` and :func:`optuna_importances` is a pure function of a
``runs`` table with one row per trial (child) run and these columns:

- ``run_id``, ``status`` (``FINISHED`` / ``FAILED`` / ``KILLED`` / ``RUNNING``), ``failure``
  (``diverged`` / ``crashed`` / ``pruned`` / ``interrupted``; NaN when finished), ``seed`` (int),
- one column per trick, named by the trick, holding the option as a string,
- ``test_acc``, ``val_acc``, ``test_loss``, ``test_acc_<class>`` (accuracies in percent, 0-100),
  ``train_seconds``, ``epochs_completed``, ``device``.

Which runs count as results: finished runs, and diverged runs, because divergence is what the
toggles did (their accuracy is whatever was logged, else chance level). Crashed, pruned,
interrupted and still-running runs say nothing about the toggles; they are counted in
``n_excluded`` and a config left with no result is listed by :func:`missing_configs`.

An effect is always a mean over matched pairs: two results that differ in one trick only and share
every other toggle and the seed, so seed noise and the other tricks cancel in the difference.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import UserError, unknown_choice
from harness.tracking import Tag

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
"""configs.csv is: the trick columns in study order, then CONFIG_STAT_COLUMNS, then one
``test_acc_<class>_mean`` per class in the order the runs table lists them, then
CONFIG_COST_COLUMNS. See :func:`config_columns`."""

EFFECT_COLUMNS = (
    "trick",
    "option",
    "baseline_option",
    "effect_mean",
    "ci95_low",
    "ci95_high",
    "cost_delta_seconds",
    "cost_ratio",
    "n_pairs",
)
"""effects.csv columns; effects and deltas are in accuracy points (percent) and seconds."""

INTERACTION_COLUMNS = (
    "trick_a",
    "option_a",
    "trick_b",
    "option_b",
    "interaction_mean",
    "ci95_low",
    "ci95_high",
    "n",
)
"""interactions.csv columns; interaction_mean is in accuracy points."""

VERDICT_COLUMNS = (
    "rank",
    "trick",
    "option",
    "effect_mean",
    "ci95_low",
    "ci95_high",
    "cumulative_gain",
    "cumulative_share",
    "estimated",
    "train_seconds",
)
"""Columns of :attr:`Verdict.table`: one row per trick at its best option, best effect first."""

IMPORTANCE_COLUMNS = ("param", "importance")


# --------------------------------------------------------------------------------------------
# Statistics without scipy: the Student-t quantile for 95% intervals.


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Evaluate the continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """Return I_x(a, b), the CDF of a Beta(a, b) variable at ``x``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    # The continued fraction converges fast only below the mean; use the symmetry elsewhere.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """Return P(T <= t) for a Student-t variable with ``df`` degrees of freedom."""
    tail = 0.5 * _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Return t such that P(T <= t) = ``p``, by bisection on :func:`student_t_cdf`.

    Args:
        p: Probability in (0, 1), e.g. 0.975 for a two-sided 95% interval.
        df: Degrees of freedom (> 0).

    Returns:
        The quantile; accurate to about 1e-10, plenty for a confidence interval.
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # df=1 at p=0.975 needs ~12.7, so widen until bracketed
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_ci95(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float, float, int]:
    """Return (mean, ci95_low, ci95_high, n) of the finite ``values`` by a Student-t interval.

    The interval is NaN for fewer than two values: one difference has no spread to estimate.
    """
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    n = int(array.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(array.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    half_width = student_t_quantile(0.975, n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half_width, mean + half_width, n


# --------------------------------------------------------------------------------------------
# Which runs are results, and the per-(config, seed) cells effects are computed on.


def class_names(runs: pd.DataFrame) -> list[str]:
    """Return the class names of the ``test_acc_<class>`` columns, in the table's order."""
    return [column[len("test_acc_") :] for column in runs.columns if column.startswith("test_acc_")]


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    if name in runs.columns:
        return runs[name]
    return pd.Series(np.nan, index=runs.index, dtype=float)


def _failures(runs: pd.DataFrame) -> pd.Series:
    return _column(runs, "failure").astype(object).where(lambda s: s.notna(), None)


def is_result(runs: pd.DataFrame) -> pd.Series:
    """Return a boolean mask of the runs that count as results: finished or diverged."""
    failure = _failures(runs)
    finished = (_column(runs, "status") == "FINISHED") & failure.isna()
    return finished | failure.isin(RESULT_FAILURES)


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
    test_acc = _column(results, "test_acc").astype(float)
    results["test_acc"] = test_acc.where(~(results["failed"] & test_acc.isna()), chance)
    for name in [*factors, "device"]:
        if name not in results.columns:
            results[name] = pd.Series(dtype=object)
    return results


def _cells(runs: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Average the results per (toggles, seed): a rerun of the same trial is one observation."""
    results = result_runs(runs, factors)
    keys = [*factors, "seed"]
    frame = results[keys].assign(
        test_acc=_column(results, "test_acc").astype(float),
        train_seconds=_column(results, "train_seconds").astype(float),
    )
    return frame.groupby(keys, dropna=False, sort=False).mean().reset_index()


def _grid_order(frame: pd.DataFrame, factors: Factors) -> pd.DataFrame:
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


# --------------------------------------------------------------------------------------------
# Tables.


def config_columns(factors: Factors, classes: Sequence[str]) -> list[str]:
    """Return the column list of configs.csv for these tricks and class names."""
    per_class = [f"test_acc_{name}_mean" for name in classes]
    return [*factors, *CONFIG_STAT_COLUMNS, *per_class, *CONFIG_COST_COLUMNS]


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
        ``n_excluded`` the crashed, pruned, interrupted or running runs that were left out.
    """
    classes = class_names(runs)
    columns = config_columns(factors, classes)
    results = result_runs(runs, factors)
    if results.empty or not factors:
        return pd.DataFrame(columns=columns)
    tricks = list(factors)
    metrics = {
        "test_acc_mean": "test_acc",
        "val_acc_mean": "val_acc",
        "test_loss_mean": "test_loss",
        **{f"test_acc_{name}_mean": f"test_acc_{name}" for name in classes},
        "train_seconds_mean": "train_seconds",
        "epochs_mean": "epochs_completed",
    }
    numeric = results[[*tricks, "seed"]].assign(
        **{source: _column(results, source).astype(float) for source in metrics.values()}
    )
    per_seed = numeric.groupby([*tricks, "seed"], dropna=False, sort=True).mean().reset_index()
    by_config = per_seed.groupby(tricks, dropna=False, sort=False)
    table = by_config[list(metrics.values())].mean()
    table.columns = list(metrics)
    table["test_acc_std"] = by_config["test_acc"].std(ddof=1)
    table["n_seeds"] = by_config["seed"].nunique()
    table["seeds"] = by_config["seed"].agg(lambda s: _join(sorted(s.unique())))

    runs_by_config = results.groupby(tricks, dropna=False, sort=False)
    table["device"] = runs_by_config["device"].agg(
        lambda s: _join(sorted(s.dropna().astype(str).unique()))
    )
    table["n_failed"] = runs_by_config["failed"].sum().astype(int)
    table["failed"] = table["n_failed"] > 0
    table["run_ids"] = runs_by_config["run_id"].agg(_join)

    excluded = runs[~is_result(runs).to_numpy()]
    table["n_excluded"] = 0
    if not excluded.empty and set(tricks) <= set(excluded.columns):
        counts = excluded.groupby(tricks, dropna=False).size()
        table["n_excluded"] = counts.reindex(table.index).fillna(0).astype(int)
    return _grid_order(table.reset_index(), factors)[columns]


def _pair_values(
    cells: pd.DataFrame, keys: list[str], fixed: Mapping[str, str], value: str
) -> pd.Series:
    """Return ``value`` of the cells matching ``fixed`` toggles, indexed by the other ``keys``."""
    mask = np.ones(len(cells), dtype=bool)
    for trick, option in fixed.items():
        mask &= (cells[trick] == option).to_numpy()
    return cells.loc[mask].set_index(keys)[value]


def main_effects(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str]) -> pd.DataFrame:
    """Estimate each non-default option's effect on test accuracy against the trick's default.

    A pair is two results with the trick at the option and at its default, equal in every other
    trick and in the seed; the effect is the mean pair difference, so it is averaged over all other
    factors present in the grid. Pairs missing from a partial grid are simply absent (``n_pairs``).

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option.

    Returns:
        One row per (trick, non-default option) in study order with :data:`EFFECT_COLUMNS`:
        the mean difference in accuracy points with its Student-t 95% interval, the mean paired
        difference in training seconds and the ratio of mean seconds (option / default) over the
        same pairs.
    """
    cells = _cells(runs, factors)
    rows = []
    for trick, options in factors.items():
        default = defaults[trick]
        keys = [other for other in factors if other != trick] + ["seed"]
        for option in options:
            if option == default:
                continue
            with_option = _pair_values(cells, keys, {trick: option}, "test_acc")
            without = _pair_values(cells, keys, {trick: default}, "test_acc")
            pairs = pd.concat([with_option, without], axis=1, join="inner").dropna()
            mean, low, high, n = mean_ci95(pairs.iloc[:, 0] - pairs.iloc[:, 1])
            seconds_with = _pair_values(cells, keys, {trick: option}, "train_seconds")
            seconds_without = _pair_values(cells, keys, {trick: default}, "train_seconds")
            seconds = pd.concat(
                [seconds_with.reindex(pairs.index), seconds_without.reindex(pairs.index)], axis=1
            ).dropna()
            delta = float((seconds.iloc[:, 0] - seconds.iloc[:, 1]).mean())
            base_seconds = float(seconds.iloc[:, 1].mean())
            ratio = float(seconds.iloc[:, 0].mean()) / base_seconds if base_seconds else math.nan
            rows.append((trick, option, default, mean, low, high, delta, ratio, n))
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def interactions(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str]) -> pd.DataFrame:
    """Estimate two-way interactions: how much trick A's effect changes when B is on.

    For tricks A, B and non-default options a, b, a quadruple is the four results
    y(a,b), y(a,0), y(0,b), y(0,0) sharing every other toggle and the seed; its interaction is
    y(a,b) - y(a,0) - y(0,b) + y(0,0) (0 is the default). Zero means the effects add up.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option.

    Returns:
        One row per (A, a, B, b) with :data:`INTERACTION_COLUMNS`, A before B in study order;
        empty with fewer than two tricks.
    """
    cells = _cells(runs, factors)
    rows = []
    for trick_a, trick_b in itertools.combinations(factors, 2):
        keys = [other for other in factors if other not in (trick_a, trick_b)] + ["seed"]
        default_a, default_b = defaults[trick_a], defaults[trick_b]
        for option_a in (o for o in factors[trick_a] if o != default_a):
            for option_b in (o for o in factors[trick_b] if o != default_b):
                corners = [
                    _pair_values(cells, keys, {trick_a: a, trick_b: b}, "test_acc")
                    for a, b in (
                        (option_a, option_b),
                        (option_a, default_b),
                        (default_a, option_b),
                        (default_a, default_b),
                    )
                ]
                quads = pd.concat(corners, axis=1, join="inner").dropna()
                contrast = quads.iloc[:, 0] - quads.iloc[:, 1] - quads.iloc[:, 2] + quads.iloc[:, 3]
                mean, low, high, n = mean_ci95(contrast)
                rows.append((trick_a, option_a, trick_b, option_b, mean, low, high, n))
    return pd.DataFrame(rows, columns=list(INTERACTION_COLUMNS))


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


# --------------------------------------------------------------------------------------------
# The 80/20 verdict.


@dataclass
class Verdict:
    """Which tricks give most of the gain over the baseline, and at what training cost.

    Accuracies and gains are in percent points of test accuracy; times in training seconds.
    ``table`` has :data:`VERDICT_COLUMNS`; ``chosen`` is the smallest top-ranked set of
    (trick, option) reaching ``share`` of ``total_gain`` (empty when no trick improves on the
    baseline); ``missing`` lists grid configs with no result.
    """

    table: pd.DataFrame
    baseline_acc: float
    best_acc: float
    best_config: dict[str, str]
    total_gain: float
    chosen: list[tuple[str, str]]
    chosen_share: float
    chosen_seconds: float
    best_seconds: float
    baseline_seconds: float
    cost_share: float
    missing: list[dict[str, str]] = field(default_factory=list)
    share: float = 0.8
    chosen_estimated: bool = False
    n_excluded: int = 0


def _config_row(configs: pd.DataFrame, toggles: Mapping[str, str]) -> pd.Series | None:
    mask = np.ones(len(configs), dtype=bool)
    for trick, option in toggles.items():
        mask &= (configs[trick] == option).to_numpy()
    matches = configs.loc[mask]
    return None if matches.empty else matches.iloc[0]


def _best_options(effects: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Return each trick's best non-default option, best effect first, unestimable tricks last."""
    rows = []
    for trick in factors:
        of_trick = effects[effects["trick"] == trick]
        if of_trick.empty:
            continue
        estimable = of_trick.dropna(subset=["effect_mean"])
        rows.append(
            of_trick.iloc[0]
            if estimable.empty
            else estimable.loc[estimable["effect_mean"].idxmax()]
        )
    if not rows:
        return effects.iloc[0:0]
    best = pd.DataFrame(rows)
    best["_order"] = range(len(best))  # keeps study order among equal effects
    best = best.sort_values(["effect_mean", "_order"], ascending=[False, True], na_position="last")
    return best.drop(columns="_order").reset_index(drop=True)


def pareto_verdict(
    runs: pd.DataFrame,
    factors: Factors,
    defaults: Mapping[str, str],
    share: float = 0.8,
    planned: Sequence[Mapping[str, str]] | None = None,
) -> Verdict:
    """Find the fewest tricks that give ``share`` of the gain of the best config over the baseline.

    Tricks are ranked by the main effect of their best option. The k-th row stands for the config
    with the top-k tricks at their best options and the rest at defaults; its gain is that config's
    measured mean accuracy minus the baseline's, or, when that config has no result, the sum of the
    k main effects (``estimated`` is True). The total gain is best config minus baseline, both
    measured. Only tricks with a positive effect can be chosen.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option; all defaults is the baseline config.
        share: The fraction of the total gain the chosen set must reach, 0.8 for the 80/20 rule.
        planned: The study's configs when it is not a full factorial (see missing_configs).

    Returns:
        The verdict. With no measured baseline, or no config better than it, nothing is chosen and
        the shares are NaN.
    """
    configs = config_table(runs, factors)
    effects = main_effects(runs, factors, defaults)
    best_options = _best_options(effects, factors)
    baseline_toggles = {trick: defaults[trick] for trick in factors}
    baseline = _config_row(configs, baseline_toggles)
    baseline_acc = math.nan if baseline is None else float(baseline["test_acc_mean"])
    baseline_seconds = math.nan if baseline is None else float(baseline["train_seconds_mean"])

    measured = configs.dropna(subset=["test_acc_mean"])
    if measured.empty:
        best_acc, best_seconds, best_config = math.nan, math.nan, {}
    else:
        best = measured.loc[measured["test_acc_mean"].idxmax()]
        best_acc, best_seconds = float(best["test_acc_mean"]), float(best["train_seconds_mean"])
        best_config = {trick: str(best[trick]) for trick in factors}
    total_gain = best_acc - baseline_acc

    rows = []
    toggles = dict(baseline_toggles)
    summed_effect, summed_seconds = 0.0, 0.0
    for rank, effect in enumerate(best_options.itertuples(index=False), start=1):
        toggles[effect.trick] = effect.option
        summed_effect += effect.effect_mean
        summed_seconds += effect.cost_delta_seconds
        row = _config_row(configs, toggles)
        estimated = row is None or not np.isfinite(row["test_acc_mean"])
        if estimated:
            gain, seconds = summed_effect, baseline_seconds + summed_seconds
        else:
            gain = float(row["test_acc_mean"]) - baseline_acc
            seconds = float(row["train_seconds_mean"])
        cumulative_share = gain / total_gain if total_gain > 0 else math.nan
        rows.append(
            (
                rank,
                effect.trick,
                effect.option,
                effect.effect_mean,
                effect.ci95_low,
                effect.ci95_high,
                gain,
                cumulative_share,
                estimated,
                seconds,
            )
        )
    table = pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))
    table["estimated"] = table["estimated"].astype(bool)

    chosen_rows = _chosen_prefix(table, share) if total_gain > 0 else table.iloc[0:0]
    last = chosen_rows.iloc[-1] if not chosen_rows.empty else None
    chosen_seconds = math.nan if last is None else float(last["train_seconds"])
    return Verdict(
        table=table,
        baseline_acc=baseline_acc,
        best_acc=best_acc,
        best_config=best_config,
        total_gain=total_gain,
        chosen=list(zip(chosen_rows["trick"], chosen_rows["option"])),
        chosen_share=math.nan if last is None else float(last["cumulative_share"]),
        chosen_seconds=chosen_seconds,
        best_seconds=best_seconds,
        baseline_seconds=baseline_seconds,
        cost_share=chosen_seconds / best_seconds if best_seconds else math.nan,
        missing=missing_configs(runs, factors, planned),
        share=share,
        chosen_estimated=bool(last is not None and last["estimated"]),
        n_excluded=int((~is_result(runs)).sum()),
    )


def _chosen_prefix(table: pd.DataFrame, share: float) -> pd.DataFrame:
    """Return the smallest prefix of positive-effect rows reaching ``share``, else all of them."""
    positive = table[table["effect_mean"] > 0]  # a prefix: the table is sorted by effect
    reaching = positive.index[positive["cumulative_share"] >= share]
    if len(reaching):
        return positive.loc[: reaching[0]]
    return positive


# --------------------------------------------------------------------------------------------
# Text for people: the printout at the end of a study and the parent run's markdown.


def _signed(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.{digits}f}"


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _toggle_text(pairs: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{trick}={option}" for trick, option in pairs)


def verdict_sentence(verdict: Verdict) -> str:
    """Return the one-sentence answer: which tricks give what share of the gain, at what cost."""
    if not np.isfinite(verdict.baseline_acc):
        return "The baseline config (all defaults) has no result, so no gain can be measured."
    if not verdict.total_gain > 0:  # the best config is the baseline itself
        return (
            f"No trick improves on the baseline: the best config is the baseline at "
            f"{verdict.baseline_acc:.1f}% test accuracy."
        )
    if not verdict.chosen:
        return (
            f"No trick has a positive main effect, although the best config "
            f"({_toggle_text(verdict.best_config.items())}) is "
            f"{verdict.total_gain:+.1f} points above the baseline."
        )
    count = len(verdict.chosen)
    noun = "trick" if count == 1 else "tricks"
    verb = "gives" if count == 1 else "give"
    estimated = " (estimated from main effects)" if verdict.chosen_estimated else ""
    reached = verdict.chosen_share >= verdict.share
    shortfall = "" if reached else f"; no set of improving tricks reaches {_percent(verdict.share)}"
    return (
        f"{count} {noun} ({_toggle_text(verdict.chosen)}) {verb} "
        f"{_percent(verdict.chosen_share)}{estimated} of the {verdict.total_gain:+.1f}-point gain, "
        f"at {_percent(verdict.cost_share)} of the best config's training time{shortfall}."
    )


def _verdict_rows(verdict: Verdict) -> list[list[str]]:
    return [
        [
            str(row.rank),
            row.trick,
            str(row.option),
            _signed(row.effect_mean),
            f"[{_signed(row.ci95_low)}, {_signed(row.ci95_high)}]",
            _signed(row.cumulative_gain) + ("*" if row.estimated else ""),
            _percent(row.cumulative_share),
            _number(row.train_seconds),
        ]
        for row in verdict.table.itertuples(index=False)
    ]


_VERDICT_HEADER = [
    "rank",
    "trick",
    "option",
    "effect",
    "95% CI",
    "cum. gain",
    "cum. share",
    "train s",
]


def _missing_text(missing: Sequence[Mapping[str, str]], limit: int = 5) -> str:
    shown = "; ".join(_toggle_text(list(config.items())) for config in missing[:limit])
    more = f"; and {len(missing) - limit} more" if len(missing) > limit else ""
    return f"{len(missing)} grid config(s) have no result: {shown}{more}."


def format_verdict(verdict: Verdict) -> str:
    """Return a monospace text block to print at the end of a study.

    Args:
        verdict: From :func:`pareto_verdict`.

    Returns:
        A summary line, the ranked table of tricks (effects in accuracy points, ``*`` marks gains
        estimated from main effects) and the sentence naming the chosen set and what is missing.
    """
    lines = [
        f"Baseline (all defaults): {_number(verdict.baseline_acc)}% test accuracy in "
        f"{_number(verdict.baseline_seconds)} s; best config: {_number(verdict.best_acc)}% in "
        f"{_number(verdict.best_seconds)} s ({_toggle_text(list(verdict.best_config.items()))})."
    ]
    body = _verdict_rows(verdict)
    if body:
        widths = [max(len(cell) for cell in column) for column in zip(_VERDICT_HEADER, *body)]
        for cells in [_VERDICT_HEADER, *body]:
            cells_text = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
            lines.append(cells_text.rstrip())
        if verdict.table["estimated"].any():
            lines.append("* config not measured: gain is the sum of main effects")
    lines.append(verdict_sentence(verdict))
    if verdict.missing:
        lines.append(_missing_text(verdict.missing))
    if verdict.n_excluded:
        lines.append(
            f"{verdict.n_excluded} run(s) crashed, were pruned or interrupted and are not counted."
        )
    return "\n".join(lines)


def _markdown_cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if not np.isfinite(value) else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """Return ``frame`` as a GitHub-flavoured markdown table, floats with two decimals."""
    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = [
        "| " + " | ".join(_markdown_cell(value) for value in row) + " |"
        for row in frame.itertuples(index=False, name=None)
    ]
    return "\n".join([header, rule, *rows])


def verdict_markdown(verdict: Verdict, effects: pd.DataFrame, configs: pd.DataFrame) -> str:
    """Return the report as markdown for the study's parent run.

    Args:
        verdict: From :func:`pareto_verdict`.
        effects: From :func:`main_effects`.
        configs: From :func:`config_table`.

    Returns:
        Markdown with the verdict, the Pareto table, all main effects and all configs.
    """
    config_view = configs.drop(columns=["run_ids"], errors="ignore")
    facts = [
        f"- Baseline (all defaults): {_number(verdict.baseline_acc)}% test accuracy, "
        f"{_number(verdict.baseline_seconds)} s training",
        f"- Best config: {_number(verdict.best_acc)}% "
        f"({_toggle_text(list(verdict.best_config.items()))}), "
        f"{_number(verdict.best_seconds)} s training",
        f"- Total gain: {_signed(verdict.total_gain)} points; target share "
        f"{_percent(verdict.share)}",
    ]
    if verdict.missing:
        facts.append(f"- Missing: {_missing_text(verdict.missing)}")
    if verdict.n_excluded:
        facts.append(f"- Not counted: {verdict.n_excluded} crashed, pruned or interrupted run(s)")
    sections = [
        "# Ablation report",
        f"**{verdict_sentence(verdict)}**",
        "\n".join(facts),
        "## Tricks ranked by their best option's effect (accuracy points)",
        markdown_table(verdict.table),
        "## Main effects (paired over seeds and the other tricks)",
        markdown_table(effects),
        "## Configs",
        markdown_table(config_view),
    ]
    return "\n\n".join(sections) + "\n"


# --------------------------------------------------------------------------------------------
# Loading from MLflow and Optuna.


def option_text(value: object) -> str:
    """Return an option as the tables spell it: JSON ``true`` → ``"true"``, 0.1 → ``"0.1"``."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


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
    return {
        "configs": configs,
        "parent_run_id": parent.info.run_id,
        "n_parents": len(parents),
        "factors": factors,
        "defaults": {trick: defaults[trick] for trick in factors},
        "kind": tags.get(Tag.KIND, "grid"),
        "optuna_storage": tags.get(Tag.OPTUNA_STORAGE),
        "optuna_study_name": tags.get(Tag.OPTUNA_STUDY),
    }


def _runs_from_search(frame: pd.DataFrame, factors: Factors) -> pd.DataFrame:
    """Convert ``mlflow.search_runs`` columns (params.*, metrics.*, tags.*) to the runs schema."""
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
    seeds = column(f"tags.{Tag.SEED}").fillna(column("params.seed"))
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
    for required in ("test_acc", "val_acc", "test_loss", "train_seconds", "epochs_completed"):
        if required not in runs.columns:
            runs[required] = np.nan
    runs["device"] = column(f"tags.{Tag.DEVICE}")
    return runs.reset_index(drop=True)


def load_runs(
    tracking_uri: str, study: str, budget: str, parent_run_id: str | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load a study's trial runs from MLflow into the runs schema of this module.

    An experiment holds one parent run per distinct study configuration (a resumed study reopens
    its parent); only the trials of one parent are read, so runs of a differently restricted or
    fixed study never mix into the effects.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///mlruns/mlflow.db``.
        study: Study name; the experiment is ``f"{study}-{budget}"``.
        budget: Budget name, e.g. ``"cpu"``.
        parent_run_id: The study's parent run; default: the newest parent of the experiment.

    Returns:
        ``(runs, meta)``; ``meta`` has ``study, budget, experiment, experiment_id, tracking_uri,
        parent_run_id, n_parents, factors, defaults, kind, optuna_storage, optuna_study_name``
        from the parent run's tags. A toggle missing from a run is filled with its default.

    Raises:
        UserError: The experiment does not exist (the message names those that do), the parent
            run is unknown, or there is no parent run or no trial run.
    """
    import mlflow  # imported here: the tables above need only pandas

    name = f"{study}-{budget}"
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        existing = sorted(e.name for e in client.search_experiments())
        listed = ", ".join(existing) if existing else "none"
        raise UserError(f"no experiment '{name}' at {tracking_uri}; experiments there: {listed}")
    meta = _parent_meta(client, experiment.experiment_id, name, parent_run_id)
    children = (
        f"tags.`{Tag.ROLE}` = 'trial' and tags.`{Tag.PARENT}` = '{meta['parent_run_id']}'"
    )
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # search_runs reads the global URI; restored below
    try:
        frame = mlflow.search_runs(
            experiment_ids=[experiment.experiment_id],
            filter_string=children,
            output_format="pandas",
        )
    finally:
        mlflow.set_tracking_uri(previous_uri)
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
    )
    return runs, meta


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
