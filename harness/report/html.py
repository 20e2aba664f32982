"""report.html: the whole report on one self-contained page.

The page fetches nothing: the figures are ``data:`` URIs, the style is inline, and the one
script (sorting the configs table by a column) is inline too. So the file reads the same opened
from a laptop, downloaded from an artifact store, or in MLflow's sandboxed artifact preview, and
it stays readable as plain tables with scripts off.

Every text that comes from a study (tricks, options, tags, commands) goes through
:func:`html.escape`; numbers are formatted here. Nothing is guessed: a provenance value that no
run recorded is shown as "not recorded".
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harness.report.effects import CALLS, HELPS, HURTS, NEGLIGIBLE, UNDETERMINED
from harness.report.render import (
    _missing_text,
    _still_running,
    call_meaning,
    grow_command,
    guidance,
    measured_text,
    unit_of,
    verdict_sentence,
)
from harness.report.tables import class_names
from harness.report.verdict import Verdict
from harness.tracking.schema import Metric, Tag

NOT_RECORDED = "not recorded"
"""What the provenance shows for a value no run recorded."""

CALL_CLASSES = {call: f"call-{call}" for call in CALLS}
"""Call → the CSS class of its rows in the options table."""

FIGURES = {
    "pareto": "Every option's effect, coloured by its call, with its family-wise interval and "
              "the cumulative share of the gain of the helping options.",
    "cost_vs_accuracy": "Mean test accuracy against mean training time per config, with the "
                        "Pareto frontier.",
}
"""Figure name (a key of ``REPORT_FILES``) → its caption, in page order."""

PROVENANCE_TAGS = (
    ("git sha", Tag.GIT_SHA),
    ("harness version", Tag.VERSION),
    ("torch version", Tag.TORCH_VERSION),
    ("python version", Tag.PYTHON_VERSION),
    ("device", Tag.DEVICE),
    ("dataset digest", Tag.DATASET_DIGEST),
    ("test set digest", Tag.TEST_DIGEST),
)
"""Label → the MLflow tag it is read from (on the parent run or the trial runs)."""

# Light tints of the figures' colours (tab:green, tab:red, tab:blue, tab:gray), so a row's call
# reads the same in the table as in the Pareto chart.
_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1280px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; }
.verdict { font-size: 17px; font-weight: 600; background: #f6f8fa; border-left: 4px solid #2f6f4f;
           padding: 10px 14px; margin: 8px 0 12px; }
.facts li { margin: 2px 0; }
.note { color: #57606a; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.call-helps td { background: #dcf2dc; }
tr.call-hurts td { background: #fadcdc; }
tr.call-negligible td { background: #dde9f7; }
tr.call-undetermined td { background: #ececec; }
span.call { display: inline-block; padding: 0 6px; border-radius: 3px; font-weight: 600; }
span.call-helps { background: #2ca02c; color: #fff; }
span.call-hurts { background: #d62728; color: #fff; }
span.call-negligible { background: #1f77b4; color: #fff; }
span.call-undetermined { background: #7f7f7f; color: #fff; }
table.sortable th { cursor: pointer; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.baseline td:first-child { box-shadow: inset 4px 0 #7f7f7f; }
tr.best td:first-child { box-shadow: inset 4px 0 #2ca02c; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; }
.bar { display: inline-block; height: 7px; vertical-align: middle; }
td.bars { line-height: 9px; width: 200px; }
.bar-baseline { background: #7f7f7f; }
.bar-best { background: #2ca02c; }
.up { color: #1a7f37; }
.down { color: #cf222e; }
dl.provenance { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.provenance dt { font-weight: 600; }
dl.provenance dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
dd.missing { color: #57606a; font-style: italic; font-family: inherit; }
code { font-family: ui-monospace, monospace; }
"""

