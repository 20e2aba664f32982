"""What a finished (or diverged) trial leaves in MLflow: final metrics, figures, checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from harness.data import PreparedData
from harness.recipe import Recipe
from harness.tracking.checkpoint import save_checkpoint
from harness.tracking.schema import Artifact, Metric, Tag
from harness.tracking.store import Tracker, temporary_dir
from harness.tracking.trial_figures import confusion_figure, per_class_figure, predictions_figure
from harness.training.evaluate import Evaluation
from harness.training.loop import TrainResult
from harness.training.metrics import METRICS

PREVIEW_IMAGES = 32  # test images shown with their predictions, like the seed's show_image


def preview_indices(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Return ``count`` test indices taken in turn from each class, so every class is shown.

    An ImageFolder lists its images class by class; the first ``count`` would all be one class.
    """
    per_class = [torch.nonzero(labels == label).flatten() for label in torch.unique(labels)]
    rounds = max((len(indices) for indices in per_class), default=0)
    chosen = [indices[turn] for turn in range(rounds) for indices in per_class
              if turn < len(indices)]
    return torch.stack(chosen[:count]) if chosen else torch.zeros(0, dtype=torch.long)


def final_metrics(result: TrainResult, test: Evaluation) -> dict[str, float]:
    """Return the run's summary metrics: every registered test metric, per-class accuracy, cost."""
    metrics = {
        **{METRICS.get(name).logged_as: value for name, value in test.metrics.items()},
        Metric.TEST_ACC: test.accuracy,
        Metric.TEST_LOSS: test.loss,
        Metric.TEST_IMAGES: float(test.count),
        Metric.TRAIN_SECONDS: result.train_seconds,
        Metric.COMPILE_SECONDS: result.compile_seconds,
        Metric.EPOCHS: float(result.epochs_completed),
        Metric.IMAGES_PER_SEC: result.images_per_second,
    }
    for name, accuracy in test.per_class_accuracy.items():
        if not math.isnan(accuracy):
            metrics[f"{Metric.PER_CLASS_PREFIX}{name}"] = accuracy
    if result.history:
        last = result.history[-1]
        for key in ("val_acc", "val_loss", "train_acc", "train_loss"):
            if key in last:
                metrics[f"final_{key}"] = last[key]
    return metrics


def log_test_predictions(tracker: Tracker, run_id: str, data: PreparedData,
                         test: Evaluation) -> None:
    """Log the class predicted for each test image, in order, with the test set's digest.

    About 10 kB for CIFAR-10's 10,000 images. The report reads them to measure the test set's
    share of an effect's noise (:mod:`harness.report.examples`).
    """
    if test.predicted is None:
        return
    small = torch.uint8 if len(data.classes) <= 256 else torch.int32
    with temporary_dir() as folder:
        path = Path(folder) / Path(Artifact.TEST_PREDICTIONS).name
        np.savez_compressed(path, predicted=test.predicted.to(small).numpy(),
                            labels=data.test_y.cpu().to(small).numpy())
        tracker.log_file(run_id, path, str(Path(Artifact.TEST_PREDICTIONS).parent))
    tracker.set_tags(run_id, {Tag.TEST_DIGEST: data.test_digest})


def log_trial_outcome(tracker: Tracker, run_id: str, recipe: Recipe, data: PreparedData,
                      result: TrainResult, test: Evaluation) -> None:
    """Log final metrics, the three figures and the checkpoint of one trial."""
    tracker.log_metrics(run_id, final_metrics(result, test), step=result.epochs_completed)
    tracker.set_tags(run_id, {Tag.COMPILE: result.compile_tag})
    tracker.log_figure(run_id, confusion_figure(test), "figures/confusion_matrix.png")
    tracker.log_figure(run_id, per_class_figure(test), "figures/per_class_accuracy.png")
    shown = preview_indices(data.test_y.cpu(), PREVIEW_IMAGES).to(data.test_y.device)
    images, labels = data.test_x[shown], data.test_y[shown]
    predicted = result.predict(images).argmax(dim=1)  # as evaluated: TTA and averaged weights
    tracker.log_figure(run_id, predictions_figure(images.cpu(), labels.cpu(), predicted.cpu(),
                                                  data.classes, data.mean, data.std),
                       "figures/test_predictions.png")
    log_test_predictions(tracker, run_id, data, test)
    with temporary_dir() as folder:
        path = save_checkpoint(Path(folder) / "checkpoint.pt", result.model, recipe,
                               data.classes, data.in_channels, data.image_size, data.mean,
                               data.std, data.digest)
        tracker.log_file(run_id, path, "checkpoint")
