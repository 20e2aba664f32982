"""What a design is: which configs a study trains, how each trial gets one, what it reports.

A design is a small frozen object (picklable, so the launchers hand it to every worker) whose
class is registered in :data:`DESIGNS` under its name. The rest of the harness asks it
questions, and never branches on its name: the queue asks whether its cells are queued up front
(:attr:`Design.queued`), the report whether it searched (:attr:`Design.searches`), the command
line what ``--dry-run`` prints (:meth:`Design.describe`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness.core.errors import UserError
from harness.core.registry import Registry

if TYPE_CHECKING:
    import optuna

    from harness.study.plan import Plan

Configs = list[dict[str, str]]

DESIGNS: Registry[type[Design]] = Registry("design")
"""Design name → class; each design module registers its own."""


@dataclass(frozen=True)
class Design:
    """The base: a queued design (every cell queued up front) that reports a trick set."""

    name: ClassVar[str] = ""
    queued: ClassVar[bool] = True  # every (config, seed) cell is queued up front
    searches: ClassVar[bool] = False  # the report names the best trial instead of calling options
    study_kind: ClassVar[str] = "grid"  # the word older study keys and the harness.kind tag hold
    records_configs: ClassVar[bool] = True  # the parent lists the configs (a grid's are implied)
    settings: ClassVar[tuple[str, ...]] = ()  # keys a study file or the command line may set

    @property
    def models_interactions(self) -> bool:
        """Whether the report reads two-way interactions from a model rather than quadruples."""
        return False

    @classmethod
    def build(cls, values: Mapping[str, Any], where: str) -> Design:
        """Return the design with ``values`` (its :attr:`settings`) checked."""
        for key in values:
            if key not in cls.settings:
                allowed = ", ".join(cls.settings) or "no settings"
                raise UserError(f"{where}: design {cls.name} takes {allowed}, not '{key}'")
        return cls(**values)

    def record(self) -> dict[str, Any]:
        """Return the design as JSON-able data: its name and settings."""
        return {"name": self.name, **asdict(self)}

    def configs(self, factors: Mapping[str, list[str]], listed: Configs | None) -> Configs:
        """Return the configs to train, in study order (empty for a search).

        Args:
            factors: Trick → options after the command line's restrictions.
            listed: The study file's configs (each with every factor), or None.
        """
        raise NotImplementedError

    def total_trials(self, plan: Plan) -> int:
        """Return the trials a complete study holds."""
        return len(plan.configs) * len(plan.seeds)

    def sampler(self, plan: Plan) -> optuna.samplers.BaseSampler:
        """Return the Optuna sampler; a queued design's is never asked, its params are fixed."""
        import optuna

        return optuna.samplers.RandomSampler(seed=plan.seeds[0])

    def pruner(self, plan: Plan) -> optuna.pruners.BasePruner:
        """Return the Optuna pruner: none, since every cell of a queued design is needed."""
        import optuna

        return optuna.pruners.NopPruner()

    def suggest(self, trial: optuna.Trial, plan: Plan,
                labels: Mapping[str, dict[str, str]]) -> tuple[dict[str, str], int,
                                                                dict[str, float]]:
        """Return a claimed trial's toggles, replicate seed and numeric values."""
        label = trial.suggest_categorical("config", list(labels))
        seed = trial.suggest_categorical("seed", list(plan.seeds))
        return dict(labels[label]), int(seed), {}

    def headline(self, configs: Sequence[dict[str, str]], seeds: Sequence[int],
                 n_trials: int | None, factors: Mapping[str, list[str]]) -> str:
        """Return the trial count of the run's first line."""
        return (f"{len(configs) * len(seeds)} trials = {len(configs)} configs × "
                f"{len(seeds)} seed(s)")

    def describe(self, plan: Plan) -> list[str]:
        """Return ``--dry-run``'s lines after the options: every trial that would run."""
        lines = self.structure(plan.factors)
        cells = plan.cells()
        for index, cell in enumerate(cells):
            lines.append(f"  {index:>3}  {_label(cell.toggles)}  seed={cell.seed}")
        lines.append(f"{len(cells)} trials would run (finished ones are skipped on a re-run)")
        return lines

    def structure(self, factors: Mapping[str, list[str]]) -> list[str]:
        """Return what the design is and what it aliases, for ``--dry-run`` and the report."""
        return []


def _label(toggles: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in toggles.items()) or "baseline"


def design_from(name: str, values: Mapping[str, Any], where: str) -> Design:
    """Return the design called ``name`` with its settings, or raise a UserError."""
    return DESIGNS.get(name).build(values, where)


def from_record(text: str | None, kind: str | None, listed: bool) -> Design:
    """Return the design a parent run records (its ``harness.design`` tag, as JSON).

    Stores from before designs had only ``harness.kind``: ``optuna`` was a search, and ``grid``
    was a listed design when the parent recorded its configs, else a full grid.
    """
    if text:
        try:
            record = json.loads(text)
            values = {k: v for k, v in record.items() if k != "name"}
            return design_from(str(record["name"]), values, "the parent run's design")
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable tag: fall back to the kind, as an older store would be read
    if kind == "optuna":
        return DESIGNS.get("search")()
    return DESIGNS.get("listed" if listed else "grid")()
