"""Each option's effect against its trick's default, with a family-wise interval and a call.

**The estimand** is the option's effect on the accuracy of the distribution the test set samples,
in expectation over training seeds, averaged over the study's partner configs (the other tricks'
options it was crossed with). Its standard error has two independent parts, added in quadrature:

- the run-to-run part (:mod:`harness.report.noise`): the spread of the option's paired runs,
  with its two-way interactions regressed out where the design allows, or a model of the design
  for options without pairs;
- the test set's part (:mod:`harness.report.examples`): the seed-stable part of the per-example
  difference, from each run's per-example results, or a bound that can never be too small for
  stores without them.

The degrees of freedom are the run-to-run part's alone. Every interval holds jointly with the
others at 95% (Bonferroni over the options tested), and the call reads off it: ``helps`` or
``hurts`` when it excludes 0, else ``negligible`` when it lies inside ±``margin`` points, else
``undetermined``. So the chance of any wrong call in a study is at most 5%.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.examples import (
    BOUND,
    NOT_MEASURED,
    PER_EXAMPLE,
    ExampleResults,
    TestSetNoise,
    contrast_bound,
    pair_bound,
)
from harness.report.noise import Layout, RunNoise, estimate
from harness.report.tables import DEFAULT_METRIC, SCORE, Factors, cells
from harness.training.metrics import by_logged_name

HELPS, HURTS, NEGLIGIBLE, UNDETERMINED = "helps", "hurts", "negligible", "undetermined"
CALLS = (HELPS, HURTS, NEGLIGIBLE, UNDETERMINED)
SETTLED = (HELPS, HURTS, NEGLIGIBLE)
"""Calls that answer the question; ``undetermined`` means this study cannot tell."""

EFFECT_COLUMNS = (
    "trick",
    "option",
    "baseline_option",
    "effect_mean",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "call",
    "margin",
    "detectable",
    "se",
    "se_runs",
    "se_test",
    "df",
    "ci_source",
    "cost_delta_seconds",
    "cost_ratio",
    "n_pairs",
    "n_seeds",
)
"""effects.csv columns. Effects, intervals, ``margin``, ``detectable`` (the smallest true effect
this study calls 80% of the time, averaged over what its spread says the noise could be) and the
standard errors are in accuracy points. ``ci_low`` and
``ci_high`` bound a family-wise interval: all options' intervals hold together at 95%.
``p_adjusted`` is Bonferroni's (below 0.05 exactly when the interval excludes 0); ``ci_source``
says where each part of the noise came from."""

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


@dataclass(frozen=True)
class OptionTest:
    """One option's estimate and both parts of its noise, before the family's level is set."""

    trick: str
    option: str
    default: str
    runs: RunNoise
    se_test: float
    test_source: str
    seconds: float
    default_seconds: float
    n_seeds: int

    @property
    def effect(self) -> float:
        """The effect (points)."""
        return self.runs.effect

    @property
    def se(self) -> float:
        """Both parts of the standard error together (points)."""
        return math.hypot(self.runs.se, self.se_test) if np.isfinite(self.se_test) else math.nan

    @property
    def df(self) -> float:
        """Degrees of freedom: the run-to-run part's."""
        return self.runs.df

    @property
    def tested(self) -> bool:
        """Whether the option has an interval (its noise could be measured)."""
        return bool(np.isfinite(self.se) and self.se > 0 and np.isfinite(self.df))

    def projected_se(self, seeds: int) -> tuple[float, float]:
        """Return (se, df) with ``seeds`` replicate seeds: the test set's part does not shrink."""
        runs_se, df = self.runs.projected(seeds)
        return math.hypot(runs_se, self.se_test), df


def call_of(low: float, high: float, margin: float = stats.MARGIN) -> str:
    """Return the call a family-wise interval ``[low, high]`` supports."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNDETERMINED
    if low > 0:
        return HELPS
    if high < 0:
        return HURTS
    if -margin < low and high < margin:
        return NEGLIGIBLE
    return UNDETERMINED


def study_cells(runs: pd.DataFrame, factors: Factors,
                metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Return :func:`harness.report.tables.cells` with an integer ``config`` code per cell."""
    table = cells(runs, factors, metric)
    table["config"] = table.groupby(list(factors), sort=False, dropna=False).ngroup() \
        if factors else 0
    return table