# Sorts a table.sortable by the clicked header: numerically when both cells carry a number in
# data-value, else as text; empty cells go last either way. Without scripts the table is simply
# unsorted, in grid order.
_SORT_SCRIPT = """
(function () {
  function key(row, column) {
    var cell = row.cells[column];
    var raw = cell.getAttribute("data-value");
    return raw === null ? cell.textContent.trim() : raw;
  }
  function compare(a, b) {
    if (a === "" || b === "") { return (a === "") - (b === ""); }
    var x = Number(a), y = Number(b);
    if (!isNaN(x) && !isNaN(y)) { return x - y; }
    return a.localeCompare(b);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    headers.forEach(function (header, column) {
      header.tabIndex = 0;
      header.title = "Sort by " + header.textContent;
      function sort() {
        var ascending = header.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ka = key(a, column), kb = key(b, column);
          if (ka === "" || kb === "") { return compare(ka, kb); }
          return ascending ? compare(ka, kb) : compare(kb, ka);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      }
      header.addEventListener("click", sort);
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
  });
})();
"""


def _text(value: Any) -> str:
    """Return ``value`` as escaped text: every string on the page goes through here."""
    return html.escape(str(value))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and bool(np.isfinite(value))


def _signed(value: Any, digits: int = 2) -> str:
    return f"{value:+.{digits}f}" if _finite(value) else ""


def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _finite(value) else ""


def _percent(value: Any) -> str:
    return f"{100 * value:.0f}%" if _finite(value) else ""


