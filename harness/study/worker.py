"""A local worker process: ``python -m harness.study.worker TASK.pkl RESULT.pkl``.

The launcher (``workers=N``) writes the task, starts this, relays its output and reads the result
back. The exit code is 130 after Ctrl-C, 2 for a user error, 74 on a full disk, 75 when a store
stayed unreachable past ``retry_window`` (:mod:`~harness.core.faults`), 0 otherwise (a crashed
trial is in the result).
"""

from __future__ import annotations

import pickle
import signal
import sys
from pathlib import Path

from harness.core.errors import UserError
from harness.core.faults import EXIT_DISK_FULL, EXIT_UNREACHABLE, DiskFull, StoreUnreachable
from harness.study.launchers.tasks import run_worker_task
from harness.study.runner import WorkerResult


def main(argv: list[str]) -> int:
    """Run the worker task in ``argv[0]`` and write its result to ``argv[1]``."""
    # The launcher stops a worker with one SIGINT; make it a KeyboardInterrupt even where the
    # launcher was started with SIGINT ignored (a shell without job control).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task_path, result_path = map(Path, argv)
    task = pickle.loads(task_path.read_bytes())
    try:
        result = run_worker_task(task)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopped while it opened the study: no trial was claimed
        result = WorkerResult(task.index, interrupted=True)
    except (DiskFull, StoreUnreachable) as exc:  # while it opened the study
        code = EXIT_DISK_FULL if isinstance(exc, DiskFull) else EXIT_UNREACHABLE
        print(f"stopped: {exc}", flush=True)
        result = WorkerResult(task.index, stopped=str(exc), exit_code=code)
    result_path.write_bytes(pickle.dumps(result))
    if result.stopped:
        return result.exit_code
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