def option_tests(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str],
                 examples: ExampleResults | None = None,
                 images: float = math.nan, metric: str = DEFAULT_METRIC) -> list[OptionTest]:
    """Estimate every non-default option's effect and both parts of its noise, in study order.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option.
        examples: The runs' per-example results; None (or runs without them) falls back to the
            bound of :mod:`harness.report.examples`.
        images: Test-set size for runs that did not log ``test_images``.
        metric: The logged metric the effects are on; an effect is its gain (a fall, for a
            metric where lower is better). The per-example results are of test accuracy; a
            metric that counts a share of the examples gets the bound, and any other (a loss)
            is tested on the training seeds' noise alone, for this test set.
    """
    table = study_cells(runs, factors, metric)
    scored = by_logged_name(metric)
    if metric != DEFAULT_METRIC:
        examples = None
    # The default first, so that option 0 of every trick in the layout is its neutral one.
    ordered = {t: [defaults[t], *[o for o in options if o != defaults[t]]]
               for t, options in factors.items()}
    layout = Layout.of(table, ordered)
    noise = TestSetNoise(list(table["run_ids"]), table["config"].to_numpy(), examples)
    config_acc = table.groupby("config")[SCORE].mean()
    found = []
    for column, (trick, options) in enumerate(factors.items()):
        default = defaults[trick]
        for option in options:
            if option == default:
                continue
            runs_part = estimate(layout, column, ordered[trick].index(option), 0)
            if runs_part is None:
                continue
            se_test, source = ((0.0, NOT_MEASURED) if not scored.share_of_examples
                               else _test_share(runs_part, table, noise, config_acc, images))
            used_on = [a for a, _ in runs_part.pairs] or np.flatnonzero(runs_part.weights > 0)
            used_off = [b for _, b in runs_part.pairs] or np.flatnonzero(runs_part.weights < 0)
            found.append(OptionTest(
                trick=trick, option=option, default=default, runs=runs_part, se_test=se_test,
                test_source=source,
                seconds=float(table["train_seconds"].iloc[list(used_on)].mean()),
                default_seconds=float(table["train_seconds"].iloc[list(used_off)].mean()),
                n_seeds=int(table["seed"].iloc[np.flatnonzero(runs_part.weights)].nunique()),
            ))
    return found


def _test_share(runs_part: RunNoise, table: pd.DataFrame, noise: TestSetNoise,
                config_acc: pd.Series, images: float) -> tuple[float, str]:
    """Return the test set's share of the SE (points) and how it was found."""
    variance = noise.variance(runs_part.weights)
    if np.isfinite(variance):
        return math.sqrt(variance), PER_EXAMPLE
    used = np.flatnonzero(runs_part.weights)
    logged = table["test_images"].iloc[used].to_numpy(float)
    count = float(np.nanmin(logged)) if np.isfinite(logged).any() else images
    configs = table["config"].to_numpy()
    if runs_part.pairs:
        bounds = [pair_bound(config_acc[configs[a]], config_acc[configs[b]], count)
                  for a, b in runs_part.pairs]
        return float(np.mean(bounds)), BOUND
    per_config = pd.Series(runs_part.weights).groupby(configs).sum()
    accuracies = config_acc.reindex(per_config.index).to_numpy(float)
    return contrast_bound(per_config.to_numpy(float), accuracies, count), BOUND


def main_effects(
    runs: pd.DataFrame,
    factors: Factors,
    defaults: Mapping[str, str],
    images: float = math.nan,
    examples: ExampleResults | None = None,
    tests: list[OptionTest] | None = None,
    alpha: float = stats.ALPHA,
    margin: float = stats.MARGIN,
    metric: str = DEFAULT_METRIC,
) -> pd.DataFrame:
    """Estimate, test and call each non-default option's effect on test accuracy.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option.
        images: Test-set size for runs that did not log ``test_images``.
        examples: The runs' per-example results (see :func:`option_tests`).
        tests: From :func:`option_tests`, when the caller has them already.
        alpha: The family-wise error rate of the calls.
        margin: Points inside which an effect does not matter (the ``negligible`` call).
        metric: The logged metric the effects are on (see :func:`option_tests`).

    Returns:
        One row per (trick, non-default option) in study order with :data:`EFFECT_COLUMNS`.
    """
    if tests is None:
        tests = option_tests(runs, factors, defaults, examples, images, metric)
    return effects_table(tests, alpha, margin)


