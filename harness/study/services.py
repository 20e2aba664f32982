"""A local PostgreSQL server and an MLflow tracking server for many workers: start and stop.

``python -m harness.study.services start`` (``make services``) starts PostgreSQL 15 with its data
in ``mlruns/services/`` and an MLflow server on a PostgreSQL backend store with served artifacts,
both on 127.0.0.1, and prints as its last line the overrides every worker needs::

    storage=postgresql+psycopg2://postgres@127.0.0.1:54329/optuna tracking_uri=http://127.0.0.1:5001

``stop`` (``make services-stop``) stops both. PostgreSQL refuses to run as root; as root the
server runs as the ``postgres`` user through ``runuser``, so that user must be able to enter
every folder above the data. A checkout under ``/root`` (mode 700) is closed to it; choose
another folder with ``make services SERVICES_DIR=/srv/harness-services`` (``--folder DIR``
here), and give the same one to ``make services-stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.core.errors import UserError

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_FOLDER = Path("mlruns") / "services"
DATABASES = ("optuna", "mlflow")
START_SECONDS = 120  # MLflow's server takes 15-20 s to answer on 2 cores; leave room


def as_postgres(command: list[str]) -> list[str]:
    """Return ``command`` run as the ``postgres`` user when this process is root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def storage_url(port: int, database: str = "optuna") -> str:
    """Return the URL of a database of the local server."""
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the extra installs psycopg2.
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"


def start_postgres(folder: Path, port: int) -> str:
    """Create (once) and start the PostgreSQL server in ``folder``; return the Optuna URL."""
    if not (PG_BIN / "pg_ctl").is_file():
        raise UserError(f"no PostgreSQL in {PG_BIN}; install PostgreSQL 15 (Debian: apt-get "
                        f"install postgresql-15) or set PG_BIN to its bin folder")
    folder = folder.absolute()  # the postgres user may not be able to enter our working folder
    data = folder / "pgdata"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        check_postgres_can_enter(folder)
    if not (data / "PG_VERSION").is_file():
        _check(as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                            "-U", "postgres"]), "initdb")
    # TCP on 127.0.0.1 only; no Unix socket, so no socket folder has to suit the postgres user.
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    _check(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                        str(folder / "postgres.log"), "-w", "-o", options, "start"]),
           "pg_ctl start")
    for database in DATABASES:
        created = subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", "postgres", database], capture_output=True, text=True)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise UserError(f"createdb {database}: {created.stderr.strip()}")
    return storage_url(port)


def check_postgres_can_enter(folder: Path) -> None:
    """Raise a UserError when the postgres user cannot enter ``folder``; initdb says less.

    The error names the first folder on the way that is closed to that user, and how to choose
    another; initdb would only say "could not access directory ...: Permission denied".
    """
    if _postgres_can_enter(folder):
        return
    closed = next(path for path in [*reversed(folder.parents), folder]
                  if not _postgres_can_enter(path))
    mode = closed.stat().st_mode & 0o777
    raise UserError(f"PostgreSQL runs as the postgres user, which cannot enter {closed} (mode "
                    f"{mode:o}), so it cannot keep its data in {folder}; choose a folder it can "
                    f"reach: make services SERVICES_DIR=/srv/harness-services (or --folder DIR)")


def _postgres_can_enter(path: Path) -> bool:
    # Asked of the postgres user itself, so ACLs and group rights count as the kernel counts them.
    return subprocess.run(as_postgres(["test", "-x", str(path)]),
                          capture_output=True).returncode == 0


def start_mlflow(folder: Path, pg_port: int, port: int) -> str:
    """Start an MLflow server on the local PostgreSQL, detached; return its URI once it answers."""
    uri = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (folder / "mlflow.log").open("a")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", storage_url(pg_port, "mlflow"),
         "--serve-artifacts", "--artifacts-destination", str((folder / "artifacts").resolve()),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "mlflow.pid").write_text(str(process.pid))
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the MLflow server exited with code {process.returncode}; see "
                            f"{folder / 'mlflow.log'}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return uri
        except OSError:
            time.sleep(1)
    raise UserError(f"the MLflow server did not answer at {uri} in {START_SECONDS} s")


def stop(folder: Path) -> None:
    """Stop the MLflow server and the PostgreSQL server of ``folder``, if they run."""
    folder = folder.absolute()  # as in start_postgres: pg_ctl runs as the postgres user
    pid_file = folder / "mlflow.pid"
    if pid_file.is_file():
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):  # it already ended
            os.killpg(pid, signal.SIGTERM)  # its own session: the server and its workers
        pid_file.unlink()
    if (folder / "pgdata" / "postmaster.pid").is_file():
        _check(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "pgdata"), "-m", "fast",
                            "-w", "stop"]), "pg_ctl stop")


def _check(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{what} failed: {(done.stderr or done.stdout).strip()}")


def main(argv: list[str] | None = None) -> int:
    """``start`` or ``stop`` the services; ``start`` prints the overrides as its last line."""
    parser = argparse.ArgumentParser(prog="python -m harness.study.services",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER,
                        help=f"where the services keep their data and logs (default "
                             f"{DEFAULT_FOLDER}; make services SERVICES_DIR=...); as root, the "
                             f"postgres user must be able to enter every folder above it")
    parser.add_argument("--pg-port", type=int, default=54329)
    parser.add_argument("--mlflow-port", type=int, default=5001)
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            stop(args.folder)
            print(f"stopped the services in {args.folder}")
            return 0
        storage = start_postgres(args.folder, args.pg_port)
        tracking = start_mlflow(args.folder, args.pg_port, args.mlflow_port)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    again = "" if args.folder == DEFAULT_FOLDER else f" SERVICES_DIR={args.folder}"
    print(f"PostgreSQL and MLflow run from {args.folder}; stop them with make "
          f"services-stop{again}")
    print(f"storage={storage} tracking_uri={tracking}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
