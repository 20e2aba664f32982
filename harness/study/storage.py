"""Where a study's trials live: an Optuna storage, and the one lock its queue changes under.

The default is a journal file in ``optuna/`` beside the MLflow SQLite store; ``storage=`` names
another journal file, a SQLite file (``sqlite:///PATH.db``) or a PostgreSQL database
(``postgresql://...``). Every process of a study (the launcher and each worker, on any host)
takes the same **queue lock** before it creates the study, fills the queue or claims a trial,
so those steps never interleave:

- a journal or SQLite file: an ``flock`` on a file beside it, released by the kernel when its
  holder dies, so a SIGKILLed worker never leaves it held;
- PostgreSQL: a session advisory lock on the database, which every host can take and which is
  released when the holder's connection closes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from harness.core.errors import UserError
from harness.core.locks import FileLock
from harness.study.journal import repair_journal

RDB_PREFIXES = ("sqlite:///", "postgresql")
LOCK_SUFFIX = ".queue.lock"
# One advisory lock key for the harness in a PostgreSQL database: a 63-bit constant
# (int.from_bytes(b"harness!") >> 1), so no other user of the database picks it by chance.
_PG_LOCK_KEY = int.from_bytes(b"harness!", "big") >> 1


def default_storage(study: str, tracking_uri: str | None = None) -> str:
    """Return the default journal file of a study, beside its MLflow store.

    For ``sqlite:///DIR/mlflow.db`` that is ``DIR/optuna/<study>.journal``, so the same command
    run from another folder finds the same trials; for a server it is ``mlruns/optuna/``.
    """
    folder = Path("mlruns")
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).absolute().parent
    return str(folder / "optuna" / f"{study}.journal")


def check_storage(url: str | None) -> None:
    """Raise a UserError for a storage setting that cannot work, without opening anything."""
    if url is None or url.startswith(RDB_PREFIXES):
        return
    if "://" in url:
        raise UserError(f"unsupported storage '{url}'; use a journal file path (.journal), "
                        f"sqlite:///PATH.db or postgresql://USER@HOST/DB")
    folder = Path(url.removeprefix("journal:")).parent
    if not folder.is_dir():
        raise UserError(f"storage '{url}': folder '{folder}' does not exist")


def heartbeat_interval(stale_after: float) -> int:
    """Return the seconds between heartbeats: five fit in the grace period, at most a minute."""
    return max(1, min(60, int(stale_after / 5)))


def open_storage(url: str, stale_after: float,
                 announce: Callable[[str], None] = print) -> optuna.storages.BaseStorage:
    """Open an Optuna storage; an RDB storage gets Optuna's heartbeat.

    With an RDB storage, a trial whose heartbeat stops for ``stale_after`` seconds is failed by
    Optuna (``fail_stale_trials``, which every worker calls before each claim), and
    ``RetryHeartbeatStaleTrialCallback`` queues it again as a waiting trial. A journal's torn
    last record is cut off first, and ``announce`` says so (:mod:`harness.study.journal`). Call
    this under the queue lock: a fresh database's tables are created here.
    """
    check_storage(url)
    if url.startswith(RDB_PREFIXES):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval(stale_after),
                grace_period=max(1, int(stale_after)),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
                engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True},
            )
        except Exception as exc:  # noqa: BLE001 - any driver error is a bad URL to the user
            raise _storage_error(url, exc) from None
    path = url.removeprefix("journal:")
    repair_journal(Path(path), announce)
    backend = optuna.storages.journal.JournalFileBackend(path)
    return optuna.storages.JournalStorage(backend)


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Return whether Optuna's own heartbeat watches this storage's trials (RDB storages)."""
    return (isinstance(storage, optuna.storages.RDBStorage)
            and storage.get_heartbeat_interval() is not None)


def record_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, now: float) -> None:
    """Tell the storage that a trial's process is alive.

    An RDB storage records Optuna's heartbeat; a journal has none, so the time goes into the
    trial's ``heartbeat`` user attr, which :func:`harness.study.queue.is_stale` reads.
    """
    if has_heartbeat(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_user_attr(trial_id, "heartbeat", now)


def queue_lock(url: str) -> AbstractContextManager[None]:
    """Return the lock that serialises changes to the queue of the studies in ``url``."""
    if url.startswith("postgresql"):
        return _AdvisoryLock(url)
    return FileLock(url.removeprefix("sqlite:///").removeprefix("journal:") + LOCK_SUFFIX)


class _AdvisoryLock(AbstractContextManager[None]):
    """A PostgreSQL session advisory lock on one pooled connection; re-entrant."""

    def __init__(self, url: str) -> None:
        import sqlalchemy

        self.url = url
        try:
            self._engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0,
                                                    pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - e.g. the driver is missing
            raise _storage_error(url, exc) from None
        self._connection: Any = None
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0:
            import sqlalchemy

            try:
                connection = self._engine.connect()
            except Exception as exc:  # noqa: BLE001 - the server is down or refuses us
                # The cause stays attached: harness.core.faults retries a server that restarts.
                raise _storage_error(self.url, exc) from exc
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                               {"key": _PG_LOCK_KEY})
            connection.commit()
            self._connection = connection
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._connection is not None:
            import sqlalchemy

            try:
                self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                         {"key": _PG_LOCK_KEY})
                self._connection.commit()
            except sqlalchemy.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise  # a lost connection took its session's lock with it
            finally:
                self._connection.close()
                self._connection = None


def _storage_error(url: str, exc: Exception) -> UserError:
    if isinstance(exc, ModuleNotFoundError) and url.startswith("postgresql"):
        return UserError(f"storage '{url}' needs the PostgreSQL driver: "
                         f"pip install -e '.[postgres]' (or psycopg2-binary)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot open storage '{url}': {first}")

