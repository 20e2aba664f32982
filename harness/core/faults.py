"""The faults of a real deployment: a store that is briefly unreachable, and a full disk.

A worker that cannot reach the MLflow tracking server or the Optuna database keeps its trial
and retries with backoff for ``retry_window`` seconds (:class:`Outage`): one line when the outage
starts, one when it ends. Past the window it raises :class:`StoreUnreachable`; the worker then
stops with one line and :data:`EXIT_UNREACHABLE`, and the next start queues its trial again.

A write that fails because the disk is full (ENOSPC, or SQLite's "database or disk is full")
becomes :class:`DiskFull`, which names the full path and ends the study with
:data:`EXIT_DISK_FULL`. Nothing is retried on a full disk: it does not empty by itself.

MLflow's client retries each HTTP request itself (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, with
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``), and the database engines use SQLAlchemy's
``pool_pre_ping``, so a connection that a restart broke is replaced. What this module adds is
the outer loop over a whole outage, which neither offers.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

RETRY_WINDOW = 300.0  # seconds a worker keeps retrying an unreachable store (retry_window)
EXIT_DISK_FULL = 74  # sysexits' EX_IOERR: the study stopped on a full disk
EXIT_UNREACHABLE = 75  # sysexits' EX_TEMPFAIL: a store was unreachable for retry_window
BACKOFF_FIRST = 1.0  # seconds before the first retry; doubles up to BACKOFF_MAX
BACKOFF_MAX = 15.0

T = TypeVar("T")

# Text of the errors a store gives while it restarts or is gone: the HTTP client's, PostgreSQL's
# (through psycopg2 and SQLAlchemy) and MLflow's (which wraps the HTTP client's in its message).
_UNREACHABLE_TEXT = (
    "connection refused", "max retries exceeded", "connection aborted", "connection reset",
    "remotedisconnected", "server closed the connection", "terminating connection",
    "could not connect to server", "connection to server", "the database system is",
    "connection was closed", "connection already closed", "timed out", "too many 500",
    "too many 502", "too many 503", "too many 504", "connection invalidated",
)
_DISK_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")


class StoreUnreachable(Exception):
    """A store stayed unreachable for the whole retry window.

    Args:
        store: What could not be reached, e.g. "the tracking server http://HOST:PORT".
        window: The retry window, in seconds.
        reason: The last error, in a few words.
    """

    def __init__(self, store: str, window: float, reason: str) -> None:
        super().__init__(f"{store} was unreachable for {window:.0f} s (retry_window; last "
                         f"error: {reason})")
        self.store = store


class DiskFull(Exception):
    """A write failed because the file system it went to is full.

    Args:
        path: The file or folder the write went to (or the store's, when the error names none).
    """

    def __init__(self, path: str) -> None:
        free = free_megabytes(path)
        left = f" ({free:.1f} MB free there)" if free is not None else ""
        super().__init__(f"the disk is full: no space left for {path}{left}")
        self.path = path


def causes(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and every exception it was raised from or while handling, once each."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """Return whether ``exc`` (or what caused it) is a write refused for want of space."""
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause).lower() for text in _DISK_FULL_TEXT):
            return True
    return False


def is_unreachable(exc: BaseException) -> bool:
    """Return whether ``exc`` says a store could not be reached, as a restart or outage does.

    A full disk is not an outage (see :func:`is_disk_full`), nor is a refused request.
    """
    if is_disk_full(exc):
        return False
    for cause in causes(exc):
        if isinstance(cause, ConnectionError | TimeoutError):  # refused, reset, aborted
            return True
        if getattr(cause, "connection_invalidated", False):  # SQLAlchemy: the server went away
            return True
        if type(cause).__name__ in ("InvalidatePoolError", "ConnectTimeout", "ReadTimeout"):
            return True
        if any(text in str(cause).lower() for text in _UNREACHABLE_TEXT):
            return True
    return False


def reason_of(exc: BaseException) -> str:
    """Return the innermost cause of ``exc`` as ``Type: first words``, for a one-line message."""
    inner = list(causes(exc))[-1]
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text[:120]}" if text else type(inner).__name__


def free_megabytes(path: str | Path) -> float | None:
    """Return the free space of the file system ``path`` is on, in MB (None if unknown)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize / 1e6


def full_path(exc: BaseException, candidates: Iterable[str | Path]) -> str:
    """Return the path a disk-full error is about: the one it names, else the fullest candidate.

    SQLite's "database or disk is full" names no file; of the stores this process writes to,
    the one on the file system with the least space left is the one that filled up.
    """
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.filename:
            return str(cause.filename)
    paths = [str(p) for p in candidates if p]
    if not paths:
        return "an unknown path"
    return min(paths, key=lambda p: (free_megabytes(p) is None, free_megabytes(p) or 0.0))


class Outage:
    """Retries calls to one store while it is unreachable, and says when that starts and ends.

    Thread-safe: a background writer and the training loop may retry at the same time, and the
    outage is announced once.

    Args:
        store: What is reached, for the messages, e.g. "the tracking server http://HOST:PORT".
        window: Seconds of unreachability after which :class:`StoreUnreachable` is raised.
        announce: Where the two lines go.
        paths: Local paths the store writes to, to name one in a :class:`DiskFull`.
        sleep: How to wait between tries (``time.sleep``).
    """

    def __init__(self, store: str, window: float = RETRY_WINDOW,
                 announce: Callable[[str], None] = print, paths: Iterable[str | Path] = (),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self.window = window
        self.announce = announce
        self.paths = list(paths)
        self.sleep = sleep
        self.since: float | None = None  # monotonic time the outage started; None: reachable
        self.retries = 0
        self._lock = threading.Lock()

    @property
    def ongoing(self) -> bool:
        """Whether the store is unreachable now, as far as the last call knew."""
        return self.since is not None

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Return ``fn(*args, **kwargs)``, retried with backoff while the store is unreachable.

        Raises:
            StoreUnreachable: The store stayed unreachable for the whole window.
            DiskFull: The call failed because the disk is full.
        """
        delay = BACKOFF_FIRST
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self.check(exc)
                self.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.recovered()
            return result

    def check(self, exc: Exception) -> None:
        """Note a failed call: re-raise it unless it is an outage still inside the window.

        Raises:
            DiskFull: ``exc`` says the disk is full.
            StoreUnreachable: ``exc`` is an outage that has lasted the whole window.
            Exception: ``exc`` itself, when it is neither.
        """
        if is_disk_full(exc):
            raise DiskFull(full_path(exc, self.paths)) from None
        if not is_unreachable(exc):
            raise exc
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.retries = 0
                self.announce(f"outage: {self.store} is unreachable ({reason_of(exc)}); "
                              f"the trial keeps going, retrying for up to {self.window:.0f} s "
                              f"(retry_window)")
            self.retries += 1
            if now - self.since >= self.window:
                raise StoreUnreachable(self.store, self.window, reason_of(exc)) from None

    def recovered(self) -> None:
        """Note a call that went through: an outage in progress is over."""
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            lasted = time.monotonic() - self.since
            self.since = None
            self.announce(f"outage over: {self.store} answers again after {lasted:.0f} s "
                          f"({self.retries} failed tries)")
