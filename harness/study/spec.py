"""Study files (``studies/NAME.yaml``): a base recipe, factors, seeds, a design and budgets.

A study file has these keys (only one of ``factors``/``configs`` is required)::

    description: one line
    design: grid | listed | fractional | search            # default: listed with configs, else grid
    resolution: 5                                          # fractional only
    factors: {trick: [options, neutral default first]}     # crossed in full by a grid
    configs: [{trick: option, ...}, ...]                   # or: just these configs (listed)
    seeds: [0]
    objective: val_acc                                     # maximised; never a test metric
    n_trials: 20                                           # search only
    pruner: median | none                                  # search only
    search: {optimizer.lr_factor: {low: 0.3, high: 3, log: true}}   # search only
    recipe: {section: {key: value}}                        # the base recipe
    budgets: {smoke|cpu|full: {recipe: {...}, seeds: [...], n_trials: N, max_seeds: N}}

A budget's ``max_seeds`` makes ``seeds=auto`` with that cap its default (a command line that
gives seeds overrides it). The older ``kind: grid | optuna`` still works: ``grid`` is a grid
(listed when the file lists configs) and ``optuna`` a search.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from harness.core.checks import MAX_INTEGER, check_integer_size, check_path_names
from harness.core.errors import UserError, unknown_choice
from harness.study.designs import DESIGNS, Design, design_from
from harness.tricks import TRICKS, load_tricks

STUDIES_DIR = Path(os.environ.get("HARNESS_STUDIES_DIR", Path(__file__).resolve().parents[2]
                                  / "studies"))
KINDS = {"grid": "grid", "optuna": "search"}
"""The older ``kind:`` key's values → the design they name."""
PRUNERS = ("median", "none")
OBJECTIVES = ("val_acc", "val_loss")

# What every study's smoke budget does unless the study says otherwise: seconds, for tests.
SMOKE_RECIPE: dict[str, Any] = {
    "data": {"train_size": 256, "val_size": 64, "test_size": 256},
    "model": {"width": 4},
    "trainer": {"epochs": 1, "batch_size": 64, "eval_batch_size": 256},
}

_KEYS = ("description", "design", "resolution", "kind", "factors", "configs", "seeds",
         "objective", "n_trials", "pruner", "search", "recipe", "budgets")
_BUDGET_KEYS = ("recipe", "seeds", "n_trials", "max_seeds")


@dataclass(frozen=True)
class SearchRange:
    """A numeric recipe key that an optuna study samples."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class StudySpec:
    """A parsed, checked study file."""

    name: str
    design: Design
    factors: dict[str, list[str]]
    configs: list[dict[str, str]] | None = None
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    objective: str = "val_acc"
    n_trials: int | None = None
    pruner: str = "median"
    search: dict[str, SearchRange] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str = ""

    @property
    def direction(self) -> str:
        """``maximize`` for accuracies, ``minimize`` for losses."""
        return "minimize" if self.objective.endswith("loss") else "maximize"

    def budget_recipe(self, budget: str) -> dict[str, Any]:
        """Return the recipe overrides of ``budget`` (smoke has a built-in floor)."""
        base = SMOKE_RECIPE if budget == "smoke" else {}
        merged = OmegaConf.merge(base, self.budgets.get(budget, {}).get("recipe", {}))
        return OmegaConf.to_container(merged)

    def seeds_for(self, budget: str) -> list[int]:
        """Return the budget's seeds, else the study's."""
        return list(self.budgets.get(budget, {}).get("seeds", self.seeds))

    def max_seeds_for(self, budget: str) -> int | None:
        """Return the cap of the budget's default ``seeds=auto``; None: its seeds are fixed."""
        return self.budgets.get(budget, {}).get("max_seeds")

    def n_trials_for(self, budget: str) -> int | None:
        """Return the budget's trial count, else the study's."""
        return self.budgets.get(budget, {}).get("n_trials", self.n_trials)

    def plan(self, factor_overrides: Mapping[str, list[str]],
             trick_overrides: Mapping[str, str]) -> tuple[
                 dict[str, list[str]], list[dict[str, str]], dict[str, str]]:
        """Apply command-line factors and tricks; return (factors, grid configs, fixed toggles).

        ``TRICK=OPTION`` restricts a factor of the study to that option, or, for a trick the
        study does not vary, fixes it in every trial. ``factors.TRICK=[...]`` sets a factor.
        """
        factors = {name: list(options) for name, options in self.factors.items()}
        factors.update({name: list(options) for name, options in factor_overrides.items()})
        fixed: dict[str, str] = {}
        configs = [dict(c) for c in self.configs] if self.configs is not None else None
        for name, option in trick_overrides.items():
            if name in factors:
                factors[name] = [option]
                if configs is not None:
                    default = TRICKS.get(name).default
                    configs = [c for c in configs if c.get(name, default) == option]
            else:
                fixed[name] = option
        if configs is not None:
            configs = [{n: c.get(n, TRICKS.get(n).default) for n in factors} for c in configs]
        configs = self.design.configs(factors, configs)
        if not configs and self.design.queued:
            wanted = ", ".join(f"{k}={v}" for k, v in trick_overrides.items())
            raise UserError(f"no config of study '{self.name}' has {wanted}")
        return factors, [{**fixed, **c} for c in configs], fixed

    def with_design(self, name: str | None, values: Mapping[str, Any]) -> StudySpec:
        """Return the study with the command line's ``design=`` and its settings applied."""
        if name is None and not values:
            return self
        name = self.design.name if name is None else name
        kept = {k: v for k, v in self.design.record().items()
                if k != "name" and name == self.design.name}
        return dataclasses.replace(
            self, design=design_from(name, {**kept, **values}, "the command line"))


