"""Command-line configuration: Hydra override syntax over a study file, a budget and a recipe.

Layers, later wins: the Recipe's defaults, the study's ``recipe:``, the study's budget section,
then ``key=value`` overrides from the command line. Every key is checked against what exists, so
a typo fails at once with one line naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from harness.config.arguments import Argument, parse_arguments
from harness.core.checks import check_tracking, positive_int, positive_number
from harness.core.errors import UserError, abbreviated, unknown_choice
from harness.core.faults import RETRY_WINDOW
from harness.recipe import SECTIONS, Recipe
from harness.report.tables import DEFAULT_METRIC
from harness.study.designs.adaptive import AUTO, DEFAULT_MAX_SEEDS, Rounds
from harness.study.launchers import LAUNCHERS, Launch, launcher_settings
from harness.study.plan import Plan, experiment_name, grown_seeds
from harness.study.spec import StudySpec, list_studies, load_study
from harness.study.storage import check_storage
from harness.training.metrics import by_logged_name
from harness.tricks import TRICKS, load_tricks

BUDGETS = ("auto", "smoke", "cpu", "full")
DEFAULT_STUDY = "tricks"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# A replicate seed, seed_offset included. Torch seeds are 64-bit, but the derived trial seed is
# taken mod 2**31 (see plan.torch_seed): larger replicate seeds would collide for no gain.
MAX_SEED = 2**31 - 1
MAX_AUTO_SEEDS = 20  # seeds=auto: more replicates than this is not a study of tricks

RUN, EXPORT = "run", "export"  # the commands a setting belongs to


def setting(default: Any, help: str, commands: tuple[str, ...] = (RUN,)) -> Any:
    """Declare one field of :class:`Settings`: its default, its help, the commands that read it."""
    return field(default=default, metadata={"help": help, "commands": commands})


@dataclass(frozen=True)
class Settings:
    """The harness's own settings (not a training run's), typed and checked once, here.

    ``harness.run`` and ``harness.export`` both parse their command lines into it
    (:func:`parse_settings`); each field says which of the two reads it. A value's range is
    checked on construction; what depends on the study (its seeds) in :func:`build_config`, and
    what depends on this machine (devices, paths, drivers) in :mod:`harness.config.preflight`.
    """

    study: str = setting(DEFAULT_STUDY, "study file in studies/ to run", (RUN, EXPORT))
    budget: str = setting("auto", "smoke | cpu | full | auto (full on CUDA, cpu otherwise)",
                          (RUN, EXPORT))
    seeds: int | list[int] | str | None = setting(
        None, "seeds to repeat every config with, e.g. [0,1,2]; default: the study's. "
        "seeds=+N adds N new seeds to those with finished runs (a grown study trains only the "
        "new trials); seeds=auto adds one seed per round until every option is settled (see "
        "max_seeds, max_minutes)")
    max_seeds: int | None = setting(None, f"seeds=auto: seeds per config at the last round; "
                                          f"default {DEFAULT_MAX_SEEDS}")
    max_minutes: float | None = setting(None, "seeds=auto: start no round that would end past "
                                              "this many minutes of the command's wall time")
    seed_offset: int = setting(0, "seeds=auto: added to every seed, for a second replicate "
                                  "stream of the same study")
    rerun: bool = setting(False, "train every trial again, even those with a finished run; the "
                                 "new runs replace the old ones in reports (nothing is deleted)")
    design: str | None = setting(None, "grid | listed | fractional | search; default: the "
                                       "study's")
    resolution: int | None = setting(None, "design=fractional: 4 (main effects clear of two-way "
                                           "interactions) or 5 (two-way interactions clear of "
                                           "each other); default 5")
    n_trials: int | None = setting(None, "trials of a search; default: the study's")
    storage: str | None = setting(None, "Optuna storage: a journal file path or an RDB URL; "
                                        "default: optuna/<study>.journal beside the MLflow "
                                        "SQLite store")
    tracking_uri: str = setting(DEFAULT_TRACKING_URI, "MLflow tracking URI (sqlite:///PATH or "
                                                      "http://HOST)", (RUN, EXPORT))
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps")
    progress: bool = setting(True, "show progress bars")
    out: str | None = setting(None, "folder for the exported report; default: "
                                    "exports/<study>-<budget>", (RUN, EXPORT))
    parent: str | None = setting(None, "the study's parent run id, when the experiment holds "
                                       "several; default: the newest", (EXPORT,))
    metric: str = setting(DEFAULT_METRIC, "the logged metric the effects, calls and verdict are "
                                          "on, e.g. test_loss", (EXPORT,))
    margin: float | None = setting(None, "an option whose whole family-wise interval lies inside "
                                         "+-margin (in the metric's unit) is called negligible; "
                                         "default: the metric's own, 1 point of accuracy",
                                   (RUN, EXPORT))
    stale_after: float = setting(900.0, "seconds without a heartbeat after which another host's "
                                        "RUNNING trial counts as dead")
    retry_window: float = setting(RETRY_WINDOW, "seconds a worker retries an unreachable "
                                                "tracking server or database before it stops; "
                                                "the same command then resumes")
    workers: int | str = setting(1, "worker processes of this study: a number, or auto (one "
                                    "per visible GPU)")
    trials_per_gpu: int = setting(1, "workers packed onto each GPU (small models leave a big "
                                     "GPU idle)")
    launcher: str = setting("local", f"where workers run: {' | '.join(LAUNCHERS)} (a Slurm job "
                                     f"array via submitit)")
    # The launchers' own settings (slurm.*), each declared and checked by its launcher.
    launcher_options: Mapping[str, Any] = field(default_factory=dict, metadata={"commands": ()})

    def __post_init__(self) -> None:
        for flag in ("progress", "rerun"):
            if not isinstance(getattr(self, flag), bool):
                raise UserError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.budget not in BUDGETS:
            raise unknown_choice("budget", self.budget, BUDGETS)
        positive_int("n_trials", self.n_trials, none_ok=True)
        offset = self.seed_offset
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_SEED:
            raise UserError(f"seed_offset must be an integer from 0 to {MAX_SEED}, got "
                            f"{offset!r}")
        numbers = {"stale_after": ("of seconds", False), "retry_window": ("of seconds", False),
                   "max_minutes": ("of minutes", True),
                   "margin": ("in the metric's unit", True)}
        for key, (unit, none_ok) in numbers.items():
            value = getattr(self, key)
            if not (none_ok and value is None):
                object.__setattr__(self, key, positive_number(key, value, unit))
        if self.workers != "auto":
            positive_int("workers", self.workers)
        positive_int("trials_per_gpu", self.trials_per_gpu)
        if self.launcher not in LAUNCHERS:
            raise unknown_choice("launcher", self.launcher, LAUNCHERS)
        by_logged_name(self.metric)

    def launch(self) -> Launch:
        """Build the workers' Launch; the chosen launcher checks its own settings."""
        values = {**launcher_defaults(), **self.launcher_options}
        options = {name: LAUNCHERS.get(name).parse(values) for name in LAUNCHERS}
        launch = Launch(workers=self.workers, trials_per_gpu=self.trials_per_gpu,
                        launcher=self.launcher, options=options[self.launcher])
        launch.starter.check_workers(self.workers)
        return launch


