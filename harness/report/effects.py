"""Each option's effect against its trick's default, with an honest interval and a call.

An effect is a mean over matched pairs: two results that differ in one trick only and share every
other toggle and the replicate seed. Its standard error has two parts added in quadrature:

- the spread: pooled over the seeds of each partner config when the study has replicates
  (``ci_source`` = ``seeds``), else over the partner configs (``partner configs``: interactions
  count as noise);
- the binomial floor of an accuracy measured on the study's one test set, which no number of
  seeds or partners averages away (:func:`harness.report.stats.binomial_se`).

The p-values of all options are corrected together by Holm's method; an option ``helps`` or
``hurts`` when its adjusted p-value is below :data:`~harness.report.stats.ALPHA`, else it is
``undetermined``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.tables import Factors, cells

HELPS, HURTS, UNDETERMINED = "helps", "hurts", "undetermined"
CALLS = (HELPS, HURTS, UNDETERMINED)

EFFECT_COLUMNS = (
    "trick",
    "option",
    "baseline_option",
    "effect_mean",
    "ci95_low",
    "ci95_high",
    "p_value",
    "p_adjusted",
    "call",
    "ci_adj_low",
    "ci_adj_high",
    "detectable",
    "se",
    "se_spread",
    "se_floor",
    "df",
    "ci_source",
    "cost_delta_seconds",
    "cost_ratio",
    "n_pairs",
    "n_seeds",
)
"""effects.csv columns. Effects, intervals, ``detectable`` (the smallest effect this study would
call 80% of the time) and the standard errors are in accuracy points; ``ci_adj_*`` is the interval
at Holm's level for this option, which excludes 0 exactly when the call is not undetermined."""

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
class Pairs:
    """The matched pairs of one option against its trick's default.

    Arrays are aligned, one entry per pair: ``difference`` (points), ``partner`` (an integer code
    of the other tricks' options), ``seed``, ``accuracy`` (the pair's mean, points), ``seconds``
    and ``default_seconds`` (training seconds of each side), ``images`` (test images, NaN if not
    logged).
    """

    trick: str
    option: str
    default: str
    difference: np.ndarray
    partner: np.ndarray
    seed: np.ndarray
    accuracy: np.ndarray
    seconds: np.ndarray
    default_seconds: np.ndarray
    images: np.ndarray


def _side(cells_: pd.DataFrame, keys: list[str], trick: str, option: str) -> pd.DataFrame:
    chosen = cells_[cells_[trick] == option]
    return chosen.set_index(keys)[["test_acc", "train_seconds", "test_images"]]


def option_pairs(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str]) -> list[Pairs]:
    """Return the matched pairs of every non-default option, in study order."""
    table = cells(runs, factors)
    found = []
    for trick, options in factors.items():
        default = defaults[trick]
        others = [other for other in factors if other != trick]
        keys = [*others, "seed"]
        without = _side(table, keys, trick, default)
        for option in options:
            if option == default:
                continue
            joined = _side(table, keys, trick, option).join(
                without, how="inner", lsuffix="", rsuffix="_default"
            )
            joined = joined.dropna(subset=["test_acc", "test_acc_default"]).reset_index()
            partner = (
                joined.groupby(others, sort=False, dropna=False).ngroup().to_numpy()
                if others
                else np.zeros(len(joined), dtype=int)
            )
            found.append(
                Pairs(
                    trick=trick,
                    option=option,
                    default=default,
                    difference=(joined["test_acc"] - joined["test_acc_default"]).to_numpy(float),
                    partner=partner,
                    seed=joined["seed"].to_numpy(),
                    accuracy=((joined["test_acc"] + joined["test_acc_default"]) / 2).to_numpy(
                        float
                    ),
                    seconds=joined["train_seconds"].to_numpy(float),
                    default_seconds=joined["train_seconds_default"].to_numpy(float),
                    images=np.fmin(joined["test_images"], joined["test_images_default"]).to_numpy(
                        float
                    ),
                )
            )
    return found


def spread(difference: np.ndarray, partner: np.ndarray) -> tuple[float, float, str]:
    """Return the spread part of a mean difference's standard error, its df, and its source.

    Replicates of one partner config (several seeds) measure seed noise directly; their pooled
    within-config variance is used whenever there is any. Otherwise the pairs' spread over partner
    configs is, which also counts interactions as noise.
    """
    n = len(difference)
    if n < 2:
        return math.nan, math.nan, "none"
    counts = np.bincount(partner)
    within_df = int(np.sum(np.maximum(counts - 1, 0)))
    if within_df > 0:
        means = np.bincount(partner, weights=difference) / np.maximum(counts, 1)
        squares = float(np.sum((difference - means[partner]) ** 2))
        return math.sqrt(squares / within_df / n), float(within_df), "seeds"
    return float(np.std(difference, ddof=1)) / math.sqrt(n), float(n - 1), "partner configs"


