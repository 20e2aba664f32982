"""Command-line configuration: Hydra override syntax over a study file, a budget and a recipe.

Layers, later wins: the Recipe's defaults, the study's ``recipe:``, the study's budget section,
then ``key=value`` overrides from the command line. Every key is checked against what exists, so
a typo fails at once with one line naming the valid keys.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from harness.core.checks import (
    check_integer_size,
    check_tracking,
    positive_int,
    too_large,
)
from harness.core.errors import UserError, abbreviated, unknown_choice
from harness.core.faults import RETRY_WINDOW
from harness.recipe import SECTIONS, Recipe, plain
from harness.study.designs.adaptive import AUTO, DEFAULT_MAX_SEEDS, Rounds
from harness.study.launchers import LAUNCHERS, Launch, launcher_settings
from harness.study.plan import Plan, experiment_name, grown_seeds
from harness.study.spec import StudySpec, list_studies, load_study
from harness.study.storage import check_storage
from harness.tricks import TRICKS, load_tricks

BUDGETS = ("auto", "smoke", "cpu", "full")
DEFAULT_STUDY = "tricks"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# A replicate seed, seed_offset included. Torch seeds are 64-bit, but the derived trial seed is
# taken mod 2**31 (see plan.torch_seed): larger replicate seeds would collide for no gain.
MAX_SEED = 2**31 - 1
MAX_AUTO_SEEDS = 20  # seeds=auto: more replicates than this is not a study of tricks

# Settings of the harness itself (not of a training run), with their defaults and help.
SETTINGS: dict[str, tuple[Any, str]] = {
    "study": (DEFAULT_STUDY, "study file in studies/ to run"),
    "budget": ("auto", "smoke | cpu | full | auto (full on CUDA, cpu otherwise)"),
    "seeds": (None, "seeds to repeat every config with, e.g. [0,1,2]; default: the study's. "
              "seeds=+N adds N new seeds to those with finished runs (a grown study trains "
              "only the new trials); seeds=auto adds one seed per round until every option "
              "is settled (see max_seeds, max_minutes)"),
    "max_seeds": (None, f"seeds=auto: seeds per config at the last round; default "
                  f"{DEFAULT_MAX_SEEDS}"),
    "max_minutes": (None, "seeds=auto: start no round that would end past this many minutes "
                    "of the command's wall time"),
    "seed_offset": (0, "seeds=auto: added to every seed, for a second replicate stream of the "
                    "same study"),
    "rerun": (False, "train every trial again, even those with a finished run; the new runs "
              "replace the old ones in reports (nothing is deleted)"),
    "design": (None, "grid | listed | fractional | search; default: the study's"),
    "resolution": (None, "design=fractional: 4 (main effects clear of two-way interactions) "
                   "or 5 (two-way interactions clear of each other); default 5"),
    "n_trials": (None, "trials of a search; default: the study's"),
    "storage": (None, "Optuna storage: a journal file path or an RDB URL; default: "
                "optuna/<study>.journal beside the MLflow SQLite store"),
    "tracking_uri": (DEFAULT_TRACKING_URI, "MLflow tracking URI (sqlite:///PATH or http://HOST)"),
    "device": ("auto", "auto | cpu | cuda | cuda:N | mps"),
    "progress": (True, "show progress bars"),
    "out": (None, "folder for the exported report; default: exports/<study>-<budget>"),
    "margin": (1.0, "points: an option whose whole family-wise interval lies inside +-margin "
               "is called negligible"),
    "stale_after": (900.0, "seconds without a heartbeat after which another host's RUNNING "
                    "trial counts as dead"),
    "retry_window": (RETRY_WINDOW, "seconds a worker retries an unreachable tracking server or "
                     "database before it stops; the same command then resumes"),
    "workers": (1, "worker processes of this study: a number, or auto (one per visible GPU)"),
    "trials_per_gpu": (1, "workers packed onto each GPU (small models leave a big GPU idle)"),
    "launcher": ("local", f"where workers run: {' | '.join(LAUNCHERS)} (a Slurm job array via "
                 f"submitit)"),
    # The launchers' own settings (slurm.*), each declared by its launcher.
    **launcher_settings(),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation of ``harness.run`` needs, validated."""

    study: StudySpec
    recipe: Recipe  # the base recipe: study + budget + command line, before any toggle
    budget: str  # smoke | cpu | full, never auto
    seeds: tuple[int, ...]
    configs: tuple[dict[str, str], ...]  # toggles of each grid config (fixed ones included)
    fixed: dict[str, str]  # toggles that hold in every trial
    factors: dict[str, list[str]]  # trick → options searched (optuna) or crossed (grid)
    n_trials: int | None
    storage: str | None
    tracking_uri: str
    device: str
    progress: bool
    out: str | None
    stale_after: float
    retry_window: float = RETRY_WINDOW
    launch: Launch = field(default_factory=Launch)
    overrides: tuple[str, ...] = field(default=())
    rerun: bool = False
    margin: float = 1.0  # points: the report's band for `negligible`
    rounds: Rounds | None = None  # seeds=auto: the rounds; seeds are then the first round's
    # seeds=+N: N new seeds after those with finished runs, which only the store knows; parsing
    # leaves ``seeds`` at the study's, and :func:`with_more_seeds` reads the store.
    more_seeds: int = 0

    def plan(self) -> Plan:
        """Return the study's plan: what its workers need, without the command line's settings."""
        return Plan(
            study=self.study.name, description=self.study.description, design=self.study.design,
            budget=self.budget, recipe=self.recipe, factors=self.factors, fixed=self.fixed,
            configs=self.configs,
            seeds=self.seeds, n_trials=self.n_trials, objective=self.study.objective,
            direction=self.study.direction, pruner=self.study.pruner, search=self.study.search,
            storage=self.storage, tracking_uri=self.tracking_uri,
            device=self.device, progress=self.progress, stale_after=self.stale_after,
            retry_window=self.retry_window, command_line=self.overrides, rerun=self.rerun,
        )


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings with Hydra's override grammar into ``{key: python value}``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    values: dict[str, Any] = {}
    for arg in args:
        if "=" not in arg:
            raise UserError(f"cannot read '{arg}': overrides look like key=value, e.g. budget=cpu")
        key, _, text = arg.partition("=")
        control = next((char for char in arg if unicodedata.category(char) == "Cc"), None)
        if control is not None:
            raise UserError(f"cannot read '{arg}': it holds the control character "
                            f"{control!r}; no setting means one, so type it again without")
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"cannot read '{arg}': {first}; quote a path with spaces or "
                            f"non-ASCII characters, e.g. '{key}=\"{text}\"' (lists look like "
                            f"[a,b])") from None
        except ValueError as exc:  # Hydra's int() of a number past Python's 4300-digit limit
            numbers = re.findall(r"\d+", text)
            if not numbers:
                raise UserError(f"cannot read '{arg}': {exc}") from None
            raise too_large(key, max(numbers, key=len)) from None
        if override.is_sweep_override():
            raise UserError(f"'{arg}' is a sweep; give a factor's options as a list instead, "
                            f"e.g. factors.TRICK=[OPTION_A,OPTION_B]")
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise UserError(f"'{arg}': only plain key=value overrides are supported")
        key = override.key_or_group
        value = plain(override.value())
        check_integer_size(key, value)
        if "${" in str(value):
            # OmegaConf would resolve it later, reading the environment or failing with a
            # traceback; a command line means its values literally.
            raise UserError(f"'{arg}': interpolations (${{...}}) are not supported on the "
                            f"command line; give the value itself")
        values[key] = value
    return values


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
    values = parse_overrides([arg for arg in args if not arg.startswith(MORE_SEEDS_PREFIX)])
    settings = {key: default for key, (default, _) in SETTINGS.items()}
    recipe_overrides: dict[str, Any] = {}
    factor_overrides: dict[str, list[str]] = {}
    trick_overrides: dict[str, str] = {}
    valid_recipe_keys = set(recipe_keys()) | {"seed"}
    for key, value in values.items():
        if key in SETTINGS:
            settings[key] = value
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

    study = load_study(str(settings["study"])).with_design(
        None if settings["design"] is None else str(settings["design"]),
        {} if settings["resolution"] is None else {"resolution": settings["resolution"]})
    budget = resolve_budget(str(settings["budget"]), cuda_available)
    recipe = compose_recipe(study, budget, recipe_overrides)
    rounds = _rounds(settings, study.seeds_for(budget),
                     None if more_seeds else study.max_seeds_for(budget))
    if rounds and study.design.searches:
        raise UserError(f"seeds=auto repeats a design's configs in rounds; design "
                        f"{study.design.name} searches instead, so give seeds=[...]")
    seeds = rounds.first if rounds else _seeds(settings["seeds"], study.seeds_for(budget))
    if more_seeds and settings["seeds"] is not None:
        raise UserError("give seeds=[...] or seeds=+N, not both")
    factors, configs, fixed = study.plan(factor_overrides, trick_overrides)
    n_trials = settings["n_trials"] if settings["n_trials"] is not None else (
        study.n_trials_for(budget))
    if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int)
                                 or n_trials <= 0):
        raise UserError(f"n_trials must be a positive integer, got {n_trials!r}")
    for flag in ("progress", "rerun"):
        if not isinstance(settings[flag], bool):
            raise UserError(f"{flag} must be true or false, got {settings[flag]!r}")
    storage = None if settings["storage"] is None else str(settings["storage"])
    check_storage(storage)
    return RunConfig(
        study=study, recipe=recipe, budget=budget, seeds=seeds, configs=tuple(configs),
        fixed=fixed, factors=factors, n_trials=n_trials,
        storage=storage, tracking_uri=str(settings["tracking_uri"]),
        device=str(settings["device"]), progress=settings["progress"],
        out=None if settings["out"] is None else str(settings["out"]),
        stale_after=_positive_float("stale_after", settings["stale_after"]),
        retry_window=_positive_float("retry_window", settings["retry_window"]),
        launch=_launch(settings), overrides=tuple(args), rerun=settings["rerun"],
        margin=_positive_float("margin", settings["margin"], "accuracy points"),
        rounds=rounds, more_seeds=more_seeds,
    )


