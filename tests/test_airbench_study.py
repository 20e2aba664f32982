"""study=airbench at the smoke budget: every config of the ablation trains to FINISHED."""

from __future__ import annotations

import mlflow
import pytest

from harness.run import main


@pytest.mark.slow
def test_airbench_smoke_study_finishes_every_config(learnable_folder, tmp_path, capsys):
    code = main(["study=airbench", "budget=smoke", "progress=false", "data.name=imagefolder",
                 f"data.root={learnable_folder}", "data.val_size=15", "data.train_size=null",
                 "data.test_size=null", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                 f"storage={tmp_path}/optuna.journal", f"out={tmp_path}/report"])
    assert code == 0, capsys.readouterr().err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("airbench-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    assert len(runs) == 8
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.params["model.arch"] for run in runs} == {"airbench"}
    hooks = [key for run in runs for key in run.data.params if key.startswith("trainer.hooks.")]
    assert "trainer.hooks.tta.translate" in hooks and "trainer.hooks.lookahead.every" in hooks
