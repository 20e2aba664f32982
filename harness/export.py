"""Export a study's report from MLflow: ``python -m harness.export study=tricks [key=value ...]``.

Keys:
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
import math
import sys
from pathlib import Path

from harness.config.arguments import guarded, key_values
from harness.config.settings import DEFAULT_TRACKING_URI, resolve_budget
from harness.core.errors import UserError, abbreviated
from harness.report.tables import DEFAULT_METRIC, metric_def

DEFAULTS = {
    "study": None,
    "budget": "auto",
    "out": None,
    "tracking_uri": DEFAULT_TRACKING_URI,
    "parent": None,
    "metric": DEFAULT_METRIC,
    "margin": None,
}
"""Argument key → default; None means computed (``out``), required (``study``), newest
(``parent``) or the metric's own (``margin``)."""

SQLITE_PREFIX = "sqlite:///"


def parse_args(argv: list[str]) -> dict[str, str]:
    """Parse ``key=value`` arguments against :data:`DEFAULTS`.

    Args:
        argv: The arguments, without the program name.

    Returns:
        Every key of :data:`DEFAULTS` with its value (``out`` may still be None).

    Raises:
        UserError: An argument without ``=``, an unknown or repeated key, or no study.
    """
    values = key_values(argv, DEFAULTS, empty_allowed=True)
    if not values["study"]:
        raise UserError("missing study=NAME, e.g. python -m harness.export study=tricks")
    return values  # type: ignore[return-value]


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


def _margin(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        margin = float(text)
    except ValueError:
        margin = math.nan
    if not 0 < margin < 1e9:
        raise UserError(f"margin must be a positive number in the metric's unit, got "
                        f"{abbreviated(text)!r}")
    return margin


def export(argv: list[str]) -> str:
    """Load the study, write its report and return the text to print.

    Args:
        argv: ``key=value`` arguments (see the module doc).

    Returns:
        The verdict followed by the written paths.
    """
    args = parse_args(argv)
    budget = resolve_budget(args["budget"])
    margin, metric = _margin(args["margin"]), metric_def(args["metric"]).logged_as
    from harness.config.preflight import check_export

    check_export(args["tracking_uri"], args["out"])
    tracking_uri = readable_tracking_uri(args["tracking_uri"])
    for noisy in ("alembic", "mlflow.store.db.utils"):  # schema chatter at INFO on every open
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from harness.report import build_report

    out_dir = Path(args["out"] or Path("exports") / f"{args['study']}-{budget}")
    report = build_report(tracking_uri, args["study"], budget, out_dir, args["parent"],
                          margin=margin, metric=metric)
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
