"""The studies of an MLflow store at a glance: ``python -m harness.results [key=value ...]``.

Without ``study=`` it prints one line per study (the newest parent run of each experiment):
its budget and design, how many trials are FINISHED of the total it plans and how many are
RUNNING, when it last changed, its verdict in a few words and where its report is. With
``study=NAME`` it prints that study's verdict again.

The verdict is not recomputed when nothing changed: the end of a study logs the report under
``report/`` of its parent run (verdict.md, configs.csv with the run ids of its results, ...) and
the calls' counts and the margin as metrics. That report is reused while the parent's trials
are the same: the same result runs as its configs.csv lists, and no trial run started or ended
after the report's metrics were logged. A stale (or missing) report is recomputed with
:func:`harness.report.build_report`, written to ``exports/<study>-<budget>/`` and logged to the
parent run again, so the next call and the MLflow UI show it.

Keys:
    study: A study's name; default: list every study.
    budget: With ``study``: the budget (``auto`` is ``full`` on a CUDA machine, ``cpu``
        elsewhere); default: the study's most recently updated budget. Without: list only
        that budget's studies.
    parent: With ``study``: the parent run id, when the experiment holds several; default: the
        newest.
    tracking_uri: The MLflow store; default ``sqlite:///mlruns/mlflow.db``.
    exports: The folder of the exported reports, ``<study>-<budget>/`` each; default
        ``exports``.

A mistake in the arguments, a missing store or an unknown study ends with one ``error:`` line
on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.arguments import guarded, key_values
from harness.config.settings import DEFAULT_TRACKING_URI, resolve_budget
from harness.core.errors import UserError, unknown_choice
from harness.export import SQLITE_PREFIX, readable_tracking_uri

DEFAULTS = {
    "study": None,
    "budget": None,
    "parent": None,
    "tracking_uri": DEFAULT_TRACKING_URI,
    "exports": "exports",
}
"""Argument key → default; None means every study (``study``), the most recently updated or
every budget (``budget``), the newest (``parent``)."""

REPORT_DIR = "report"  # harness.report.writer.ARTIFACT_DIR, without importing the report stack
VERDICT_FILE = "verdict.md"
CONFIGS_FILE = "configs.csv"
EFFECTS_FILE = "effects.csv"
# Metrics harness.report.writer.log_calls_to_mlflow puts on the parent with every logged report;
# the newest timestamp of the first one found is when the report was logged.
LOGGED_AT_METRICS = ("margin_points", "n_undetermined")
CALL_WORDS = {  # call → (one option, several options), as the listing's verdict says it
    "helps": ("helps", "help"),
    "hurts": ("hurts", "hurt"),
    "negligible": ("negligible", "negligible"),
    "undetermined": ("undetermined", "undetermined"),
}


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """Parse ``key=value`` arguments against :data:`DEFAULTS`.

    Args:
        argv: The arguments, without the program name.

    Returns:
        Every key of :data:`DEFAULTS` with its value (None where not given and computed).

    Raises:
        UserError: An argument without ``=``, an unknown or repeated key, an empty value, or
            ``parent=`` without ``study=``.
    """
    values = key_values(argv, DEFAULTS)
    if values["parent"] is not None and values["study"] is None:
        raise UserError("parent=RUN_ID needs study=NAME: a parent run belongs to one study")
    return values


@dataclass
class StudyState:
    """What MLflow holds about one study: its newest (or chosen) parent run and its trials."""

    study: str
    budget: str
    experiment: str
    parent_run_id: str
    n_parents: int
    design: str  # grid | listed | fractional | optuna search, as the parent records it
    total: int  # trials the study plans (or, for a store that does not record it, its runs)
    n_runs: int  # its trial runs, whatever their status
    finished: int
    running: int
    failed: int
    killed: int
    updated_ms: int  # the latest start or end of the parent or any of its trials
    trials_changed_ms: int  # the latest start or end of its trials alone (0 without any)
    result_ids: frozenset[str]  # the runs the report counts: finished, or diverged
    report_files: tuple[str, ...]  # names under the parent's report/ artifacts
    logged_ms: int | None  # when the report's metrics were logged on the parent
    margin: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)


def _ms(value: Any) -> int:
    """Return a run time from a runs table (a Timestamp, or NaT/None) in milliseconds."""
    if value is None or value != value:  # NaT and NaN are not equal to themselves
        return 0
    return int(value.timestamp() * 1000)


def _study_and_budget(experiment: str, tags: Mapping[str, str]) -> tuple[str, str]:
    from harness.tracking.schema import Tag

    study, budget = tags.get(Tag.STUDY), tags.get(Tag.BUDGET)
    if study and budget:
        return study, budget
    head, _, tail = experiment.rpartition("-")  # harness.study.plan.experiment_name
    return (head, tail) if head else (experiment, "")


def _design(tags: Mapping[str, str]) -> tuple[str, bool]:
    """Return the design's name as the listing shows it, and whether it queues every cell."""
    from harness.study.designs import from_record
    from harness.tracking.schema import Tag

    design = from_record(tags.get(Tag.DESIGN), tags.get(Tag.KIND), Tag.CONFIGS in tags)
    return ("optuna search" if design.searches else design.name), design.queued


