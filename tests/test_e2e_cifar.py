"""The real CIFAR-10 (JPEG copy): a short run must learn. Skipped, with a reason, without it."""

import mlflow
import pytest

from harness.data import load_dataset
from harness.recipe import DataSpec
from harness.run import main

pytestmark = pytest.mark.slow


def test_real_cifar10_loads_whole(cifar_root):
    dataset = load_dataset(DataSpec(root=str(cifar_root)))
    assert tuple(dataset.train.images.shape) == (50000, 3, 32, 32)
    assert tuple(dataset.test.images.shape) == (10000, 3, 32, 32)
    assert dataset.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck"]


def test_seed_recipe_on_a_subset_scores_well_above_chance(cifar_root, tmp_path, capsys):
    code = main([
        "study=seed", "budget=full", "depth=simplecnn", f"data.root={cifar_root}",
        "data.train_size=8000", "data.val_size=1000", "data.test_size=2000",
        "trainer.batch_size=16", "optimizer.lr=0.01", "progress=false",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"storage={tmp_path}/o.journal",
        f"out={tmp_path}/report",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "Accuracy of the network on the 2000 test images" in out
    assert "Accuracy of   airplane" in out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("seed-full")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_acc"] > 30.0  # chance is 10%
    assert run.data.metrics["test_acc_automobile"] >= 0.0
