"""Checks of what a command line names, done before any data is read or any store is opened.

Each function raises a :class:`~harness.core.errors.UserError` with one line that says what is wrong
and what would work, or returns the checked value. They look, they never write: a refused input
leaves every file as it was.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from harness.core.devices import auto_device_type
from harness.core.errors import UserError, abbreviated, unknown_choice

# The largest integer any setting may hold: int64, what torch, numpy and SQLite store. Every
# count here is far below it; a larger number is a typo, and past 4300 digits Python will not
# even read it.
MAX_INTEGER = 2**63 - 1
SQLITE_HEADER = b"SQLite format 3\x00"
# Longest name of one path component on Linux and macOS file systems (ext4, APFS): bytes.
NAME_MAX = 255
# Tables that tell whose database an SQLite file is.
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics"})
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})

# SQLAlchemy's default driver of each database dialect, and the package that provides it.
_DRIVERS = {
    # SQLAlchemy 2.1 made psycopg (3) the default; the `postgres` extra installs psycopg2,
    # which postgresql+psycopg2:// names.
    "postgresql": ("psycopg", "psycopg[binary] (or write postgresql+psycopg2://)"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+pg8000": ("pg8000", "pg8000"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "mssql+pyodbc": ("pyodbc", "pyodbc"),
    "mssql+pymssql": ("pymssql", "pymssql"),
}


def finite_number(key: str, value: Any, *, minimum: float | None = None,
                  strict: bool = False) -> float:
    """Return ``value`` as a finite float at least ``minimum`` (above it when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{key} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UserError(f"{key} must be a finite number, got {value!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        relation = "above" if strict else "at least"
        raise UserError(f"{key} must be {relation} {minimum:g}, got {value!r}")
    return number


def check_integer_size(key: str, value: Any) -> None:
    """Raise a UserError when ``value``, or an integer inside it, is beyond :data:`MAX_INTEGER`."""
    if isinstance(value, list | tuple):
        for item in value:
            check_integer_size(key, item)
    elif isinstance(value, dict):
        for inner_key, item in value.items():
            check_integer_size(f"{key}.{inner_key}" if key else str(inner_key), item)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        raise too_large(key, str(value))


def too_large(key: str, number: str) -> UserError:
    """Build the error for the integer ``number`` (its digits as typed) given for ``key``."""
    return UserError(f"{key}: {abbreviated(number)} is too large to be meant; integers here are "
                     f"at most {MAX_INTEGER} (2**63-1)")


def check_device(name: str, cuda_count: int | None = None, mps: bool | None = None) -> str:
    """Return ``name`` if this machine has that device: auto, cpu, cuda, cuda:N or mps.

    Args:
        name: The ``device=`` setting.
        cuda_count: GPUs visible here; None asks torch.
        mps: Whether Apple's MPS backend is usable; None asks torch.
    """
    import torch

    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if mps is None:
        backend = getattr(torch.backends, "mps", None)
        mps = bool(backend and backend.is_available())
    device_type, _, index = name.partition(":")
    if device_type not in ("auto", "cpu", "cuda", "mps") or (index and device_type != "cuda"):
        raise unknown_choice("device", name, ["auto", "cpu", "cuda", "cuda:N", "mps"])
    if device_type == "cuda":
        if cuda_count == 0:
            raise UserError(f"device={name}: this machine has no CUDA GPU visible to torch; "
                            f"use device=auto or device=cpu")
        if index:
            if not index.isdigit():
                raise UserError(f"device={name}: the GPU index must be a number, e.g. cuda:0")
            if int(index) >= cuda_count:
                raise UserError(f"device={name}: this machine has {cuda_count} GPU(s), "
                                f"cuda:0 to cuda:{cuda_count - 1}")
    if device_type == "mps" and not mps:
        raise UserError(f"device={name}: Apple's MPS backend is not available on this machine; "
                        f"use device=auto or device=cpu")
    return name


def check_device_fit(name: str, devices: int, workers: int | str = 1, trials_per_gpu: int = 1, *,
                     sync_bn: bool = False, cuda_count: int | None = None,
                     mps: bool | None = None) -> None:
    """Check that ``workers`` trials of ``devices`` ranks each can train on ``device=name``.

    On CUDA each rank of a trial has a GPU of its own, and each worker is one group of
    ``devices`` ranks; ``trials_per_gpu`` workers may share a GPU, as with one device. So a
    trial needs ``devices`` GPUs, and ``workers × devices`` must not exceed
    ``trials_per_gpu × visible GPUs``. On the CPU the ranks are gloo processes and always fit.

    Args:
        name: The ``device=`` setting, already checked by :func:`check_device`.
        devices: ``trainer.devices``: ranks per trial.
        workers: Workers of the study running at once, or ``auto``.
        trials_per_gpu: Workers packed onto each GPU.
        sync_bn: ``trainer.sync_bn``, which needs CUDA.
        cuda_count: GPUs visible here; None asks torch.
        mps: Whether Apple's MPS backend is usable; None asks torch.
    """
    if devices == 1:
        return
    import torch

    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device_type = name.partition(":")[0]
    if device_type == "auto":
        device_type = auto_device_type(cuda_count, mps)
    if device_type not in ("cuda", "cpu"):
        raise UserError(f"trainer.devices={devices} needs CUDA or the CPU, not {device_type}")
    if sync_bn and device_type != "cuda":
        raise UserError("trainer.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    if device_type != "cuda":
        return
    if ":" in name:
        raise UserError(f"device={name} pins one GPU; trainer.devices={devices} needs "
                        f"device=cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    if devices > cuda_count:
        raise UserError(f"trainer.devices={devices} needs {devices} GPUs, one per rank; "
                        f"{cuda_count} are visible")
    # workers=auto starts trials_per_gpu workers per visible GPU (harness.study.launchers).
    count = cuda_count * trials_per_gpu if workers == "auto" else int(workers)
    if count * devices > cuda_count * trials_per_gpu:
        fits = cuda_count * trials_per_gpu // devices
        needs = (f"{count * devices} GPUs" if trials_per_gpu == 1 else
                 f"{-(-count * devices // trials_per_gpu)} GPUs at trials_per_gpu="
                 f"{trials_per_gpu}")
        raise UserError(f"workers={workers} ({count}) × trainer.devices={devices} needs {needs}; "
                        f"{cuda_count} are visible: use workers={fits} or fewer")


def check_path_names(key: str, path: str | Path) -> Path:
    """Return ``path`` as a Path if each of its components fits the file system's name limit."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"{key}: the name '{part[:40]}...' is {len(os.fsencode(part))} "
                            f"bytes long; file systems allow {NAME_MAX}")
    return path


def check_writable_file(key: str, path: str | Path) -> Path:
    """Return ``path`` if a file can be created or appended there: not a folder, folder writable.

    A missing parent folder is fine when the nearest existing ancestor is writable, since the
    harness creates the folders it needs.
    """
    path = check_path_names(key, path)
    if path.is_dir():
        raise UserError(f"{key} '{path}' is a folder; name a file inside it")
    if path.exists():
        _check_appendable(key, path)
    _check_creatable_folder(key, path.parent)
    return path


def _check_appendable(key: str, path: Path) -> None:
    """Open an existing file for appending and close it: that writes nothing, changes nothing.

    ``os.access`` alone says yes to root whatever a file's mode bits, and /proc's files refuse
    writes that its answer allows.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise UserError(f"{key} '{path}' cannot be written ({exc.strerror})") from None


def check_writable_folder(key: str, path: str | Path) -> Path:
    """Return ``path`` if files can be written into it: an existing folder or a creatable one."""
    path = check_path_names(key, path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key} '{path}' is a file, not a folder")
    _check_creatable_folder(key, path)
    return path


def _check_creatable_folder(key: str, folder: Path) -> None:
    ancestor = folder.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{key}: '{ancestor}' is a file, so '{folder}' cannot be a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{key}: the folder '{ancestor}' cannot be written")
    try:
        # An unnamed file (O_TMPFILE where Linux has it): a real write test that leaves no
        # name behind. os.access says yes to root for /proc, where nothing can be created.
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise UserError(f"{key}: files cannot be created in the folder '{ancestor}' "
                        f"({exc.strerror})") from None


def check_driver(key: str, url: str) -> None:
    """Raise a UserError naming the package to install when a database URL's driver is missing."""
    dialect = url.split("://", 1)[0].lower()
    module, package = _DRIVERS.get(dialect, (None, None))
    if module is None:
        return
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{key} '{_redacted(url)}' needs the {dialect.split('+')[0]} driver "
                        f"'{module}', which is not installed: pip install {package}")


def _redacted(url: str) -> str:
    """Return ``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def sqlite_tables(path: Path) -> frozenset[str] | None:
    """Return the table names of an SQLite file, or None when the file is not SQLite.

    Opened read-only, so looking never creates or changes anything.
    """
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("select name from sqlite_master where type='table'")
            return frozenset(name for (name,) in rows)
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return None


def check_mlflow_sqlite(key: str, path: str | Path) -> Path:
    """Return ``path`` if it is absent, empty, or an SQLite file that is not another tool's."""
    path, tables = _existing_tables(key, path, "name a new file or an MLflow database")
    if tables & OPTUNA_TABLES and not tables & MLFLOW_TABLES:
        raise UserError(f"{key}: '{path}' is an Optuna database, not an MLflow store")
    return path


def check_optuna_sqlite(key: str, path: str | Path) -> Path:
    """Return ``path`` if it is absent, empty, or an SQLite file that is not MLflow's."""
    path, tables = _existing_tables(key, path, "name a new .db file or a journal file")
    if tables & MLFLOW_TABLES:
        raise UserError(f"{key}: '{path}' is an MLflow database; Optuna needs its own, e.g. "
                        f"sqlite:///{path.with_name('optuna.db')}")
    return path


def _existing_tables(key: str, path: str | Path, instead: str) -> tuple[Path, frozenset[str]]:
    """Return a writable ``path`` and its tables: none when absent or empty, else SQLite's."""
    path = check_writable_file(key, path)
    if not path.exists() or path.stat().st_size == 0:
        return path, frozenset()
    tables = sqlite_tables(path)
    if tables is None:
        raise UserError(f"{key}: '{path}' is not an SQLite database (an Optuna journal or a "
                        f"text file?); {instead}")
    return path, tables


def check_journal(key: str, path: str | Path) -> Path:
    """Return ``path`` if it is absent, empty, or an Optuna journal (JSON lines)."""
    path = check_writable_file(key, path)
    if not path.exists() or path.stat().st_size == 0:
        return path
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_HEADER))
        handle.seek(0)
        first = handle.readline(1 << 16)
    if head == SQLITE_HEADER:
        if (sqlite_tables(path) or frozenset()) & MLFLOW_TABLES:
            raise UserError(f"{key}: '{path}' is an MLflow database; Optuna needs a storage of "
                            f"its own (leave storage= out for the default journal)")
        raise UserError(f"{key}: '{path}' is an SQLite database, not a journal file; "
                        f"for an SQLite storage write storage=sqlite:///{path}")
    try:
        record = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise UserError(f"{key}: '{path}' is not an Optuna journal file")
    return path


TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+",
                    "mysql://", "mysql+", "mssql")


