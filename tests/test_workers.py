"""Many workers on one study: ``workers=N``, processes started at once, the Slurm launcher."""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest

from harness.study.queue import is_result, key_of
from tests.conftest import make_learnable_folder

REPO = Path(__file__).resolve().parents[1]
TOGGLES = ("stem", "init", "optimizer", "depth")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable ImageFolder: enough for smoke trials, quick to train."""
    return make_learnable_folder(tmp_path_factory.mktemp("images"), per_class_train=12,
                                 per_class_test=4)


def study_args(images: Path, tmp: Path) -> list[str]:
    """The smoke tricks grid on generated images, into an embedded store under ``tmp``.

    The lr is the smoke budget's fifth: at its own 0.1 the deep stem with SGD diverges on some
    CPUs (AMD EPYC's oneDNN kernels, 2026-12-07) and not on others, and these tests count every
    config FINISHED.
    """
    return ["study=tricks", "budget=smoke", "optimizer.lr=0.02", "progress=false",
            "data.name=imagefolder",
            f"data.root={images}", "data.val_size=6", "data.train_size=null",
            "data.test_size=null", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"storage={tmp}/optuna.journal", f"out={tmp}/report"]


def harness(args: list[str], cwd: Path = REPO) -> subprocess.Popen[str]:
    """Start ``python -m harness.run ARGS`` in ``cwd``."""
    return subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def trained_to_its_end(run) -> bool:  # noqa: ANN001 - an MLflow Run
    """Whether a trial run ended with its result: FINISHED, or diverged (a result too).

    Which configs diverge at the smoke budget depends on the CPU's kernels; the tests that use
    this check that every trial ran exactly once, not that every config is stable.
    """
    return run.info.status == "FINISHED" or (
        run.info.status == "FAILED" and run.data.tags.get("harness.failure") == "diverged")


def assert_exactly_once(tracking_uri: str) -> None:
    """Assert 16 trial runs trained to their end, one per config, none RUNNING, one parent."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tricks-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    parents = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'parent'")
    assert len(parents) == 1
    finished = [r for r in runs if trained_to_its_end(r)]
    configs = {tuple(json.loads(r.data.tags["harness.toggles"])[t] for t in TOGGLES)
               for r in finished}
    assert len(finished) == 16 and len(configs) == 16
    assert "RUNNING" not in {r.info.status for r in runs}
    assert {r.data.tags["mlflow.parentRunId"] for r in finished} == {parents[0].info.run_id}


NEGATIVE_SHARE = re.compile(r"-\d+(\.\d+)?%")


def assert_sane_report(outputs: list[str], report: Path) -> None:
    """Assert the final report counts all 16 trials and no output calls a live run crashed."""
    for out in outputs:
        assert "crashed" not in out, out
        assert not NEGATIVE_SHARE.search(out), out
    verdict = (report / "verdict.md").read_text()
    assert "crashed" not in verdict and not NEGATIVE_SHARE.search(verdict), verdict
    assert "still running elsewhere" not in verdict, verdict
    effects = pd.read_csv(report / "effects.csv")
    assert set(effects["call"]) <= {"helps", "hurts", "undetermined"}
    assert (effects["n_pairs"] == 8).all(), effects  # every option has all 8 partner pairs


@pytest.mark.slow
def test_two_workers_run_the_grid_once(images, tmp_path):
    process = harness([*study_args(images, tmp_path), "workers=2"])
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "2 workers:" in out
    assert_exactly_once(f"sqlite:///{tmp_path}/mlflow.db")
    assert_sane_report([out], tmp_path / "report")


@pytest.mark.slow
def test_four_processes_at_once_on_a_fresh_store(images, tmp_path):
    processes = [harness(study_args(images, tmp_path)) for _ in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out
        assert "Traceback" not in out, out
    assert_exactly_once(f"sqlite:///{tmp_path}/mlflow.db")
    # Whoever ends last writes the complete report; the others say what still runs elsewhere.
    assert_sane_report(outputs, tmp_path / "report")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                    reason="submitit is not installed (pip install -e '.[slurm]')")
def test_slurm_launcher_through_the_local_executor(images, tmp_path):
    process = harness([*study_args(images, tmp_path), "workers=2", "launcher=slurm",
                       "slurm.cluster=local"], cwd=tmp_path)  # its job files: ./mlruns/submitit
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "submitted 2 worker task(s)" in out
    assert_exactly_once(f"sqlite:///{tmp_path}/mlflow.db")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def services():
    """A real PostgreSQL server and a real MLflow server in a fresh folder; stopped afterwards."""
    from harness.study import services

    if not (services.PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"no PostgreSQL binaries in {services.PG_BIN}")
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed (pip install -e '.[postgres]')")
    # Under /tmp itself: the postgres user cannot enter pytest's root-only tmp folders.
    folder = Path(tempfile.mkdtemp(prefix="harness-services-"))
    pg_port = free_port()
    try:
        storage = services.start_postgres(folder, pg_port)
        yield storage, services.start_mlflow(folder, pg_port, free_port())
    finally:
        services.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def pinned_harness(args: list[str], core: int) -> subprocess.Popen[str]:
    """Start a worker command pinned to one core, so three share two cores without thrashing."""
    cores = sorted(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cores[core % len(cores)]}))


