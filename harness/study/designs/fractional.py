"""A two-level fractional factorial of a given resolution, crossed with any wider factor.

Ten two-level tricks cost 1,024 cells in full; a resolution-V fraction estimates every main
effect and two-way interaction from 128. The report's design model (see
:mod:`harness.report.noise`) gives every main effect its call, since a fraction has no pairs of
cells that differ in one trick only.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from harness.core.errors import UserError
from harness.study.designs.base import DESIGNS, Configs, Design
from harness.study.designs.fractions import Fraction, alias_lines, fraction


@DESIGNS.register("fractional")
@dataclass(frozen=True)
class Fractional(Design):
    """The smallest minimum-aberration fraction of the two-level factors at ``resolution``."""

    name = "fractional"
    study_kind = "fractional"
    settings = ("resolution",)
    resolution: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or not (
                3 <= self.resolution <= 16):
            raise UserError(f"design fractional: resolution must be an integer from 3 to 16 "
                            f"(4: main effects clear of two-way interactions; 5: two-way "
                            f"interactions clear of each other), got {self.resolution!r}")

    @property
    def models_interactions(self) -> bool:
        """From resolution V, two-way interactions are clear of each other: the model has them."""
        return self.resolution >= 5

    def fraction(self, factors: Mapping[str, list[str]]) -> tuple[list[str], Fraction]:
        """Return the two-level factors and their fraction."""
        two_level = [name for name, options in factors.items() if len(options) == 2]
        if len(two_level) < 2:
            raise UserError(f"design fractional needs two or more two-level factors, got "
                            f"{len(two_level)} ({', '.join(two_level) or 'none'})")
        return two_level, fraction(len(two_level), self.resolution)

    def configs(self, factors: Mapping[str, list[str]], listed: Configs | None) -> Configs:
        """Return the fraction's cells crossed with every option of the other factors.

        A factor of one option (fixed on the command line) holds in every cell; one of three
        or more options is crossed in full, so its pairs are complete in every cell.
        """
        if listed is not None:
            raise UserError("design fractional builds its configs from the factors; this study "
                            "lists its configs (design listed)")
        two_level, found = self.fraction(factors)
        wide = [name for name in factors if name not in two_level]
        cells = []
        for signs in found.signs():
            base = {name: factors[name][sign > 0] for name, sign in zip(two_level, signs)}
            for combo in itertools.product(*(factors[name] for name in wide)):
                cell = {**base, **dict(zip(wide, combo))}
                cells.append({name: cell[name] for name in factors})
        return cells

    def structure(self, factors: Mapping[str, list[str]]) -> list[str]:
        """Return the generators, the defining relation and which effects are aliased."""
        two_level, found = self.fraction(factors)
        wide = [name for name in factors if len(factors[name]) > 2]
        lines = alias_lines(found, two_level)
        if wide:
            lines.append(f"crossed in full with: {', '.join(wide)}")
        return lines
