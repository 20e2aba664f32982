"""The 80/20 verdict: the few options that carry most of a gain distinguishable from noise.

Only options called ``helps`` (see :mod:`harness.report.effects`) can be in the set, so every
share is a share of a real gain and none is negative. The set's stability is the chance that an
option is in it when the study is rerun, estimated by resampling seeds (or, with one seed, the
partner configs of each option).
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
    Pairs,
    call_of,
    main_effects,
    option_pairs,
    option_test,
    pair_images,
)
from harness.report.tables import (
    Factors,
    config_table,
    is_result,
    is_running,
    missing_configs,
    result_runs,
)

VERDICT_COLUMNS = (
    "rank",
    "trick",
    "option",
    "call",
    "effect_mean",
    "ci_adj_low",
    "ci_adj_high",
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
effect. ``p_in_set`` is the bootstrap probability of being in the 80% set."""

RESOLVE_POINTS = (1.0, 2.0, 5.0)
"""Effect sizes (accuracy points) the "seeds needed" advice plans for: the first one the test
set's own noise allows."""

MAX_SEEDS = 20
"""The most seeds the advice proposes before it moves on to a larger effect size."""

BOOTSTRAP_RESAMPLES = 200
"""Resamples behind ``p_in_set``: its standard error is at most 0.5 / sqrt(200) ≈ 0.035."""


