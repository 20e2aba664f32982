"""The statistics behind every call: Student-t tests, family-wise levels, power, Wilson intervals.

Accuracies and effects are in percent points; ``alpha`` is the study-wide error rate (0.05). The
distributions come from scipy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
"""Family-wise error rate of the calls over all options a study tests."""

POWER = 0.8
"""The chance of a call that :func:`detectable_effect` and the seed plans are sized for."""

MARGIN = 1.0
"""Default margin (points): an option whose whole family-wise interval lies inside ±margin is
``negligible``."""


def family_level(tests: int, alpha: float = ALPHA) -> float:
    """Return the confidence level of each of ``tests`` intervals that hold jointly at 1 - alpha.

    Bonferroni: each interval misses with probability alpha / tests at most, so all of them
    cover at once with probability 1 - alpha at least, whatever their dependence.
    """
    return 1.0 - alpha / max(tests, 1)


def critical_t(level: float, df: float) -> float:
    """Return the two-sided Student-t critical value at confidence ``level`` (NaN without df).

    Infinite ``df`` gives the normal quantile: a standard error known exactly.
    """
    if not (df > 0 and np.isfinite(level)) or math.isnan(df):
        return math.nan
    if math.isinf(df):
        return float(stats.norm.ppf(0.5 + level / 2.0))
    return float(stats.t.ppf(0.5 + level / 2.0, df))


def two_sided_p(mean: float, se: float, df: float) -> float:
    """Return the two-sided p-value of a Student-t test of ``mean`` = 0 (NaN without an SE)."""
    if not (np.isfinite(mean) and np.isfinite(se) and np.isfinite(df)) or se <= 0 or df <= 0:
        return math.nan
    return float(2.0 * stats.t.sf(abs(mean) / se, df))


def t_interval(mean: float, se: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """Return the two-sided Student-t interval at confidence ``level``; NaN without an SE."""
    half = critical_t(level, df) * se
    if not np.isfinite(half):
        return math.nan, math.nan
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


def power(effect: float, se: float, df: float, level: float) -> float:
    """Return the chance that a two-sided t-test at ``level`` calls a true ``effect``.

    The test statistic of an effect measured with standard error ``se`` on ``df`` degrees of
    freedom follows a noncentral t with noncentrality ``effect / se``.
    """
    critical = critical_t(level, df)
    if not (np.isfinite(critical) and np.isfinite(se) and se > 0):
        return math.nan
    shift = abs(effect) / se
    if math.isinf(df):
        return float(stats.norm.sf(critical - shift) + stats.norm.cdf(-critical - shift))
    # scipy's far lower tail can come out NaN where it is below 1e-30: it is 0 to any use.
    lower = np.nan_to_num(stats.nct.cdf(-critical, df, shift))
    return float(np.nan_to_num(stats.nct.sf(critical, df, shift), nan=1.0) + lower)


def detectable_effect(se: float, df: float, level: float, chance: float = POWER,
                      measured_df: float | None = None) -> float:
    """Return the smallest true effect a two-sided t-test at ``level`` calls with ``chance``.

    ``se`` is itself an estimate, on ``measured_df`` degrees of freedom (default ``df``), and
    the true standard error may be larger. So the chance is the power *averaged over what the
    estimate says the true SE could be* (its scaled inverse chi-square distribution), each power
    exact for the noncentral t at ``df``. Planning on the estimate as if it were exact would
    promise 80% and deliver 74-78% at 5-10 df, since an estimated SD comes out low more often
    than high.

    Args:
        se: The effect's standard error (points).
        df: The degrees of freedom of the test being planned.
        level: The confidence level the test is held to, e.g. 1 - 0.05 / 4.
        chance: The power to plan for.
        measured_df: The degrees of freedom ``se`` was estimated on, where it differs from
            ``df`` (a follow-up with more seeds); infinite for a known SE.
    """
    if not (np.isfinite(critical_t(level, df)) and np.isfinite(se) and se > 0):
        return math.nan
    known = df if measured_df is None else measured_df
    if not known > 0:
        return math.nan
    return float(_detectable_shift(float(df), float(level), float(chance), float(known)) * se)


_QUANTILES = (np.arange(64) + 0.5) / 64


@functools.lru_cache(maxsize=4096)
def _detectable_shift(df: float, level: float, chance: float, measured_df: float) -> float:
    """Return the shift (in estimated SEs) a t-test on ``df`` calls with average ``chance``."""
    critical = critical_t(level, df)
    if math.isinf(measured_df):
        ratios = np.ones(1)
    else:  # true SE / estimated SE at evenly spaced quantiles of its distribution
        ratios = np.sqrt(measured_df / stats.chi2.ppf(_QUANTILES, measured_df))

    def average_power(shift: float) -> float:
        noncentrality = shift / ratios
        if math.isinf(df):
            chances = stats.norm.sf(critical - noncentrality)
        else:  # scipy's far tail can come out NaN where it is ~0 or ~1
            chances = np.nan_to_num(stats.nct.sf(critical, df, noncentrality), nan=1.0)
        return float(np.mean(chances))

    upper = critical + 10.0
    while average_power(upper) < chance:  # heavy tails at 1-2 df need a far shift
        upper *= 2.0
    return float(optimize.brentq(lambda s: average_power(s) - chance, 0.0, upper))


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial rate (0-1); (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    rate = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