def _inline_markdown(text: str) -> str:
    """Escape ``text``, then show its `code` spans as <code> (the render module's markdown)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _text(text))


def _cell(text: str, numeric: Any = None, css: str = "") -> str:
    """Return a <td>; a numeric cell carries its raw value in data-value, for sorting."""
    attributes = f' class="{css}"' if css else ""
    if numeric is not None:
        raw = repr(float(numeric)) if _finite(numeric) else ""
        attributes += f' data-value="{_text(raw)}"'
    return f"<td{attributes}>{text}</td>"


def _table(header: Sequence[str], rows: Iterable[str], css: str = "") -> str:
    """Return a table in a horizontally scrolling box: ``rows`` are ready <tr> elements."""
    attributes = f' class="{css}"' if css else ""
    head = "".join(f"<th>{_text(name)}</th>" for name in header)
    return (f'<div class="scroll"><table{attributes}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _toggles(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{trick}={option}" for trick, option in pairs)


def _row_of(configs: pd.DataFrame, toggles: Mapping[str, str]) -> pd.Series | None:
    """Return the configs row with exactly these toggles, or None when it was not run."""
    if not toggles or configs.empty:
        return None
    mask = np.ones(len(configs), dtype=bool)
    for trick, option in toggles.items():
        if trick not in configs.columns:
            return None
        mask &= (configs[trick].astype(str) == str(option)).to_numpy()
    matches = configs.loc[mask]
    return None if matches.empty else matches.iloc[0]


# ---- sections -------------------------------------------------------------------------------


def verdict_section(verdict: Verdict, defaults: Mapping[str, str]) -> str:
    """Return the verdict: the one sentence on top, then the facts and guidance behind it.

    The sentence and the guidance are :mod:`harness.report.render`'s, so the page says what the
    printout and verdict.md say.
    """
    facts = []
    if verdict.n_results and verdict.n_configs > 1:
        facts.append(f"Baseline (all defaults: {_toggles(defaults.items())}): "
                     f"{measured_text(verdict, verdict.baseline_acc)} in "
                     f"{_number(verdict.baseline_seconds, 1) or 'n/a'} s training.")
        facts.append(f"Best config ({_toggles(verdict.best_config.items())}): "
                     f"{measured_text(verdict, verdict.best_acc)} in "
                     f"{_number(verdict.best_seconds, 1)} s.")
    seeds = ", ".join(str(seed) for seed in verdict.seeds) or "none"
    facts.append(f"Seeds: {seeds}; margin ±{verdict.margin:g} {unit_of(verdict)}.")
    facts += [f"Design: {line}" for line in verdict.design_lines]
    facts += guidance(verdict)
    if verdict.missing and verdict.n_results:
        facts.append(_missing_text(verdict.missing))
    if verdict.n_excluded and verdict.n_results:
        facts.append(f"{verdict.n_excluded} run(s) crashed, were pruned or interrupted and are "
                     f"not counted.")
    if verdict.n_running:
        facts.append(_still_running(verdict))
    items = "".join(f"<li>{_text(fact)}</li>" for fact in facts)
    return (f'<p class="verdict" id="verdict">{_text(verdict_sentence(verdict))}</p>'
            f'<ul class="facts">{items}</ul>')


def options_section(verdict: Verdict) -> str:
    """Return every option's effect, interval, call and margin, each row coloured by its call.

    Rows follow the verdict's order: the helping options by effect with their cumulative gain,
    then the rest by effect, as in the printout.
    """
    if verdict.table.empty:
        return '<h2>Options</h2><p class="note">No option effect to show.</p>'
    extra = verdict.effects.set_index(["trick", "option"])
    header = ["rank", "trick", "option", "call", f"effect ({unit_of(verdict)})",
              "95% family-wise interval",
              "margin", "p adj.", "cum. gain", "cum. share", "P(in 80% set)", "Δ train s"]
    rows = []
    for row in verdict.table.itertuples(index=False):
        found = (row.trick, row.option) in extra.index
        margin = extra.loc[(row.trick, row.option), "margin"] if found else verdict.margin
        delta = extra.loc[(row.trick, row.option), "cost_delta_seconds"] if found else np.nan
        interval = (f"[{_signed(row.ci_low)}, {_signed(row.ci_high)}]"
                    if _finite(row.ci_low) and _finite(row.ci_high) else "no interval")
        css = CALL_CLASSES.get(row.call, "")
        cells = [
            _cell(_text(row.rank), row.rank, "num"),
            _cell(_text(row.trick)),
            _cell(_text(row.option)),
            _cell(f'<span class="call {css}">{_text(row.call)}</span>'),
            _cell(_signed(row.effect_mean), row.effect_mean, "num"),
            _cell(interval, css="num"),
            _cell(f"±{float(margin):g}", margin, "num"),
            _cell(_number(row.p_adjusted, 3), row.p_adjusted, "num"),
            _cell(_signed(row.cumulative_gain), row.cumulative_gain, "num"),
            _cell(_percent(row.cumulative_share), row.cumulative_share, "num"),
            _cell(_percent(row.p_in_set), row.p_in_set, "num"),
            _cell(_signed(delta, 1), delta, "num"),
        ]
        rows.append(f'<tr class="{css}" data-call="{_text(row.call)}">{"".join(cells)}</tr>')
    legend = " ".join(f'<span class="call {CALL_CLASSES[call]}">{_text(call)}</span>'
                      for call in (HELPS, HURTS, NEGLIGIBLE, UNDETERMINED))
    return (f"<h2>Options</h2><p>{legend}</p>{_table(header, rows, 'options')}"
            f'<p class="note">{_inline_markdown(call_meaning(verdict.alpha))}</p>')


def figures_section(figures: Mapping[str, bytes]) -> str:
    """Return the figures as <img> elements whose source is the PNG itself (a data: URI)."""
    parts = ["<h2>Figures</h2>"]
    for name, caption in FIGURES.items():
        if name not in figures:
            continue
        encoded = base64.b64encode(figures[name]).decode("ascii")
        parts.append(f'<figure id="figure-{_text(name)}"><img alt="{_text(caption)}" '
                     f'src="data:image/png;base64,{encoded}"><figcaption>{_text(caption)}'
                     f"</figcaption></figure>")
    return "".join(parts)


def configs_section(configs: pd.DataFrame, verdict: Verdict,
                    defaults: Mapping[str, str]) -> str:
    """Return configs.csv as a table that sorts by any column when its header is clicked.

    Numeric cells carry their unrounded value for the sort; the baseline and the best config are
    marked. ``run_ids`` is left out (it is in configs.csv): it would make every row too wide.
    """
    view = configs.drop(columns=["run_ids"], errors="ignore")
    if view.empty:
        return '<h2>Configs</h2><p class="note">No config has a result yet.</p>'
    baseline = _row_of(view, {trick: defaults[trick] for trick in defaults if trick in view})
    best = _row_of(view, verdict.best_config)
    rows = []
    for index, row in view.iterrows():
        cells = []
        for value in row:
            if isinstance(value, bool | np.bool_):
                cells.append(_cell(_text(str(bool(value)).lower())))
            elif isinstance(value, int | np.integer):
                cells.append(_cell(_text(value), value, "num"))
            elif isinstance(value, float | np.floating):
                cells.append(_cell(_number(value), value, "num"))
            else:
                cells.append(_cell("" if pd.isna(value) else _text(value)))
        marks = [name for name, chosen in (("baseline", baseline), ("best", best))
                 if chosen is not None and chosen.name == index]
        css = f' class="{" ".join(marks)}"' if marks else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (f"<h2>Configs</h2><p class=\"note\">Means over seeds, in grid order; click a column "
            f"header to sort by it (again to reverse). The baseline is marked grey and the best "
            f"config green at the left edge.</p>"
            f"{_table([str(column) for column in view.columns], rows, 'sortable configs')}")


def per_class_section(configs: pd.DataFrame, classes: Sequence[str], verdict: Verdict,
                      defaults: Mapping[str, str]) -> str:
    """Return the best config's test accuracy per class beside the baseline's, with bars.

    The values are configs.csv's ``test_acc_<class>_mean`` columns: each class's accuracy
    averaged over the config's seeds.
    """
    prefix, suffix = Metric.PER_CLASS_PREFIX, "_mean"
    classes = [name for name in classes if f"{prefix}{name}{suffix}" in configs.columns]
    title = "<h2>Per-class test accuracy: best config against the baseline</h2>"
    if not classes:
        return f'{title}<p class="note">Per-class accuracy: {NOT_RECORDED}.</p>'
    baseline = _row_of(configs, dict(defaults))
    best = _row_of(configs, verdict.best_config)
    if best is None:
        return f'{title}<p class="note">No config has a result yet.</p>'

    def value(row: pd.Series | None, name: str) -> float:
        return float(row[f"{prefix}{name}{suffix}"]) if row is not None else np.nan

    rows = []
    for name in classes:
        base, top = value(baseline, name), value(best, name)
        change = top - base
        trend = ("up" if change > 0 else "down" if change < 0 else "") if _finite(change) else ""
        # Two bars on one 0-100% scale (200 px), so a class's change reads at a glance.
        bars = "".join(
            f'<span class="bar bar-{kind}" style="width:{2 * min(max(number, 0.0), 100.0):.0f}px">'
            f"</span><br>" for kind, number in (("baseline", base), ("best", top))
            if _finite(number))
        rows.append("<tr>" + "".join([
            _cell(_text(name)),
            _cell(_number(base, 1) or "no result", base, "num"),
            _cell(_number(top, 1), top, "num"),
            _cell(_signed(change, 1), change, f"num {trend}".strip()),
            _cell(bars, css="bars"),
        ]) + "</tr>")
    lines = [f"Baseline: {_toggles(defaults.items())}"
             + ("" if baseline is not None else " (no result)") + ".",
             f"Best: {_toggles(verdict.best_config.items())}."]
    if baseline is not None and best.name == baseline.name:
        lines.append("The best config is the baseline, so the two columns agree.")
    header = ["class", "baseline %", "best %", "best − baseline", "grey: baseline, green: best"]
    return (f"{title}<p class=\"note\">{_text(' '.join(lines))}</p>"
            f"{_table(header, rows, 'per-class')}")


def provenance_values(meta: Mapping[str, Any], runs: pd.DataFrame,
                      tags: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Return each provenance label's distinct recorded values (empty: not recorded).

    Args:
        meta: The study's meta from :func:`harness.report.load_runs` (budget, parent run, ...).
        runs: The runs table; its ``device`` and ``test_digest`` columns fill in for the tags.
        tags: MLflow tag → the distinct values the parent and trial runs recorded, as
            :func:`harness.report.writer.recorded_tags` reads them; None when not read.

    Returns:
        Label → sorted distinct values, for ``study``, ``parent run``, ``budget`` and each label
        of :data:`PROVENANCE_TAGS`.
    """
    tags = tags or {}

    def distinct(values: Iterable[Any]) -> list[str]:
        return sorted({str(value) for value in values if not pd.isna(value) and str(value)})

    study = meta.get("experiment") or (f"{meta['study']}-{meta['budget']}"
                                       if "study" in meta and "budget" in meta else None)
    values = {
        "study": distinct([study]),
        "parent run": distinct([meta.get("parent_run_id")]),
        "budget": distinct([meta.get("budget"), *tags.get(Tag.BUDGET, [])]),
    }
    from_runs = {Tag.DEVICE: "device", Tag.TEST_DIGEST: "test_digest"}
    for label, tag in PROVENANCE_TAGS:
        recorded = list(tags.get(tag, []))
        if tag in from_runs and from_runs[tag] in runs.columns:
            recorded += list(runs[from_runs[tag]])
        values[label] = distinct(recorded)
    return values


