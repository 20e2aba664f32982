"""Designs: which configs a study trains, how each trial gets its config, what it reports.

- ``grid``: the full cross of the factors;
- ``listed``: the configs a study file lists (e.g. a leave-one-out set);
- ``fractional``: a two-level fraction of a given resolution (generators in ``fractions``);
- ``search``: Optuna TPE with pruning.

Adding a design is one module that registers a :class:`Design` subclass in :data:`DESIGNS`,
imported here.
"""

from harness.study.designs import fractional, grid, listed, search
from harness.study.designs.base import DESIGNS, Design, design_from, from_record

__all__ = ["DESIGNS", "Design", "design_from", "fractional", "from_record", "grid", "listed",
           "search"]
