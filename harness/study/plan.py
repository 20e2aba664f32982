"""A study's plan: what its trials are, each one's recipe and seed, and where they are stored.

The plan is everything a worker needs and nothing of the command line: the CLI builds it
(``RunConfig.plan()``), the launchers hand it to every worker, and the queue turns its grid cells
into waiting Optuna trials. Within one Optuna study a grid cell is known by its queue key, the
JSON of its Optuna params (config label and seed). Across studies a trial is known by its
identity (:mod:`harness.study.identity`): what it computes, so a grown study reuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.core.faults import RETRY_WINDOW
from harness.recipe import Recipe
from harness.study.designs import Design
from harness.study.identity import computed_content, trial_identity
from harness.study.spec import SearchRange
from harness.tricks import TRICKS, apply_toggles


@dataclass(frozen=True)
class Cell:
    """One trial of a grid: a config and a replicate seed."""

    toggles: dict[str, str]
    seed: int

    @property
    def params(self) -> dict[str, Any]:
        """The Optuna params this cell is enqueued with."""
        return {"config": config_label(self.toggles), "seed": self.seed}

    @property
    def key(self) -> str:
        """The queue key: one finished trial per key."""
        return queue_key(self.params)


@dataclass(frozen=True)
class Plan:
    """Everything that defines a study's trials and where they go; picklable for workers."""

    study: str  # the study file's name
    description: str
    design: Design
    budget: str  # smoke | cpu | full
    recipe: Recipe  # the base recipe, before any toggle
    factors: dict[str, list[str]]  # trick → options crossed (grid) or searched (optuna)
    fixed: dict[str, str]  # toggles that hold in every trial
    configs: tuple[dict[str, str], ...]  # every queued config, fixed toggles included
    seeds: tuple[int, ...]
    n_trials: int | None  # optuna studies only
    objective: str
    direction: str
    pruner: str
    search: dict[str, SearchRange]
    storage: str | None  # Optuna storage URL or journal path; None for the default journal
    tracking_uri: str  # MLflow; the launcher checks and resolves it (absolute for SQLite)
    device: str
    progress: bool
    stale_after: float  # seconds without a heartbeat before a RUNNING trial counts as dead
    retry_window: float = RETRY_WINDOW  # seconds an unreachable store is retried (faults)
    command_line: tuple[str, ...] = ()
    rerun: bool = False  # train every trial again, even those with a finished run
    data_digest: str = ""  # the base data set's digest; set once the study is prepared
    # The key a store begun before data.root left the key knows this study by; set when the
    # study is prepared and such a store holds it, so it resumes (see reuse.earlier_study).
    resumed_key: str = ""

    @property
    def name(self) -> str:
        """The MLflow experiment: study and budget, so budgets never mix."""
        return experiment_name(self.study, self.budget)

    @functools.cached_property
    def key(self) -> str:
        """A short hash of everything that defines the trials (see :func:`study_key`)."""
        return self.resumed_key or study_key(self)

    @property
    def optuna_study_name(self) -> str:
        """The Optuna study of this plan: a changed setup is a new study."""
        return f"{self.name}-{self.key}"

    @property
    def total_trials(self) -> int:
        """Trials a complete study holds: every config × seed, or ``n_trials``."""
        return self.design.total_trials(self)

    def cells(self) -> list[Cell]:
        """Every queued (config, seed), in study order; empty for a search."""
        return [Cell(dict(config), seed) for config in self.configs for seed in self.seeds]

    def labels(self) -> dict[str, dict[str, str]]:
        """Config label → toggles, for the grid's ``config`` param."""
        return {config_label(c): dict(c) for c in self.configs}

    def trial_recipe(self, toggles: dict[str, str], seed: int,
                     numeric: dict[str, float] | None = None) -> Recipe:
        """Return the recipe of one trial: the base recipe, numeric search values, then toggles.

        ``seed`` is the replicate seed of the study's ``seeds``; the recipe's seed is derived
        from it and the recipe after its toggles (:func:`torch_seed`).
        """
        recipe = self._tricked(toggles, numeric)
        return dataclasses.replace(recipe, seed=torch_seed(recipe, seed))

    def _tricked(self, toggles: dict[str, str], numeric: dict[str, float] | None) -> Recipe:
        recipe = self.recipe
        if numeric:
            values = recipe.to_dict()
            for key, value in numeric.items():
                section, name = key.split(".", 1)
                values[section][name] = value
            recipe = Recipe.from_dict(values)
        return apply_toggles(recipe, toggles)

    def identity(self, recipe: Recipe, seed: int) -> str:
        """Return the identity of the trial that trains ``recipe`` for replicate ``seed``."""
        if not self.data_digest:
            raise RuntimeError("a trial's identity needs the data digest: prepare the study first")
        return trial_identity(recipe, seed, self.budget, self.data_digest)

    def earlier_identities(self, cell: Cell, roots: Iterable[str]) -> list[str]:
        """Return a grid cell's identities as stores written before hold them, one per root.

        Those identities, and the torch seeds inside them, hashed ``data.root`` too; ``roots``
        are the data roots the store's runs were trained from.
        """
        if not self.data_digest:
            raise RuntimeError("a trial's identity needs the data digest: prepare the study first")
        tricked = self._tricked(cell.toggles, None)
        identities = []
        for root in roots:
            placed = dataclasses.replace(tricked, data=dataclasses.replace(tricked.data, root=root))
            seeded = dataclasses.replace(placed, seed=torch_seed(placed, cell.seed, with_root=True))
            identities.append(trial_identity(seeded, cell.seed, self.budget, self.data_digest,
                                             with_root=True))
        return identities

    def cell_identities(self) -> dict[str, str]:
        """Return each grid cell's queue key → its identity."""
        return {cell.key: self.identity(self.trial_recipe(cell.toggles, cell.seed), cell.seed)
                for cell in self.cells()}

    def study_config(self) -> dict[str, Any]:
        """Return the whole study as one JSON-able mapping, logged to the parent run."""
        return {
            "study": self.study, "description": self.description,
            "kind": self.design.study_kind, "design": self.design.record(),
            "budget": self.budget, "seeds": list(self.seeds), "factors": self.factors,
            "fixed": self.fixed, "configs": list(self.configs), "n_trials": self.n_trials,
            "objective": self.objective, "base_recipe": self.recipe.to_dict(),
            "command_line": list(self.command_line), "rerun": self.rerun,
        }


