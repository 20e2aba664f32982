"""The end of a study: read its runs back from MLflow, write the report, print the verdict."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config.settings import RunConfig
from harness.study.runner import StudyOutcome
from harness.tracking.schema import Tag
from harness.tracking.store import Tracker

if TYPE_CHECKING:
    from harness.report import Report

log = logging.getLogger(__name__)


def report_study(cfg: RunConfig, outcome: StudyOutcome, alpha: float | None = None,
                 printed: bool = True) -> Report | None:
    """Write the ablation report of ``outcome``'s parent run, log it there, and print it.

    The numbers come from MLflow, not from memory, so the report of a resumed study covers
    every trial, including those of earlier invocations.

    Args:
        cfg: The command's configuration.
        outcome: The study this command ran.
        alpha: The calls' family-wise error rate, default 5% (a look of ``seeds=auto`` calls at
            a share of it); recorded on the parent run, so that an export calls the same.
        printed: Print the report; a round of ``seeds=auto`` that is not the last only writes
            and logs it.

    Returns:
        The report, or None when no trial has finished yet.
    """
    from harness.core.errors import UserError
    from harness.report import build_report, stats

    # The per-example results are downloaded artifacts: no progress bar for each.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = outcome.tracking_uri
    out_dir = Path(cfg.settings.out) if cfg.settings.out else Path("exports") / outcome.experiment
    alpha = stats.ALPHA if alpha is None else alpha
    tracker = Tracker(tracking_uri)
    # A plain run of the same seeds shares a look's parent run; the latest command's rate holds.
    tracker.set_tags(outcome.parent_run_id, {Tag.ALPHA: repr(alpha)})
    try:
        report = build_report(tracking_uri, cfg.study.name, cfg.budget, out_dir,
                              outcome.parent_run_id, log_to_mlflow=True, margin=cfg.settings.margin,
                              alpha=alpha)
    except UserError as exc:  # e.g. no trial has started: the study itself still ran
        tracker.flush()
        print(f"no report: {exc}")
        return None
    verdict = report.verdict
    # Summary numbers on the parent fill its row in the MLflow runs table.
    summary = {"best_test_acc": verdict.best_acc, "baseline_test_acc": verdict.baseline_acc,
               "gain_points": verdict.total_gain, "trick_set_share": verdict.chosen_share,
               "trick_set_cost_share": verdict.cost_share}
    tracker.log_metrics(
        outcome.parent_run_id, {k: v for k, v in summary.items() if math.isfinite(v)})
    tracker.flush()
    if printed:
        show_report(report, outcome)
    return report


def show_report(report: Report, outcome: StudyOutcome) -> None:
    """Print a written report and where its files are."""
    paths = report.paths
    folder = next(iter(paths.values())).parent
    print()
    print(report.text)
    print(f"\nreport: {folder}/ ({', '.join(p.name for p in paths.values())}), also logged "
          f"to the parent run {outcome.parent_run_id} in MLflow experiment "
          f"'{outcome.experiment}'")

