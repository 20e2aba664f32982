"""Build a study's report once: compute every table, write the files, log them to MLflow."""

from __future__ import annotations

import math
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.errors import UserError
from harness.report import stats
from harness.report.effects import CALLS, INTERACTION_COLUMNS, interactions
from harness.report.examples import ExampleResults
from harness.report.figures import cost_accuracy_chart, pareto_chart
from harness.report.html import PROVENANCE_TAGS, report_html
from harness.report.load import load_examples, load_runs, optuna_importances, study_command
from harness.report.render import format_verdict, verdict_markdown
from harness.report.tables import DEFAULT_METRIC, config_table
from harness.report.verdict import Verdict, pareto_verdict
from harness.study.designs import Design, from_record
from harness.training.metrics import by_logged_name

ARTIFACT_DIR = "report"
"""The folder of the parent run's artifacts that holds the report."""

REPORT_FILES = {
    "configs": "configs.csv",
    "effects": "effects.csv",
    "interactions": "interactions.csv",
    "verdict": "verdict.md",
    "pareto": "pareto.png",
    "cost_vs_accuracy": "cost_vs_accuracy.png",
    "importances": "importances.csv",
    "html": "report.html",
}
"""Report name → file name in the output folder (importances only for Optuna searches)."""

Writer = Callable[[Path], object]


@dataclass
class Report:
    """A written report: its verdict, tables, printout and the files in the output folder."""

    verdict: Verdict
    configs: pd.DataFrame
    text: str
    paths: dict[str, Path]
    meta: Mapping[str, Any]


def _write_all(writers: Mapping[str, Writer], paths: Mapping[str, Path]) -> None:
    """Write every file to a temporary twin first, then move them all into place.

    A failure while writing leaves the folder as it was: no file is half-written and no old
    report is mixed with parts of a new one.
    """
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            target = paths[name]
            # A hidden random twin in the same folder, so os.replace is an atomic rename; the
            # suffix stays last because matplotlib and pandas pick the format by it.
            staged[name] = target.with_name(f".{target.stem}.{secrets.token_hex(4)}{target.suffix}")
            write(staged[name])
        for name, temporary in staged.items():
            os.replace(temporary, paths[name])
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


def _design_lines(design: Design, factors: Mapping[str, list[str]]) -> list[str]:
    """Return what a fraction is and aliases; nothing for other designs or odd factors."""
    try:
        return design.structure(factors)
    except UserError:  # e.g. a parent whose factors no longer make the fraction: say nothing
        return []


def _csv(frame: pd.DataFrame) -> Writer:
    return lambda path: frame.to_csv(path, index=False)


def _png(draw: Callable[[Path], object]) -> bytes:
    """Return the PNG that ``draw`` writes to a path, as bytes.

    report.html embeds the same bytes that pareto.png and cost_vs_accuracy.png hold, so each
    figure is drawn once and the page can never show another version of it.
    """
    with tempfile.TemporaryDirectory(prefix="harness-figure-") as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        return path.read_bytes()


def _bytes(data: bytes) -> Writer:
    return lambda path: path.write_bytes(data)


