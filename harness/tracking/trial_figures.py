"""Figures of one trial: confusion matrix, per-class accuracy, and test images with predictions."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; figures only go to files and MLflow

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.training.evaluate import Evaluation  # noqa: E402


def confusion_figure(scores: Evaluation) -> Figure:
    """Return the confusion matrix as a heat map, rows true and columns predicted."""
    names = list(scores.per_class_accuracy)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    matrix = scores.confusion.numpy()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in _cells(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > threshold else "black")
    ax.set_title(f"confusion matrix — accuracy {scores.accuracy:.1f}%")
    fig.tight_layout()
    return fig


def per_class_figure(scores: Evaluation) -> Figure:
    """Return a bar chart of per-class accuracy with the overall accuracy as a line."""
    names = list(scores.per_class_accuracy)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 3.5))
    ax.bar(names, list(scores.per_class_accuracy.values()), color="tab:blue")
    ax.axhline(scores.accuracy, color="tab:red", linestyle="--",
               label=f"overall {scores.accuracy:.1f}%")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def predictions_figure(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor,
                       classes: Sequence[str], mean: Sequence[float],
                       std: Sequence[float]) -> Figure:
    """Return a grid of test images titled "true / predicted", like the seed's ``show_image``.

    Args:
        images: Normalised images [N, C, H, W], at most a few dozen.
        labels: True classes [N].
        predicted: Predicted classes [N].
        classes: Class names.
        mean: Per-channel mean used for normalisation, to undo it.
        std: Per-channel std used for normalisation.
    """
    count = len(images)
    cols = min(8, max(count, 1))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    channels = images.shape[1]
    mean_t = torch.tensor(list(mean), dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).reshape(-1, 1, 1)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        picture = (images[index].float().cpu() * std_t + mean_t).clamp(0, 1)
        if channels == 1:
            ax.imshow(picture[0].numpy(), cmap="gray")
        else:
            ax.imshow(picture.permute(1, 2, 0).numpy())
        right = bool(labels[index] == predicted[index])
        ax.set_title(f"{classes[int(labels[index])]}\n{classes[int(predicted[index])]}",
                     fontsize=7, color="green" if right else "red")
    fig.suptitle("true / predicted", fontsize=9)
    fig.tight_layout()
    return fig


def _cells(matrix):
    for row in range(matrix.shape[0]):
        for col in range(matrix.shape[1]):
            yield (row, col), int(matrix[row, col])