def _rounds(settings: Mapping[str, Any], default: Sequence[int], budget_cap: int | None
            ) -> Rounds | None:
    """Return the rounds of ``seeds=auto``, None for fixed seeds; refuse stray round settings.

    A budget with ``max_seeds`` in its study file runs ``seeds=auto`` unless the command line
    gives seeds.
    """
    if settings["seeds"] is None and budget_cap is not None:
        settings = {**settings, "seeds": AUTO,
                    "max_seeds": budget_cap if settings["max_seeds"] is None
                    else settings["max_seeds"]}
    if settings["seeds"] != AUTO:
        for key in ("max_seeds", "max_minutes"):
            if settings[key] is not None:
                raise UserError(f"{key} sets the rounds of seeds=auto; add seeds=auto or drop it")
        if settings["seed_offset"] != 0:
            raise UserError("seed_offset shifts the seeds of seeds=auto; give seeds=[...] "
                            "themselves otherwise")
        return None
    offset = settings["seed_offset"]
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_SEED:
        raise UserError(f"seed_offset must be an integer from 0 to {MAX_SEED}, got {offset!r}")
    first = check_seed_range([seed + offset for seed in _seeds(None, default)])
    max_seeds = DEFAULT_MAX_SEEDS if settings["max_seeds"] is None else settings["max_seeds"]
    if (not isinstance(max_seeds, int) or isinstance(max_seeds, bool)
            or not len(first) <= max_seeds <= MAX_AUTO_SEEDS):
        raise UserError(f"max_seeds must be an integer from {len(first)} (the study's own seeds) "
                        f"to {MAX_AUTO_SEEDS}, got {max_seeds!r}")
    minutes = settings["max_minutes"]
    if minutes is not None:
        minutes = _positive_float("max_minutes", minutes, "minutes")
    return Rounds(first=first, max_seeds=max_seeds, max_minutes=minutes)


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

    check_tracking(cfg.tracking_uri)
    present = recorded_seeds(cfg.tracking_uri, experiment_name(cfg.study.name, cfg.budget))
    seeds = grown_seeds(present or list(cfg.seeds), cfg.more_seeds)
    return dataclasses.replace(cfg, seeds=check_seed_range(seeds), more_seeds=0)


def _positive_float(key: str, value: Any, unit: str = "seconds") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise UserError(f"{key} must be a positive number of {unit}, got {value!r}")
    return float(value)


def _launch(settings: Mapping[str, Any]) -> Launch:
    """Check the workers and launcher settings (the launcher its own) and build the Launch."""
    workers = settings["workers"]
    if workers != "auto":
        workers = positive_int("workers", workers)
    if settings["launcher"] not in LAUNCHERS:
        raise unknown_choice("launcher", settings["launcher"], LAUNCHERS)
    options = {name: LAUNCHERS.get(name).parse(settings) for name in LAUNCHERS}
    launch = Launch(workers=workers,
                    trials_per_gpu=positive_int("trials_per_gpu", settings["trials_per_gpu"]),
                    launcher=settings["launcher"], options=options[settings["launcher"]])
    launch.starter.check_workers(workers)
    return launch


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

