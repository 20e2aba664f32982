"""``seeds=auto`` on the command line: the rounds of :mod:`harness.study.designs.adaptive`.

Each round is the study at one seed more, run as a grown study through the same launcher (every
worker and every Slurm task takes part), then reported at its look's share of the error rate.
The report of each round is written and logged to its own parent run; the last one is printed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.report import stats
from harness.report.render import duration_text, settle_command
from harness.report.verdict import open_options
from harness.study import config_label
from harness.study.designs.adaptive import projected_seconds

if TYPE_CHECKING:
    from harness.config.settings import RunConfig
    from harness.report import Report
    from harness.study.runner import StudyOutcome

    RunOnce = Callable[..., tuple[StudyOutcome, Report | None]]

EXIT_CRASHED = 1


def run_rounds(cfg: RunConfig, run_once: RunOnce) -> int:
    """Run ``cfg``'s rounds until every option is settled or a cap is reached; return the exit code.

    Args:
        cfg: A configuration with ``rounds`` (``seeds=auto``).
        run_once: Runs one study and reports it (:func:`harness.run.run_once`).
    """
    rounds = cfg.rounds
    assert rounds is not None
    alpha = rounds.look_alpha(stats.ALPHA)
    started = time.monotonic()
    print(f"seeds=auto: up to {rounds.looks} round(s), seeds {list(rounds.first)} and one more "
          f"each round up to {rounds.max_seeds}; each round calls at a family-wise "
          f"{100 * alpha:.2g}%, so that all rounds together make a wrong call at most "
          f"{100 * stats.ALPHA:.0f}% of the time (Bonferroni over the rounds)", flush=True)
    trained, report, outcome, reason, code = 0, None, None, "", 0
    number = 0
    for number, seeds in enumerate(rounds.seeds(), 1):
        print(f"round {number} of at most {rounds.looks}: seeds {list(seeds)}", flush=True)
        round_started = time.monotonic()
        outcome, report = run_once(dataclasses.replace(cfg, seeds=seeds), alpha=alpha,
                                   printed=False)
        trained += len(outcome.trials)
        if outcome.stopped:  # a full disk or a store gone too long: said in one line already
            return outcome.exit_code
        if outcome.crashed or outcome.lost_workers:
            reason, code = (f"round {number} has trials that crashed or workers that died; the "
                            f"same command trains them again and goes on"), EXIT_CRASHED
            break
        if outcome.still_running:
            reason = (f"other commands still train {outcome.still_running} trial(s) of round "
                      f"{number}; run the same command when they end to go on")
            break
        if report is None:
            reason = "no trial has a result"
            break
        verdict = report.verdict
        undecided, stuck = open_options(verdict.effects, verdict.plan)
        if not undecided and not stuck:
            reason = "every option is settled"
            break
        if not undecided:
            reason = (f"{_options(stuck)} cannot be settled by more seeds: the test set's own "
                      f"noise is too large for them")
            break
        if len(seeds) >= rounds.max_seeds:
            reason = f"max_seeds={rounds.max_seeds} reached with {_options(undecided)} undetermined"
            break
        pace = _pace(outcome, time.monotonic() - round_started, verdict.plan.seconds_per_run, cfg)
        upcoming = projected_seconds(len(cfg.configs), pace, 1)
        elapsed = time.monotonic() - started
        if rounds.max_minutes is not None and elapsed + upcoming > 60 * rounds.max_minutes:
            reason = (f"the next round (about {duration_text(upcoming) or '1 min'}) would end past "
                      f"max_minutes={rounds.max_minutes:g}, with {_options(undecided)} "
                      f"undetermined")
            break
        print(f"round {number}: undetermined {_options(undecided)}; next round: "
              f"{len(cfg.configs)} trials, about {duration_text(upcoming) or '1 min'}", flush=True)
    if report is not None and outcome is not None:
        from harness.study.reporting import show_report

        show_report(report, outcome)
    wall = duration_text(time.monotonic() - started) or "under a minute"
    runs = "" if report is None else f", {report.verdict.n_results} runs in the last report"
    print(f"seeds=auto: {number} round(s){runs}, {trained} trained by this command, {wall} of "
          f"wall time; stopped: {reason}")
    if report is not None and reason.startswith(("max_seeds", "the next round")):
        plan = report.verdict.plan
        if plan.seeds is not None:
            took = duration_text(plan.new_runs * plan.seconds_per_run)
            print(f"to settle the rest ({plan.new_runs} more runs at most"
                  + (f", about {took} of training" if took else "")
                  + f"): {settle_command(report.verdict, plan.seeds)}")
    return code


def _options(keys: list[tuple[str, str]]) -> str:
    return ", ".join(config_label({trick: option}) for trick, option in keys)


def _pace(outcome: StudyOutcome, seconds: float, per_run: float, cfg: RunConfig) -> float:
    """Return the wall seconds a trial of the next round takes, all workers counted.

    A round that trained its trials measured it; one that trained nothing (a resumed command)
    has only the runs' mean training time, spread over the workers asked for.
    """
    if outcome.trials:
        return seconds / len(outcome.trials)
    workers = cfg.launch.workers if isinstance(cfg.launch.workers, int) else 1
    return per_run / max(workers, 1) if math.isfinite(per_run) else 0.0
