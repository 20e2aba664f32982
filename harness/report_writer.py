"""Write a study's report files (CSV tables, markdown, figures) and log them to MLflow."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from harness import report
from harness.report_figures import cost_accuracy_chart, pareto_chart

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
}
"""Report name → file name in the output folder (importances only for Optuna searches)."""

Writer = Callable[[Path], object]


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


def _csv(frame: pd.DataFrame) -> Writer:
    return lambda path: frame.to_csv(path, index=False)


def write_report(
    runs: pd.DataFrame, meta: Mapping[str, Any], out_dir: str | Path
) -> dict[str, Path]:
    """Compute every table of the report, then write the files into ``out_dir``.

    Files (see :data:`REPORT_FILES`): ``configs.csv``, ``effects.csv``, ``interactions.csv``
    (header only unless the study is a grid of at least two tricks), ``verdict.md``,
    ``pareto.png``, ``cost_vs_accuracy.png``, and ``importances.csv`` for an Optuna search whose
    importances can be computed. All are computed before any is written, and all are moved into
    place together at the end.

    Args:
        runs: One row per trial run, as :func:`harness.report.load_runs` returns it.
        meta: Needs ``factors`` and ``defaults``; reads ``kind``, ``optuna_storage`` and
            ``optuna_study_name`` when present.
        out_dir: The folder to write into; created if absent.

    Returns:
        Report name (a key of :data:`REPORT_FILES`) → the written path.
    """
    factors, defaults = meta["factors"], meta["defaults"]
    configs = report.config_table(runs, factors)
    effects = report.main_effects(runs, factors, defaults)
    factorial = meta.get("kind", "grid") == "grid" and len(factors) >= 2
    pair_effects = (
        report.interactions(runs, factors, defaults)
        if factorial
        else pd.DataFrame(columns=list(report.INTERACTION_COLUMNS))
    )
    verdict = report.pareto_verdict(runs, factors, defaults, planned=meta.get("configs"))
    markdown = report.verdict_markdown(verdict, effects, configs)
    writers: dict[str, Writer] = {
        "configs": _csv(configs),
        "effects": _csv(effects),
        "interactions": _csv(pair_effects),
        "verdict": lambda path: path.write_text(markdown, encoding="utf-8"),
        "pareto": lambda path: pareto_chart(verdict, path),
        "cost_vs_accuracy": lambda path: cost_accuracy_chart(configs, path, defaults),
    }
    storage, study_name = meta.get("optuna_storage"), meta.get("optuna_study_name")
    if meta.get("kind") == "optuna" and storage and study_name:
        importances = report.optuna_importances(storage, study_name)
        if importances is not None:
            writers["importances"] = _csv(importances)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / REPORT_FILES[name] for name in writers}
    _write_all(writers, paths)
    return paths


def log_report_to_mlflow(paths: Mapping[str, Path], parent_run_id: str, tracking_uri: str) -> None:
    """Log the report files as artifacts under ``report/`` of the study's parent run.

    The markdown goes through ``log_text`` so that the MLflow UI shows it as text; the other
    files through ``log_artifact``.

    Args:
        paths: From :func:`write_report`.
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
