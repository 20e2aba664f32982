"""The 80/20 verdict: the few options that carry most of a gain distinguishable from noise.

Only options called ``helps`` (see :mod:`harness.report.effects`) can be in the set, so every
share is a share of a real gain and none is negative. The set's stability is the chance that an
option is in it when the study is run again with new seeds: each option's rerun estimate is drawn
from its predictive distribution (its estimate, with twice its sampling variance, on its own
degrees of freedom), called as the study calls it, and the set chosen from the draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.effects import (
    HELPS,
    UNDETERMINED,
    OptionTest,
    effects_table,
    option_tests,
)
from harness.report.examples import PER_EXAMPLE, ExampleResults
from harness.report.tables import (
    DEFAULT_METRIC,
    Factors,
    config_table,
    is_result,
    is_running,
    missing_configs,
    result_runs,
)
from harness.training.metrics import by_logged_name

VERDICT_COLUMNS = (
    "rank",
    "trick",
    "option",
    "call",
    "effect_mean",
    "ci_low",
    "ci_high",
    "p_adjusted",
    "cumulative_gain",
    "cumulative_share",
    "measured_gain",
    "train_seconds",
    "p_in_set",
)
"""Columns of :attr:`Verdict.table`: the helping options by effect (each trick's best), with the
summed main effects as they are added one by one (``cumulative_gain``) and the measured gain of
that config over the baseline where both were run (``measured_gain``), then every other option by
effect. ``ci_low``/``ci_high`` bound the family-wise interval; ``p_in_set`` is the chance of being
in the 80% set on a rerun."""

MAX_SEEDS = 20
"""The most replicate seeds a plan proposes; beyond it, it says the option cannot be settled."""

STABILITY_DRAWS = 2000
"""Simulated reruns behind ``p_in_set``; its Monte Carlo error is at most 0.5 / sqrt(2000)."""


@dataclass(frozen=True)
class SettlePlan:
    """What more seeds would do for the undetermined options.

    ``seeds`` is the ``max_seeds`` of the ``seeds=auto`` command that would settle every
    undetermined option with an interval (call it helps, hurts or negligible) 80% of the time by its
    last round, if its effect is what this study measured, each round calling at the level of that
    command's looks (see :mod:`harness.study.designs.adaptive`), leaving out those in ``too_many``,
    which need more than :data:`MAX_SEEDS`; None when no option can be planned. ``new_runs`` is the
    trials it takes at most, and ``seconds_per_run`` this study's mean training time of a run.
    ``beyond`` lists the options that no number of seeds settles: the test set's own share of the
    noise, measured from per-example results, is too large for them; ``bounded`` those for which
    only the bound of a store without per-example results says so (the true share may well be
    smaller). ``no_interval`` lists those without an interval yet, which more seeds give one.
    """

    seeds: int | None = None
    new_runs: int = 0
    seconds_per_run: float = math.nan
    beyond: list[tuple[str, str]] = field(default_factory=list)
    bounded: list[tuple[str, str]] = field(default_factory=list)
    no_interval: list[tuple[str, str]] = field(default_factory=list)
    unsettled: list[tuple[str, str]] = field(default_factory=list)  # undetermined, with interval
    too_many: list[tuple[str, str]] = field(default_factory=list)  # need more than MAX_SEEDS


@dataclass
class Verdict:
    """Which options give most of the gain over the baseline, how sure that is, at what cost.

    Values and gains are in ``metric``'s unit (percent points of test accuracy by default), a
    gain being a change for the better (a fall, for a loss); times are in training seconds.
    ``chosen`` is the smallest top-ranked set of helping (trick, option) reaching ``share`` of
    ``total_gain``, the summed main effects of all helping options (0 when nothing helps);
    ``chosen_measured_gain`` is the chosen config's measured gain over the baseline (NaN when
    either was not run). ``plan`` says what more seeds would settle.
    """

    table: pd.DataFrame
    effects: pd.DataFrame
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
    chosen_measured_gain: float = math.nan
    n_excluded: int = 0
    n_running: int = 0
    n_results: int = 0
    n_configs: int = 0
    seeds: list[int] = field(default_factory=list)
    searched: bool = False  # an Optuna search: its best trial instead of a trick set
    design_lines: list[str] = field(default_factory=list)  # what the design is and aliases
    plan: SettlePlan = field(default_factory=SettlePlan)
    margin: float = stats.MARGIN
    alpha: float = stats.ALPHA
    best_trial: dict[str, Any] | None = None
    command: list[str] = field(default_factory=list)  # overrides that rerun the study (no seeds)
    metric: str = DEFAULT_METRIC  # the logged metric of the effects, gains, baseline and best


def _config_row(configs: pd.DataFrame, toggles: Mapping[str, str]) -> pd.Series | None:
    mask = np.ones(len(configs), dtype=bool)
    for trick, option in toggles.items():
        mask &= (configs[trick] == option).to_numpy()
    matches = configs.loc[mask]
    return None if matches.empty else matches.iloc[0]


def eighty_set_size(effects: np.ndarray, share: float) -> int:
    """Return how many of ``effects`` (sorted best first, all > 0) reach ``share`` of their sum."""
    if effects.size == 0:
        return 0
    cumulative = np.cumsum(effects) / effects.sum()
    return int(np.argmax(cumulative >= share - 1e-12)) + 1


def _best_per_trick(effects: pd.DataFrame) -> pd.DataFrame:
    """Return each trick's best helping option, best effect first."""
    helping = effects[effects["call"] == HELPS]
    if helping.empty:
        return helping
    best = helping.loc[helping.groupby("trick", sort=False)["effect_mean"].idxmax()]
    return best.sort_values("effect_mean", ascending=False, kind="stable")