def reproduce_command(verdict: Verdict, meta: Mapping[str, Any]) -> str | None:
    """Return the command that runs the study again with its seeds, or None when unrecorded.

    It is :func:`harness.report.render.grow_command` at the study's own number of seeds: the
    study's recorded overrides (see :func:`harness.report.load.study_command`) and its seeds.
    """
    if not verdict.command:
        return None
    return grow_command(verdict, len(verdict.seeds))


def provenance_section(values: Mapping[str, Sequence[str]], command: str | None,
                       command_recorded: bool) -> str:
    """Return what the numbers depend on besides the recipe, and the command that reruns them.

    A label with several values (e.g. trials run at two commits) lists them all.
    """
    entries = []
    for label, found in values.items():
        if found:
            entries.append(f"<dt>{_text(label)}</dt><dd>{_text(', '.join(found))}</dd>")
        else:
            entries.append(f'<dt>{_text(label)}</dt><dd class="missing">{NOT_RECORDED}</dd>')
    if command is None:
        entries.append(f'<dt>command</dt><dd class="missing">{NOT_RECORDED}</dd>')
    else:
        # An older store tagged no command line: the command is then rebuilt from the study and
        # budget alone, and may miss overrides the study was run with.
        caveat = ("" if command_recorded else
                  '<br><span class="note">(the command line was not recorded: study and budget '
                  "only)</span>")
        entries.append(f"<dt>command</dt><dd><code>{_text(command)}</code>{caveat}</dd>")
    return f'<h2>Provenance</h2><dl class="provenance">{"".join(entries)}</dl>'


