"""What a trial logs: its summary metrics as the report reads them, and a preview of every class."""

from __future__ import annotations

import pandas as pd
import torch

from harness.recipe import Recipe
from harness.report.tables import class_names
from harness.tracking.schema import Metric
from harness.tracking.trial_logging import final_metrics, preview_indices
from harness.training.evaluate import Evaluation
from harness.training.loop import TrainResult
from harness.training.placement import Placement


def test_preview_takes_classes_in_turn_from_a_class_sorted_test_set():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # an ImageFolder lists class by class
    shown = preview_indices(labels, 32)
    assert len(shown) == 32
    assert labels[shown[:6]].tolist() == [0, 1, 2, 0, 1, 2]
    assert sorted(set(labels[shown].tolist())) == [0, 1, 2]


def test_preview_of_a_small_set_shows_all_of_it():
    labels = torch.tensor([1, 1, 0])
    assert sorted(preview_indices(labels, 32).tolist()) == [0, 1, 2]


def test_the_report_reads_the_logged_per_class_accuracies_and_nothing_else_as_classes():
    # The report finds per-class accuracies by their prefix; the test-set size and the other
    # summary metrics a trial logs must not be mistaken for a class.
    model = torch.nn.Linear(2, 2)
    result = TrainResult(model=model, placement=Placement.for_recipe(Recipe(), torch.device("cpu")),
                         status="finished", history=[{"val_acc": 50.0, "train_loss": 1.0}],
                         train_seconds=2.0, images_seen=100)
    test = Evaluation(accuracy=75.0, loss=0.5, per_class_accuracy={"cat": 50.0, "dog": 100.0},
                      confusion=torch.zeros(2, 2, dtype=torch.long), count=4)
    metrics = final_metrics(result, test)
    assert metrics[Metric.TEST_IMAGES] == 4.0
    assert class_names(pd.DataFrame([metrics])) == ["cat", "dog"]
