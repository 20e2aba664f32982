"""Text for people: the printout at the end of a study and the parent run's verdict.md."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.report.effects import HELPS, HURTS, UNDETERMINED
from harness.report.verdict import MAX_SEEDS, Verdict


def _signed(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.{digits}f}"


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _toggle_text(pairs: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{trick}={option}" for trick, option in pairs)


def _options(frame: pd.DataFrame) -> str:
    return _toggle_text(list(zip(frame["trick"], frame["option"])))


def seeds_argument(seeds: Sequence[int], count: int) -> str:
    """Return ``seeds=[...]`` with the study's seeds extended by the next integers to ``count``."""
    chosen = list(seeds)
    following = max(chosen, default=-1) + 1
    while len(chosen) < count:
        chosen.append(following)
        following += 1
    return "seeds=[" + ",".join(str(seed) for seed in chosen) + "]"


def _degenerate_sentence(verdict: Verdict) -> str | None:
    """Return the sentence of a study that has nothing to compare, else None."""
    if verdict.n_results == 0:
        running = f", {verdict.n_running} still running" if verdict.n_running else ""
        return (f"No trial has a result yet: {verdict.n_excluded} crashed, were pruned or "
                f"interrupted{running}.")
    if verdict.kind == "optuna":
        best = verdict.best_trial
        if best is None:
            return f"An Optuna search of {verdict.n_results} trials; none logged val_acc."
        return (f"An Optuna search, not a grid, so no option is called: of {verdict.n_results} "
                f"trials the best is {_toggle_text(list(best['toggles'].items()))} at "
                f"{best['val_acc']:.1f}% validation and {best['test_acc']:.1f}% test accuracy "
                f"(run {best['run_id']}).")
    if verdict.n_configs == 1:
        seeds = len(verdict.seeds)
        return (f"One config only ({_toggle_text(list(verdict.best_config.items()))}): "
                f"{verdict.best_acc:.1f}% test accuracy over {seeds} seed(s); there is nothing "
                f"to compare it with, so no option is called.")
    return None


def verdict_sentence(verdict: Verdict) -> str:
    """Return the answer: which options help, and which few give most of their gain, at what cost.

    Options that do not help are never in the set, and no share is negative. When nothing helps,
    the sentence says so and lists what hurts and what is undetermined.
    """
    degenerate = _degenerate_sentence(verdict)
    if degenerate:
        return degenerate
    effects = verdict.effects
    hurts = effects[effects["call"] == HURTS]
    undetermined = effects[effects["call"] == UNDETERMINED]
    others = []
    if len(hurts):
        others.append(f"hurts: {_options(hurts)}")
    if len(undetermined):
        others.append(f"undetermined: {_options(undetermined)}")
    rest = f" ({'; '.join(others)})" if others else ""
    baseline = ("" if np.isfinite(verdict.baseline_acc)
                else " The baseline config (all defaults) has no result, so the gain is the sum "
                     "of main effects.")
    if not verdict.chosen:
        return f"No option helps beyond noise, so no gain is claimed{rest}.{baseline}"
    count = len(verdict.chosen)
    noun, verb = ("option", "gives") if count == 1 else ("options", "give")
    measured = ("" if not np.isfinite(verdict.chosen_measured_gain)
                else f"; measured together: {verdict.chosen_measured_gain:+.1f} points")
    return (
        f"{count} {noun} ({_toggle_text(verdict.chosen)}) {verb} "
        f"{_percent(verdict.chosen_share)} of the {verdict.total_gain:+.1f}-point gain of all "
        f"options that help (summed main effects{measured}), at "
        f"{_percent(verdict.cost_share)} of their training time{rest}.{baseline}"
    )


def guidance(verdict: Verdict) -> list[str]:
    """Return what the numbers cannot say yet: one seed, undetermined options, how to resolve."""
    if verdict.n_configs < 2 or verdict.kind != "grid":
        return []
    lines = []
    if len(verdict.seeds) == 1:
        lines.append("One seed proves little: every interval's spread comes from partner "
                     "configs (interactions count as noise) and seed noise is not measured.")
    undetermined = verdict.effects[verdict.effects["call"] == UNDETERMINED]
    if len(undetermined):
        measured = undetermined["detectable"].notna()
        if measured.any():
            smallest = ", ".join(f"{row.trick}={row.option} ±{_number(row.detectable)}"
                                 for row in undetermined[measured].itertuples(index=False))
            lines.append(f"Undetermined means the interval includes 0; this study would detect "
                         f"(80% of the time) effects of at least: {smallest} points.")
        if not measured.all():
            names = ", ".join(f"{row.trick}={row.option}"
                              for row in undetermined[~measured].itertuples(index=False))
            lines.append(f"No interval exists for {names}: with one seed and a single partner "
                         f"config there is no spread to measure the noise with; more seeds "
                         f"give one.")
        resolve, command = _resolve_sentence(verdict)
        if resolve.strip(" ."):
            lines.append(resolve)
        if command:
            lines.append(f"It trains only the new seeds; the finished ones are reused: {command}")
    return lines


def grow_command(verdict: Verdict, count: int) -> str:
    """Return the command that runs the study with ``count`` seeds, or "" without its command."""
    if not verdict.command:
        return ""
    words = ["python", "-m", "harness.run", *verdict.command, seeds_argument(verdict.seeds, count)]
    return " ".join(shlex.quote(word) for word in words)


