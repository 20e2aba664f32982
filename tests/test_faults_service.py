"""Faults of a real deployment, on the real components: services that go away, a disk that fills.

The slow tests stop and start a real MLflow tracking server and a real PostgreSQL server under a
running ``workers=2`` study, and fill a real tmpfs under an embedded one. The fast ones drive the
retry and buffer logic of :mod:`harness.core.faults` and :class:`harness.tracking.Outbox` against a
port that nothing listens on, and a real full device (``/dev/full``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric

from harness.core.faults import (
    EXIT_DISK_FULL,
    EXIT_UNREACHABLE,
    DiskFull,
    Outage,
    StoreUnreachable,
    full_path,
    is_disk_full,
    is_unreachable,
)
from harness.tracking.store import Outbox
from tests.test_workers import (
    TOGGLES,
    assert_exactly_once,
    free_port,
    harness,
    images,  # noqa: F401 - a fixture
    study_args,
    trained_to_its_end,
)

EPOCHS = 3
OUTAGE_SECONDS = 30


# ---- fast: the retry and buffer logic on a port nothing listens on -------------------------

@pytest.fixture
def dead_server(monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    """A real MLflow client for a server that is not there; MLflow's own retries kept short."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return mlflow.MlflowClient(f"http://127.0.0.1:{free_port()}")


def test_a_refused_connection_is_an_outage_not_a_full_disk(dead_server):
    with pytest.raises(Exception) as caught:
        dead_server.get_experiment_by_name("x")
    assert is_unreachable(caught.value)
    assert not is_disk_full(caught.value)


def test_a_full_device_is_a_full_disk_that_names_its_path():
    with pytest.raises(OSError) as caught, open("/dev/full", "w") as device:
        device.write("x")
        device.flush()
    assert is_disk_full(caught.value) and not is_unreachable(caught.value)
    assert full_path(caught.value, ["/dev/full"]) == "/dev/full"
    assert "no space left for /dev/full" in str(DiskFull("/dev/full"))


def test_an_outage_is_retried_for_the_window_and_said_once(dead_server):
    lines: list[str] = []
    outage = Outage("the tracking server", window=3, announce=lines.append)
    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match="unreachable for 3 s"):
        outage.call(dead_server.get_experiment_by_name, "x")
    assert 3 <= time.monotonic() - started < 20
    assert len(lines) == 1 and lines[0].startswith("outage: the tracking server is unreachable")


def test_an_error_that_is_not_an_outage_is_raised_at_once():
    outage = Outage("a store", window=60, announce=print)
    with pytest.raises(KeyError):
        outage.call({}.__getitem__, "missing")
    assert not outage.ongoing


def test_the_outbox_buffers_writes_so_training_does_not_wait(dead_server):
    lines: list[str] = []
    outbox = Outbox(Outage("the tracking server", window=4, announce=lines.append), bound=100)
    started = time.monotonic()
    for step in range(5):  # five epochs' metrics while the server is away
        outbox.write(dead_server.log_batch, "run", metrics=[Metric("m", 1.0, 0, step)])
    assert outbox.pending == 5
    assert time.monotonic() - started < 5  # only the first write waited for its refusal
    with pytest.raises(StoreUnreachable):
        outbox.flush()  # the window runs out; the writes are given up, and say why
    with pytest.raises(StoreUnreachable):
        outbox.write(dead_server.log_batch, "run", metrics=[Metric("m", 1.0, 0, 9)])
    assert len(lines) == 1


def test_a_full_outbox_makes_the_writer_wait_for_the_server(dead_server):
    outbox = Outbox(Outage("the tracking server", window=3, announce=lambda _: None), bound=2)
    metrics = [Metric("m", 1.0, 0, 0)]
    outbox.write(dead_server.log_batch, "run", metrics=metrics)
    outbox.write(dead_server.log_batch, "run", metrics=metrics)
    started = time.monotonic()
    with pytest.raises(StoreUnreachable):
        outbox.write(dead_server.log_batch, "run", metrics=metrics)  # waits: the bound is met
    assert time.monotonic() - started >= 1


def test_retry_window_is_a_setting():
    from harness.config.settings import build_config

    assert build_config(["retry_window=7"]).plan().retry_window == 7.0
    assert build_config([]).plan().retry_window == 300.0


