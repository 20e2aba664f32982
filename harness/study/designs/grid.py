"""The full grid: every combination of every factor's options, each with every seed."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from harness.study.designs.base import DESIGNS, Configs, Design


@DESIGNS.register("grid")
@dataclass(frozen=True)
class Grid(Design):
    """The full cross of the factors: pairs for every option, interactions of every order."""

    name = "grid"
    records_configs = False

    def configs(self, factors: Mapping[str, list[str]], listed: Configs | None) -> Configs:
        """Return every combination of the factors' options, the first factor slowest."""
        names = list(factors)
        return [dict(zip(names, combo)) for combo in itertools.product(*factors.values())]