@pytest.mark.slow
def test_three_workers_on_postgresql_survive_a_sigkill(images, tmp_path, services):
    storage, tracking = services
    # Trials of a few seconds, so the kill lands inside one; a short grace period, so the dead
    # worker's trial is re-run within the test.
    args = [*study_args(images, tmp_path)[:-3], f"storage={storage}", f"tracking_uri={tracking}",
            f"out={tmp_path}/report", "trainer.epochs=8", "trainer.batch_size=4",
            "stale_after=10"]
    workers = [pinned_harness(args, core) for core in range(3)]
    victim = workers[0]
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.startswith("trial "):
            time.sleep(0.5)
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "".join(seen)
    killed = int(seen[-1].split()[1].rstrip(":"))
    for worker in workers[1:]:
        out, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, out
    assert_exactly_once(tracking)
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tricks-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    dead = [r for r in runs if r.data.tags["harness.trial"] == str(killed)]
    assert [r.info.status for r in dead] == ["KILLED"]
    assert dead[0].data.tags["harness.failure"] == "stale"
    again = [r for r in runs if r.info.status == "FINISHED"
             and r.data.tags["harness.toggles"] == dead[0].data.tags["harness.toggles"]]
    assert len(again) == 1


def can_unshare_pid() -> bool:
    """Whether this machine lets us start a process in a pid namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


def harness_on_its_own_host(args: list[str], core: int) -> subprocess.Popen[str]:
    """Start a worker command in a pid namespace of its own, pinned to one core.

    Another pid namespace is another host to the harness (``harness.study.queue.this_machine``):
    no other worker can judge its trials by their pid, so only the storage's heartbeat can.
    """
    cores = sorted(os.sched_getaffinity(0))
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "harness.run", *args],
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.sched_setaffinity(0, {cores[core % len(cores)]}))


def worker_pid(launcher: subprocess.Popen[str]) -> int:
    """Return the pid, in this namespace, of the worker that ``unshare`` forked."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    return int(children[0])


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare_pid(), reason="cannot start a pid namespace (unshare --pid)")
def test_optuna_heartbeat_on_an_rdb_storage_keeps_live_trials_and_reruns_a_killed_one(
        images, tmp_path):
    # Four configs; trials of 15 s or more on an idle machine (150 epochs), and a grace period
    # of 5 s, so a trial lives only as long as its heartbeat says. Each worker runs as if on its
    # own host.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = [*study_args(images, tmp_path)[:-2], f"storage={storage}", f"out={tmp_path}/report",
            "depth=resnet18", "init=default", "trainer.epochs=150", "trainer.batch_size=4",
            "optimizer.lr=0.01", "stale_after=5"]
    launchers = [harness_on_its_own_host(args, core) for core in range(3)]
    victim = launchers[0]
    seen = []
    for line in victim.stdout:
        seen.append(line)
        if line.startswith("trial "):
            time.sleep(0.5)
            os.kill(worker_pid(victim), signal.SIGKILL)
            break
    victim.communicate(timeout=30)
    assert seen and seen[-1].startswith("trial "), "".join(seen)
    killed = int(seen[-1].split()[1].rstrip(":"))
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers[1:]]
    for launcher, out in zip(launchers[1:], outputs):
        assert launcher.returncode == 0, out
        assert "declared dead" not in out, out

    study_name = optuna.get_all_study_names(storage)[0]
    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    # Optuna's heartbeat failed the killed trial (a FAIL without a harness reason), and its
    # RetryHeartbeatStaleTrialCallback queued the copy that ran it. No other trial was failed
    # but for a result (a diverged run is one) or a duplicate claim that never ran.
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and not is_result(t)
              and t.user_attrs.get("failure") != "duplicate"]
    assert [(t.number, t.user_attrs.get("failure")) for t in failed] == [(killed, None)]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert [is_result(t) for t in retries] == [True]
    results = [t for t in trials if is_result(t)]
    assert len(results) == 4 and len({key_of(t) for t in results}) == 4
    # No live trial was declared dead (above), and live trials outlasted the grace period, so
    # their heartbeat, not their brevity, kept them alive. How long each takes depends on the
    # machine's load: on an idle one a trial can end inside 5 s, so not every one must.
    complete = [t for t in results if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and any((t.datetime_complete - t.datetime_start).total_seconds() > 5
                            for t in complete)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tricks-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    dead = [r for r in runs if r.data.tags["harness.trial"] == str(killed)]
    assert [(r.info.status, r.data.tags.get("harness.failure")) for r in dead] == [
        ("KILLED", "stale")]
    others = [r for r in runs if r not in dead]
    assert {r.info.status for r in others} <= {"FINISHED", "FAILED"}  # FAILED: diverged
    assert len(others) == 4 and len({r.data.tags["harness.toggles"] for r in others}) == 4