def check_tracking_scheme(uri: str) -> None:
    """Raise a UserError unless ``uri``'s scheme is one MLflow and this harness support."""
    if uri.startswith(TRACKING_SCHEMES):
        return
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(f"tracking_uri '{uri}' is a plain file store, which MLflow no longer "
                        f"supports; use sqlite:///PATH.db or http://HOST:PORT")
    raise UserError(f"unsupported tracking_uri '{uri}'; use sqlite:///PATH.db, "
                    f"http(s)://HOST:PORT or a postgresql:// database URL")


# A Slurm partition name, or several separated by commas as sbatch --partition takes them.
SLURM_PARTITIONS = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")


def check_slurm_partition(partition: str) -> str:
    """Return ``partition`` if it is a name sbatch accepts: letters, digits, ``_ . -``."""
    if not SLURM_PARTITIONS.fullmatch(partition):
        raise UserError(f"slurm.partition '{partition}' is not a partition name: use letters, "
                        f"digits, _ . - (several as a,b); sinfo -s lists them")
    return partition


def check_can_submit(cluster: str) -> None:
    """Check that ``launcher=slurm`` can submit here: submitit installed, and srun for Slurm.

    Runs before a study's stores are opened: a launch that cannot start must leave them as
    they were.
    """
    if importlib.util.find_spec("submitit") is None:
        raise UserError("launcher=slurm needs submitit: pip install -e '.[slurm]'")
    # submitit finds Slurm by its srun (SlurmExecutor.affinity) and submits with sbatch.
    missing = [tool for tool in ("srun", "sbatch") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise UserError(f"launcher=slurm: no {' or '.join(missing)} on this machine's PATH, so "
                        f"no Slurm job can be submitted from here; run on a Slurm login node, "
                        f"or slurm.cluster=local runs the job array on this machine")


def check_tracking(tracking_uri: str) -> None:
    """Check that an MLflow URI is usable here and its file, if any, is no other tool's."""
    check_tracking_scheme(tracking_uri)
    check_driver("tracking_uri", tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///")
        if not path:
            raise UserError("tracking_uri 'sqlite:///' names no file, e.g. "
                            "sqlite:///mlruns/mlflow.db")
        folder = check_path_names("tracking_uri", path).parent
        if not folder.is_dir() and folder.absolute() != Path("mlruns").absolute():
            # Only the default store's folder is made on the fly: a typo elsewhere would
            # otherwise leave a new, empty store behind.
            raise UserError(f"tracking_uri '{tracking_uri}': folder '{folder}' does not exist")
        check_mlflow_sqlite("tracking_uri", path)


def positive_int(key: str, value: Any, none_ok: bool = False) -> int | None:
    """Return ``value`` if it is a positive integer (or None, with ``none_ok``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{key} must be a positive integer, got {value!r}")
    return value


def positive_number(key: str, value: Any, unit: str = "of seconds") -> float:
    """Return ``value`` as a float if it is a positive number below 1e9 (``unit`` for the line)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise UserError(f"{key} must be a positive number {unit}, got {abbreviated(repr(value))}")
    return float(value)


def count(key: str, value: Any) -> int:
    """Return ``value`` if it is 0 or a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{key} must be 0 or a positive integer, got {value!r}")
    return value
