"""An Optuna search: TPE over the factors and numeric ranges, pruned on the per-epoch objective."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.study.designs.base import DESIGNS, Configs, Design

if TYPE_CHECKING:
    import optuna

    from harness.study.plan import Plan


@DESIGNS.register("search")
@dataclass(frozen=True)
class Search(Design):
    """``n_trials`` trials suggested by TPE; nothing queued but the retries of lost trials."""

    name = "search"
    records_configs = False
    queued = False
    searches = True
    study_kind = "optuna"

    def configs(self, factors: Mapping[str, list[str]], listed: Configs | None) -> Configs:
        """Return no configs: a search fixes none in advance."""
        return []

    def total_trials(self, plan: Plan) -> int:
        """Return ``n_trials``."""
        return int(plan.n_trials or 0)

    def sampler(self, plan: Plan) -> optuna.samplers.BaseSampler:
        """Return TPE, lying about running trials (``constant_liar``) so workers spread out."""
        import optuna

        return optuna.samplers.TPESampler(seed=plan.seeds[0], constant_liar=True)

    def pruner(self, plan: Plan) -> optuna.pruners.BasePruner:
        """MedianPruner on the per-epoch objective when the study asks for it."""
        import optuna

        if plan.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        return optuna.pruners.NopPruner()

    def suggest(self, trial: optuna.Trial, plan: Plan,
                labels: Mapping[str, dict[str, str]]) -> tuple[dict[str, str], int,
                                                                dict[str, float]]:
        """Suggest every factor and numeric key; seeds go round the study's list."""
        toggles = dict(plan.fixed)
        for name, options in plan.factors.items():
            toggles[name] = trial.suggest_categorical(name, options)
        numeric = {key: trial.suggest_float(key, span.low, span.high, log=span.log)
                   for key, span in plan.search.items()}
        return toggles, plan.seeds[trial.number % len(plan.seeds)], numeric

    def headline(self, configs: Sequence[dict[str, str]], seeds: Sequence[int],
                 n_trials: int | None, factors: Mapping[str, list[str]]) -> str:
        """Return ``N optuna trials over ...``."""
        return f"{n_trials} optuna trials over {', '.join(factors)}"

    def describe(self, plan: Plan) -> list[str]:
        """Return the searched options and ranges, the trial count and the pruner."""
        lines = [f"  {name}: {options}" for name, options in plan.factors.items()]
        for key, span in plan.search.items():
            scale = "log" if span.log else "linear"
            lines.append(f"  {key}: {span.low:g} .. {span.high:g} ({scale})")
        lines.append(f"{plan.n_trials} trials would run, seeds {list(plan.seeds)}, "
                     f"pruner {plan.pruner}")
        return lines
