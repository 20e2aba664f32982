"""The configs a study file lists, e.g. a leave-one-out set, each with every seed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.core.errors import UserError
from harness.study.designs.base import DESIGNS, Configs, Design


@DESIGNS.register("listed")
@dataclass(frozen=True)
class Listed(Design):
    """Just the listed configs; the report's design model calls options that have no pairs."""

    name = "listed"

    def configs(self, factors: Mapping[str, list[str]], listed: Configs | None) -> Configs:
        """Return the study file's configs as they are listed."""
        if listed is None:
            raise UserError("design listed trains the configs a study file lists, and this "
                            "study lists none (its factors are crossed: design grid)")
        return [dict(c) for c in listed]
