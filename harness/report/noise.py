"""The run-to-run part of an effect's noise: its paired runs, or a model of the design.

**Paired runs.** Where the design has pairs of results that differ in one trick only (the same
other toggles, the same replicate seed), the effect is the mean of their differences, and its
standard error comes from the spread of those differences: one *piece* per pair. The pieces are
independent (no run is in two pairs of one option), so the test is self-normalised: its numerator
and its denominator are built from the same pieces. Such a t-test keeps its level when the
pieces are unequally noisy, e.g. when one config is far noisier than the others or a run
diverged (Bakirov & Székely 2006, "Student's t-test for Gaussian scale mixtures"; Ibragimov &
Müller 2010, "t-statistic based correlation and heterogeneity robust inference"), which a pooled
variance does not.

The pieces differ by the trick's interactions with the others as well as by noise. Where the
design allows, those two-way interactions are regressed out of the spread (least squares on the
partner configs' other toggles, by numpy): then real interactions do not count as noise, and
the error comes from the replicates and the higher-order terms. That costs one degree of freedom
per interaction column; it is done when at least 3 remain and, in a design with replicate seeds,
when it keeps at least 3/4 of them (:func:`removes_interactions`). The choice depends on the
design alone, never on the data, so it cannot favour a call.

**A model of the design.** An option without pairs (a two-level factor of a fractional design)
gets its effect from a least-squares model of the config means: main effects, and every two-way
interaction the design can tell apart from them. The error comes from the contrasts the model
leaves over (higher-order terms, under effect sparsity). Its coefficients are averages over the
partner configs, as a full factorial's main effects are.

The degrees of freedom are those of the spread itself: nothing is added to them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.tables import SCORE

PAIRED = "paired runs"
PAIRED_LESS_INTERACTIONS = "paired runs less their two-way interactions"
DESIGN_MODEL = "design model, higher-order terms as error"
NO_SPREAD = "none"

MIN_DF = 3
"""Fewest residual degrees of freedom worth removing the interactions for."""

KEEP_SHARE = 0.75
"""With replicate seeds, the share of the pairs' degrees of freedom the removal must keep."""


@dataclass(frozen=True)
class RunNoise:
    """One option's effect and the run-to-run part of its noise.

    ``weights`` are the effect's weights on the cells (``effect = weights @ accuracy``), which
    the test set's share needs too; ``pairs`` are the (option cell, default cell) row indices of
    each pair, empty for a model estimate. ``seeds`` is how many replicate seeds are behind it.
    """

    effect: float
    se: float
    df: float
    source: str
    weights: np.ndarray
    pairs: list[tuple[int, int]] = field(default_factory=list)
    seeds: int = 1
    interaction_columns: int = 0  # columns regressed out of the pairs' spread

    def projected(self, seeds: int) -> tuple[float, float]:
        """Return (se, df) this part would have with ``seeds`` replicate seeds instead.

        Every config gets the new seeds, so the pieces (or the config means' replicates) grow
        in proportion; the interaction columns stay.
        """
        if not (np.isfinite(self.se) and seeds > 0):
            return math.nan, math.nan
        scale = math.sqrt(self.seeds / seeds)
        if self.source == DESIGN_MODEL:
            return self.se * scale, self.df
        pieces = round(len(self.pairs) * seeds / self.seeds)
        columns = self.interaction_columns
        if columns and not removes_interactions(pieces, columns, seeds > 1):
            columns = 0  # never happens as seeds grow, but keep the rule in one place
        return self.se * scale, float(pieces - 1 - columns)


