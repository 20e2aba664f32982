"""A file lock between processes on one machine: ``flock``, released by the kernel on death."""

from __future__ import annotations

import fcntl
import os
from contextlib import AbstractContextManager


class FileLock(AbstractContextManager[None]):
    """A blocking exclusive ``flock`` on ``path``; re-entrant within one process.

    A process that dies holding it (SIGKILL included) releases it with its file descriptors, so
    no lock is ever left behind for a grace period to break.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
