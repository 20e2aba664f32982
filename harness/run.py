"""Command line: ``python -m harness.run study=tricks budget=cpu seeds=[0,1,2] ...``.

Parses and checks the configuration, runs the study, prints the results and the 80/20 verdict.
A mistake in the input ends with one line on stderr and exit code 2; Ctrl-C stops cleanly, and
the same command resumes. So does a study that a fault stopped: a full disk (exit code 74) or a
store unreachable past ``retry_window`` (75), each with one line that says so.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.config.preflight import check_run
from harness.config.settings import RunConfig, build_config, help_text, with_more_seeds
from harness.core.devices import resolve_device
from harness.core.errors import UserError, crash_line, error_line
from harness.core.faults import (
    EXIT_DISK_FULL,
    EXIT_UNREACHABLE,
    DiskFull,
    StoreUnreachable,
    full_path,
    is_disk_full,
)
from harness.study import config_label
from harness.training import devices, ranks
from harness.training.placement import device_name
from harness.tricks import describe_tricks, toggle_changes

if TYPE_CHECKING:  # the runner pulls in MLflow, which --help and --dry-run do not need
    from harness.report import Report
    from harness.study.runner import StudyOutcome

FLAGS = ("--help", "-h", "--list-tricks", "--dry-run")
EXIT_CRASHED = 1  # a trial crashed or a worker died; the rest of the study still ran
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # the shell's code for a command whose reader closed the pipe (128 + SIGPIPE)
EXIT_UNEXPECTED = 1  # an exception no check foresaw: one line, the traceback in a file


def headline(cfg: RunConfig, requested_budget: str) -> str:
    """Return the first line a run prints: study, budget, trial count and device."""
    budget = f"{cfg.budget} (auto)" if requested_budget == "auto" else cfg.budget
    count = cfg.study.design.headline(cfg.configs, cfg.seeds, cfg.n_trials, cfg.factors)
    device = device_name(resolve_device(cfg.settings.device))
    return f"study {cfg.study.name} · budget {budget} · {count} · device {device}"


def describe_plan(cfg: RunConfig) -> str:
    """Return the ``--dry-run`` listing: every trial that would run, and the count."""
    lines = [f"base recipe: {_recipe_summary(cfg)}"]
    if cfg.fixed:
        lines.append("fixed: " + config_label(cfg.fixed))
    lines.append("what each option changes in the base recipe:")
    for name, options in cfg.factors.items():
        for option in options:
            changes = toggle_changes(cfg.recipe, {name: option})
            shown = ", ".join(f"{key}={value}" for key, value in changes.items()) or "nothing"
            lines.append(f"  {name}={option}: {shown}")
    lines.append(f"design: {cfg.study.design.name}")
    lines += cfg.study.design.describe(cfg.plan())
    if cfg.rounds is not None:
        more = cfg.rounds.looks - 1
        lines.append(f"seeds=auto: that is round 1 of at most {cfg.rounds.looks}; each further "
                     f"round adds one seed to every config ({more} more round(s), "
                     f"{more * len(cfg.configs)} trials at most), while any option is "
                     f"undetermined")
    return "\n".join(lines)


def _recipe_summary(cfg: RunConfig) -> str:
    r = cfg.recipe
    size = "all" if r.data.train_size is None else r.data.train_size
    return (f"{r.data.name} (train {size}, val {r.data.val_size}), {r.model.arch} "
            f"w{r.model.width}, {r.optimizer.name} lr {r.optimizer.effective_lr:g}, "
            f"{r.schedule.name}, batch {r.trainer.batch_size}, {r.trainer.epochs} epochs, "
            f"augment {list(r.augment.ops) or 'none'}")


def results_table(outcome: StudyOutcome) -> str:
    """Return a table of the trials this invocation ran."""
    rows = [f"{'trial':>5}  {'status':<11} {'val %':>6} {'test %':>6} {'sec':>6}  config"]
    for t in outcome.trials:
        rows.append(f"{t.number:>5}  {t.status:<11} {_pct(t.val_acc):>6} {_pct(t.test_acc):>6} "
                    f"{t.train_seconds:>6.0f}  {config_label(t.toggles)} seed={t.seed}")
    return "\n".join(rows)


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def best_trial_text(outcome: StudyOutcome) -> str:
    """Return the seed's per-class printout for the best finished trial (by val accuracy)."""
    finished = [t for t in outcome.trials if t.status == "finished" and t.test is not None]
    if not finished:
        return ""
    best = max(finished, key=lambda t: (-math.inf if math.isnan(t.val_acc) else t.val_acc))
    assert best.test is not None
    return (f"best trial {best.number} by val accuracy: {config_label(best.toggles)} "
            f"seed={best.seed}\n{best.test.format()}")