def write_report(
    runs: pd.DataFrame,
    meta: Mapping[str, Any],
    out_dir: str | Path,
    draws: int | None = None,
    examples: ExampleResults | None = None,
    margin: float | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
    alpha: float | None = None,
    metric: str = DEFAULT_METRIC,
) -> Report:
    """Compute every table of the report once, then write the files into ``out_dir``.

    Files (see :data:`REPORT_FILES`): ``configs.csv``, ``effects.csv`` (with ``p_value``,
    ``p_adjusted`` and ``call``), ``interactions.csv`` (header only unless the study is a grid of
    at least two tricks), ``verdict.md``, ``pareto.png``, ``cost_vs_accuracy.png``,
    ``report.html`` (all of it on one self-contained page, see :mod:`harness.report.html`), and
    ``importances.csv`` for an Optuna search whose importances can be computed. All are computed
    before any is written, and all are moved into place together at the end.

    Args:
        runs: One row per trial run, as :func:`harness.report.load_runs` returns it.
        meta: Needs ``factors`` and ``defaults``; reads ``design`` (else the older ``kind``),
            ``configs``, ``optuna_storage``
            and ``optuna_study_name`` when present.
        out_dir: The folder to write into; created if absent.
        draws: Simulated reruns of the stability column; default
            :data:`harness.report.verdict.STABILITY_DRAWS`.
        examples: The runs' per-example results (None: the test set's share is bounded).
        margin: The band, in the metric's unit, inside which an effect is ``negligible``;
            None: the metric's own (1 point of accuracy).
        tags: Provenance tags the parent and trial runs recorded (tag → distinct values, see
            :func:`recorded_tags`), for report.html; None: only what ``meta`` and ``runs`` hold.
        alpha: The family-wise error rate of the calls; None: ``meta``'s ``alpha`` (a look of
            ``seeds=auto`` records its own), else 0.05.
        metric: The logged metric the effects, calls and verdict are on (``test_loss``); see
            :data:`harness.training.metrics.METRICS`.

    Returns:
        The report; its ``paths`` map report names (keys of :data:`REPORT_FILES`) to files.
    """
    factors, defaults = meta["factors"], meta["defaults"]
    design = meta.get("design") or from_record(None, meta.get("kind"),
                                                meta.get("configs") is not None)
    searched = design.searches
    configs = config_table(runs, factors)
    extra = {} if draws is None else {"draws": draws}
    if alpha is None:
        alpha = meta.get("alpha") or stats.ALPHA
    if margin is None:
        margin = by_logged_name(metric).margin
    verdict = pareto_verdict(runs, factors, defaults, planned=meta.get("configs"),
                             searched=searched, images=meta.get("test_images", math.nan),
                             examples=examples, alpha=alpha, margin=margin, metric=metric,
                             **extra)
    verdict.design_lines = _design_lines(design, factors)
    if "study" in meta and "budget" in meta:  # the seed advice prints a command to run
        verdict.command = study_command(meta)
    pair_effects = (interactions(runs, factors, defaults, design.models_interactions, metric)
                    if not searched and len(factors) >= 2
                    else pd.DataFrame(columns=list(INTERACTION_COLUMNS)))
    markdown = verdict_markdown(verdict, configs)
    figures = {
        "pareto": _png(lambda path: pareto_chart(verdict, path)),
        "cost_vs_accuracy": _png(lambda path: cost_accuracy_chart(configs, path, defaults)),
    }
    writers: dict[str, Writer] = {
        "configs": _csv(configs),
        "effects": _csv(verdict.effects),
        "interactions": _csv(pair_effects),
        "verdict": lambda path: path.write_text(markdown, encoding="utf-8"),
        **{name: _bytes(data) for name, data in figures.items()},
    }
    storage, study_name = meta.get("optuna_storage"), meta.get("optuna_study_name")
    text = format_verdict(verdict)
    importances = None
    if searched and storage and study_name:
        importances = optuna_importances(storage, study_name)
        if importances is not None:
            writers["importances"] = _csv(importances)
            top = ", ".join(f"{row.param} {100 * row.importance:.0f}%"
                            for row in importances.head(3).itertuples(index=False))
            text += f"\nOptuna's parameter importances: {top}."
    page = report_html(verdict, configs, meta, runs, figures, tags=tags, importances=importances)
    writers["html"] = lambda path: path.write_text(page, encoding="utf-8")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / REPORT_FILES[name] for name in writers}
    _write_all(writers, paths)
    return Report(verdict=verdict, configs=configs, text=text, paths=paths, meta=meta)


def log_report_to_mlflow(paths: Mapping[str, Path], parent_run_id: str, tracking_uri: str) -> None:
    """Log the report files as artifacts under ``report/`` of the study's parent run.

    The markdown goes through ``log_text`` so that the MLflow UI shows it as text; the other
    files through ``log_artifact``.

    Args:
        paths: ``Report.paths`` from :func:`write_report`.
        parent_run_id: The study's parent run.
        tracking_uri: Its MLflow tracking URI.
    """
    import mlflow  # imported here: writing the files must not need a tracking client

    client = mlflow.MlflowClient(tracking_uri)
    for name, path in paths.items():
        path = Path(path)
        if name == "verdict":
            client.log_text(
                parent_run_id, path.read_text(encoding="utf-8"), f"{ARTIFACT_DIR}/{path.name}"
            )
        else:
            client.log_artifact(parent_run_id, str(path), ARTIFACT_DIR)


