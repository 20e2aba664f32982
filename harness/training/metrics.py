"""The metrics a trained classifier is scored on, in a registry that tricks and users can extend.

A metric has a name, a way to compute it from a labelled set's logits and labels, and a
direction (whether higher is better). Evaluation computes every registered metric; a trial logs
each as ``test_<name>`` (:mod:`harness.tracking.trial_logging`); configs.csv holds each one's
mean; and the report can compute effects and calls on any of them
(``python -m harness.export study=tricks metric=test_loss``), test accuracy by default.

Adding one is a module that registers a :class:`MetricDef`, e.g.::

    def error(logits, labels):
        return 100.0 * (logits.argmax(dim=1) != labels).double().mean().item()

    METRICS.register("error", module=__name__)(MetricDef(
        "error", error, higher_is_better=False, unit="points", margin=1.0, label="test error"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.core.errors import unknown_choice
from harness.core.registry import Registry

TEST_PREFIX = "test_"
"""A metric ``name`` is logged on the test set as ``test_<name>``."""


@dataclass(frozen=True)
class MetricDef:
    """One way to score a classifier on a labelled set.

    Attributes:
        name: Its registry name; the test set's value is logged as ``test_<name>``.
        compute: (logits [N, classes] float, labels [N] int64) → the score over the N examples.
            Called only with N ≥ 1.
        higher_is_better: Whether an option that raises it helps (accuracy) or hurts (loss).
        unit: What its values are in, for the report ("points" for percentages).
        margin: The default band of a ``negligible`` effect, in ``unit``.
        label: How the report names it ("test accuracy").
        share_of_examples: It is the percentage of examples that pass a test (accuracy, top-5),
            so the report can bound the test set's share of an effect's noise as binomial.
    """

    name: str
    compute: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool
    unit: str
    margin: float
    label: str
    share_of_examples: bool = False

    @property
    def logged_as(self) -> str:
        """Return the name of the test set's value in MLflow and in the runs table."""
        return f"{TEST_PREFIX}{self.name}"

    @property
    def sign(self) -> float:
        """Return +1 when higher is better, else -1: a value times this is a gain."""
        return 1.0 if self.higher_is_better else -1.0


METRICS: Registry[MetricDef] = Registry("metric")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    # The count over the length, as the per-class accuracies are: the same digits as before.
    return 100.0 * (logits.argmax(dim=1) == labels).sum().item() / len(labels)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return F.cross_entropy(logits, labels).item()


def _top5(logits: torch.Tensor, labels: torch.Tensor) -> float:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels[:, None]).any(dim=1).sum().item() / len(labels)


for _metric in (
    MetricDef("acc", _accuracy, higher_is_better=True, unit="points", margin=1.0,
           label="test accuracy", share_of_examples=True),
    MetricDef("loss", _loss, higher_is_better=False, unit="nats", margin=0.05,
           label="test cross-entropy"),
    MetricDef("top5", _top5, higher_is_better=True, unit="points", margin=1.0,
           label="test top-5 accuracy", share_of_examples=True),
):
    METRICS.register(_metric.name, module=__name__)(_metric)


def by_logged_name(logged: str) -> MetricDef:
    """Return the metric logged as ``logged`` (``test_loss`` → ``loss``).

    Raises:
        UserError: No registered metric is logged under that name; the message lists them.
    """
    for name in METRICS:
        if METRICS.get(name).logged_as == logged:
            return METRICS.get(name)
    raise unknown_choice("metric", logged, [METRICS.get(n).logged_as for n in METRICS])


def compute_all(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Return every registered metric's value on one labelled set, NaN for an empty one."""
    if len(labels) == 0:
        return {name: float("nan") for name in METRICS}
    return {name: float(METRICS.get(name).compute(logits, labels)) for name in METRICS}