def _planned(params: Mapping[str, str], queued: bool) -> int | None:
    """Return the trials a parent plans, from the params the runner logs on it; None if absent.

    ``configs`` is the number of configs of a queued design (each run once per seed) and
    ``n_trials`` of a search.
    """
    import json

    try:
        configs = int(params["configs"])
        seeds = len(json.loads(params["seeds"])) if queued else 1
    except (KeyError, ValueError, TypeError):
        return None
    return configs * seeds


def study_state(client: Any, tracking_uri: str, experiment: Any, parents: list[Any],
                parent_run_id: str | None = None) -> StudyState:
    """Read one study's state from MLflow.

    Args:
        client: An ``MlflowClient`` on the store.
        tracking_uri: The store's URI.
        experiment: The study's MLflow experiment.
        parents: Its parent runs, newest first.
        parent_run_id: The parent to read; default: the newest.

    Returns:
        The study's state. Its trials are the ones its report counts: the parent's own and those
        it adopted, one run per trial identity (see :mod:`harness.report.load`).

    Raises:
        UserError: ``parent_run_id`` is not a parent run of the experiment.
    """
    import pandas as pd

    from harness.report.load import _study_runs
    from harness.report.tables import is_result
    from harness.tracking.schema import Tag

    by_id = {run.info.run_id: run for run in parents}
    if parent_run_id is not None and parent_run_id not in by_id:
        raise unknown_choice(f"parent run of '{experiment.name}'", parent_run_id, by_id)
    parent = by_id[parent_run_id] if parent_run_id else parents[0]
    tags, metrics = parent.data.tags, parent.data.metrics
    study, budget = _study_and_budget(experiment.name, tags)
    design, queued = _design(tags)
    frame = _study_runs(tracking_uri, experiment.experiment_id, parent.info.run_id)
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "status", "start_time", "end_time"])
    statuses = frame["status"].value_counts()
    failure_column = f"tags.{Tag.FAILURE}"
    runs = pd.DataFrame({
        "run_id": frame["run_id"], "status": frame["status"],
        "failure": frame[failure_column] if failure_column in frame.columns else None,
    })
    results = frozenset(str(run_id) for run_id in runs.loc[is_result(runs), "run_id"])
    trial_times = [_ms(value) for name in ("start_time", "end_time") for value in frame[name]]
    trials_changed = max(trial_times, default=0)
    logged, margin = None, None
    for name in LOGGED_AT_METRICS:
        history = client.get_metric_history(parent.info.run_id, name)
        if history:
            logged = max(point.timestamp for point in history)
            break
    if "margin_points" in metrics:
        margin = float(metrics["margin_points"])
    files = tuple(Path(item.path).name
                  for item in client.list_artifacts(parent.info.run_id, REPORT_DIR))
    planned = _planned(parent.data.params, queued)
    return StudyState(
        study=study, budget=budget, experiment=experiment.name,
        parent_run_id=parent.info.run_id, n_parents=len(parents), design=design,
        total=planned if planned is not None else len(frame), n_runs=len(frame),
        finished=int(statuses.get("FINISHED", 0)), running=int(statuses.get("RUNNING", 0)),
        failed=int(statuses.get("FAILED", 0)), killed=int(statuses.get("KILLED", 0)),
        updated_ms=max(trials_changed, parent.info.start_time or 0, parent.info.end_time or 0,
                       logged or 0),
        trials_changed_ms=trials_changed, result_ids=results, report_files=files,
        logged_ms=logged, margin=margin, metrics=dict(metrics),
    )


