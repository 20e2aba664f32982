"""Text for people: the printout at the end of a study and the parent run's verdict.md."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.report.effects import HELPS, HURTS, NEGLIGIBLE, UNDETERMINED
from harness.report.tables import DEFAULT_METRIC
from harness.report.verdict import MAX_SEEDS as MAX_PLANNED
from harness.report.verdict import Verdict
from harness.training.metrics import by_logged_name


def _signed(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.{digits}f}"


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}%"


def _level(value: float) -> str:
    # A confidence level or error rate to the digit it has: 95%, 97.5%, 2.5%.
    return f"{100 * value:.4g}%"


def _number(value: float, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def unit_of(verdict: Verdict) -> str:
    """Return the unit of the verdict's metric: ``points`` for accuracies."""
    return by_logged_name(verdict.metric).unit


def measured_text(verdict: Verdict, value: float) -> str:
    """Return a config's value of the verdict's metric: ``73.1% test accuracy``."""
    scored = by_logged_name(verdict.metric)
    if scored.unit == "points":
        return f"{_number(value)}% {scored.label}"
    return f"{_number(value, 3)} {scored.unit} {scored.label}"


def metric_line(verdict: Verdict) -> list[str]:
    """Return, for a metric other than test accuracy, what its effects and gains mean."""
    if verdict.metric == DEFAULT_METRIC:
        return []
    scored = by_logged_name(verdict.metric)
    way = ("higher is better" if scored.higher_is_better
           else "lower is better, so an effect or gain is how much an option lowers it")
    noise = ("" if scored.share_of_examples else
             "; the intervals cover the training seeds' noise, for this test set only (the test "
             "set's own sampling noise is measured for test accuracy alone)")
    return [f"Effects are on {verdict.metric} ({scored.label}, {scored.unit}): {way}{noise}."]


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
    if verdict.searched:
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
    the sentence says so and lists what hurts, what is negligible and what is undetermined.
    """
    degenerate = _degenerate_sentence(verdict)
    if degenerate:
        return degenerate
    effects = verdict.effects
    others = []
    for call in (HURTS, NEGLIGIBLE, UNDETERMINED):
        chosen = effects[effects["call"] == call]
        if len(chosen):
            others.append(f"{call}: {_options(chosen)}")
    rest = f" ({'; '.join(others)})" if others else ""
    baseline = ("" if np.isfinite(verdict.baseline_acc)
                else " The baseline config (all defaults) has no result, so the gain is the sum "
                     "of main effects.")
    if not verdict.chosen:
        return f"No option helps beyond noise, so no gain is claimed{rest}.{baseline}"
    count = len(verdict.chosen)
    noun, verb = ("option", "gives") if count == 1 else ("options", "give")
    measured = ("" if not np.isfinite(verdict.chosen_measured_gain)
                else f"; measured together: {verdict.chosen_measured_gain:+.1f} {unit_of(verdict)}")
    return (
        f"{count} {noun} ({_toggle_text(verdict.chosen)}) {verb} "
        f"{_percent(verdict.chosen_share)} of the {verdict.total_gain:+.1f}-"
        f"{unit_of(verdict).removesuffix('s')} gain of all "
        f"options that help (summed main effects{measured}), at "
        f"{_percent(verdict.cost_share)} of their training time{rest}.{baseline}"
    )


def calls_line(verdict: Verdict) -> str:
    """Return how sure the calls are: the family, its level and the margin."""
    tested = int(np.isfinite(verdict.effects["ci_low"].to_numpy(float)).sum())
    return (f"Intervals are family-wise: all {tested} hold together at "
            f"{_level(1 - verdict.alpha)} (Bonferroni), so any wrong call has at most a "
            f"{_level(verdict.alpha)} chance; negligible means inside ±{verdict.margin:g} "
            f"{unit_of(verdict)} (margin={verdict.margin:g}).")


def guidance(verdict: Verdict) -> list[str]:
    """Return what the numbers cannot say yet: undetermined options and how to settle them."""
    if verdict.n_configs < 2 or verdict.searched:
        return []
    lines = [*metric_line(verdict), calls_line(verdict)]
    if len(verdict.seeds) == 1:
        lines.append("One seed: the run-to-run noise is measured by the partner configs, with "
                     "each trick's two-way interactions taken out where the design allows; "
                     "higher-order interactions are assumed small. More seeds measure it "
                     "directly.")
    undetermined = verdict.effects[verdict.effects["call"] == UNDETERMINED]
    if not len(undetermined):
        return lines
    measured = undetermined["detectable"].notna()
    if measured.any():
        smallest = ", ".join(f"{row.trick}={row.option} ±{_number(row.detectable)}"
                             for row in undetermined[measured].itertuples(index=False))
        lines.append(f"Undetermined means the interval includes 0 and reaches past "
                     f"±{verdict.margin:g}; this study would call (80% of the time) effects of "
                     f"at least: {smallest} {unit_of(verdict)}.")
    plan = verdict.plan
    if plan.no_interval:
        lines.append(f"No interval exists yet for {_toggle_text(plan.no_interval)}: with one "
                     f"seed and a single pair there is no spread to measure the noise with; "
                     f"more seeds give one.")
    if plan.beyond:
        lines.append(f"{_toggle_text(plan.beyond)}: beyond this test set's own noise at any "
                     f"number of seeds (its share of the paired difference is too large for "
                     f"the effect and the margin); a larger test set would settle it.")
    if plan.bounded:
        why, cure = ((f"per-example results are kept for test accuracy only, so the test set's "
                      f"share of {verdict.metric}", "")
                     if verdict.metric != DEFAULT_METRIC else
                     ("this store's runs have no per-example results, so the test set's share",
                      "; runs logged by this version measure it"))
        lines.append(f"{_toggle_text(plan.bounded)}: {why} is bounded, not measured, and the "
                     f"bound alone is too large for the effect and the margin at any number of "
                     f"seeds{cure}.")
    settle = [key for key in plan.unsettled
              if key not in plan.beyond + plan.bounded + plan.too_many]
    if settle and plan.seeds is not None:
        command = settle_command(verdict, plan.seeds)
        hours = duration_text(plan.new_runs * plan.seconds_per_run)
        took = f", about {hours} of training at this study's pace" if hours else ""
        lines.append(f"To settle {_toggle_text(settle)}: {auto_arguments(verdict, plan.seeds)} "
                     f"adds a seed per round until every option is settled, at most "
                     f"{plan.new_runs} more runs{took}; the finished ones are reused"
                     + (f": {command}" if command else "."))
    if plan.too_many:
        lines.append(f"{_toggle_text(plan.too_many)} would need more than {MAX_PLANNED} seeds "
                     f"to settle at their measured effects.")
    return lines


def auto_arguments(verdict: Verdict, max_seeds: int) -> str:
    """Return ``seeds=auto max_seeds=N``, with the offset of a study whose seeds start past 0."""
    offset = min(verdict.seeds, default=0)
    return f"seeds=auto max_seeds={max_seeds}" + (f" seed_offset={offset}" if offset else "")


def settle_command(verdict: Verdict, max_seeds: int) -> str:
    """Return the ``seeds=auto`` command that settles the study, or "" without its command."""
    if not verdict.command:
        return ""
    words = ["python", "-m", "harness.run", *verdict.command,
             *auto_arguments(verdict, max_seeds).split()]
    return " ".join(shlex.quote(word) for word in words)


def duration_text(seconds: float) -> str:
    """Return ``'1 h 05 min'``, ``'12 min'`` or ``'40 s'`` for a positive finite time, else ''."""
    if not math.isfinite(seconds) or seconds <= 0:
        return ""
    if seconds < 59.5:
        return f"{max(1, round(seconds))} s"
    minutes = max(1, round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def grow_command(verdict: Verdict, count: int) -> str:
    """Return the command that runs the study with ``count`` seeds, or "" without its command."""
    if not verdict.command:
        return ""
    words = ["python", "-m", "harness.run", *verdict.command, seeds_argument(verdict.seeds, count)]
    return " ".join(shlex.quote(word) for word in words)


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
            f"[{_signed(row.ci_low)}, {_signed(row.ci_high)}]",
            "" if not np.isfinite(row.p_adjusted) else f"{row.p_adjusted:.3f}",
            "" if not np.isfinite(row.cumulative_gain) else _signed(row.cumulative_gain),
            "" if not np.isfinite(row.measured_gain) else _signed(row.measured_gain),
            "" if not np.isfinite(row.cumulative_share) else _percent(row.cumulative_share),
            "" if not np.isfinite(row.p_in_set) else _percent(row.p_in_set),
        ]
        for row in verdict.table.itertuples(index=False)
    ]


def _verdict_header(alpha: float) -> list[str]:
    return ["rank", "trick", "option", "call", "effect", f"{_level(1 - alpha)} FW CI", "p adj.",
            "cum. gain", "measured", "cum. share", "P(in set)"]


def format_verdict(verdict: Verdict) -> str:
    """Return a monospace text block to print at the end of a study.

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.

    Returns:
        The baseline and best config, the table of calls (effects in accuracy points with
        family-wise intervals; cumulative gains are summed main effects, beside the measured
        gain of the same config where it was run), the sentence,
        the guidance, and what is missing, excluded or still running.
    """
    lines = []
    if verdict.n_results and not verdict.searched and verdict.n_configs > 1:
        lines.append(
            f"Baseline (all defaults): {measured_text(verdict, verdict.baseline_acc)} in "
            f"{_number(verdict.baseline_seconds)} s; best config: "
            f"{measured_text(verdict, verdict.best_acc)} in "
            f"{_number(verdict.best_seconds)} s "
            f"({_toggle_text(list(verdict.best_config.items()))}).")
        body = _verdict_rows(verdict)
        if body:
            header = _verdict_header(verdict.alpha)
            widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
            for cells in [header, *body]:
                text = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
                lines.append(text.rstrip())
    lines += [f"{'Design:' if i == 0 else '       '} {line}"
              for i, line in enumerate(verdict.design_lines)]
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


def call_meaning(alpha: float) -> str:
    """Return what the four calls mean, at the family-wise level ``1 - alpha`` of the study."""
    return (
        f"`{HELPS}` / `{HURTS}`: the option's family-wise interval excludes 0. `{NEGLIGIBLE}`: "
        f"the whole interval lies inside ±margin, so the option does not matter here. "
        f"`{UNDETERMINED}`: neither; this study cannot tell, and more seeds can settle it. The "
        f"intervals of all options hold together at {_level(1 - alpha)} (Bonferroni), so the "
        f"chance that any call of the study is wrong is at most {_level(alpha)}."
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
        f"- Baseline (all defaults): {measured_text(verdict, verdict.baseline_acc)}, "
        f"{_number(verdict.baseline_seconds)} s training",
        f"- Best config: {measured_text(verdict, verdict.best_acc)} "
        f"({_toggle_text(list(verdict.best_config.items()))}), "
        f"{_number(verdict.best_seconds)} s training",
        f"- Seeds: {', '.join(str(s) for s in verdict.seeds) or 'none'}; margin "
        f"±{verdict.margin:g} {unit_of(verdict)}",
    ]
    facts += [f"- Design: {line}" for line in verdict.design_lines]
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
        call_meaning(verdict.alpha),
        "## Calls, the 80% set and its stability ("
        + ("accuracy points" if verdict.metric == DEFAULT_METRIC
           else f"{verdict.metric}, {unit_of(verdict)}") + ")",
        markdown_table(verdict.table),
        "## Main effects (paired over seeds and the other tricks)",
        markdown_table(verdict.effects),
        "## Configs",
        markdown_table(config_view),
    ]
    return "\n\n".join(sections) + "\n"