def experiment_name(study: str, budget: str) -> str:
    """Return the MLflow experiment of a study at a budget, e.g. ``tricks-cpu``."""
    return f"{study}-{budget}"


def grown_seeds(present: list[int] | tuple[int, ...], more: int) -> tuple[int, ...]:
    """Return ``present`` followed by ``more`` new seeds, the next integers above its largest."""
    following = max(present, default=-1) + 1
    return (*present, *range(following, following + more))


def queue_key(params: dict[str, Any]) -> str:
    """Return the key of a trial's params: equal params, equal key."""
    return json.dumps(params, sort_keys=True, default=str)


def config_label(toggles: dict[str, str]) -> str:
    """Return ``"stem=deep,depth=resnet34"``: the name of a config in Optuna and MLflow."""
    return ",".join(f"{k}={v}" for k, v in toggles.items()) or "baseline"


def run_name(toggles: dict[str, str], seed: int) -> str:
    """Return a short MLflow run name: the non-default toggles, e.g. ``stem=deep s0``.

    The full toggles are params; the name only has to tell runs apart in the UI's narrow column.
    """
    changed = [f"{k}={v}" for k, v in toggles.items() if v != TRICKS.get(k).default]
    return f"{'+'.join(changed) or 'baseline'} s{seed}"


def study_key(plan: Plan, *, with_root: bool = False) -> str:
    """Return a short hash of everything that defines the study's trials.

    The same command gives the same key, so it resumes; a changed recipe, factor or seed list
    gives a new key, so results of different setups never mix in one Optuna study (a grown study
    still reuses the finished trials of the old one, by their identity). ``rerun=true`` is a
    study of its own, so it trains every trial again and resumes like any other. Where the data
    lives (``data.root``) is left out, as from trial identities: the same data through another
    path is the same study.

    Args:
        plan: The study.
        with_root: Hash ``data.root`` too: the key as stores written before hold it.
    """
    recipe = plan.recipe.to_dict()
    if not with_root:
        recipe["data"].pop("root")
    content = {
        "study": plan.study, "budget": plan.budget, "kind": plan.design.study_kind,
        "recipe": recipe, "configs": list(plan.configs),
        "seeds": list(plan.seeds), "factors": plan.factors, "fixed": plan.fixed,
        "search": {k: dataclasses.asdict(v) for k, v in plan.search.items()},
    }
    if plan.design.settings:  # only designs with settings, so older studies keep their keys
        content["design"] = plan.design.record()
    if plan.rerun:  # only when set, so the keys of studies begun before it existed still hold
        content["rerun"] = True
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]


def torch_seed(recipe: Recipe, replicate: int, *, with_root: bool = False) -> int:
    """Return the seed a trial trains with, derived from its recipe and its replicate seed.

    Configs that shared one seed would share their initial weights wherever their networks
    agree, and their batch order and augmentation draws: partner configs would then differ by
    nearly the same amount every time, and an effect's spread over partners would hide the noise
    a new seed brings. Deriving the seed from (recipe, replicate) makes every trial an
    independent draw, while the same recipe and replicate always get the same seed. It is
    derived from what the recipe computes (tricks applied; their names and the data root left
    out), not from the toggles: a factor added to a study at its neutral default leaves the
    seeds, and so the identities, of the configs that were there before unchanged; the same
    data through another path keeps them too. The derived seed is logged
    (``Recipe.seed``, tag ``harness.torch_seed``), so a run is reproducible from what MLflow
    holds.

    Args:
        recipe: The trial's recipe with its tricks applied (its own ``seed`` is the base seed).
        replicate: The replicate seed of the study's ``seeds``.
        with_root: Hash ``data.root`` too, as the seeds of runs in stores written before did.
    """
    content = json.dumps({"recipe": computed_content(recipe, with_root=with_root),
                          "replicate": replicate}, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(content.encode()).digest()[:4], "big") % (2**31)
