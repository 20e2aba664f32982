"""What a trial logs: its test-set size, and a preview that shows every class."""

from __future__ import annotations

import torch

from harness.run_metrics import Metric
from harness.trial_logging import preview_indices


def test_preview_takes_classes_in_turn_from_a_class_sorted_test_set():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # an ImageFolder lists class by class
    shown = preview_indices(labels, 32)
    assert len(shown) == 32
    assert labels[shown[:6]].tolist() == [0, 1, 2, 0, 1, 2]
    assert sorted(set(labels[shown].tolist())) == [0, 1, 2]


def test_preview_of_a_small_set_shows_all_of_it():
    labels = torch.tensor([1, 1, 0])
    assert sorted(preview_indices(labels, 32).tolist()) == [0, 1, 2]


def test_the_test_set_size_metric_is_not_a_per_class_accuracy():
    # The report finds per-class accuracies by this prefix; the count must not be mistaken for one.
    assert not Metric.TEST_IMAGES.startswith(Metric.PER_CLASS_PREFIX)