def importances_section(importances: pd.DataFrame | None) -> str:
    """Return Optuna's parameter importances as a table, or "" when there are none."""
    if importances is None or importances.empty:
        return ""
    rows = [f"<tr>{_cell(_text(row.param))}"
            f"{_cell(_percent(row.importance), row.importance, 'num')}</tr>"
            for row in importances.itertuples(index=False)]
    return f"<h2>Optuna's parameter importances</h2>{_table(['param', 'importance'], rows)}"


def report_html(
    verdict: Verdict,
    configs: pd.DataFrame,
    meta: Mapping[str, Any],
    runs: pd.DataFrame,
    figures: Mapping[str, bytes],
    tags: Mapping[str, Sequence[str]] | None = None,
    importances: pd.DataFrame | None = None,
) -> str:
    """Return report.html: the verdict, the options, the figures, configs, classes, provenance.

    Args:
        verdict: From :func:`harness.report.pareto_verdict`.
        configs: From :func:`harness.report.config_table`.
        meta: Needs ``defaults``; reads ``study``, ``budget``, ``experiment``,
            ``parent_run_id`` and ``command`` when present.
        runs: The runs table the report was computed from.
        figures: Figure name (``pareto``, ``cost_vs_accuracy``) → its PNG bytes.
        tags: Provenance tags the runs recorded (see :func:`provenance_values`).
        importances: Optuna's parameter importances, for a search.

    Returns:
        One self-contained HTML document.
    """
    defaults = dict(meta.get("defaults", {}))
    values = provenance_values(meta, runs, tags)
    study = ", ".join(values["study"]) or "study"
    body = [
        f"<h1>Ablation report: {_text(study)}</h1>",
        verdict_section(verdict, defaults),
        options_section(verdict),
        figures_section(figures),
        configs_section(configs, verdict, defaults),
        per_class_section(configs, class_names(runs), verdict, defaults),
        importances_section(importances),
        provenance_section(values, reproduce_command(verdict, meta),
                           command_recorded=meta.get("command") is not None),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Ablation report: {_text(study)}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}<script>{_SORT_SCRIPT}</script></body></html>\n"
    )
