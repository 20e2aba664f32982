"""End-to-end studies on a small generated ImageFolder, into temporary MLflow and Optuna stores."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch

from harness.data import prepare_data
from harness.run import main
from harness.tracking.checkpoint import load_checkpoint
from harness.training.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]


def store_args(folder: Path, tmp: Path) -> list[str]:
    return [
        "budget=smoke", "progress=false", "data.name=imagefolder", f"data.root={folder}",
        "data.val_size=15", "data.train_size=null", "data.test_size=null",
        f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"storage={tmp}/optuna.journal",
        f"out={tmp}/report",
    ]


def trial_runs(tmp: Path, experiment: str):
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "tags.`harness.role` = 'trial'")
    parents = client.search_runs([found.experiment_id], "tags.`harness.role` = 'parent'")
    return client, runs, parents


@pytest.fixture(scope="module")
def tricks_smoke(learnable_folder, tmp_path_factory):
    """The whole tricks grid at budget=smoke, run once for the tests of this module."""
    tmp = tmp_path_factory.mktemp("tricks")
    code = main(["study=tricks", *store_args(learnable_folder, tmp)])
    return tmp, code


def test_tricks_grid_runs_end_to_end(tricks_smoke):
    tmp, code = tricks_smoke
    assert code == 0
    client, runs, parents = trial_runs(tmp, "tricks-smoke")
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert len(runs) == 16
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    configs = {tuple(r.data.params[t] for t in ("stem", "init", "optimizer", "depth"))
               for r in runs}
    assert len(configs) == 16
    run = runs[0]
    for metric in ("test_acc", "test_loss", "train_seconds", "test_acc_red", "test_acc_blue",
                   "val_acc", "train_loss", "lr", "images_per_sec"):
        assert metric in run.data.metrics, metric
    for tag in ("harness.git_sha", "harness.torch_version", "harness.device", "harness.budget",
                "harness.dataset_digest"):
        assert run.data.tags[tag], tag
    assert run.data.params["model.width"] == "4"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert artifacts == {"figures/confusion_matrix.png", "figures/per_class_accuracy.png",
                         "figures/test_predictions.png"}


def test_checkpoint_reproduces_the_logged_test_accuracy(tricks_smoke, tmp_path):
    tmp, _ = tricks_smoke
    client, runs, _ = trial_runs(tmp, "tricks-smoke")
    for run in runs[:2]:
        path = client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", tmp_path)
        torch.load(path, weights_only=True)  # loads without pickled code
        checkpoint = load_checkpoint(path)
        data = prepare_data(checkpoint.recipe.data)
        assert data.digest == checkpoint.dataset_digest
        scores = evaluate(checkpoint.model, data.test_x, data.test_y, data.classes)
        assert abs(scores.accuracy - run.data.metrics["test_acc"]) <= 0.1


def test_per_example_predictions_line_up_with_the_logged_accuracy(tricks_smoke, tmp_path):
    tmp, _ = tricks_smoke
    client, runs, _ = trial_runs(tmp, "tricks-smoke")
    digests = {r.data.tags["harness.test_digest"] for r in runs}
    assert len(digests) == 1 and len(next(iter(digests))) == 64  # one test order, sha256
    for run in runs[:3]:
        path = client.download_artifacts(run.info.run_id, "examples/test_predictions.npz",
                                         tmp_path / run.info.run_id)
        with np.load(path) as saved:
            predicted, labels = saved["predicted"], saved["labels"]
        assert predicted.dtype == np.uint8 and predicted.shape == labels.shape
        assert 100.0 * float((predicted == labels).mean()) == pytest.approx(
            run.data.metrics["test_acc"], abs=1e-6)


def test_each_trial_records_which_way_it_ran(tricks_smoke):
    tmp, _ = tricks_smoke
    _, runs, _ = trial_runs(tmp, "tricks-smoke")
    assert {r.data.tags["harness.compile"] for r in runs} == {"eager: trainer.compile=false"}
    assert {r.data.metrics["compile_seconds"] for r in runs} == {0.0}


def test_report_is_written_and_logged_to_the_parent(tricks_smoke):
    tmp, _ = tricks_smoke
    for name in ("configs.csv", "effects.csv", "interactions.csv", "verdict.md"):
        assert (tmp / "report" / name).is_file(), name
    client, _, parents = trial_runs(tmp, "tricks-smoke")
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/effects.csv" in logged and "report/verdict.md" in logged


@pytest.mark.slow
def test_rerun_skips_finished_trials(tricks_smoke, learnable_folder, capsys):
    tmp, _ = tricks_smoke
    assert main(["study=tricks", *store_args(learnable_folder, tmp)]) == 0
    assert "already done" in capsys.readouterr().out
    _, runs, parents = trial_runs(tmp, "tricks-smoke")
    assert len(runs) == 16 and len(parents) == 1


@pytest.mark.slow
def test_divergence_fails_one_trial_and_the_study_goes_on(learnable_folder, tmp_path):
    study = tmp_path / "diverge.yaml"
    study.write_text(
        "kind: grid\nconfigs: [{optimizer: sgd}, {optimizer: adam}]\n"
        "recipe: {model: {arch: simplecnn}, optimizer: {lr: 1.0e+9},"
        " data: {name: imagefolder}}\n"
    )
    args = [f"study={study}", *store_args(learnable_folder, tmp_path)]
    assert main(args) == 0
    _, runs, _ = trial_runs(tmp_path, "diverge-smoke")
    by_optimizer = {r.data.params["optimizer"]: r for r in runs}
    assert by_optimizer["sgd"].info.status == "FAILED"
    assert by_optimizer["sgd"].data.tags["harness.failure"] == "diverged"
    assert "became" in by_optimizer["sgd"].data.tags["harness.failure_reason"]
    assert by_optimizer["adam"].info.status == "FINISHED"
    assert main(args) == 0  # a diverged trial is a result: not retried
    assert len(trial_runs(tmp_path, "diverge-smoke")[1]) == 2


@pytest.mark.slow
def test_optuna_search_prunes_and_reports(learnable_folder, tmp_path):
    args = ["study=search", *store_args(learnable_folder, tmp_path), "n_trials=4"]
    assert main(args) == 0
    _, runs, parents = trial_runs(tmp_path, "search-smoke")
    assert len(runs) == 4
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    assert "optimizer.lr_factor" in runs[0].data.params
    tags = parents[0].data.tags
    study = optuna.load_study(
        study_name=tags["harness.optuna_study_name"],
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))))
    assert len(study.trials) == 4


@pytest.mark.slow
def test_resume_after_sigkill_finishes_every_config_once(learnable_folder, tmp_path):
    # Four configs, each slow enough (several epochs) to be killed in the middle of one.
    # At the smoke budget's lr of 0.1 the deep stem with SGD diverges on some CPUs (AMD EPYC,
    # 2026-12-07); this test counts every config FINISHED, so it trains at a fifth of it.
    args = ["study=tricks", *store_args(learnable_folder, tmp_path), "depth=resnet18",
            "init=default", "trainer.epochs=30", "trainer.batch_size=8", "optimizer.lr=0.02"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:
        lines.append(line)
        if line.startswith("trial 1:"):
            time.sleep(0.5)  # into the second trial's training (30 epochs take seconds)
            process.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(lines)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    _, runs, _ = trial_runs(tmp_path, "tricks-smoke")
    assert "RUNNING" in {r.info.status for r in runs}

    assert main(args) == 0
    _, runs, parents = trial_runs(tmp_path, "tricks-smoke")
    finished = [json.loads(r.data.tags["harness.toggles"]) for r in runs
                if r.info.status == "FINISHED"]
    assert len(finished) == 4
    assert len({json.dumps(t, sort_keys=True) for t in finished}) == 4
    assert "RUNNING" not in {r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in runs}
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resumes(learnable_folder, tmp_path):
    args = ["study=tricks", *store_args(learnable_folder, tmp_path), "depth=resnet18",
            "init=default", "stem=none", "trainer.epochs=30", "trainer.batch_size=8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A shell without job control (CI, `cmd &`) starts children with SIGINT ignored; a person's
    # terminal does not, so give the child the default disposition a terminal would.
    process = subprocess.Popen([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # "trial 0:" is printed once the trial's run is open, inside the trial: a SIGINT sent the
    # moment it is read lands in that trial, however fast or slow this machine is.
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("trial 0:"):
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert seen[-1].startswith("trial 0:"), "".join(seen) + err
    assert process.returncode == 130, "".join(seen) + err
    assert "interrupted" in err and "Traceback" not in err
    _, runs, parents = trial_runs(tmp_path, "tricks-smoke")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["harness.failure"] == "interrupted"
    assert parents[0].info.status == "KILLED"
    assert main(args) == 0
    _, runs, _ = trial_runs(tmp_path, "tricks-smoke")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]
