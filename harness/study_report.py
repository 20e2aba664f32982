"""The end of a study: read its runs back from MLflow, write the report, print the verdict."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from harness.config import RunConfig
from harness.study.runner import StudyOutcome
from harness.tracking import Tracker

log = logging.getLogger(__name__)


def report_study(cfg: RunConfig, outcome: StudyOutcome) -> Path | None:
    """Write the ablation report of ``outcome``'s parent run, log it there, and print it.

    The numbers come from MLflow, not from memory, so the report of a resumed study covers
    every trial, including those of earlier invocations.

    Returns:
        The folder the CSVs were written to, or None when no trial has finished yet.
    """
    from harness.errors import UserError
    from harness.report import build_report

    tracking_uri = outcome.tracking_uri
    out_dir = Path(cfg.out) if cfg.out else Path("exports") / outcome.experiment
    try:
        report = build_report(tracking_uri, cfg.study.name, cfg.budget, out_dir,
                              outcome.parent_run_id, log_to_mlflow=True, margin=cfg.margin)
    except UserError as exc:  # e.g. no trial has started: the study itself still ran
        print(f"no report: {exc}")
        return None
    paths, verdict = report.paths, report.verdict
    # Summary numbers on the parent fill its row in the MLflow runs table.
    summary = {"best_test_acc": verdict.best_acc, "baseline_test_acc": verdict.baseline_acc,
               "gain_points": verdict.total_gain, "trick_set_share": verdict.chosen_share,
               "trick_set_cost_share": verdict.cost_share}
    tracker = Tracker(tracking_uri)
    tracker.log_metrics(
        outcome.parent_run_id, {k: v for k, v in summary.items() if math.isfinite(v)})
    tracker.flush()
    print()
    print(report.text)
    print(f"\nreport: {out_dir}/ ({', '.join(p.name for p in paths.values())}), also logged "
          f"to the parent run {outcome.parent_run_id} in MLflow experiment "
          f"'{outcome.experiment}'")
    return out_dir