def effects_table(tests: Sequence[OptionTest], alpha: float = stats.ALPHA,
                  margin: float = stats.MARGIN) -> pd.DataFrame:
    """Return the effects table of ``tests``: family-wise intervals, p-values and calls."""
    level = stats.family_level(sum(t.tested for t in tests), alpha)
    rows = []
    for test in tests:
        low, high = (stats.t_interval(test.effect, test.se, test.df, level) if test.tested
                     else (math.nan, math.nan))
        p_value = stats.two_sided_p(test.effect, test.se, test.df)
        count = sum(t.tested for t in tests)
        rows.append({
            "trick": test.trick,
            "option": test.option,
            "baseline_option": test.default,
            "effect_mean": test.effect,
            "ci_low": low,
            "ci_high": high,
            "p_value": p_value,
            "p_adjusted": min(1.0, p_value * count) if np.isfinite(p_value) else math.nan,
            "call": call_of(low, high, margin),
            "margin": margin,
            "detectable": stats.detectable_effect(test.se, test.df, level) if test.tested
            else math.nan,
            "se": test.se,
            "se_runs": test.runs.se,
            "se_test": test.se_test,
            "df": test.df,
            "ci_source": f"{test.runs.source}; test set: {test.test_source}",
            "cost_delta_seconds": test.seconds - test.default_seconds,
            "cost_ratio": test.seconds / test.default_seconds if test.default_seconds
            else math.nan,
            "n_pairs": len(test.runs.pairs),
            "n_seeds": test.n_seeds,
        })
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def interactions(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str],
                 from_model: bool = False, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """Estimate two-way interactions: how much trick A's effect changes when B is on.

    For tricks A, B and non-default options a, b, a quadruple is the four results
    y(a,b), y(a,0), y(0,b), y(0,0) sharing every other toggle and the seed; its interaction is
    y(a,b) - y(a,0) - y(0,b) + y(0,0) (0 is the default). Zero means the effects add up. The
    results y are ``metric``'s gains, as the main effects' are (see :func:`option_tests`).

    Returns:
        One row per (A, a, B, b) with :data:`INTERACTION_COLUMNS`, A before B in study order;
        empty with fewer than two tricks. The interval is a Student-t one over the quadruples,
        at 95% for each interaction alone (these are descriptions, not calls). With
        ``from_model`` (a fraction that keeps two-way interactions clear of each other), those
        without quadruples get the model's estimate (:func:`_modelled_interactions`).
    """
    table = cells(runs, factors, metric)
    modelled = _modelled_interactions(table, factors, defaults) if from_model else {}
    rows = []
    for trick_a, trick_b in itertools.combinations(factors, 2):
        keys = [other for other in factors if other not in (trick_a, trick_b)] + ["seed"]
        default_a, default_b = defaults[trick_a], defaults[trick_b]
        for option_a in (o for o in factors[trick_a] if o != default_a):
            for option_b in (o for o in factors[trick_b] if o != default_b):
                corners = []
                for a, b in ((option_a, option_b), (option_a, default_b), (default_a, option_b),
                             (default_a, default_b)):
                    mask = (table[trick_a] == a) & (table[trick_b] == b)
                    corners.append(table[mask].set_index(keys)[SCORE])
                quads = pd.concat(corners, axis=1, join="inner").dropna()
                contrast = quads.iloc[:, 0] - quads.iloc[:, 1] - quads.iloc[:, 2] + quads.iloc[:, 3]
                found = stats.mean_ci95(contrast.to_numpy())
                if found[3] == 0:  # no quadruples (a fraction): the model of the design, if any
                    found = modelled.get((trick_a, option_a, trick_b, option_b), found)
                rows.append((trick_a, option_a, trick_b, option_b, *found))
    return pd.DataFrame(rows, columns=list(INTERACTION_COLUMNS))


def _modelled_interactions(table: pd.DataFrame, factors: Factors,
                           defaults: Mapping[str, str]) -> dict[tuple[str, str, str, str],
                                                                tuple[float, float, float, int]]:
    """Return each two-way interaction the design can tell apart, from a model of its configs.

    A fraction has no quadruple of cells that differ in two tricks only. Its config means are
    fit by least squares on an intercept, a centred indicator per non-default option, and the
    products of two indicators of different tricks that add rank (in study order): a product's
    coefficient is the quadruple contrast of :func:`interactions`. The error is the residual of
    the config means; without residual degrees of freedom the interval is NaN. An interaction
    aliased with an earlier one (resolution IV) is left out: the design cannot tell them apart.

    Returns:
        (trick_a, option_a, trick_b, option_b) → (mean, ci95_low, ci95_high, configs used).
    """
    measured = table.dropna(subset=[SCORE])
    if measured.empty:
        return {}
    means = measured.groupby(list(factors), observed=True)[SCORE].mean().reset_index()
    y = means[SCORE].to_numpy(dtype=float)
    mains = [(trick, option, (means[trick] == option).to_numpy(float))
             for trick in factors for option in factors[trick] if option != defaults[trick]]
    columns = [np.ones(len(y))] + [x - x.mean() for _, _, x in mains]
    if np.linalg.matrix_rank(np.column_stack(columns)) < len(columns):
        return {}  # main effects aliased with each other: no model to read interactions from
    names = []
    for (trick_a, option_a, a), (trick_b, option_b, b) in itertools.combinations(mains, 2):
        if trick_a == trick_b:
            continue
        product = (a - a.mean()) * (b - b.mean())
        if np.linalg.matrix_rank(np.column_stack([*columns, product])) > len(columns):
            columns.append(product)
            names.append((trick_a, option_a, trick_b, option_b))
    design = np.column_stack(columns)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(y) - design.shape[1]
    first = design.shape[1] - len(names)
    out = {}
    for index, name in enumerate(names, start=first):
        mean, low, high = float(coefficients[index]), math.nan, math.nan
        if df >= 1:
            residual = y - design @ coefficients
            variance = float(residual @ residual) / df
            se = math.sqrt(variance * float(np.linalg.pinv(design.T @ design)[index, index]))
            low, high = stats.t_interval(mean, se, df)
        out[name] = (mean, low, high, len(y))
    return out