def build_report(
    tracking_uri: str,
    study: str,
    budget: str,
    out_dir: str | Path,
    parent_run_id: str | None = None,
    log_to_mlflow: bool = False,
    margin: float | None = None,
    alpha: float | None = None,
    metric: str = DEFAULT_METRIC,
) -> Report:
    """Load a study from MLflow, write its report, optionally log it to the parent run.

    The one entry used at the end of a study and by ``python -m harness.export``.

    Args:
        tracking_uri: The MLflow store.
        study: Study name; the experiment is ``f"{study}-{budget}"``.
        budget: Budget name.
        out_dir: The folder to write into.
        parent_run_id: The study's parent run; default: the newest.
        log_to_mlflow: Also log the files under ``report/`` of the parent run, and the calls'
            counts and the margin on it.
        margin: The band inside which an effect is ``negligible``; None: the metric's own.
        alpha: The calls' family-wise error rate; None: the one the parent run records, else 0.05.
        metric: The logged metric the report is on (see :func:`write_report`).

    Returns:
        The report.

    Raises:
        UserError: From :func:`harness.report.load_runs` (no such study, no trial runs, ...).
    """
    scored = by_logged_name(metric)  # an unknown metric fails before the store is read
    runs, meta = load_runs(tracking_uri, study, budget, parent_run_id=parent_run_id)
    # The per-example results are of test accuracy; no other metric reads them.
    examples = (load_examples(tracking_uri, runs) if scored.logged_as == DEFAULT_METRIC
                else None)
    tags = recorded_tags(tracking_uri, meta, runs)
    report = write_report(runs, meta, out_dir, examples=examples, margin=margin, tags=tags,
                          alpha=alpha, metric=scored.logged_as)
    if log_to_mlflow:
        log_report_to_mlflow(report.paths, meta["parent_run_id"], tracking_uri)
        log_calls_to_mlflow(report.verdict, meta["parent_run_id"], tracking_uri)
    return report


_TAG_SEARCH_CHUNK = 100  # run ids per search: keeps the filter well inside a server's limits


def recorded_tags(tracking_uri: str, meta: Mapping[str, Any],
                  runs: pd.DataFrame) -> dict[str, list[str]]:
    """Return the provenance tags the parent run and the trial runs recorded, for report.html.

    The parent carries the study's device and dataset digest; the git sha and the software
    versions are on each trial (a grown study may hold trials of several commits), so every
    distinct value is kept.

    Args:
        tracking_uri: The MLflow store.
        meta: From :func:`harness.report.load_runs`: ``parent_run_id`` and ``experiment_id``.
        runs: Its runs table; the tags of these runs are read.

    Returns:
        Tag name (:data:`harness.report.html.PROVENANCE_TAGS` and ``harness.budget``) → sorted
        distinct values; a tag no run recorded is absent.
    """
    import mlflow

    from harness.tracking.schema import Tag

    client = mlflow.MlflowClient(tracking_uri)
    found = [client.get_run(meta["parent_run_id"])]
    ids = sorted({str(run_id) for run_id in runs["run_id"].dropna()})
    for start in range(0, len(ids), _TAG_SEARCH_CHUNK):
        quoted = ", ".join(f"'{run_id}'" for run_id in ids[start:start + _TAG_SEARCH_CHUNK])
        found += client.search_runs([meta["experiment_id"]],
                                    filter_string=f"attributes.run_id IN ({quoted})",
                                    max_results=_TAG_SEARCH_CHUNK)
    names = [tag for _, tag in PROVENANCE_TAGS] + [Tag.BUDGET]
    values: dict[str, set[str]] = {}
    for run in found:
        for name in names:
            value = run.data.tags.get(name)
            if value:
                values.setdefault(name, set()).add(value)
    return {name: sorted(value) for name, value in values.items()}


def log_calls_to_mlflow(verdict: Verdict, parent_run_id: str, tracking_uri: str) -> None:
    """Put the calls on the parent run: a count metric per call, the margin, and a calls tag.

    The MLflow runs table then shows the verdict in the parent's row without opening a file.
    """
    import json

    import mlflow

    from harness.tracking.schema import Tag

    client = mlflow.MlflowClient(tracking_uri)
    counts = verdict.effects["call"].value_counts()
    metrics = {f"n_{call}": float(counts.get(call, 0)) for call in CALLS}
    metrics["margin_points"] = verdict.margin
    for name, value in metrics.items():
        client.log_metric(parent_run_id, name, value)
    calls = {f"{row.trick}={row.option}": row.call
             for row in verdict.effects.itertuples(index=False)}
    client.set_tag(parent_run_id, Tag.CALLS, json.dumps(calls)[:5000])
