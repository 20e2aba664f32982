"""The report's two figures: the calls with the 80% set, and cost against accuracy per config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or worker machines

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report.effects import HELPS, HURTS, NEGLIGIBLE, UNDETERMINED  # noqa: E402
from harness.report.tables import CONFIG_STAT_COLUMNS  # noqa: E402
from harness.report.verdict import Verdict  # noqa: E402
from harness.training.metrics import by_logged_name  # noqa: E402

DPI = 120  # dots per inch: sharp enough in the MLflow UI, small files (~50 kB)
CALL_COLOURS = {HELPS: "tab:green", HURTS: "tab:red", NEGLIGIBLE: "tab:blue",
                UNDETERMINED: "tab:gray"}
LABELLED_CONFIGS = 12  # beyond this, only the frontier and the baseline are labelled


def pareto_chart(verdict: Verdict, path: str | Path) -> Path:
    """Draw every option's effect, coloured by its call, with the cumulative share of the gain.

    Bars are horizontal (so 10 or more options keep readable labels), one per option in the
    verdict's order, with family-wise intervals as whiskers and the ±margin band of
    ``negligible`` shaded. The line (top axis, 0-100%) is the cumulative share of the gain over
    the helping options only; the dashed line marks the target.

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.
        path: The PNG file to write.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    table = verdict.table
    figure, axis = plt.subplots(figsize=(7.5, max(3.0, 0.45 * len(table) + 1.8)))
    try:
        if table.empty:
            axis.text(0.5, 0.5, "no option effects to show", ha="center", va="center")
            axis.set_axis_off()
        else:
            positions = np.arange(len(table))
            effects = np.nan_to_num(table["effect_mean"].to_numpy(float))
            low = table["ci_low"].fillna(table["effect_mean"]).to_numpy(float)
            high = table["ci_high"].fillna(table["effect_mean"]).to_numpy(float)
            errors = np.vstack([np.clip(effects - np.nan_to_num(low), 0, None),
                                np.clip(np.nan_to_num(high) - effects, 0, None)])
            colours = [CALL_COLOURS[call] for call in table["call"]]
            axis.barh(positions, effects, xerr=errors, capsize=3, color=colours)
            axis.axvspan(-verdict.margin, verdict.margin, color="tab:blue", alpha=0.08,
                         label=f"±{verdict.margin:g} (negligible)")
            axis.axvline(0.0, color="black", linewidth=0.8)
            labels = [f"{row.trick}={row.option} ({row.call})"
                      for row in table.itertuples(index=False)]
            axis.set_yticks(positions, labels, fontsize=8)
            axis.invert_yaxis()  # rank 1 on top
            tested = int(np.isfinite(table["ci_low"].to_numpy(float)).sum())
            scored = by_logged_name(verdict.metric)
            axis.set_xlabel(f"effect on {scored.label} ({scored.unit}"
                            + ("" if scored.higher_is_better else ", a fall")
                            + "); intervals hold jointly at "
                            f"{100 * (1 - verdict.alpha):.0f}% (Bonferroni over {tested})")
            shares = table["cumulative_share"].to_numpy(float)
            helping = np.isfinite(shares)
            if helping.any():
                share_axis = axis.twiny()
                share_axis.plot(100 * np.clip(shares[helping], 0, 1), positions[helping], "o-",
                                color="tab:blue")
                share_axis.axvline(100 * verdict.share, color="tab:blue", linestyle="--",
                                   linewidth=1)
                share_axis.set_xlim(0, 105)
                share_axis.set_xlabel("cumulative share of the gain of the helping options (%)",
                                      color="tab:blue")
        gain = (f" (gain {verdict.total_gain:+.1f})"
                if math.isfinite(verdict.total_gain) and verdict.total_gain > 0 else "")
        axis.set_title(f"Options by call and effect{gain}", fontsize=10)
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


# Vertical offsets, in points, tried in turn for a label until it overlaps no label placed
# before it: above and below its point, then further out.
_LABEL_OFFSETS = (8, -12, 18, -22, 28, -32, 38, -42, 48, -52)


def place_labels(axis: plt.Axes, points: list[tuple[str, float, float]]) -> list[plt.Text]:
    """Label points so that no two labels overlap, each as near its point as the others allow.

    Labels are placed in the given order; each takes the first offset of
    :data:`_LABEL_OFFSETS` at which its box (as drawn) overlaps no earlier one. Two configs of
    nearly the same cost and accuracy get their labels one above the other.

    Returns:
        The label artists, in the order of ``points``.
    """
    renderer = axis.figure.canvas.get_renderer()
    placed: list[matplotlib.transforms.Bbox] = []
    texts = []
    for label, x, y in points:
        text = None
        for offset in _LABEL_OFFSETS:
            if text is not None:
                text.remove()
            text = axis.annotate(label, (x, y), textcoords="offset points", xytext=(5, offset),
                                 fontsize=7)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(text.get_window_extent(renderer))
        texts.append(text)
    return texts


def cost_accuracy_chart(
    configs: pd.DataFrame, path: str | Path, defaults: Mapping[str, str] | None = None
) -> Path:
    """Plot mean test accuracy against mean training time per config, with the Pareto frontier.

    Error bars are the standard deviation over seeds; the step line is the best accuracy
    reachable for at most that many training seconds. With more than
    :data:`LABELLED_CONFIGS` configs only the frontier and the baseline are labelled, and no
    two labels overlap (:func:`place_labels`).

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
    figure, axis = plt.subplots(figsize=(8.0, 5.0))
    try:
        if measured.empty:
            axis.text(0.5, 0.5, "no config with accuracy and time", ha="center", va="center")
            axis.set_axis_off()
        else:
            costs = measured["train_seconds_mean"].to_numpy(dtype=float)
            accuracies = measured["test_acc_mean"].to_numpy(dtype=float)
            spread = np.nan_to_num(measured["test_acc_std"].to_numpy(float))
            axis.errorbar(costs, accuracies, yerr=spread, fmt="o", capsize=3, color="tab:blue")
            frontier = pareto_frontier(costs, accuracies)
            labels = _config_labels(measured, defaults)
            shown = (set(range(len(labels))) if len(labels) <= LABELLED_CONFIGS
                     else set(frontier.tolist()) | {i for i, t in enumerate(labels)
                                                    if t == "baseline"})
            axis.step(costs[frontier], accuracies[frontier], where="post", color="tab:red",
                      label="Pareto frontier")
            axis.legend(loc="lower right")
            axis.set_xlabel("training time per run (s)")
            axis.set_ylabel("test accuracy (%)")
            figure.tight_layout()  # the final layout first: labels are placed in its points
            order = sorted(shown, key=lambda i: (costs[i], accuracies[i]))
            place_labels(axis, [(labels[i], costs[i], accuracies[i]) for i in order])
        axis.set_title("Cost against accuracy per config (mean ± std over seeds)")
        figure.tight_layout()
        figure.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return path