def run(argv: Sequence[str]) -> int:
    """Run the command line ``argv`` (without the program name); return the exit code."""
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    for flag in flags:
        if flag not in FLAGS:
            raise UserError(f"unknown flag '{flag}'; flags are {', '.join(FLAGS)}")
    if "--help" in flags or "-h" in flags:
        print(help_text())
        return 0
    if "--list-tricks" in flags:
        print(describe_tricks())
        return 0
    cfg = with_more_seeds(build_config(overrides))
    check_run(cfg)  # before any data is read or store opened, --dry-run included
    if ranks.torchrun_rank():
        # A rank other than 0 under torchrun: it trains what rank 0 announces and says nothing.
        if "--dry-run" not in flags:
            devices.follow(cfg.settings.device)
        return 0
    requested = next((o.split("=", 1)[1] for o in overrides if o.startswith("budget=")), "auto")
    print(headline(cfg, requested), flush=True)
    if "--dry-run" in flags:
        print(describe_plan(cfg))
        return 0
    try:
        if cfg.rounds is not None:
            from harness.study.rounds import run_rounds

            return run_rounds(cfg, run_once)
        return exit_code(run_once(cfg)[0])
    finally:
        ranks.release_followers()  # under torchrun: the other ranks end with the study


def run_once(cfg: RunConfig, alpha: float | None = None, printed: bool = True
             ) -> tuple[StudyOutcome, Report | None]:
    """Run the study of ``cfg`` once (train what it lacks), then write and log its report.

    Args:
        cfg: The command's configuration.
        alpha: The calls' family-wise error rate; None: the study-wide 5%.
        printed: Print the best trial and the report (``seeds=auto`` prints only its last).

    Returns:
        What the command did, and the report (None when no trial has a result yet).
    """
    from harness.study.launch import run_study
    from harness.study.reporting import report_study

    outcome = run_study(cfg.plan(), cfg.launch)
    for lost in outcome.lost_workers:
        print(f"warning: {lost}", file=sys.stderr)
    if outcome.stopped:
        print(stopped_line(outcome), file=sys.stderr)
        return outcome, None
    if outcome.interrupted:
        raise KeyboardInterrupt
    if outcome.trials:
        print(results_table(outcome))
        text = best_trial_text(outcome) if printed else ""
        if text:
            print(text)
    else:
        print(f"nothing to run: all {outcome.skipped} trials of this study are already done")
    report = report_study(cfg, outcome, alpha, printed)
    if outcome.still_running:
        print(f"{outcome.still_running} trial(s) still run in other commands; the report covers "
              f"what has finished")
    return outcome, report


def exit_code(outcome: StudyOutcome) -> int:
    """Return a study's exit code: the fault's that stopped it, 1 when a trial or worker failed."""
    if outcome.stopped:
        return outcome.exit_code
    return EXIT_CRASHED if outcome.crashed or outcome.lost_workers else 0


def stopped_line(outcome: StudyOutcome) -> str:
    """Return the one line that ends a study a fault stopped: what happened, what to do."""
    stopped = outcome.stopped_workers
    workers = f"{stopped} worker(s) stopped" if stopped > 1 else "the worker stopped"
    fix = "free some space, then " if outcome.exit_code == EXIT_DISK_FULL else ""
    return (f"error: {outcome.stopped}; {workers}, and the trials in flight are queued again: "
            f"{fix}run the same command again to resume")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: turn user mistakes into one line and exit code 2."""
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_USAGE
    except (DiskFull, StoreUnreachable) as exc:  # before any worker ran, or in the report
        print(f"{error_line(exc)}; run the same command again to resume", file=sys.stderr)
        return EXIT_DISK_FULL if isinstance(exc, DiskFull) else EXIT_UNREACHABLE
    except KeyboardInterrupt:
        print("\ninterrupted: the trial in flight is marked KILLED; run the same command again "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``--dry-run | head``): stop quietly, as cat and grep do, with
        # stdout pointed at nothing so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:  # noqa: BLE001 - the outermost guard: one line, details in a file
        if is_disk_full(exc):  # e.g. the report's folder, which no store's retry covers
            full = DiskFull(full_path(exc, ["."]))
            print(f"{error_line(full)}; free some space, then run the same command again",
                  file=sys.stderr)
            return EXIT_DISK_FULL
        print(crash_line(exc, "harness.run"), file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