def _download(client: Any, run_id: str, name: str, folder: str) -> Path | None:
    """Download ``report/<name>`` of a run into ``folder``; None when it cannot be read."""
    try:
        return Path(client.download_artifacts(run_id, f"{REPORT_DIR}/{name}", folder))
    except Exception:  # noqa: BLE001 - a missing or torn artifact: treat the report as absent
        return None


def _recorded_results(client: Any, state: StudyState) -> frozenset[str] | None:
    """Return the result run ids the logged configs.csv lists; None when it cannot tell."""
    import pandas as pd

    if CONFIGS_FILE not in state.report_files:
        return None
    with tempfile.TemporaryDirectory(prefix="harness-results-") as folder:
        path = _download(client, state.parent_run_id, CONFIGS_FILE, folder)
        try:
            table = pd.read_csv(path, dtype=str) if path else None
        except (OSError, ValueError):
            table = None
    if table is None or "run_ids" not in table.columns:
        return None
    return frozenset(run_id for cell in table["run_ids"].dropna() for run_id in cell.split(";")
                     if run_id)


def staleness(client: Any, state: StudyState) -> str | None:
    """Return why the parent's logged report no longer describes its trials; None if it does.

    A report is current while its configs.csv lists exactly the study's result runs and no trial
    run started or ended after the report was logged (a trial that was still running then, a
    retry, a crash).
    """
    if VERDICT_FILE not in state.report_files:
        return "no report is logged on its parent run yet"
    recorded = _recorded_results(client, state)
    if recorded is None and state.logged_ms is None:
        return "the logged report records neither its runs nor when it was written"
    if recorded is not None and recorded != state.result_ids:
        now, then = len(state.result_ids), len(recorded)
        if now != then:
            return f"{now} trial result(s) now, {then} when the report was logged"
        return "its trial results were replaced since the report was logged"
    if state.logged_ms is not None and state.trials_changed_ms > state.logged_ms:
        return "trial runs started or ended after the report was logged"
    return None


def _call_counts(client: Any, state: StudyState) -> dict[str, int] | None:
    """Return call → count from the parent's metrics, or the logged effects.csv; None if neither."""
    import pandas as pd

    from harness.report.effects import CALLS

    if any(f"n_{call}" in state.metrics for call in CALLS):
        return {call: int(state.metrics.get(f"n_{call}", 0)) for call in CALLS}
    if EFFECTS_FILE not in state.report_files:
        return None
    with tempfile.TemporaryDirectory(prefix="harness-results-") as folder:
        path = _download(client, state.parent_run_id, EFFECTS_FILE, folder)
        try:
            effects = pd.read_csv(path) if path else None
        except (OSError, ValueError):
            effects = None
    if effects is None or "call" not in effects.columns:
        return None
    counts = effects["call"].value_counts()
    return {call: int(counts.get(call, 0)) for call in CALLS}


def verdict_words(counts: Mapping[str, int] | None, state: StudyState) -> str:
    """Return the verdict in a few words, e.g. ``2 hurt, 1 negligible, 1 undetermined``."""
    if counts is None:
        return "no report yet"
    words = [f"{count} {CALL_WORDS[call][count != 1]}" for call, count in counts.items() if count]
    if words:
        return ", ".join(words)
    best = state.metrics.get("best_test_acc")
    if state.design == "optuna search" and best is not None and math.isfinite(best):
        return f"best trial {best:.1f}% test"
    return "no option called"


def trials_text(state: StudyState) -> str:
    """Return e.g. ``6/8 finished, 1 running, 1 failed``."""
    parts = [f"{state.finished}/{state.total} finished"]
    for count, word in ((state.running, "running"), (state.failed, "failed"),
                        (state.killed, "killed")):
        if count:
            parts.append(f"{count} {word}")
    return ", ".join(parts)