@dataclass(frozen=True)
class Layout:
    """A study's cells as arrays: the one form the estimates below read.

    ``levels[c, t]`` is the index of cell ``c``'s option of trick ``t`` in study order (-1 for
    an option the study does not list); ``seeds`` the replicate seed, ``accuracy`` the test
    accuracy (points, NaN where missing).
    """

    tricks: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    levels: np.ndarray
    seeds: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def of(cls, cells: pd.DataFrame, factors: Mapping[str, Sequence[str]]) -> Layout:
        """Return the layout of a cells table (tricks' columns, ``seed``, ``score``)."""
        tricks = tuple(factors)
        options = tuple(tuple(str(o) for o in factors[t]) for t in tricks)
        levels = np.full((len(cells), len(tricks)), -1, dtype=np.int64)
        for column, (trick, names) in enumerate(zip(tricks, options)):
            index = {name: i for i, name in enumerate(names)}
            levels[:, column] = [index.get(str(v), -1) for v in cells[trick]]
        seeds = pd.factorize(cells["seed"])[0].astype(np.int64)
        return cls(tricks, options, levels, seeds, cells[SCORE].to_numpy(float))

    def key(self, columns: Sequence[int], with_seed: bool = True) -> np.ndarray:
        """Return one integer per cell that is equal exactly when those columns (and seed) are."""
        parts = [self.levels[:, c] + 1 for c in columns] + ([self.seeds] if with_seed else [])
        key = np.zeros(len(self.accuracy), dtype=np.int64)
        for part in parts:
            key = key * (int(part.max(initial=0)) + 1) + part
        return key


def removes_interactions(pieces: int, columns: int, replicated: bool) -> bool:
    """Return whether a trick's two-way interactions are regressed out of its pairs' spread."""
    if columns == 0:
        return False
    left = pieces - 1 - columns
    return left >= MIN_DF and (not replicated or left >= KEEP_SHARE * (pieces - 1))


def paired(layout: Layout, trick: int, option: int, default: int) -> RunNoise | None:
    """Return the paired-runs estimate of an option against its default; None without pairs.

    Args:
        layout: The study's cells.
        trick: The trick's column in the layout.
        option: The option's index in the trick's options.
        default: The default's index.
    """
    others = [c for c in range(len(layout.tricks)) if c != trick]
    keys = layout.key(others)
    levels = layout.levels[:, trick]
    usable = np.isfinite(layout.accuracy)
    default_row = {keys[row]: row for row in np.flatnonzero((levels == default) & usable)}
    pairs = [(int(row), int(default_row[keys[row]]))
             for row in np.flatnonzero((levels == option) & usable) if keys[row] in default_row]
    if not pairs:
        return None
    on = np.array([a for a, _ in pairs])
    off = np.array([b for _, b in pairs])
    difference = layout.accuracy[on] - layout.accuracy[off]
    pieces = len(difference)
    weights = np.zeros(len(layout.accuracy))
    weights[on] += 1.0 / pieces
    weights[off] -= 1.0 / pieces
    seeds = int(len(np.unique(layout.seeds[on])))
    effect = float(difference.mean())
    if pieces < 2:
        return RunNoise(effect, math.nan, math.nan, NO_SPREAD, weights, pairs, seeds)
    partners = layout.levels[on][:, others]
    covariates = _partner_columns(partners)
    partner_keys = layout.key(others, with_seed=False)[on]
    replicated = len(np.unique(partner_keys)) < pieces
    if removes_interactions(pieces, covariates.shape[1], replicated):
        design = np.column_stack([np.ones(pieces), covariates])
        coefficients, _, rank, _ = np.linalg.lstsq(design, difference, rcond=None)
        df = pieces - rank
        squares = float(np.sum((difference - design @ coefficients) ** 2))
        # With centred columns the intercept is the mean of the pieces, its variance s² / n.
        se = math.sqrt(squares / df / pieces)
        return RunNoise(effect, se, float(df), PAIRED_LESS_INTERACTIONS, weights, pairs, seeds,
                        covariates.shape[1])
    se = float(difference.std(ddof=1)) / math.sqrt(pieces)
    return RunNoise(effect, se, float(pieces - 1), PAIRED, weights, pairs, seeds)