def pair_images(pairs: Pairs, fallback: float) -> float:
    """Return the test-set size behind an option's pairs: as logged, else ``fallback``."""
    logged = pairs.images[np.isfinite(pairs.images)]
    return float(np.min(logged)) if logged.size else fallback


def option_test(pairs: Pairs, images: float) -> dict[str, float | str]:
    """Return the effect, its standard errors, df, 95% interval and p-value for one option."""
    effect = float(np.mean(pairs.difference)) if len(pairs.difference) else math.nan
    se_spread, df_spread, source = spread(pairs.difference, pairs.partner)
    accuracy = float(np.mean(pairs.accuracy)) if len(pairs.accuracy) else math.nan
    se_floor = stats.binomial_se(accuracy, images)
    se, df = stats.combine(se_spread, df_spread, se_floor, images - 1)
    low, high = stats.t_interval(effect, se, df)
    return {
        "effect_mean": effect,
        "ci95_low": low,
        "ci95_high": high,
        "p_value": stats.two_sided_p(effect, se, df),
        "se": se,
        "se_spread": se_spread,
        "se_floor": se_floor,
        "df": df,
        "ci_source": source,
    }


def call_of(effect: float, p_adjusted: float, alpha: float = stats.ALPHA) -> str:
    """Return ``helps``, ``hurts`` or ``undetermined`` from an effect and its adjusted p-value."""
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        return HELPS if effect > 0 else HURTS
    return UNDETERMINED


def main_effects(
    runs: pd.DataFrame,
    factors: Factors,
    defaults: Mapping[str, str],
    images: float = math.nan,
    pairs: list[Pairs] | None = None,
) -> pd.DataFrame:
    """Estimate, test and call each non-default option's effect on test accuracy.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option.
        images: Test-set size for runs that did not log ``test_images`` (NaN: no floor).
        pairs: From :func:`option_pairs`, when the caller has them already.

    Returns:
        One row per (trick, non-default option) in study order with :data:`EFFECT_COLUMNS`.
    """
    pairs = option_pairs(runs, factors, defaults) if pairs is None else pairs
    rows = []
    for found in pairs:
        seconds = found.seconds.mean() if len(found.seconds) else math.nan
        default_seconds = found.default_seconds.mean() if len(found.seconds) else math.nan
        rows.append(
            {
                "trick": found.trick,
                "option": found.option,
                "baseline_option": found.default,
                **option_test(found, pair_images(found, images)),
                "cost_delta_seconds": seconds - default_seconds,
                "cost_ratio": seconds / default_seconds if default_seconds else math.nan,
                "n_pairs": len(found.difference),
                "n_seeds": len(np.unique(found.seed)),
            }
        )
    effects = pd.DataFrame(rows, columns=[c for c in EFFECT_COLUMNS if c not in (
        "p_adjusted", "call", "ci_adj_low", "ci_adj_high", "detectable")])
    adjusted, level = stats.holm(effects["p_value"].to_numpy(float))
    effects["p_adjusted"] = adjusted
    effects["call"] = [call_of(e, p) for e, p in zip(effects["effect_mean"], adjusted)]
    bounds = [stats.t_interval(e, se, df, lv) for e, se, df, lv in
              zip(effects["effect_mean"], effects["se"], effects["df"], level)]
    effects["ci_adj_low"] = [low for low, _ in bounds]
    effects["ci_adj_high"] = [high for _, high in bounds]
    effects["detectable"] = [stats.detectable_effect(se, df, lv) for se, df, lv in
                             zip(effects["se"], effects["df"], level)]
    effects["n_pairs"] = effects["n_pairs"].astype(int)
    return effects[list(EFFECT_COLUMNS)]


def interactions(runs: pd.DataFrame, factors: Factors, defaults: Mapping[str, str]) -> pd.DataFrame:
    """Estimate two-way interactions: how much trick A's effect changes when B is on.

    For tricks A, B and non-default options a, b, a quadruple is the four results
    y(a,b), y(a,0), y(0,b), y(0,0) sharing every other toggle and the seed; its interaction is
    y(a,b) - y(a,0) - y(0,b) + y(0,0) (0 is the default). Zero means the effects add up.

    Returns:
        One row per (A, a, B, b) with :data:`INTERACTION_COLUMNS`, A before B in study order;
        empty with fewer than two tricks. The interval is a Student-t one over the quadruples.
    """
    table = cells(runs, factors)
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
                    corners.append(table[mask].set_index(keys)["test_acc"])
                quads = pd.concat(corners, axis=1, join="inner").dropna()
                contrast = quads.iloc[:, 0] - quads.iloc[:, 1] - quads.iloc[:, 2] + quads.iloc[:, 3]
                mean, low, high, n = stats.mean_ci95(contrast.to_numpy())
                rows.append((trick_a, option_a, trick_b, option_b, mean, low, high, n))
    return pd.DataFrame(rows, columns=list(INTERACTION_COLUMNS))
