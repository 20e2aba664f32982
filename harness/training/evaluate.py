"""Every registered metric, per-class accuracy and the confusion matrix, batched on the device.

The metrics are :data:`harness.training.metrics.METRICS` (accuracy, loss, top-5 and any a trick
adds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.training.metrics import compute_all

# How a batch of images becomes logits at evaluation: (model, images) -> logits. Evaluation hooks
# (harness.training.hooks) replace the plain forward, e.g. to average the logits of several views.
Infer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def plain_infer(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Return ``model(images)``: one forward pass, the default way to evaluate."""
    return model(images)


@dataclass(frozen=True)
class Evaluation:
    """The scores of one model on one labelled set. Accuracies are in percent."""

    accuracy: float
    loss: float
    per_class_accuracy: dict[str, float]
    confusion: torch.Tensor  # [true, predicted] counts, int64, on the CPU
    count: int
    predicted: torch.Tensor | None = None  # the class of each image, in order, int64 on the CPU
    metrics: dict[str, float] = field(default_factory=dict)  # every registered metric, by name

    def format(self, title: str = "test") -> str:
        """Return the seed's printout: overall accuracy, then one line per class."""
        lines = [f"Accuracy of the network on the {self.count} {title} images: "
                 f"{self.accuracy:.2f} %"]
        width = max((len(name) for name in self.per_class_accuracy), default=5)
        lines += [f"Accuracy of {name:>{width}} : {acc:5.1f} %"
                  for name, acc in self.per_class_accuracy.items()]
        return "\n".join(lines)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int,
            autocast_dtype: torch.dtype | None = None,
            memory_format: torch.memory_format = torch.contiguous_format,
            infer: Infer | None = None) -> torch.Tensor:
    """Return the float32 logits of ``images`` in batches, with the model in eval mode.

    ``infer`` turns a batch into logits; None is one plain forward pass.
    """
    infer = infer or plain_infer
    was_training = model.training
    model.eval()
    outputs = []
    device_type = images.device.type
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].contiguous(memory_format=memory_format)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            outputs.append(infer(model, batch).float())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0, device=images.device)
    return torch.cat(outputs)


def score(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> Evaluation:
    """Score ``logits`` against ``labels`` with no Python loop over samples."""
    num_classes = len(classes)
    if len(labels) == 0:
        empty = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        return Evaluation(float("nan"), float("nan"), {c: float("nan") for c in classes}, empty, 0,
                          metrics=compute_all(logits, labels))
    metrics = compute_all(logits, labels)
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes).cpu()
    correct = confusion.diagonal().double()
    totals = confusion.sum(dim=1).double()
    per_class = (100.0 * correct / totals.clamp(min=1)).tolist()
    per_class = [acc if total > 0 else float("nan") for acc, total in zip(per_class, totals)]
    return Evaluation(metrics["acc"], metrics["loss"], dict(zip(classes, per_class)), confusion,
                      len(labels), predicted.cpu(), metrics)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             classes: Sequence[str], batch_size: int = 1000,
             autocast_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format = torch.contiguous_format,
             infer: Infer | None = None) -> Evaluation:
    """Evaluate ``model`` on a labelled set held as tensors on the model's device.

    ``infer`` turns a batch into logits; None is one plain forward pass.
    """
    logits = predict(model, images, batch_size, autocast_dtype, memory_format, infer)
    return score(logits, labels, classes)
