"""The test set's share of an effect's noise, from each run's per-example test results.

Every run logs, for each test image in the test set's fixed order, the class it predicted (see
:mod:`~harness.tracking.trial_logging`). Two configs measured on one test set differ partly by
chance in *which* images the test set happens to hold. Over seeds, that part never averages away: it
is the seed-stable part of the configs' per-example difference, ``Var_i(sum_c w_c p_ci) / N``, where
``p_ci`` is the chance, over seeds, that config ``c`` gets image ``i`` right and ``w`` are the
effect's weights on the configs. It is estimated here by an example × run decomposition: the
variance over images of the effect's per-example contrast, less the per-example seed noise inside it
(measured between the seeds of each config).

Stores written before per-example results were logged fall back to a bound that no distribution
of per-example chances can exceed (:func:`pair_bound`, :func:`contrast_bound`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PER_EXAMPLE = "per-example results"
BOUND = "bound (no per-example results)"
NOT_MEASURED = "not included (a metric that is not a share of the examples)"
"""How the test set's share was found, as ``ci_source`` says it."""


@dataclass(frozen=True)
class ExampleResults:
    """Per-example test results of a study's runs.

    ``correct`` maps a run id to a bool vector over the test images (in the test set's fixed
    order), ``digests`` maps it to the digest of that order: two runs' vectors line up only when
    their digests are equal.
    """

    correct: Mapping[str, np.ndarray]
    digests: Mapping[str, str]


class TestSetNoise:
    """The per-example results of a study's cells and the variances computed from them.

    Args:
        run_ids: For each cell (one config at one seed), the runs averaged into it.
        configs: For each cell, an integer code of its config.
        results: The study's per-example results; None for a store without them.
    """

    __test__ = False  # pytest: a name that starts with "Test", not a test class

    def __init__(self, run_ids: Sequence[Sequence[str]], configs: np.ndarray,
                 results: ExampleResults | None) -> None:
        self.configs = np.asarray(configs)
        self.matrix: np.ndarray | None = None
        self.present = np.zeros(len(run_ids), dtype=bool)
        if results is None or not results.correct:
            return
        # The vectors that line up: the commonest test-set digest among the cells' runs.
        digests = collections.Counter(results.digests.get(r) for ids in run_ids for r in ids
                                      if r in results.correct)
        if not digests:
            return
        digest = digests.most_common(1)[0][0]
        length = next(len(results.correct[r]) for ids in run_ids for r in ids
                      if results.digests.get(r) == digest and r in results.correct)
        matrix = np.full((len(run_ids), length), np.nan, dtype=np.float32)
        for row, ids in enumerate(run_ids):
            vectors = [results.correct[r] for r in ids if r in results.correct
                       and results.digests.get(r) == digest and len(results.correct[r]) == length]
            if vectors and len(vectors) == len(ids):  # a cell is whole or it is missing
                matrix[row] = np.mean(vectors, axis=0)
                self.present[row] = True
        self.matrix = matrix
        self.seed_noise = self._seed_noise()

    @property
    def images(self) -> int:
        """How many test images the vectors cover (0 without per-example results)."""
        return 0 if self.matrix is None else int(self.matrix.shape[1])

    def _seed_noise(self) -> dict[int, float]:
        """Return each config's per-example seed variance, averaged over images (0-1 units).

        It is measured between the config's seeds, so only configs with two or more seeds get
        one; the others are given the mean of those (0 when no config has two seeds: then the
        seed noise stays inside the test set's share, which makes that share larger, never
        smaller).
        """
        noise: dict[int, float] = {}
        assert self.matrix is not None
        for config in np.unique(self.configs[self.present]):
            rows = np.flatnonzero(self.present & (self.configs == config))
            if len(rows) >= 2:
                noise[int(config)] = float(np.var(self.matrix[rows], axis=0, ddof=1).mean())
        fallback = float(np.mean(list(noise.values()))) if noise else 0.0
        return collections.defaultdict(lambda: fallback, noise)

    def variance(self, weights: np.ndarray) -> float:
        """Return the test set's share of the variance of ``sum_cells w * accuracy`` (points²).

        NaN when a cell with a weight has no per-example results.
        """
        used = np.flatnonzero(weights != 0)
        if self.matrix is None or not self.present[used].all() or not len(used):
            return math.nan
        contrast = weights[used].astype(np.float64) @ self.matrix[used].astype(np.float64)
        spread = float(np.var(contrast, ddof=1))
        inside = collections.defaultdict(float)  # config → sum of its cells' squared weights
        for row in used:
            inside[int(self.configs[row])] += float(weights[row]) ** 2
        seed_part = sum(w2 * self.seed_noise[config] for config, w2 in inside.items())
        return 1e4 * max(spread - seed_part, 0.0) / self.images


def pair_bound(accuracy_a: float, accuracy_b: float, images: float) -> float:
    """Return the largest possible test-set SD (points) of the difference of two configs.

    For chances ``p_i, q_i`` in [0, 1] with means ``a`` and ``b``,
    ``Var(p - q) <= E|p - q| <= min(a + b, 2 - a - b)``: reached when the two configs get
    disjoint sets of images right. No per-example data can make the true share larger.
    """
    a, b = accuracy_a / 100.0, accuracy_b / 100.0
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(images) and images > 0):
        return math.nan
    return 100.0 * math.sqrt(max(min(a + b, 2.0 - a - b), 0.0) / images)


def contrast_bound(weights: np.ndarray, accuracies: np.ndarray, images: float) -> float:
    """Return the largest possible test-set SD (points) of ``sum_c w_c accuracy_c``.

    Each config's chances have variance at most ``a (1 - a)``; by Minkowski's inequality the SD
    of the weighted sum is at most the weighted sum of those SDs.
    """
    used = np.asarray(weights) != 0
    a = np.clip(np.asarray(accuracies, float)[used] / 100.0, 0.0, 1.0)
    if not (np.isfinite(images) and images > 0) or not np.isfinite(a).all():
        return math.nan
    spread = np.abs(np.asarray(weights)[used]) * np.sqrt(a * (1 - a))
    return float(100.0 * np.sum(spread) / math.sqrt(images))


def example_results(vectors: Mapping[str, tuple[np.ndarray, str]]) -> ExampleResults:
    """Build :class:`ExampleResults` from run id → (correct vector, digest)."""
    return ExampleResults({r: np.asarray(v, dtype=bool) for r, (v, _) in vectors.items()},
                          {r: d for r, (_, d) in vectors.items()})