def list_studies() -> list[str]:
    """Return the names of the study files in ``studies/``."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_study(name: str) -> StudySpec:
    """Load and check ``studies/NAME.yaml`` (or a path to a YAML file)."""
    path = check_path_names("study", name)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = STUDIES_DIR / f"{name}.yaml"
        if not path.is_file():
            raise unknown_choice("study", name, list_studies())
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"cannot parse study file {path}: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"study file {path} is not text: a study is a YAML file") from None
    except OSError as exc:
        raise UserError(f"cannot read study file {path}: {exc.strerror}") from None
    except ValueError:  # YAML's int() of a number past Python's 4300-digit limit
        raise UserError(f"study file {path} holds a number too large to be meant; integers "
                        f"there are at most {MAX_INTEGER} (2**63-1)") from None
    try:
        check_integer_size("", raw)
    except UserError as exc:
        raise UserError(f"study file {path}: {exc}") from None
    return parse_study(path.stem, raw, str(path))


def parse_study(name: str, raw: Mapping[str, Any], path: str = "") -> StudySpec:
    """Check a study's raw mapping and build its StudySpec."""
    load_tricks()
    where = f"study '{name}'"
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: a study file is a mapping of keys (design, factors, recipe, "
                        f"...), got {type(raw).__name__}")
    for key in ("factors", "search", "budgets", "recipe"):
        if not isinstance(raw.get(key) or {}, Mapping):
            raise UserError(f"{where}: '{key}' must be a mapping, got {raw[key]!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise UserError(f"{where}: seeds must be a list of integers from 0, got {seeds!r}")
    for key in raw:
        if key not in _KEYS:
            raise unknown_choice(f"key in {where}", key, _KEYS)
    factors = {}
    for trick_name, options in (raw.get("factors") or {}).items():
        trick = TRICKS.get(trick_name)
        if not isinstance(options, list) or not options:
            raise UserError(f"{where}: factor '{trick_name}' needs a list of options")
        factors[trick_name] = [trick.option(o) for o in options]
    configs = raw.get("configs")
    if configs is not None:
        if not isinstance(configs, list) or not configs:
            raise UserError(f"{where}: configs must be a non-empty list of {{trick: option}}")
        if not all(isinstance(c or {}, Mapping) for c in configs):
            raise UserError(f"{where}: each entry of configs is a {{trick: option}} mapping")
        configs = [{t: TRICKS.get(t).option(o) for t, o in (c or {}).items()} for c in configs]
        for config in configs:
            for trick_name in config:
                factors.setdefault(trick_name, [])
        for trick_name in factors:
            options = {c.get(trick_name, TRICKS.get(trick_name).default) for c in configs}
            ordered = [o for o in TRICKS.get(trick_name).options if o in options]
            factors[trick_name] = ordered
    design = _design(raw, configs is not None, where)
    if not factors and design.queued:
        raise UserError(f"{where}: design {design.name} needs factors or configs")
    objective = raw.get("objective", "val_acc")
    if objective not in OBJECTIVES:
        raise unknown_choice(f"objective in {where}", objective, OBJECTIVES)
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise unknown_choice(f"pruner in {where}", pruner, PRUNERS)
    search = {}
    for key, spec in (raw.get("search") or {}).items():
        if not isinstance(spec, Mapping):
            raise UserError(f"{where}: search.{key} needs low, high and optionally log")
        try:
            search[key] = SearchRange(float(spec["low"]), float(spec["high"]),
                                      bool(spec.get("log", False)))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: search.{key} needs low, high and optionally log") from None
    budgets = raw.get("budgets") or {}
    for budget, section in budgets.items():
        if not isinstance(section or {}, Mapping):
            raise UserError(f"{where}: budgets.{budget} must be a mapping")
        if budget not in ("smoke", "cpu", "full"):
            raise unknown_choice(f"budget in {where}", budget, ("smoke", "cpu", "full"))
        for key in section or {}:
            if key not in _BUDGET_KEYS:
                raise unknown_choice(f"key in {where} budgets.{budget}", key, _BUDGET_KEYS)
        cap = (section or {}).get("max_seeds")
        first = len((section or {}).get("seeds", seeds))
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool)
                                or not first <= cap <= 20):
            raise UserError(f"{where}: budgets.{budget}.max_seeds (its default seeds=auto's cap) "
                            f"must be an integer from {first} to 20, got {cap!r}")
    return StudySpec(
        name=name, design=design, factors=factors, configs=configs,
        description=str(raw.get("description", "")), seeds=list(raw.get("seeds", [0])),
        objective=objective, n_trials=raw.get("n_trials"), pruner=pruner, search=search,
        recipe=dict(raw.get("recipe") or {}),
        budgets={k: dict(v or {}) for k, v in budgets.items()}, path=path,
    )


def _design(raw: Mapping[str, Any], lists_configs: bool, where: str) -> Design:
    """Return the study file's design: ``design:``, else the older ``kind:``, else the default."""
    if "design" in raw and "kind" in raw:
        raise UserError(f"{where}: give design: or the older kind:, not both")
    if "kind" in raw:
        kind = raw["kind"]
        if kind not in KINDS:
            raise unknown_choice(f"kind in {where}", kind, KINDS)
        name = "listed" if KINDS[kind] == "grid" and lists_configs else KINDS[kind]
    else:
        name = raw.get("design", "listed" if lists_configs else "grid")
    if not isinstance(name, str) or name not in DESIGNS:
        raise unknown_choice(f"design in {where}", name, DESIGNS)
    values = {"resolution": raw["resolution"]} if "resolution" in raw else {}
    return design_from(name, values, where)