def when(ms: int | None) -> str:
    """Return a time in milliseconds since the epoch as local ``YYYY-MM-DD HH:MM``."""
    if not ms:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def report_places(state: StudyState, exports: str) -> str:
    """Return where the study's report is: the exports folder and/or the parent's artifacts."""
    places = []
    folder = Path(exports) / state.experiment
    if folder.is_dir():
        places.append(f"{folder}/")
    if VERDICT_FILE in state.report_files:
        places.append(f"run {state.parent_run_id} {REPORT_DIR}/")
    return " + ".join(places) or "none"


def _open_store(tracking_uri: str) -> tuple[Any, str]:
    """Check the store without writing to it, then return a client and its resolved URI.

    The checks are those of ``config.preflight.check_export``, called one by one: that module
    imports torch, seconds that a listing does not need.
    """
    from harness.core.checks import check_driver, check_mlflow_sqlite, check_tracking_scheme

    check_tracking_scheme(tracking_uri)
    check_driver("tracking_uri", tracking_uri)
    if tracking_uri.startswith(SQLITE_PREFIX):
        path = tracking_uri.removeprefix(SQLITE_PREFIX)
        if not path:
            raise UserError("tracking_uri 'sqlite:///' names no file, e.g. "
                            "sqlite:///mlruns/mlflow.db")
        if not Path(path).is_file():  # MLflow would create an empty store there
            raise UserError(f"no MLflow store at '{path}'; run a study first or pass "
                            f"tracking_uri=sqlite:///PATH")
        check_mlflow_sqlite("tracking_uri", path)  # an Optuna database or a text file
    resolved = readable_tracking_uri(tracking_uri)
    for noisy in ("alembic", "mlflow.store.db.utils"):  # schema chatter at INFO on every open
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A progress bar per downloaded report file would bury the listing on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow.MlflowClient(resolved), resolved


def _studies(client: Any) -> list[tuple[Any, list[Any], str, str]]:
    """Return ``(experiment, parents newest first, study, budget)`` of each study in the store."""
    from harness.tracking.schema import Tag

    found = []
    for experiment in client.search_experiments():
        parents = client.search_runs([experiment.experiment_id],
                                     filter_string=f"tags.`{Tag.ROLE}` = 'parent'",
                                     order_by=["attributes.start_time DESC"])
        if parents:  # "Default" and other experiments the harness did not write have none
            study, budget = _study_and_budget(experiment.name, parents[0].data.tags)
            found.append((experiment, parents, study, budget))
    return found


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
            for cells in rows]


HEADER = ["study", "budget", "design", "trials", "updated", "verdict", "report"]


def list_studies(args: Mapping[str, str | None]) -> str:
    """Return the listing: a header and one line per study, the most recently updated first."""
    client, tracking_uri = _open_store(str(args["tracking_uri"]))
    budget = resolve_budget(args["budget"]) if args["budget"] else None
    studies = [entry for entry in _studies(client) if budget is None or entry[3] == budget]
    if not studies:
        where = f" at budget {budget}" if budget else ""
        return f"No studies{where} at {tracking_uri} yet; run one with: make run"
    states = [(study_state(client, tracking_uri, experiment, parents), experiment)
              for experiment, parents, _, _ in studies]
    states.sort(key=lambda pair: pair[0].updated_ms, reverse=True)
    rows = [HEADER]
    for state, _ in states:
        stale = staleness(client, state)
        words = verdict_words(_call_counts(client, state), state)
        if stale and VERDICT_FILE in state.report_files:
            words += " (stale)"
        more = f" (+{state.n_parents - 1} older parent runs)" if state.n_parents > 1 else ""
        rows.append([state.study, state.budget, state.design, trials_text(state),
                     when(state.updated_ms), words,
                     report_places(state, str(args["exports"])) + more])
    return "\n".join([*_table(rows), "",
                      f"{len(states)} studies at {tracking_uri}; a study's verdict: "
                      f"python -m harness.results study=NAME [budget=...]"])