def command_settings(command: str) -> dict[str, tuple[Any, str]]:
    """Return the settings ``command`` reads, key → (default, help), launchers' last for run."""
    table = {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(Settings)
             if command in f.metadata["commands"]}
    return {**table, **launcher_settings()} if command == RUN else table


def launcher_defaults() -> dict[str, Any]:
    """Return every launcher setting's default, key → value."""
    return {key: default for key, (default, _) in launcher_settings().items()}


SETTINGS = command_settings(RUN)
"""Every setting of ``harness.run``, key → (default, help): for ``--help`` and the tests."""


def parse_settings(arguments: Mapping[str, Argument]) -> Settings:
    """Build Settings from parsed arguments whose keys all name settings.

    A setting typed as text takes the text as typed where the grammar read a number or a
    boolean (``parent=1e5`` stays ``"1e5"``, not ``100000.0``).
    """
    hints = typing.get_type_hints(Settings)
    launcher_keys = launcher_settings()
    values: dict[str, Any] = {}
    launcher_options: dict[str, Any] = {}
    for key, (value, text) in arguments.items():
        if key in launcher_keys:
            launcher_options[key] = value
            continue
        hint = hints[key]
        if hint in (str, str | None) and not isinstance(value, str | list | dict) and not (
                value is None and hint is not str):
            value = text
        values[key] = value
    return Settings(**values, launcher_options=launcher_options)


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation of ``harness.run`` needs, validated."""

    settings: Settings  # the harness's own settings, as the command line gave them
    study: StudySpec
    recipe: Recipe  # the base recipe: study + budget + command line, before any toggle
    budget: str  # smoke | cpu | full, never auto
    seeds: tuple[int, ...]
    configs: tuple[dict[str, str], ...]  # toggles of each grid config (fixed ones included)
    fixed: dict[str, str]  # toggles that hold in every trial
    factors: dict[str, list[str]]  # trick → options searched (optuna) or crossed (grid)
    n_trials: int | None
    launch: Launch = field(default_factory=Launch)
    overrides: tuple[str, ...] = field(default=())
    rounds: Rounds | None = None  # seeds=auto: the rounds; seeds are then the first round's
    # seeds=+N: N new seeds after those with finished runs, which only the store knows; parsing
    # leaves ``seeds`` at the study's, and :func:`with_more_seeds` reads the store.
    more_seeds: int = 0

    def plan(self) -> Plan:
        """Return the study's plan: what its workers need, without the command line's settings."""
        settings = self.settings
        return Plan(
            study=self.study.name, description=self.study.description, design=self.study.design,
            budget=self.budget, recipe=self.recipe, factors=self.factors, fixed=self.fixed,
            configs=self.configs,
            seeds=self.seeds, n_trials=self.n_trials, objective=self.study.objective,
            direction=self.study.direction, pruner=self.study.pruner, search=self.study.search,
            storage=settings.storage, tracking_uri=settings.tracking_uri,
            device=settings.device, progress=settings.progress,
            stale_after=settings.stale_after, retry_window=settings.retry_window,
            command_line=self.overrides, rerun=settings.rerun,
        )


def recipe_keys() -> list[str]:
    """Return every recipe key a command line may set, e.g. ``trainer.batch_size``."""
    keys = []
    hints = typing.get_type_hints(Recipe)
    for section in SECTIONS:
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(hints[section])]
    return keys


def build_config(args: Sequence[str], cuda_available: bool | None = None) -> RunConfig:
    """Turn command-line overrides into a validated RunConfig, or raise a UserError."""
    load_tricks()
    more_seeds = _more_seeds(args)
    arguments = parse_arguments([arg for arg in args if not arg.startswith(MORE_SEEDS_PREFIX)],
                                later_wins=True)
    given: dict[str, Argument] = {}
    recipe_overrides: dict[str, Any] = {}
    factor_overrides: dict[str, list[str]] = {}
    trick_overrides: dict[str, str] = {}
    valid_recipe_keys = set(recipe_keys()) | {"seed"}
    for key, argument in arguments.items():
        value = argument.value
        if key in SETTINGS:
            given[key] = argument
        elif key in valid_recipe_keys:
            recipe_overrides[key] = value
        elif key.startswith("factors."):
            trick = TRICKS.get(key.removeprefix("factors."))
            options = value if isinstance(value, list) else [value]
            factor_overrides[trick.name] = [trick.option(v) for v in options]
        elif key in TRICKS:
            trick_overrides[key] = TRICKS.get(key).option(value)
        else:
            choices = [*SETTINGS, *valid_recipe_keys, *TRICKS, "factors.<trick>"]
            raise unknown_choice("key", key, choices)
    settings = parse_settings(given)

    study = load_study(settings.study).with_design(
        settings.design, {} if settings.resolution is None else {"resolution": settings.resolution})
    budget = resolve_budget(settings.budget, cuda_available)
    recipe = compose_recipe(study, budget, recipe_overrides)
    rounds = _rounds(settings, study.seeds_for(budget),
                     None if more_seeds else study.max_seeds_for(budget))
    if rounds and study.design.searches:
        raise UserError(f"seeds=auto repeats a design's configs in rounds; design "
                        f"{study.design.name} searches instead, so give seeds=[...]")
    seeds = rounds.first if rounds else _seeds(settings.seeds, study.seeds_for(budget))
    if more_seeds and settings.seeds is not None:
        raise UserError("give seeds=[...] or seeds=+N, not both")
    factors, configs, fixed = study.plan(factor_overrides, trick_overrides)
    n_trials = settings.n_trials if settings.n_trials is not None else (
        study.n_trials_for(budget))
    check_storage(settings.storage)
    return RunConfig(
        settings=settings, study=study, recipe=recipe, budget=budget, seeds=seeds,
        configs=tuple(configs), fixed=fixed, factors=factors, n_trials=n_trials,
        launch=settings.launch(), overrides=tuple(args), rounds=rounds, more_seeds=more_seeds,
    )


def _rounds(settings: Settings, default: Sequence[int], budget_cap: int | None
            ) -> Rounds | None:
    """Return the rounds of ``seeds=auto``, None for fixed seeds; refuse stray round settings.

    A budget with ``max_seeds`` in its study file runs ``seeds=auto`` unless the command line
    gives seeds.
    """
    max_seeds = settings.max_seeds
    auto = settings.seeds == AUTO or (settings.seeds is None and budget_cap is not None)
    if settings.seeds is None and budget_cap is not None and max_seeds is None:
        max_seeds = budget_cap
    if not auto:
        for key in ("max_seeds", "max_minutes"):
            if getattr(settings, key) is not None:
                raise UserError(f"{key} sets the rounds of seeds=auto; add seeds=auto or drop it")
        if settings.seed_offset != 0:
            raise UserError("seed_offset shifts the seeds of seeds=auto; give seeds=[...] "
                            "themselves otherwise")
        return None
    first = check_seed_range([seed + settings.seed_offset for seed in _seeds(None, default)])
    max_seeds = DEFAULT_MAX_SEEDS if max_seeds is None else max_seeds
    if (not isinstance(max_seeds, int) or isinstance(max_seeds, bool)
            or not len(first) <= max_seeds <= MAX_AUTO_SEEDS):
        raise UserError(f"max_seeds must be an integer from {len(first)} (the study's own seeds) "
                        f"to {MAX_AUTO_SEEDS}, got {max_seeds!r}")
    return Rounds(first=first, max_seeds=max_seeds, max_minutes=settings.max_minutes)


MORE_SEEDS_PREFIX = "seeds=+"
# Seeds one seeds=+N may add: the new trials are listed, queued and checked one by one, so a
# typo such as +10000000 would stall the command before it trains anything.
MAX_NEW_SEEDS = 1000


def _more_seeds(args: Sequence[str]) -> int:
    """Return N of a ``seeds=+N`` argument (0 without one).

    Read before Hydra's parser, which would turn ``+2`` into the plain seed 2.
    """
    counts = [arg.removeprefix(MORE_SEEDS_PREFIX) for arg in args
              if arg.startswith(MORE_SEEDS_PREFIX)]
    if not counts:
        return 0
    digits = counts[0].lstrip("0")  # read as text first: int() refuses 4300 digits and more
    if len(counts) > 1 or not counts[0].isdigit() or not digits:
        raise UserError(f"seeds=+N adds N new seeds; N must be one positive integer, got "
                        f"{', '.join(MORE_SEEDS_PREFIX + c[:40] for c in counts)}")
    if len(digits) > len(str(MAX_NEW_SEEDS)) or int(digits) > MAX_NEW_SEEDS:
        raise UserError(f"seeds=+{abbreviated(digits)} adds too many seeds to be meant; at most "
                        f"{MAX_NEW_SEEDS} at once (each one trains every config again)")
    return int(digits)


def with_more_seeds(cfg: RunConfig) -> RunConfig:
    """Resolve ``seeds=+N``: the seeds that have finished runs (else the study's) and N new ones.

    The store is checked as every store is (:func:`~harness.core.checks.check_tracking`) and
    only read: a store that does not exist yet has no seeds, and the study's own are used.
    Without ``seeds=+N`` the configuration is returned as it is.
    """
    if not cfg.more_seeds:
        return cfg
    from harness.tracking.store import recorded_seeds

    check_tracking(cfg.settings.tracking_uri)
    present = recorded_seeds(cfg.settings.tracking_uri, experiment_name(cfg.study.name, cfg.budget))
    seeds = grown_seeds(present or list(cfg.seeds), cfg.more_seeds)
    return dataclasses.replace(cfg, seeds=check_seed_range(seeds), more_seeds=0)


def resolve_budget(budget: str, cuda_available: bool | None = None) -> str:
    """Return the concrete budget: ``auto`` is ``full`` on CUDA and ``cpu`` otherwise."""
    if budget not in BUDGETS:
        raise unknown_choice("budget", budget, BUDGETS)
    if budget != "auto":
        return budget
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "full" if cuda_available else "cpu"


def compose_recipe(study: StudySpec, budget: str, overrides: Mapping[str, Any]) -> Recipe:
    """Merge the recipe layers and build the (validated) base Recipe."""
    layers = [OmegaConf.create(dict(study.recipe)), OmegaConf.create(study.budget_recipe(budget))]
    dotted = OmegaConf.from_dotlist([])
    for key, value in overrides.items():
        OmegaConf.update(dotted, key, value, force_add=True)
    merged = OmegaConf.to_container(OmegaConf.merge(*layers, dotted), resolve=True)
    return Recipe.from_dict(merged)


def _seeds(value: Any, default: Sequence[int]) -> tuple[int, ...]:
    seeds = default if value is None else value
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list | tuple) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise UserError(f"seeds must be a non-empty list of integers, e.g. seeds=[0,1,2]; "
                        f"got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must not repeat, got {list(seeds)}")
    return check_seed_range(seeds)


def check_seed_range(seeds: Sequence[int]) -> tuple[int, ...]:
    """Return ``seeds`` if each is a seed a trial can use, from 0 to MAX_SEED."""
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"seeds must be integers from 0 to {MAX_SEED}, got {seed}")
    return tuple(seeds)


def help_text() -> str:
    """Return the text of ``--help``: usage, groups, settings and recipe keys with defaults."""
    load_tricks()
    defaults = Recipe().flat()
    lines = [
        "usage: python -m harness.run [--help] [--list-tricks] [--dry-run] [key=value ...]",
        "",
        "Runs a study: every config of its tricks through one training loop, logged to MLflow.",
        "Overrides use Hydra's syntax: key=value, lists as [a,b].",
        "",
        "groups:",
        f"  study=NAME        one of: {', '.join(list_studies())} (files in studies/)",
        f"  budget=NAME       one of: {', '.join(BUDGETS)}",
        "",
        "settings:",
    ]
    for key, (default, doc) in SETTINGS.items():
        if key not in ("study", "budget"):
            lines.append(f"  {key + '=':<18}{doc} [default: {default}]")
    lines += ["",
              "tricks (TRICK=OPTION fixes or restricts a trick; factors.TRICK=[...] crosses it;",
              "        --list-tricks shows their options):",
              "  " + ", ".join(TRICKS), "", "recipe keys (study values win over these defaults):"]
    for key in recipe_keys():
        lines.append(f"  {key + '=':<26}[default: {defaults.get(key)}]")
    lines.append(f"  {'seed=':<26}[default: {defaults.get('seed')}] (seeds= repeats a study)")
    return "\n".join(lines)

