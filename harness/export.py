"""Export a study's report from MLflow: ``python -m harness.export study=tricks [key=value ...]``.

Keys, in ``harness.run``'s grammar (Hydra's; quote a path with spaces or non-ASCII characters,
e.g. ``out="/tmp/my report"``) and checked as it checks them:
    study: The study's name (required); the experiment is ``<study>-<budget>``.
    budget: ``auto`` (default) is ``full`` on a CUDA machine and ``cpu`` elsewhere.
    out: The output folder; default ``exports/<study>-<budget>/``.
    tracking_uri: The MLflow store; default ``sqlite:///mlruns/mlflow.db``.
    parent: The study's parent run id, when the experiment holds several; default: the newest.
    metric: The logged metric the effects, calls and verdict are on: ``test_acc`` (default),
        ``test_loss``, ``test_top5`` or any other of :data:`harness.training.metrics.METRICS`.
    margin: The band, in the metric's unit, inside which an effect is ``negligible``; default
        the metric's own (1.0 point of accuracy, 0.05 nats of loss).

Writes configs.csv, effects.csv, interactions.csv, verdict.md and two figures (see
:mod:`harness.report`), prints the verdict and the paths. A mistake in the arguments or a
missing study or store ends with one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from harness.config.arguments import guarded, parse_arguments
from harness.config.settings import (
    EXPORT,
    Settings,
    command_settings,
    parse_settings,
    resolve_budget,
)
from harness.core.errors import UserError, unknown_choice

SQLITE_PREFIX = "sqlite:///"


def parse_args(argv: list[str]) -> Settings:
    """Parse ``key=value`` arguments into the export's :class:`~harness.config.settings.Settings`.

    The grammar is ``harness.run``'s (:func:`~harness.config.arguments.parse_arguments`), and
    each value is checked where ``harness.run`` checks it.

    Args:
        argv: The arguments, without the program name.

    Raises:
        UserError: An argument without ``=``, an unknown or repeated key, a value out of range,
            or no study.
    """
    arguments = parse_arguments(argv)
    keys = command_settings(EXPORT)
    for key in arguments:
        if key not in keys:
            raise unknown_choice("argument", key, keys)
    if "study" not in arguments or not arguments["study"].text:
        raise UserError("missing study=NAME, e.g. python -m harness.export study=tricks")
    return parse_settings(arguments)


def readable_tracking_uri(tracking_uri: str) -> str:
    """Return a usable tracking URI, or raise a UserError when the store cannot be read.

    A ``sqlite:///`` file must exist: MLflow would otherwise create an empty database there and
    report an empty study. Other URIs get the tracker's checks (server reachable, supported).
    """
    if tracking_uri.startswith(SQLITE_PREFIX):
        path = Path(tracking_uri[len(SQLITE_PREFIX) :])
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (from tracking_uri={tracking_uri})")
    from harness.tracking.store import check_tracking_uri

    return check_tracking_uri(tracking_uri)


def export(argv: list[str]) -> str:
    """Load the study, write its report and return the text to print.

    Args:
        argv: ``key=value`` arguments (see the module doc).

    Returns:
        The verdict followed by the written paths.
    """
    settings = parse_args(argv)
    budget = resolve_budget(settings.budget)
    from harness.config.preflight import check_export

    check_export(settings.tracking_uri, settings.out)
    tracking_uri = readable_tracking_uri(settings.tracking_uri)
    for noisy in ("alembic", "mlflow.store.db.utils"):  # schema chatter at INFO on every open
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from harness.report import build_report

    out_dir = Path(settings.out or Path("exports") / f"{settings.study}-{budget}")
    report = build_report(tracking_uri, settings.study, budget, out_dir, settings.parent,
                          margin=settings.margin, metric=settings.metric)
    meta = report.meta
    others = meta["n_parents"] - 1
    also = f"; {others} other parent run(s) there, choose with parent=RUN_ID" if others else ""
    lines = [
        f"Study {meta['experiment']}: {meta['n_runs']} trial runs of parent run "
        f"{meta['parent_run_id']} at {tracking_uri}{also}",
        report.text,
        "",
        f"Wrote {len(report.paths)} files to {out_dir}:",
        *(f"  {path}" for path in report.paths.values()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the export; print the report, or one ``error:`` line for a user's mistake.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for a user's mistake.
    """
    return guarded("harness.export", lambda: export(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