def stability(
    tests: Sequence[OptionTest],
    share: float,
    alpha: float = stats.ALPHA,
    draws: int = STABILITY_DRAWS,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """Return each option's chance of being in the 80% set when the study is run again.

    A rerun's estimate of an option differs from this study's by two independent errors, this
    study's and the rerun's, so it is drawn as ``effect + sqrt(2) se t_df``. Each draw is called
    at the study's own family-wise level and the set is chosen from its helping options, as the
    study itself is. Options without an interval are never in a draw's set.
    """
    tested = [t for t in tests if t.tested]
    chances = {(t.trick, t.option): 0.0 for t in tests}
    if not tested:
        return chances
    level = stats.family_level(len(tested), alpha)
    rng = np.random.default_rng(seed)
    se = np.array([t.se for t in tested])
    df = np.array([t.df for t in tested])
    rerun = (np.array([t.effect for t in tested])[None, :]
             + math.sqrt(2.0) * se[None, :] * rng.standard_t(df, size=(draws, len(tested))))
    critical = np.array([stats.critical_t(level, d) for d in df])
    helping = np.where(rerun - critical * se > 0, rerun, -np.inf)
    tricks = sorted({t.trick for t in tested})
    columns = {trick: [i for i, t in enumerate(tested) if t.trick == trick] for trick in tricks}
    counts = np.zeros(len(tested))
    for row in helping:
        best = [(row[i], i) for trick in tricks for i in [max(columns[trick], key=row.__getitem__)]
                if np.isfinite(row[i])]
        best.sort(reverse=True)
        size = eighty_set_size(np.array([value for value, _ in best]), share)
        for _, index in best[:size]:
            counts[index] += 1
    for test, count in zip(tested, counts):
        chances[(test.trick, test.option)] = float(count / draws)
    return chances


def settle_plan(tests: Sequence[OptionTest], effects: pd.DataFrame, n_seeds: int, n_configs: int,
                alpha: float = stats.ALPHA, margin: float = stats.MARGIN,
                max_seeds: int = MAX_SEEDS, seconds_per_run: float = math.nan) -> SettlePlan:
    """Return the ``seeds=auto`` cap that settles the undetermined options (:class:`SettlePlan`).

    An option is planned as settled at ``s`` seeds when its projected detectable effect (the
    same noise model, t quantiles at the projected df, 80% power averaged over what today's
    spread says the noise could be) is at most its measured effect's size (it would be called
    helps or hurts) or at most ``margin`` less that size (its interval would fit inside
    ±margin: negligible), at the level of the last look of ``seeds=auto max_seeds=s``: alpha
    split over ``s`` looks, as many as a study that starts from one seed has, which is never
    fewer than the command will have. The test set's share does not shrink with seeds, so an
    option it alone keeps unsettled is ``beyond``.
    """
    calls = dict(zip(zip(effects["trick"], effects["option"]), effects["call"]))
    tested = sum(t.tested for t in tests)
    level = stats.family_level(tested, alpha)
    needed: list[int] = []
    planned_keys: list[tuple[str, str]] = []  # the options ``needed`` counts seeds for
    beyond, bounded, no_interval, unsettled = [], [], [], []
    for test in tests:
        if calls.get((test.trick, test.option)) != UNDETERMINED:
            continue
        key = (test.trick, test.option)
        if not test.tested:
            no_interval.append(key)
            continue
        unsettled.append(key)
        target = max(abs(test.effect), margin - abs(test.effect))
        if stats.detectable_effect(test.se_test, math.inf, level) >= target:
            (beyond if test.test_source == PER_EXAMPLE else bounded).append(key)
            continue
        planned_keys.append(key)
        for seeds in range(n_seeds + 1, max_seeds + 1):
            se, df = test.projected_se(seeds)
            look_level = stats.family_level(tested, alpha / seeds)
            if stats.detectable_effect(se, df, look_level, measured_df=test.df) <= target:
                needed.append(seeds)
                break
        else:
            needed.append(max_seeds + 1)
    planned = [s for s in needed if s <= max_seeds]
    too_many = [key for key, s in zip(planned_keys, needed) if s > max_seeds]
    seeds = max(planned) if planned else None
    return SettlePlan(seeds=seeds, new_runs=(seeds - n_seeds) * n_configs if seeds else 0,
                      seconds_per_run=seconds_per_run, beyond=beyond, bounded=bounded,
                      no_interval=no_interval, unsettled=unsettled, too_many=too_many)


def _best_trial(runs: pd.DataFrame, factors: Factors) -> dict[str, Any] | None:
    results = result_runs(runs, factors)
    if results.empty or "val_acc" not in results or results["val_acc"].isna().all():
        return None
    best = results.loc[results["val_acc"].astype(float).idxmax()]
    return {
        "run_id": best["run_id"],
        "toggles": {trick: str(best[trick]) for trick in factors},
        "val_acc": float(best["val_acc"]),
        "test_acc": float(best["test_acc"]),
    }


def pareto_verdict(
    runs: pd.DataFrame,
    factors: Factors,
    defaults: Mapping[str, str],
    share: float = 0.8,
    planned: Sequence[Mapping[str, str]] | None = None,
    searched: bool = False,
    images: float = math.nan,
    draws: int = STABILITY_DRAWS,
    examples: ExampleResults | None = None,
    alpha: float = stats.ALPHA,
    margin: float = stats.MARGIN,
    metric: str = DEFAULT_METRIC,
) -> Verdict:
    """Call every option, then find the fewest helping ones that give ``share`` of their gain.

    Helping options are ranked by effect (each trick's best). The k-th row stands for the config
    with the top-k at those options and the rest at defaults; its gain is the sum of the k main
    effects, each averaged over every partner config and seed (a single config's measured gain
    is noisier, and is shown beside it). The total gain is the last row's, so shares are of a
    gain built from tested effects only, and the reruns of :func:`stability` choose their sets
    the same way.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option; all defaults is the baseline config.
        share: The fraction of the total gain the chosen set must reach, 0.8 for the 80/20 rule.
        planned: The study's configs when it is not a full factorial (see missing_configs).
        searched: The study is a search: its best trial is reported instead of a set.
        images: Test-set size for runs that did not log it.
        draws: Simulated reruns for ``p_in_set`` (0 skips it).
        examples: The runs' per-example results (None: the bound for the test set's share).
        alpha: The family-wise error rate of the calls.
        margin: The band (in the metric's unit) inside which an effect does not matter.
        metric: The logged metric the effects, gains, baseline and best config are on; a gain
            is a fall of a metric where lower is better.

    Returns:
        The verdict.
    """
    configs = config_table(runs, factors)
    tests = option_tests(runs, factors, defaults, examples, images, metric)
    effects = effects_table(tests, alpha, margin)
    mean, sign = f"{metric}_mean", by_logged_name(metric).sign
    baseline_toggles = {trick: defaults[trick] for trick in factors}
    baseline = _config_row(configs, baseline_toggles)
    baseline_acc = math.nan if baseline is None else float(baseline[mean])
    baseline_seconds = math.nan if baseline is None else float(baseline["train_seconds_mean"])
    measured = configs.dropna(subset=[mean])
    if measured.empty:
        best_acc, best_seconds, best_config = math.nan, math.nan, {}
    else:
        best = measured.loc[(sign * measured[mean]).idxmax()]
        best_acc, best_seconds = float(best[mean]), float(best["train_seconds_mean"])
        best_config = {trick: str(best[trick]) for trick in factors}

    helping = _best_per_trick(effects) if not searched else effects.iloc[0:0]
    rows = []
    toggles = dict(baseline_toggles)
    summed_effect, summed_seconds = 0.0, 0.0
    for effect in helping.itertuples(index=False):
        toggles[effect.trick] = effect.option
        summed_effect += effect.effect_mean
        summed_seconds += effect.cost_delta_seconds
        row = _config_row(configs, toggles)
        if row is None or not np.isfinite(row[mean]):
            measured_gain, seconds = math.nan, baseline_seconds + summed_seconds
        else:
            measured_gain = sign * (float(row[mean]) - baseline_acc)
            seconds = float(row["train_seconds_mean"])
        rows.append((effect.trick, effect.option, summed_effect, measured_gain, seconds))
    total_gain = rows[-1][2] if rows else 0.0
    ranked = pd.DataFrame(rows, columns=["trick", "option", "cumulative_gain", "measured_gain",
                                         "train_seconds"])
    ranked["cumulative_share"] = (
        (ranked["cumulative_gain"] / total_gain).clip(lower=0.0) if total_gain > 0 else math.nan
    )
    keyed = effects.set_index(["trick", "option"])
    chosen_rows = ranked.iloc[0:0]
    if total_gain > 0:
        reaching = np.flatnonzero(ranked["cumulative_share"].to_numpy() >= share - 1e-12)
        chosen_rows = ranked.iloc[: reaching[0] + 1] if reaching.size else ranked
    rest = effects.drop(index=effects.index[effects.set_index(["trick", "option"]).index.isin(
        list(zip(ranked["trick"], ranked["option"])))])
    rest = rest.sort_values("effect_mean", ascending=False, kind="stable", na_position="last")
    table = pd.concat([ranked, rest[["trick", "option"]]], ignore_index=True)
    for name in ("call", "effect_mean", "ci_low", "ci_high", "p_adjusted"):
        table[name] = [keyed.loc[(t, o), name] for t, o in zip(table["trick"], table["option"])]
    probability = stability(tests, share, alpha, draws) if draws and not searched else {}
    table["p_in_set"] = [probability.get((t, o), math.nan)
                         for t, o in zip(table["trick"], table["option"])]
    table.insert(0, "rank", range(1, len(table) + 1))
    table = table[list(VERDICT_COLUMNS)]

    last = chosen_rows.iloc[-1] if not chosen_rows.empty else None
    chosen_seconds = math.nan if last is None else float(last["train_seconds"])
    all_seconds = float(ranked["train_seconds"].iloc[-1]) if len(ranked) else math.nan
    results = result_runs(runs, factors)
    seeds = sorted(int(s) for s in results["seed"].dropna().unique())
    # The advice is a new seeds=auto command, planned at the study-wide rate whatever this
    # verdict's own (a look of seeds=auto calls at a share of it).
    per_run = float(results["train_seconds"].mean()) if "train_seconds" in results else math.nan
    plan = settle_plan(tests, effects, max(len(seeds), 1), len(configs), stats.ALPHA, margin,
                       seconds_per_run=per_run)
    return Verdict(
        table=table,
        effects=effects,
        baseline_acc=baseline_acc,
        best_acc=best_acc,
        best_config=best_config,
        total_gain=total_gain,
        chosen=list(zip(chosen_rows["trick"], chosen_rows["option"])),
        chosen_share=math.nan if last is None else float(last["cumulative_share"]),
        chosen_seconds=chosen_seconds,
        best_seconds=best_seconds,
        baseline_seconds=baseline_seconds,
        cost_share=chosen_seconds / all_seconds if all_seconds else math.nan,
        missing=missing_configs(runs, factors, planned),
        share=share,
        chosen_measured_gain=math.nan if last is None else float(last["measured_gain"]),
        n_excluded=int((~(is_result(runs) | is_running(runs))).sum()),
        n_running=int(is_running(runs).sum()),
        n_results=len(results),
        n_configs=len(configs),
        seeds=seeds,
        searched=searched,
        plan=plan,
        margin=margin,
        alpha=alpha,
        metric=metric,
        best_trial=_best_trial(runs, factors) if searched else None,
    )


def open_options(effects: pd.DataFrame, plan: SettlePlan
                 ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split the undetermined options into those more seeds may settle and those they cannot.

    The rounds go on while the first list is not empty.

    Args:
        effects: The report's effects table (``trick``, ``option``, ``call``).
        plan: The report's :class:`SettlePlan`: its ``beyond`` and
            ``bounded`` options are those no number of seeds settles.

    Returns:
        (open, hopeless): the undetermined options in study order.
    """
    undetermined = [(trick, option) for trick, option, call
                    in zip(effects["trick"], effects["option"], effects["call"])
                    if call == UNDETERMINED]
    stuck = set(plan.beyond) | set(plan.bounded)
    return ([key for key in undetermined if key not in stuck],
            [key for key in undetermined if key in stuck])