# ---- slow: real services stopped and started under a running study ---------------------------

class Services:
    """A real PostgreSQL server and MLflow server in one folder, which a test stops and starts."""

    def __init__(self) -> None:
        from harness.study import services

        self.module = services
        # Under /tmp itself: the postgres user cannot enter pytest's root-only tmp folders.
        self.folder = Path(tempfile.mkdtemp(prefix="harness-faults-"))
        self.pg_port, self.mlflow_port = free_port(), free_port()
        self.storage = services.start_postgres(self.folder, self.pg_port)
        self.tracking = services.start_mlflow(self.folder, self.pg_port, self.mlflow_port)

    def stop_mlflow(self) -> None:
        """Stop the MLflow server and every process of its session."""
        pid = int((self.folder / "mlflow.pid").read_text())
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)

    def start_mlflow(self) -> None:
        """Start the MLflow server again, on the same port and backend store."""
        self.module.start_mlflow(self.folder, self.pg_port, self.mlflow_port)

    def restart_postgres(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, then the server is back."""
        pg_ctl = str(self.module.PG_BIN / "pg_ctl")
        options = (f"-p {self.pg_port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories=''")
        subprocess.run(self.module.as_postgres(
            [pg_ctl, "-D", str(self.folder / "pgdata"), "-l", str(self.folder / "postgres.log"),
             "-m", "fast", "-w", "-o", options, "restart"]), check=True, capture_output=True)

    def stop_postgres(self) -> None:
        """``pg_ctl stop -m fast``: the database is gone until :meth:`start_postgres`."""
        subprocess.run(self.module.as_postgres(
            [str(self.module.PG_BIN / "pg_ctl"), "-D", str(self.folder / "pgdata"), "-m", "fast",
             "-w", "stop"]), check=True, capture_output=True)

    def start_postgres(self) -> None:
        """Start the database again, on the same port and data."""
        self.module.start_postgres(self.folder, self.pg_port)

    def close(self) -> None:
        self.module.stop(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def services():
    """Real PostgreSQL and MLflow servers for one test; stopped afterwards."""
    import importlib.util

    from harness.study import services as module

    if not (module.PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"no PostgreSQL binaries in {module.PG_BIN}")
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed (pip install -e '.[postgres]')")
    stack = Services()
    try:
        yield stack
    finally:
        stack.close()


class Output:
    """Collects a process's output lines from a thread, so the test can act on them meanwhile."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, predicate, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            assert self.process.poll() is None, self.text
            assert time.monotonic() < deadline, self.text
            time.sleep(0.2)

    def finish(self, timeout: float = 600) -> str:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A hung study: show where it stopped (its last lines) rather than only the command.
            self.process.kill()
            self._thread.join(timeout=10)
            raise AssertionError(f"still running after {timeout} s; its output:\n"
                                 f"{self.text[-20000:]}") from None
        self._thread.join(timeout=10)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def trials_started(lines: list[str]) -> int:
    return sum(" trial " in f" {line}" and "seed=" in line for line in lines)


def service_args(folder: Path, tmp: Path, stack: Services) -> list[str]:
    # Trials of several seconds, so an outage lands inside some of them.
    return [*study_args(folder, tmp)[:-3], f"storage={stack.storage}",
            f"tracking_uri={stack.tracking}", f"out={tmp}/report", f"trainer.epochs={EPOCHS}",
            "trainer.batch_size=4", "workers=2"]


def assert_trained_once_with_every_epoch(tracking_uri: str) -> None:
    """Assert one trial run per config (none trained twice) and every epoch's metrics logged."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tricks-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    configs = [tuple(json.loads(r.data.tags["harness.toggles"])[t] for t in TOGGLES)
               for r in runs]
    assert len(runs) == len(set(configs)) == 16, [(r.info.status, r.data.tags) for r in runs]
    assert all(trained_to_its_end(run) for run in runs), [r.info.status for r in runs]
    for run in runs:
        # A diverged run (which configs diverge depends on the CPU) logged every epoch it had.
        epochs = EPOCHS if run.info.status == "FINISHED" else None
        for name in ("train_loss", "val_acc"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
            assert steps == list(range(1, (epochs or len(steps)) + 1)), (name, steps)
        if run.info.status != "FINISHED":
            continue
        assert "test_acc" in run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "figures", "recipe.json"} <= artifacts, artifacts


def assert_rode_through(out: str, returncode: int) -> None:
    assert returncode == 0, out
    assert "Traceback" not in out and "crashed" not in out, out
    starts = [line for line in out.splitlines() if "] outage: " in line]
    ends = [line for line in out.splitlines() if "] outage over: " in line]
    assert starts and len(starts) == len(ends), out
    assert len(starts) <= 2 * 2, out  # one start line per worker and store, at most


@pytest.mark.slow
def test_a_tracking_server_down_for_30_s_is_ridden_through(images, tmp_path, services):  # noqa: F811
    run = Output(harness(service_args(images, tmp_path, services)))
    run.wait_for(lambda lines: trials_started(lines) >= 3)
    services.stop_mlflow()
    time.sleep(OUTAGE_SECONDS)
    services.start_mlflow()
    out = run.finish()
    (tmp_path / "out.txt").write_text(out)
    assert_rode_through(out, run.process.returncode)
    assert "the tracking server" in out
    assert_trained_once_with_every_epoch(services.tracking)
    assert_exactly_once(services.tracking)


@pytest.mark.slow
def test_a_postgresql_restart_is_ridden_through(images, tmp_path, services):  # noqa: F811
    run = Output(harness(service_args(images, tmp_path, services)))
    run.wait_for(lambda lines: trials_started(lines) >= 3)
    services.restart_postgres()  # as an administrator does: a second or two
    run.wait_for(lambda lines: trials_started(lines) >= 7)
    services.stop_postgres()  # and a database that is away for a while
    time.sleep(OUTAGE_SECONDS / 2)
    services.start_postgres()
    out = run.finish()
    (tmp_path / "out.txt").write_text(out)
    assert run.process.returncode == 0, out
    assert "Traceback" not in out and "crashed" not in out, out
    assert_trained_once_with_every_epoch(services.tracking)
    assert_exactly_once(services.tracking)


@pytest.mark.slow
def test_a_tracking_server_gone_past_the_window_stops_cleanly_then_resumes(images, tmp_path,  # noqa: F811
                                                                            services):
    args = service_args(images, tmp_path, services)
    run = Output(harness([*args, "retry_window=20"]))
    run.wait_for(lambda lines: trials_started(lines) >= 3)
    services.stop_mlflow()
    out = run.finish()
    (tmp_path / "out.txt").write_text(out)
    assert run.process.returncode == EXIT_UNREACHABLE, out
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert len([line for line in lines if "] stopped: the tracking server" in line]) == 2, out
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("run the same command again to resume"), out
    services.start_mlflow()
    again = harness(args)
    out_again, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out_again
    assert "Traceback" not in out_again, out_again
    assert_exactly_once(services.tracking)


# ---- slow: a full disk --------------------------------------------------------------------

@pytest.fixture
def small_disk():
    """A 40 MB tmpfs (root only); skipped with the reason where mount is not allowed."""
    folder = Path(tempfile.mkdtemp(prefix="harness-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not root'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; return the filler file."""
    filler = folder / "filler"
    subprocess.run(["sh", "-c", f"head -c 100M /dev/zero > {filler}"], capture_output=True)
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_study_cleanly_and_the_same_command_resumes(images, small_disk):  # noqa: F811
    args = [*study_args(images, small_disk), "workers=2", "trainer.epochs=3",
            "trainer.batch_size=4"]
    run = Output(harness(args))
    run.wait_for(lambda lines: trials_started(lines) >= 3)
    filler = fill(small_disk)
    out = run.finish()
    assert run.process.returncode == EXIT_DISK_FULL, out
    assert "Traceback" not in out and "the study goes on" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full: no space left for " + str(small_disk) \
        in errors[0], out
    assert "run the same command again to resume" in errors[0]
    assert out.count("database or disk is full") <= 2, out  # the workers' lines, not a flood

    filler.unlink()
    database = small_disk / "mlflow.db"
    check = sqlite3.connect(database).execute("pragma integrity_check").fetchone()
    assert check == ("ok",)
    again = harness(args)
    out_again, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out_again
    assert "Traceback" not in out_again, out_again
    assert_exactly_once(f"sqlite:///{database}")

