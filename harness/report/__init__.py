"""A study's report: configs, effects with calls, the 80/20 verdict with its stability, figures.

Modules, in the order data flows: :mod:`~harness.report.load` (MLflow → runs table and
per-example results), :mod:`~harness.report.tables` (results and configs.csv),
:mod:`~harness.report.noise` (the run-to-run part of an effect's noise: paired runs or a model
of the design), :mod:`~harness.report.examples` (the test set's part, from per-example results),
:mod:`~harness.report.stats` (t tests, family-wise levels, power),
:mod:`~harness.report.effects` (effects.csv and its four calls),
:mod:`~harness.report.verdict` (the 80% set, its stability on a rerun, the plan to settle),
:mod:`~harness.report.render` (printout and verdict.md), :mod:`~harness.report.figures`,
:mod:`~harness.report.html` (report.html: all of it on one self-contained page) and
:mod:`~harness.report.writer` (:func:`build_report`: everything computed once, written together).
"""

from harness.report.effects import (
    CALLS,
    EFFECT_COLUMNS,
    HELPS,
    HURTS,
    INTERACTION_COLUMNS,
    NEGLIGIBLE,
    SETTLED,
    UNDETERMINED,
    interactions,
    main_effects,
)
from harness.report.examples import ExampleResults
from harness.report.html import report_html
from harness.report.load import IMPORTANCE_COLUMNS, load_examples, load_runs, optuna_importances
from harness.report.render import format_verdict, markdown_table, verdict_markdown, verdict_sentence
from harness.report.tables import (
    CONFIG_COST_COLUMNS,
    CONFIG_STAT_COLUMNS,
    class_names,
    config_columns,
    config_table,
    is_result,
    is_running,
    missing_configs,
    option_text,
    result_runs,
)
from harness.report.verdict import VERDICT_COLUMNS, Verdict, pareto_verdict
from harness.report.writer import (
    REPORT_FILES,
    Report,
    build_report,
    log_report_to_mlflow,
    write_report,
)

__all__ = [
    "CALLS", "CONFIG_COST_COLUMNS", "CONFIG_STAT_COLUMNS", "EFFECT_COLUMNS", "HELPS", "HURTS",
    "IMPORTANCE_COLUMNS", "INTERACTION_COLUMNS", "NEGLIGIBLE", "REPORT_FILES", "SETTLED",
    "UNDETERMINED", "VERDICT_COLUMNS", "ExampleResults",
    "Report", "Verdict", "build_report", "class_names", "config_columns", "config_table",
    "format_verdict", "interactions", "is_result", "is_running", "load_examples", "load_runs",
    "log_report_to_mlflow", "main_effects", "markdown_table", "missing_configs",
    "optuna_importances", "option_text",
    "pareto_verdict", "report_html", "result_runs", "verdict_markdown", "verdict_sentence",
    "write_report",
]
