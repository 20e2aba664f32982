"""The one reader of runs: the table mlflow.search_runs gives, read without the global URI."""

from __future__ import annotations

import mlflow
import pandas as pd

from harness.tracking.reader import runs_frame


def test_the_table_is_search_runs_and_the_global_uri_stays_as_it_was(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("reader", artifact_location=str(tmp_path / "art"))
    first = client.create_run(experiment, tags={"harness.role": "trial", "only.first": "x"})
    client.log_param(first.info.run_id, "seed", "0")
    client.log_metric(first.info.run_id, "test_acc", 51.5)
    client.set_terminated(first.info.run_id)
    second = client.create_run(experiment, tags={"harness.role": "trial"})
    client.log_metric(second.info.run_id, "val_acc", 40.0)
    client.create_run(experiment, tags={"harness.role": "parent"})
    before = mlflow.get_tracking_uri()

    ours = runs_frame(uri, [experiment], "tags.`harness.role` = 'trial'")
    assert mlflow.get_tracking_uri() == before
    assert sorted(ours["run_id"]) == sorted([first.info.run_id, second.info.run_id])

    mlflow.set_tracking_uri(uri)
    try:
        theirs = mlflow.search_runs([experiment], "tags.`harness.role` = 'trial'")
    finally:
        mlflow.set_tracking_uri(before)
    columns = sorted(theirs.columns)
    assert sorted(ours.columns) == columns
    pd.testing.assert_frame_equal(ours[columns].sort_values("run_id").reset_index(drop=True),
                                  theirs[columns].sort_values("run_id").reset_index(drop=True))


def test_an_empty_search_has_the_run_columns(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = mlflow.MlflowClient(uri).create_experiment("empty")
    frame = runs_frame(uri, [experiment])
    assert frame.empty and {"run_id", "status", "start_time"} <= set(frame.columns)