@dataclass
class Verdict:
    """Which options give most of the gain over the baseline, how sure that is, at what cost.

    Accuracies and gains are in percent points of test accuracy; times in training seconds.
    ``chosen`` is the smallest top-ranked set of helping (trick, option) reaching ``share`` of
    ``total_gain``, the summed main effects of all helping options (0 when nothing helps);
    ``chosen_measured_gain`` is the chosen config's measured gain over the baseline (NaN when
    either was not run). ``resolve`` pairs each of :data:`RESOLVE_POINTS` with the seeds that
    would resolve it for every undetermined option (None: the test set's own noise forbids it).
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
    kind: str = "grid"
    resolve: list[tuple[float, int | None]] = field(default_factory=list)
    floor_points: float = math.nan
    best_trial: dict[str, Any] | None = None
    command: list[str] = field(default_factory=list)  # overrides that rerun the study (no seeds)


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
    pairs: Sequence[Pairs],
    images: float,
    share: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """Return each option's probability of being in the 80% set when the runs are resampled.

    With several seeds, whole seeds are drawn with replacement (for every option at once, as a
    rerun would); with one seed, each option's pairs are drawn with replacement over partner
    configs. Each resample's effects are tested against the study's own standard errors (a
    resample with a seed drawn twice would understate the spread), Holm-corrected and called as
    the study itself is, and its set is chosen from the summed effects of its helping options.
    """
    rng = np.random.default_rng(seed)
    seeds = np.unique(np.concatenate([p.seed for p in pairs])) if pairs else np.array([])
    tests = [option_test(found, pair_images(found, images)) for found in pairs]
    counts = {(p.trick, p.option): 0 for p in pairs}
    for _ in range(resamples):
        drawn = rng.choice(seeds, size=len(seeds)) if len(seeds) >= 2 else None
        means = []
        for found in pairs:
            n = len(found.difference)
            if drawn is not None:
                index = np.concatenate([np.flatnonzero(found.seed == s) for s in drawn])
            else:
                index = rng.integers(0, n, n) if n else np.zeros(0, dtype=int)
            means.append(float(np.mean(found.difference[index])) if index.size else math.nan)
        p_values = [stats.two_sided_p(mean, float(test["se"]), float(test["df"]))
                    for mean, test in zip(means, tests)]
        adjusted, _ = stats.holm(p_values)
        best: dict[str, tuple[float, str]] = {}
        for found, effect, p in zip(pairs, means, adjusted):
            if call_of(effect, p) == HELPS and effect > best.get(found.trick, (-math.inf, ""))[0]:
                best[found.trick] = (effect, found.option)
        ranked = sorted(best.items(), key=lambda item: -item[1][0])
        size = eighty_set_size(np.array([effect for _, (effect, _) in ranked]), share)
        for trick, (_, option) in ranked[:size]:
            counts[(trick, option)] += 1
    return {key: count / resamples for key, count in counts.items()}


def _seeds_to_resolve(
    effects: pd.DataFrame, n_seeds: int
) -> tuple[list[tuple[float, int | None]], float]:
    """Return, for each of RESOLVE_POINTS, the seeds resolving it for every undetermined option.

    Returns:
        ``(resolve, floor)``: ``resolve`` pairs each effect size with the seeds (None when the
        test set's own noise forbids it; empty when nothing is undetermined); ``floor`` is the
        largest binomial floor of one accuracy (points).
    """
    tested = effects[np.isfinite(effects["p_value"].to_numpy(float))]
    rejected = int((tested["call"] != UNDETERMINED).sum())
    level = 1.0 - stats.ALPHA / max(len(tested) - rejected, 1)
    undetermined = tested[tested["call"] == UNDETERMINED]
    floor = float(np.nanmax(effects["se_floor"])) if effects["se_floor"].notna().any() else math.nan
    resolve: list[tuple[float, int | None]] = []
    for points in RESOLVE_POINTS if len(undetermined) else ():
        needed = [stats.seeds_needed(row.se_spread, n_seeds, row.se_floor, points, level)
                  for row in undetermined.itertuples(index=False)]
        resolve.append((points, None if None in needed else max(needed)))
    return resolve, floor


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
    kind: str = "grid",
    images: float = math.nan,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Verdict:
    """Call every option, then find the fewest helping ones that give ``share`` of their gain.

    Helping options are ranked by effect (each trick's best). The k-th row stands for the config
    with the top-k at those options and the rest at defaults; its gain is the sum of the k main
    effects, each averaged over every partner config and seed (a single config's measured gain
    is noisier, and is shown beside it). The total gain is the last row's, so shares are of a
    gain built from tested effects only, and the bootstrap chooses its sets the same way.

    Args:
        runs: One row per trial run.
        factors: Trick → options in study order.
        defaults: Trick → its neutral option; all defaults is the baseline config.
        share: The fraction of the total gain the chosen set must reach, 0.8 for the 80/20 rule.
        planned: The study's configs when it is not a full factorial (see missing_configs).
        kind: ``grid`` or ``optuna`` (a search: its best trial is reported instead of a set).
        images: Test-set size for runs that did not log it (NaN: no binomial floor).
        resamples: Bootstrap resamples for ``p_in_set`` (0 skips it).

    Returns:
        The verdict.
    """
    configs = config_table(runs, factors)
    pairs = option_pairs(runs, factors, defaults)
    effects = main_effects(runs, factors, defaults, images=images, pairs=pairs)
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

    helping = _best_per_trick(effects) if kind == "grid" else effects.iloc[0:0]
    rows = []
    toggles = dict(baseline_toggles)
    summed_effect, summed_seconds = 0.0, 0.0
    for effect in helping.itertuples(index=False):
        toggles[effect.trick] = effect.option
        summed_effect += effect.effect_mean
        summed_seconds += effect.cost_delta_seconds
        row = _config_row(configs, toggles)
        if row is None or not np.isfinite(row["test_acc_mean"]):
            measured_gain, seconds = math.nan, baseline_seconds + summed_seconds
        else:
            measured_gain = float(row["test_acc_mean"]) - baseline_acc
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
    for name in ("call", "effect_mean", "ci_adj_low", "ci_adj_high", "p_adjusted"):
        table[name] = [keyed.loc[(t, o), name] for t, o in zip(table["trick"], table["option"])]
    probability = stability(pairs, images, share, resamples) if resamples and kind == "grid" \
        else {}
    table["p_in_set"] = [probability.get((t, o), math.nan)
                         for t, o in zip(table["trick"], table["option"])]
    table.insert(0, "rank", range(1, len(table) + 1))
    table = table[list(VERDICT_COLUMNS)]

    last = chosen_rows.iloc[-1] if not chosen_rows.empty else None
    chosen_seconds = math.nan if last is None else float(last["train_seconds"])
    all_seconds = float(ranked["train_seconds"].iloc[-1]) if len(ranked) else math.nan
    results = result_runs(runs, factors)
    seeds = sorted(int(s) for s in results["seed"].dropna().unique())
    resolve, floor = _seeds_to_resolve(effects, max(len(seeds), 1))
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
        kind=kind,
        resolve=resolve,
        floor_points=floor,
        best_trial=_best_trial(runs, factors) if kind == "optuna" else None,
    )