def _choose(studies: list[tuple[Any, list[Any], str, str]], study: str, budget: str | None,
            tracking_uri: str) -> tuple[Any, list[Any], list[str]]:
    """Return the experiment and parents of ``study`` at ``budget``, and its other budgets."""
    names = sorted({entry[2] for entry in studies})
    if study not in names:
        if not names:
            raise UserError(f"no study '{study}' at {tracking_uri}: it holds no studies yet")
        raise UserError(f"{unknown_choice('study', study, names)} (studies at {tracking_uri})")
    mine = [entry for entry in studies if entry[2] == study]
    budgets = [entry[3] for entry in mine]
    if budget is not None:
        if budget not in budgets:
            raise unknown_choice(f"budget of study '{study}'", budget, budgets)
        chosen = next(entry for entry in mine if entry[3] == budget)
    else:  # the one the user most likely just ran: the newest parent start or end
        chosen = max(mine, key=lambda entry: max(entry[1][0].info.start_time or 0,
                                                 entry[1][0].info.end_time or 0))
    return chosen[0], chosen[1], [b for b in budgets if b != chosen[3]]


def _verdict_head(markdown: str) -> str:
    """Return verdict.md up to its second section: the answer, the facts and the calls table.

    The main effects and configs tables that follow are wide; they stay in the files.
    """
    lines = markdown.rstrip().splitlines()
    sections = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if len(sections) >= 2:
        lines = lines[: sections[1]]
    return "\n".join(lines).rstrip()


def show_study(args: Mapping[str, str | None]) -> str:
    """Return one study's verdict: reused from its logged report, or recomputed if stale."""
    from harness.core.checks import check_writable_folder

    check_writable_folder("exports", str(args["exports"]))  # before the store is opened
    client, tracking_uri = _open_store(str(args["tracking_uri"]))
    study = str(args["study"])
    budget = resolve_budget(args["budget"]) if args["budget"] else None
    experiment, parents, others = _choose(_studies(client), study, budget, tracking_uri)
    state = study_state(client, tracking_uri, experiment, parents, args["parent"])
    head = (f"Study {state.experiment} ({state.design}): {trials_text(state)}, updated "
            f"{when(state.updated_ms)}; parent run {state.parent_run_id} at {tracking_uri}")
    lines = [head]
    if state.n_parents > 1 and not args["parent"]:
        lines.append(f"({state.n_parents - 1} older parent run(s) there; choose with "
                     f"parent=RUN_ID)")
    if others:
        lines.append(f"(also at budget {', '.join(others)}; choose with budget=NAME)")
    if state.n_runs == 0:
        lines.append("No trial run yet, so there is no verdict; the queue has not started.")
        return "\n".join(lines)
    folder = Path(str(args["exports"])) / state.experiment
    stale = staleness(client, state)
    if stale is None:
        lines.append(f"Report logged {when(state.logged_ms)} and up to date (no trial changed "
                     f"since): reused from the parent run's {REPORT_DIR}/, not recomputed.")
        with tempfile.TemporaryDirectory(prefix="harness-results-") as temporary:
            path = _download(client, state.parent_run_id, VERDICT_FILE, temporary)
            markdown = path.read_text(encoding="utf-8") if path else None
        if markdown is None:
            stale = f"its {VERDICT_FILE} cannot be read"
    if stale is not None:
        from harness.report import build_report
        from harness.report.stats import MARGIN

        margin = state.margin if state.margin and state.margin > 0 else MARGIN
        report = build_report(tracking_uri, state.study, state.budget, folder,
                              state.parent_run_id, log_to_mlflow=True, margin=margin)
        markdown = report.paths["verdict"].read_text(encoding="utf-8")
        lines.append(f"Report was stale ({stale}): recomputed from MLflow (margin {margin:g}), "
                     f"written to {folder}/ and logged to the parent run's {REPORT_DIR}/.")
    lines += ["", _verdict_head(markdown), ""]
    places = [f"{folder}/"] if folder.is_dir() else []
    places.append(f"MLflow parent run {state.parent_run_id}, artifacts {REPORT_DIR}/")
    lines.append(f"Full report (effects, configs, figures): {' and '.join(places)}")
    return "\n".join(lines)


def results(argv: list[str]) -> str:
    """Return the text to print for ``argv`` (see the module doc)."""
    args = parse_args(argv)
    return show_study(args) if args["study"] else list_studies(args)


def main(argv: list[str] | None = None) -> int:
    """Print the listing or a study's verdict, or one ``error:`` line for a user's mistake.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for a user's mistake.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    return guarded("harness.results", lambda: results(argv))


if __name__ == "__main__":
    sys.exit(main())