def _resolve_sentence(verdict: Verdict) -> tuple[str, str]:
    """Say which effect size more seeds would resolve; return it and the command that runs them."""
    n_seeds = max(len(verdict.seeds), 1)
    command = ""
    parts = []
    for points, count in verdict.resolve:
        size = f"±{points:g} point{'' if points == 1 else 's'}"
        if count is None:
            parts.append(f"{size} is beyond the test set's own noise "
                         f"(±{_number(verdict.floor_points, 2)} points per accuracy) at any "
                         f"number of seeds")
        elif count <= n_seeds:
            parts.append(f"effects of {size} would have been called: these are smaller")
            break
        elif count <= MAX_SEEDS:
            parts.append(f"to resolve {size}, run {seeds_argument(verdict.seeds, count)}")
            command = grow_command(verdict, count)
            break
        else:
            parts.append(f"{size} would need about {count} seeds")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + ".", command


def _still_running(verdict: Verdict) -> str:
    return (f"{verdict.n_running} trial(s) still running elsewhere; the report will be complete "
            f"when the last worker ends.")


def _missing_text(missing: Sequence[Mapping[str, str]], limit: int = 5) -> str:
    shown = "; ".join(_toggle_text(list(config.items())) for config in missing[:limit])
    more = f"; and {len(missing) - limit} more" if len(missing) > limit else ""
    return f"{len(missing)} grid config(s) have no result: {shown}{more}."


def _verdict_rows(verdict: Verdict) -> list[list[str]]:
    return [
        [
            str(row.rank),
            row.trick,
            str(row.option),
            row.call,
            _signed(row.effect_mean),
            f"[{_signed(row.ci_adj_low)}, {_signed(row.ci_adj_high)}]",
            "" if not np.isfinite(row.p_adjusted) else f"{row.p_adjusted:.3f}",
            "" if not np.isfinite(row.cumulative_gain) else _signed(row.cumulative_gain),
            "" if not np.isfinite(row.measured_gain) else _signed(row.measured_gain),
            "" if not np.isfinite(row.cumulative_share) else _percent(row.cumulative_share),
            "" if not np.isfinite(row.p_in_set) else _percent(row.p_in_set),
        ]
        for row in verdict.table.itertuples(index=False)
    ]


_VERDICT_HEADER = ["rank", "trick", "option", "call", "effect", "adj. CI", "p adj.",
                   "cum. gain", "measured", "cum. share", "P(in set)"]


def format_verdict(verdict: Verdict) -> str:
    """Return a monospace text block to print at the end of a study.

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.

    Returns:
        The baseline and best config, the table of calls (effects in accuracy points with
        Holm-adjusted intervals; cumulative gains are summed main effects, beside the measured
        gain of the same config where it was run), the sentence,
        the guidance, and what is missing, excluded or still running.
    """
    lines = []
    if verdict.n_results and verdict.kind == "grid" and verdict.n_configs > 1:
        lines.append(
            f"Baseline (all defaults): {_number(verdict.baseline_acc)}% test accuracy in "
            f"{_number(verdict.baseline_seconds)} s; best config: {_number(verdict.best_acc)}% in "
            f"{_number(verdict.best_seconds)} s "
            f"({_toggle_text(list(verdict.best_config.items()))}).")
        body = _verdict_rows(verdict)
        if body:
            widths = [max(len(cell) for cell in column) for column in zip(_VERDICT_HEADER, *body)]
            for cells in [_VERDICT_HEADER, *body]:
                text = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
                lines.append(text.rstrip())
    lines.append(verdict_sentence(verdict))
    lines += guidance(verdict)
    if verdict.missing and verdict.n_results:
        lines.append(_missing_text(verdict.missing))
    if verdict.n_excluded and verdict.n_results:
        lines.append(f"{verdict.n_excluded} run(s) crashed, were pruned or interrupted and are "
                     f"not counted.")
    if verdict.n_running:
        lines.append(_still_running(verdict))
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


CALL_MEANING = (
    f"`{HELPS}` / `{HURTS}`: the option's Holm-adjusted interval excludes 0 (at most a 5% chance "
    f"over the whole study of any such call being wrong). `{UNDETERMINED}`: the interval "
    f"includes 0, so this study cannot tell; run more seeds to resolve it."
)


def verdict_markdown(verdict: Verdict, configs: pd.DataFrame) -> str:
    """Return the report as markdown for the study's parent run.

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.
        configs: From :func:`harness.report.config_table`.

    Returns:
        Markdown with the verdict, its guidance, the table of calls, all effects and all configs.
    """
    config_view = configs.drop(columns=["run_ids"], errors="ignore")
    facts = [
        f"- Baseline (all defaults): {_number(verdict.baseline_acc)}% test accuracy, "
        f"{_number(verdict.baseline_seconds)} s training",
        f"- Best config: {_number(verdict.best_acc)}% "
        f"({_toggle_text(list(verdict.best_config.items()))}), "
        f"{_number(verdict.best_seconds)} s training",
        f"- Seeds: {', '.join(str(s) for s in verdict.seeds) or 'none'}; test-set noise "
        f"±{_number(verdict.floor_points, 2)} points per accuracy (binomial)",
    ]
    facts += [f"- {line}" for line in guidance(verdict)]
    if verdict.missing:
        facts.append(f"- Missing: {_missing_text(verdict.missing)}")
    if verdict.n_excluded:
        facts.append(f"- Not counted: {verdict.n_excluded} crashed, pruned or interrupted run(s)")
    if verdict.n_running:
        facts.append(f"- {_still_running(verdict)}")
    sections = [
        "# Ablation report",
        f"**{verdict_sentence(verdict)}**",
        "\n".join(facts),
        CALL_MEANING,
        "## Calls, the 80% set and its stability (accuracy points)",
        markdown_table(verdict.table),
        "## Main effects (paired over seeds and the other tricks)",
        markdown_table(verdict.effects),
        "## Configs",
        markdown_table(config_view),
    ]
    return "\n\n".join(sections) + "\n"
