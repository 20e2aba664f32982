"""The report's two figures: the Pareto chart of tricks and the cost-versus-accuracy chart."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or worker machines

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report import CONFIG_STAT_COLUMNS, Verdict  # noqa: E402

DPI = 120  # dots per inch: sharp enough in the MLflow UI, small files (~50 kB)


def _finite(values: pd.Series) -> np.ndarray:
    return np.nan_to_num(values.to_numpy(dtype=float), nan=0.0)


def pareto_chart(verdict: Verdict, path: str | Path) -> Path:
    """Draw each trick's effect, best first, with the cumulative share of the total gain.

    Bars are the main effects of each trick's best option in accuracy points, with their 95%
    interval; the line (right axis) is the cumulative share of the best config's gain, and the
    dashed line marks the target share (80%).

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.
        path: The PNG file to write.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    table = verdict.table
    figure, effect_axis = plt.subplots(figsize=(max(5.0, 1.1 * len(table) + 2.5), 4.0))
    try:
        if table.empty:
            effect_axis.text(0.5, 0.5, "no trick effects to show", ha="center", va="center")
            effect_axis.set_axis_off()
        else:
            positions = np.arange(len(table))
            effects = _finite(table["effect_mean"])
            errors = np.vstack(
                [
                    np.clip(
                        effects - _finite(table["ci95_low"].fillna(table["effect_mean"])), 0, None
                    ),
                    np.clip(
                        _finite(table["ci95_high"].fillna(table["effect_mean"])) - effects, 0, None
                    ),
                ]
            )
            colours = ["tab:blue" if effect > 0 else "tab:gray" for effect in effects]
            effect_axis.bar(positions, effects, yerr=errors, capsize=4, color=colours)
            effect_axis.axhline(0.0, color="black", linewidth=0.8)
            labels = [f"{row.trick}={row.option}" for row in table.itertuples(index=False)]
            effect_axis.set_xticks(positions, labels, rotation=30, ha="right")
            effect_axis.set_ylabel("effect on test accuracy (points)")
            if table["cumulative_share"].notna().any():
                share_axis = effect_axis.twinx()
                share_axis.plot(positions, 100 * table["cumulative_share"], "o-", color="tab:red")
                share_axis.axhline(
                    100 * verdict.share, color="tab:red", linestyle="--", linewidth=1
                )
                share_axis.set_ylabel("cumulative share of the gain (%)", color="tab:red")
                share_axis.set_ylim(0, max(110.0, 105 * table["cumulative_share"].max()))
        gain = (
            ""
            if not math.isfinite(verdict.total_gain)
            else f" (total gain {verdict.total_gain:+.1f})"
        )
        effect_axis.set_title(f"Tricks ranked by effect{gain}")
        figure.tight_layout()
        figure.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return path


def _config_labels(configs: pd.DataFrame, defaults: Mapping[str, str] | None) -> list[str]:
    """Label each config by its toggles (the columns before the statistics of configs.csv).

    With ``defaults``, only the non-default toggles are named and the all-default config is
    "baseline"; without, every option is listed in trick order.
    """
    tricks = list(configs.columns[: list(configs.columns).index(CONFIG_STAT_COLUMNS[0])])
    labels = []
    for _, row in configs[tricks].iterrows():
        if defaults is None:
            labels.append(",".join(str(row[trick]) for trick in tricks))
            continue
        changed = [f"{trick}={row[trick]}" for trick in tricks if row[trick] != defaults.get(trick)]
        labels.append("+".join(changed) if changed else "baseline")
    return labels


def pareto_frontier(costs: np.ndarray, accuracies: np.ndarray) -> np.ndarray:
    """Return the indices of the configs no cheaper config beats, cheapest first.

    Args:
        costs: Training seconds per config.
        accuracies: Mean test accuracy per config.

    Returns:
        Indices into the inputs, by increasing cost and increasing accuracy.
    """
    order = np.lexsort((-accuracies, costs))  # by cost, the most accurate first among equal costs
    frontier, best = [], -math.inf
    for index in order:
        if np.isfinite(costs[index]) and accuracies[index] > best:
            frontier.append(index)
            best = accuracies[index]
    return np.asarray(frontier, dtype=int)


def cost_accuracy_chart(
    configs: pd.DataFrame, path: str | Path, defaults: Mapping[str, str] | None = None
) -> Path:
    """Plot mean test accuracy against mean training time per config, with the Pareto frontier.

    Error bars are the standard deviation over seeds; the step line is the best accuracy
    reachable for at most that many training seconds.

    Args:
        configs: From :func:`harness.report.config_table`.
        path: The PNG file to write.
        defaults: Trick → neutral option; when given, points are labelled by their non-default
            toggles only.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    measured = configs.dropna(subset=["test_acc_mean", "train_seconds_mean"])
    figure, axis = plt.subplots(figsize=(7.0, 4.5))
    try:
        if measured.empty:
            axis.text(0.5, 0.5, "no config with accuracy and time", ha="center", va="center")
            axis.set_axis_off()
        else:
            costs = measured["train_seconds_mean"].to_numpy(dtype=float)
            accuracies = measured["test_acc_mean"].to_numpy(dtype=float)
            spread = _finite(measured["test_acc_std"])
            axis.errorbar(costs, accuracies, yerr=spread, fmt="o", capsize=3, color="tab:blue")
            for cost, accuracy, label in zip(costs, accuracies, _config_labels(measured, defaults)):
                axis.annotate(
                    label, (cost, accuracy), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
            frontier = pareto_frontier(costs, accuracies)
            axis.step(
                costs[frontier],
                accuracies[frontier],
                where="post",
                color="tab:red",
                label="Pareto frontier",
            )
            axis.legend(loc="lower right")
            axis.set_xlabel("training time per run (s)")
            axis.set_ylabel("test accuracy (%)")
        axis.set_title("Cost against accuracy per config (mean ± std over seeds)")
        figure.tight_layout()
        figure.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return path
