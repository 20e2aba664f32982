"""The statistics behind every call: t-tests, Holm's correction, the binomial floor, power.

Accuracies and effects are in percent points; ``alpha`` is the study-wide error rate (0.05).
The distributions come from scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
"""Family-wise error rate of the calls over all options a study tests."""

POWER = 0.8
"""The chance of a call that :func:`detectable_effect` and :func:`seeds_needed` plan for."""


def binomial_se(accuracy: float, n_images: float) -> float:
    """Return the standard error in points of an accuracy measured on ``n_images`` test images.

    The whole study shares one test set, so this noise does not average out over seeds or
    partner configs: it is the floor under every interval. NaN when the count is unknown.
    """
    if not (np.isfinite(accuracy) and np.isfinite(n_images) and n_images > 0):
        return math.nan
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / n_images)


def combine(se_stat: float, df_stat: float, se_floor: float, df_floor: float) -> tuple[float,
                                                                                      float]:
    """Add two independent error sources in quadrature, with Welch–Satterthwaite's df.

    Args:
        se_stat: Standard error estimated from the runs' spread.
        df_stat: Its degrees of freedom.
        se_floor: The binomial floor (:func:`binomial_se`); NaN or 0 adds nothing.
        df_floor: Its degrees of freedom (test images - 1).

    Returns:
        ``(se, df)``; NaN when ``se_stat`` is NaN.
    """
    if not np.isfinite(se_floor) or se_floor <= 0:
        return se_stat, df_stat
    se = math.sqrt(se_stat**2 + se_floor**2)
    if se_stat == 0:
        return se, df_floor
    df = se**4 / (se_stat**4 / df_stat + se_floor**4 / df_floor)
    return se, df


def two_sided_p(mean: float, se: float, df: float) -> float:
    """Return the two-sided p-value of a Student-t test of ``mean`` = 0 (NaN without an SE)."""
    if not (np.isfinite(mean) and np.isfinite(se) and np.isfinite(df)) or se <= 0 or df <= 0:
        return math.nan
    return float(2.0 * stats.t.sf(abs(mean) / se, df))


def t_interval(mean: float, se: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """Return the two-sided Student-t interval at confidence ``level``; NaN without an SE."""
    if not (np.isfinite(se) and np.isfinite(df) and np.isfinite(level)) or df <= 0:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2.0, df)) * se
    return mean - half, mean + half


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, float, int]:
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
    low, high = t_interval(mean, float(array.std(ddof=1)) / math.sqrt(n), n - 1)
    return mean, low, high, n


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction, with intervals that agree with its decisions.

    NaN p-values (options without an interval) are not tests and do not count in ``m``.

    Args:
        p_values: One p-value per test.
        alpha: The family-wise error rate.

    Returns:
        ``(p_adjusted, level)``: the adjusted p-values (reject where < ``alpha``) and the
        confidence level of each test's interval. The k-th rejection in Holm's order gets
        1 - alpha / (m - k + 1), every test not rejected 1 - alpha / (m - r) with r rejections,
        so an interval excludes 0 exactly when its test is rejected.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    level = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    m = len(tested)
    if m == 0:
        return adjusted, level
    order = tested[np.argsort(p[tested], kind="stable")]
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(steps, 1.0)
    rejected = int(np.sum(adjusted[order] < alpha))
    for k, index in enumerate(order):
        level[index] = 1.0 - alpha / (m - k) if k < rejected else 1.0 - alpha / (m - rejected)
    return adjusted, level


def detectable_effect(se: float, df: float, level: float, power: float = POWER) -> float:
    """Return the smallest true effect a two-sided test at ``level`` would call with ``power``.

    Args:
        se: The effect's standard error (points).
        df: Its degrees of freedom.
        level: The confidence level the test is held to (after Holm), e.g. 0.9875.
        power: The chance of calling such an effect.
    """
    if not (np.isfinite(se) and np.isfinite(df) and np.isfinite(level)) or df <= 0:
        return math.nan
    return float((stats.t.ppf(0.5 + level / 2.0, df) + stats.t.ppf(power, df)) * se)


def seeds_needed(
    se_stat: float,
    n_seeds: int,
    se_floor: float,
    effect: float,
    level: float,
    power: float = POWER,
) -> int | None:
    """Return how many seeds would make an ``effect`` (points) detectable, from measured noise.

    The spread part of the standard error shrinks as 1/sqrt(seeds); the binomial floor does not.
    Normal quantiles stand in for t's: a plan, not a test.

    Args:
        se_stat: The spread part of the standard error measured with ``n_seeds`` seeds.
        n_seeds: Seeds the study ran.
        se_floor: The binomial floor (NaN: none known).
        effect: The effect to resolve, e.g. 1.0 point.
        level: The confidence level of the test (after Holm).
        power: The chance of calling it.

    Returns:
        The number of seeds (at least ``n_seeds``), or None when even infinitely many seeds
        could not: the test set's own noise is too large for ``effect``.
    """
    if not (np.isfinite(se_stat) and np.isfinite(level)):
        return None
    z = stats.norm.ppf(0.5 + level / 2.0) + stats.norm.ppf(power)
    floor = se_floor if np.isfinite(se_floor) else 0.0
    budget = (effect / z) ** 2 - floor**2  # variance the spread part may have
    if budget <= 0:
        return None
    return max(n_seeds, math.ceil(se_stat**2 * n_seeds / budget))
