"""optuna-dashboard over a study's Optuna storage: ``python -m harness.dashboard [key=value ...]``.

For watching a search study's trials or a queue drain while workers run. The storage is the one
``harness.run`` uses: ``storage=`` (a journal file, ``sqlite:///PATH.db`` or a PostgreSQL URL)
or, without it, the study's default journal ``optuna/<study>.journal`` beside the MLflow SQLite
store (see :func:`harness.study.storage.default_storage`). The server binds to 127.0.0.1 only.

Keys:
    study: Whose default journal to open; default ``tricks``, as ``harness.run``.
    storage: The Optuna storage; default: the study's journal.
    tracking_uri: The MLflow store the default journal sits beside; default
        ``sqlite:///mlruns/mlflow.db``.
    port: The port on 127.0.0.1; default 8080.

A storage that does not exist (it would be created empty), a bad key or port ends with one
``error:`` line on stderr and exit code 2; Ctrl-C stops the server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from harness.config.arguments import guarded, key_values
from harness.core.errors import UserError

HOST = "127.0.0.1"  # never another interface: the dashboard can edit notes and delete studies
DEFAULTS = {"study": None, "storage": None, "tracking_uri": None, "port": "8080"}
"""Argument key → default; None means harness.config's default study and tracking URI
(``study``, ``tracking_uri``) or the study's default journal (``storage``)."""

JOURNAL_PREFIX = "journal:"


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """Parse ``key=value`` arguments against :data:`DEFAULTS`.

    Raises:
        UserError: An argument without ``=``, an unknown or repeated key, or an empty value.
    """
    return key_values(argv, DEFAULTS)


def parse_port(text: str) -> int:
    """Return ``text`` as a TCP port, or raise a UserError."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise UserError(f"port must be a number from 1 to 65535, got '{text}'")
    return port


def resolve_storage(args: dict[str, str | None]) -> str:
    """Return the storage to open: ``storage=``, else the study's default journal.

    Raises:
        UserError: The storage does not exist, or is not an Optuna storage (an MLflow
            database, a text file, an unsupported URL).
    """
    from harness.core.checks import check_driver, check_journal, check_optuna_sqlite
    from harness.study.storage import RDB_PREFIXES, check_storage, default_storage

    storage = args["storage"]
    if storage is None:
        from harness.config.settings import DEFAULT_STUDY, DEFAULT_TRACKING_URI

        study = args["study"] or DEFAULT_STUDY
        storage = default_storage(study, args["tracking_uri"] or DEFAULT_TRACKING_URI)
        if not Path(storage).is_file():
            found = sorted(p.stem for p in Path(storage).parent.glob("*.journal"))
            there = (f"; studies with a journal there: {', '.join(found)} (ARGS='study=NAME')"
                     if found else "")
            raise UserError(f"no Optuna storage for study '{study}' at {storage} (has it run?)"
                            f"{there}")
    check_storage(storage)
    if storage.startswith(RDB_PREFIXES):
        check_driver("storage", storage)
        if storage.startswith("sqlite:///"):
            path = storage.removeprefix("sqlite:///")
            # SQLite would create an empty database, which the dashboard would show as empty.
            if not path or not Path(path).is_file():
                raise UserError(f"no Optuna storage at '{path}' (from storage={storage})")
            check_optuna_sqlite("storage", path)
        return storage
    path = Path(storage.removeprefix(JOURNAL_PREFIX))
    if not path.is_file():  # Optuna would create an empty journal there
        raise UserError(f"no Optuna journal at '{path}'{_others(path.parent)}")
    check_journal("storage", path)
    return str(path)


def _others(folder: Path) -> str:
    """Return ``; journals there: ...`` naming the journals in ``folder``, or ""."""
    found = sorted(p.name for p in folder.glob("*.journal")) if folder.is_dir() else []
    return f"; journals there: {', '.join(found)}" if found else ""


def open_storage(storage: str) -> Any:
    """Open ``storage`` read-mostly as optuna-dashboard does: no tables created, no migration."""
    import optuna

    if storage.startswith(("sqlite:///", "postgresql")):
        try:
            return optuna.storages.RDBStorage(storage, skip_compatibility_check=True,
                                              skip_table_creation=True)
        except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL to the user
            raise UserError(f"cannot open storage '{storage}': "
                            f"{' '.join(str(exc).split())[:300]}") from None
    backend = optuna.storages.journal.JournalFileBackend(storage)
    return optuna.storages.JournalStorage(backend)


def serve(storage: Any, port: int, announce: Any = print) -> None:
    """Serve optuna-dashboard over ``storage`` on 127.0.0.1 until Ctrl-C.

    Threads answer requests (the page polls while a study runs); request lines are not logged,
    since the page asks every few seconds and would bury the terminal.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    try:
        import optuna_dashboard
    except ImportError:
        raise UserError("optuna-dashboard is not installed: pip install -e '.[dashboard]'") \
            from None

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # Ctrl-C does not wait for a browser's open connection

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = optuna_dashboard.wsgi(storage)
    try:
        httpd = make_server(HOST, port, app, server_class=Server, handler_class=QuietHandler)
    except OSError as exc:
        raise UserError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); choose "
                        f"another port, e.g. make dashboard PORT={port + 1}") from None
    announce(f"Optuna dashboard: http://{HOST}:{port}/  (Ctrl-C stops it)")
    with httpd:
        httpd.serve_forever()


def dashboard(argv: list[str], announce: Any = print) -> None:
    """Check the arguments and the storage, then serve the dashboard until Ctrl-C."""
    args = parse_args(argv)
    port = parse_port(str(args["port"]))
    storage_url = resolve_storage(args)
    storage = open_storage(storage_url)
    try:
        studies = storage.get_all_studies()
    except Exception as exc:  # noqa: BLE001 - e.g. a database without Optuna's tables
        raise UserError(f"storage '{storage_url}' cannot be read as an Optuna storage: "
                        f"{' '.join(str(exc).split())[:300]}") from None
    names = ", ".join(study.study_name for study in studies[:5])
    more = f", and {len(studies) - 5} more" if len(studies) > 5 else ""
    announce(f"storage {storage_url}: {len(studies)} Optuna studies"
             + (f" ({names}{more})" if studies else ""))
    serve(storage, port, announce)


def main(argv: list[str] | None = None) -> int:
    """Run the dashboard; one ``error:`` line and exit code 2 for a user's mistake.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 after Ctrl-C, 2 for a user's mistake.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    # Ctrl-C is how a dashboard is meant to end: exit code 0.
    return guarded("harness.dashboard",
                   lambda: dashboard(argv, announce=lambda line: print(line, flush=True)),
                   interrupted="stopped", interrupted_code=0)


if __name__ == "__main__":
    sys.exit(main())
