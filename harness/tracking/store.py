"""MLflow: one parent run per study, one child run per trial, with everything behind a number.

The default store is embedded: SQLite at ``mlruns/mlflow.db`` with artifacts under ``mlruns/``.
``tracking_uri=http://HOST:PORT`` switches to a tracking server. Statuses end as FINISHED, FAILED
(diverged or crashed, with the reason in a tag) or KILLED (pruned or interrupted); a run that a
killed process left RUNNING is closed as KILLED when the study resumes.

A tracking server that goes away for a while does not stop a trial (:mod:`harness.core.faults`).
Writes it cannot take are held in an :class:`Outbox`, in order, and a background thread sends
them once the server answers again, so training goes on. Reads and run creation wait for the
server, within ``retry_window``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from harness.core.checks import check_tracking_scheme
from harness.core.errors import UserError
from harness.core.faults import BACKOFF_FIRST, BACKOFF_MAX, RETRY_WINDOW, Outage, is_disk_full
from harness.core.locks import FileLock
from harness.tracking.schema import Tag

# MLflow's client retries each request a few times (backoff 2, 4 s); the Outbox and Outage
# retry a whole outage on top, for retry_window, and say so.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

# Schema set-up chatter that MLflow logs at INFO on every new SQLite store.
for _noisy in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# MLflow logs every database error with its traceback before it raises it; a full disk is then
# said in one line by the harness (harness.core.faults), so its tracebacks are left out.
logging.getLogger("mlflow.store.db.utils").addFilter(
    lambda record: not (record.exc_info and is_disk_full(record.exc_info[1])))

_BATCH = 100  # MLflow's limit of params (and a sane chunk of metrics) per log_batch call
MAX_BUFFERED = 10_000  # writes held while the server is down; past this, training waits


def metric_name(text: str) -> str:
    """Return ``text`` with characters MLflow refuses in metric names replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def check_tracking_uri(uri: str) -> str:
    """Return a usable tracking URI, or raise a UserError that says what is wrong with it.

    Embedded SQLite paths are made absolute, so a run started from another folder still finds
    the same store.
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.parent.exists():
            if path.parent.resolve() == Path("mlruns").resolve():
                path.parent.mkdir(parents=True)
            else:
                raise UserError(f"tracking_uri '{uri}': folder '{path.parent}' does not exist")
        return f"sqlite:///{path.resolve()}"
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
                pass
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach the MLflow server at '{uri}': {reason}") from None
        return uri
    check_tracking_scheme(uri)
    return uri


class Tracker:
    """Writes a study's runs to one MLflow store.

    Every call retries while the server is unreachable (see the module docstring); writes to
    existing runs are buffered meanwhile. A full disk raises :class:`harness.core.faults.DiskFull`.

    Args:
        tracking_uri: Where the runs go; checked with :func:`check_tracking_uri`.
        retry_window: Seconds an unreachable server is retried before
            :class:`harness.core.faults.StoreUnreachable`.
        announce: Where the outage's start and end lines go.
        max_buffered: Writes held during an outage before a write waits for the server.
    """

    def __init__(self, tracking_uri: str, retry_window: float = RETRY_WINDOW,
                 announce: Callable[[str], None] = print,
                 max_buffered: int = MAX_BUFFERED) -> None:
        self.uri = check_tracking_uri(tracking_uri)
        paths = []
        if self.uri.startswith("sqlite:///"):
            database = self.uri.removeprefix("sqlite:///")
            paths = [database, str(Path(database).parent / "artifacts")]
            # MLflow creates and migrates a fresh SQLite schema when a client first opens it;
            # two processes doing that at once crash (sqlalchemy CircularDependencyError).
            with FileLock(database + ".lock"):
                client = MlflowClient(self.uri)
        else:
            client = MlflowClient(self.uri)
        self.outage = Outage(f"the tracking server {self.uri}", retry_window, announce, paths)
        self.outbox = Outbox(self.outage, max_buffered)
        self.client = _Retrying(client, self.outage, self.outbox)
        self._spool = tempfile.TemporaryDirectory(prefix="harness-spool-")

    def flush(self) -> None:
        """Wait until every buffered write reached the server.

        Raises:
            StoreUnreachable: The server stayed away for the whole retry window.
        """
        self.outbox.flush()

    def experiment(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it (artifacts beside the DB).

        Another process may create it at the same moment; then its id is returned.
        """
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            location = (db.parent / "artifacts" / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    def parent_run(self, experiment_id: str, study_key: str, name: str,
                   tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        """Return the study's parent run, reopened if a previous invocation created it."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{Tag.STUDY_KEY}` = '{study_key}' "
                          f"and tags.`{Tag.ROLE}` = 'parent'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            experiment_id, run_name=name,
            tags={**tags, Tag.ROLE: "parent", Tag.STUDY_KEY: study_key},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(self, experiment_id: str, parent_id: str, name: str,
                    tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
        """Create a child run under ``parent_id`` with its tags and params; return its id."""
        run = self.client.create_run(
            experiment_id, run_name=name,
            tags={**tags, Tag.PARENT: parent_id, Tag.ROLE: "trial"},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def finished_trials(self, experiment_id: str) -> list[Run]:
        """Return the FINISHED trial runs of an experiment that carry an identity."""
        return self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{Tag.ROLE}` = 'trial' and attributes.status = 'FINISHED' "
                          f"and tags.`{Tag.IDENTITY}` != ''",
            max_results=50000,
        )

    def runs_of_identity(self, experiment_id: str, identity: str) -> list[Run]:
        """Return the FINISHED trial runs of one identity, whether replaced or not."""
        return self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{Tag.IDENTITY}` = '{identity}' "
                          f"and attributes.status = 'FINISHED'",
        )

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params in batches; values become strings, as MLflow stores them."""
        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.outbox.write(self.client.raw.log_batch, run_id,
                              params=items[start:start + _BATCH])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log a dict of metrics at one step in as few calls as possible."""
        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items()
                 if v is not None]
        for start in range(0, len(items), _BATCH):
            self.outbox.write(self.client.raw.log_batch, run_id,
                              metrics=items[start:start + _BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set several tags at once."""
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self.outbox.write(self.client.raw.log_batch, run_id, tags=items)

    def log_figure(self, run_id: str, figure: plt.Figure, artifact_file: str) -> None:
        """Log a matplotlib figure as a PNG artifact and free it."""
        path = self._spooled(artifact_file)
        try:
            figure.savefig(path)
        finally:
            plt.close(figure)
        self._log_spooled(run_id, path, artifact_file)

    def log_file(self, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
        """Log one local file as an artifact (a copy is kept while the server is away)."""
        name = str(Path(artifact_dir or "") / Path(path).name)
        spooled = self._spooled(name)
        shutil.copyfile(path, spooled)
        self._log_spooled(run_id, spooled, name)

    def log_json(self, run_id: str, value: Any, artifact_file: str) -> None:
        """Log a JSON-able value as an artifact file."""
        self.log_text(run_id, json.dumps(value, indent=2), artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Log text as an artifact file."""
        path = self._spooled(artifact_file)
        path.write_text(text)
        self._log_spooled(run_id, path, artifact_file)

    def _spooled(self, artifact_file: str) -> Path:
        """Return a fresh local path named like ``artifact_file``, for a write to come."""
        folder = Path(self._spool.name) / uuid.uuid4().hex
        folder.mkdir()
        return folder / Path(artifact_file).name

    def _log_spooled(self, run_id: str, path: Path, artifact_file: str) -> None:
        folder = str(Path(artifact_file).parent)

        def send() -> None:
            self.client.raw.log_artifact(run_id, str(path), None if folder == "." else folder)
            shutil.rmtree(path.parent, ignore_errors=True)

        self.outbox.write(send)

    def end(self, run_id: str, status: str) -> None:
        """Close a run as FINISHED, FAILED or KILLED."""
        self.outbox.write(self.client.raw.set_terminated, run_id, status=status)

    def close_if_running(self, run_ids: Iterable[str], failure: str, reason: str) -> int:
        """Mark runs still RUNNING as KILLED with a failure and its reason; return how many."""
        closed = 0
        for run_id in filter(None, run_ids):
            try:
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.set_tags(run_id, {Tag.FAILURE: failure, Tag.FAILURE_REASON: reason})
                    self.end(run_id, "KILLED")
                    closed += 1
            except Exception:  # noqa: BLE001 - a run deleted by hand is nothing to repair
                continue
        return closed


class _Retrying:
    """An MlflowClient whose every call waits out an outage, after the buffered writes.

    A read after a buffered write must see it, so every call first waits for the outbox to
    drain. ``raw`` is the client itself, for the :class:`Outbox`, which retries on its own.
    """

    def __init__(self, client: MlflowClient, outage: Outage, outbox: Outbox) -> None:
        self.raw = client
        self.outage = outage
        self.outbox = outbox

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.raw, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.outbox.flush()
            return self.outage.call(method, *args, **kwargs)

        return call


class Outbox:
    """Writes to the tracking server, in order; those it cannot take yet wait in a queue.

    While the queue is empty a write is sent at once. When one fails because the server is
    unreachable, it and every later write join the queue, and a background thread sends them
    in order as soon as the server answers. A write waits only when ``bound`` are queued.

    Args:
        outage: Says when the outage starts and ends, and when the window has run out.
        bound: Writes queued before a write waits for the queue to shrink.
    """

    def __init__(self, outage: Outage, bound: int = MAX_BUFFERED) -> None:
        self.outage = outage
        self.bound = bound
        self.error: BaseException | None = None  # why the queue was given up
        self._queue: deque[Callable[[], None]] = deque()
        self._changed = threading.Condition()
        self._sender: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Writes waiting for the server."""
        return len(self._queue)

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Send ``fn(*args, **kwargs)`` now, or queue it behind the writes already waiting.

        Raises:
            StoreUnreachable: An earlier outage ran out of its window; nothing more is sent.
            DiskFull: The write failed for want of space.
        """
        def send() -> None:
            fn(*args, **kwargs)

        with self._changed:
            self._raise_error()
            if self._queue:
                while len(self._queue) >= self.bound and self.error is None:
                    self._changed.wait()
                self._raise_error()
                self._queue.append(send)
                return
        try:
            send()
        except Exception as exc:  # noqa: BLE001 - check() re-raises all but an outage
            self.outage.check(exc)
            with self._changed:
                self._queue.append(send)
                if self._sender is None:  # one sender at a time, or a write goes twice
                    self._sender = threading.Thread(target=self._send_queued, daemon=True,
                                                    name="tracking-outbox")
                    self._sender.start()
        else:
            self.outage.recovered()

    def flush(self) -> None:
        """Wait until the queue is empty; raise what made it give up, if anything did."""
        with self._changed:
            while self._queue and self.error is None:
                self._changed.wait()
            self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _send_queued(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            with self._changed:
                if not self._queue:
                    self._sender = None
                    self._changed.notify_all()
                    return
                send = self._queue[0]
            try:
                send()
            except Exception as exc:  # noqa: BLE001 - check() re-raises all but an outage
                try:
                    self.outage.check(exc)
                except Exception as fatal:  # noqa: BLE001 - handed to the writing thread
                    with self._changed:
                        self.error = fatal
                        self._sender = None
                        self._changed.notify_all()
                    return
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.outage.recovered()
            delay = BACKOFF_FIRST
            with self._changed:
                self._queue.popleft()
                self._changed.notify_all()


def recorded_seeds(tracking_uri: str, experiment: str) -> list[int]:
    """Return the replicate seeds that have FINISHED trial runs in ``experiment``, sorted.

    Reads only: an embedded store that does not exist yet has none, and is not created.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(
            tracking_uri.removeprefix("sqlite:///")).is_file():
        return []
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], max_results=50000,
        filter_string=f"tags.`{Tag.ROLE}` = 'trial' and attributes.status = 'FINISHED'")
    seeds = {run.data.tags.get(Tag.SEED, "") for run in runs}
    return sorted(int(seed) for seed in seeds if seed.isdigit())


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    return text[:6000]  # MLflow's limit on a param value


def temporary_dir() -> tempfile.TemporaryDirectory:
    """Return a temporary folder for artifacts that are written before they are logged."""
    return tempfile.TemporaryDirectory(prefix="harness-")