def _partner_columns(partners: np.ndarray) -> np.ndarray:
    """Return centred, linearly independent indicator columns of the partners' other toggles.

    Each other trick with two or more options among the partners gives one indicator per
    option but its first: the measured trick's two-way interactions with that trick.
    """
    columns = []
    for values in partners.T:
        for level in np.unique(values)[1:]:
            columns.append((values == level).astype(float))
    if not columns:
        return np.zeros((len(partners), 0))
    matrix = np.column_stack(columns)
    matrix -= matrix.mean(axis=0)
    return _independent(matrix)


def _independent(matrix: np.ndarray) -> np.ndarray:
    """Keep the columns of ``matrix`` that add rank, in order."""
    kept: list[np.ndarray] = []
    rank = 0
    for column in matrix.T:
        trial = np.column_stack([*kept, column])
        new_rank = int(np.linalg.matrix_rank(trial))
        if new_rank > rank:
            kept.append(column)
            rank = new_rank
    return np.column_stack(kept) if kept else np.zeros((matrix.shape[0], 0))


def modelled(layout: Layout, trick: int, option: int) -> RunNoise | None:
    """Return the design model's estimate of an option; None when it cannot tell it apart.

    The model is fit to the config means (each config averaged over its seeds): an intercept,
    a centred indicator per non-default option of every trick, then every product of two
    indicators of different tricks that adds rank. The option's coefficient is its effect
    averaged over the partner configs; the residual of the config means is the error.
    """
    usable = np.flatnonzero(np.isfinite(layout.accuracy))
    config_key = layout.key(range(len(layout.tricks)), with_seed=False)[usable]
    configs, inverse_index = np.unique(config_key, return_inverse=True)
    if len(configs) < 2:
        return None
    members = [usable[inverse_index == c] for c in range(len(configs))]
    y = np.array([layout.accuracy[rows].mean() for rows in members])
    first = np.array([rows[0] for rows in members])
    mains: list[tuple[int, int, np.ndarray]] = []
    for column, names in enumerate(layout.options):
        for level in range(1, len(names)):  # option 0 is the default (first in study order)
            indicator = (layout.levels[first, column] == level).astype(float)
            mains.append((column, level, indicator - indicator.mean()))
    target = next((i for i, (c, o, _) in enumerate(mains) if c == trick and o == option), None)
    if target is None:
        return None
    columns = [np.ones(len(configs))] + [indicator for _, _, indicator in mains]
    if np.linalg.matrix_rank(np.column_stack(columns)) < len(columns):
        return None  # a main effect aliased with another: the design cannot tell them apart
    for (trick_a, _, a), (trick_b, _, b) in _pairs_of(mains):
        if trick_a != trick_b:
            product = a * b
            if np.linalg.matrix_rank(np.column_stack([*columns, product])) > len(columns):
                columns.append(product)
    design = np.column_stack(columns)
    inverse = np.linalg.pinv(design)
    coefficients = inverse @ y
    df = len(y) - design.shape[1]
    config_weights = inverse[1 + target]
    weights = np.zeros(len(layout.accuracy))
    for w, rows in zip(config_weights, members):
        weights[rows] = w / len(rows)
    seeds = max(len(rows) for rows in members)
    effect = float(coefficients[1 + target])
    if df < 1:
        return RunNoise(effect, math.nan, math.nan, NO_SPREAD, weights, seeds=seeds)
    residual = y - design @ coefficients
    se = math.sqrt(float(residual @ residual) / df * float(config_weights @ config_weights))
    return RunNoise(effect, se, float(df), DESIGN_MODEL, weights, seeds=seeds)


def _pairs_of(items: list) -> list:
    return [(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items))]


def estimate(layout: Layout, trick: int, option: int, default: int) -> RunNoise | None:
    """Return the option's estimate from its paired runs, else from the design model."""
    found = paired(layout, trick, option, default)
    return found if found is not None else modelled(layout, trick, option)
