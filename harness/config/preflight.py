"""The whole run configuration checked up front, in the pass ``--dry-run`` shares with a real run.

Runs after the command line is parsed and before any data is read or any store is opened, so a
refused input costs a second and leaves every file as it was. It covers what parsing cannot:
values against this machine (devices, paths, database drivers), every trial's recipe after its
tricks (so a bad name inside an option fails before the first trial, not inside each), and the
stores' kinds (an Optuna storage that is MLflow's database, or the other way round).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from harness.config.settings import RunConfig
from harness.core.checks import (
    check_device,
    check_device_fit,
    check_driver,
    check_journal,
    check_optuna_sqlite,
    check_path_names,
    check_tracking,
    check_writable_folder,
    finite_number,
)
from harness.core.devices import usable_cores
from harness.core.errors import UserError, unknown_choice
from harness.data.augment import AUGMENTATIONS
from harness.models.parts import ARCHITECTURES, DATA_INITIALIZERS, INITIALIZERS, SHORTCUTS, STEMS
from harness.recipe import Recipe
from harness.study.launchers.base import DeviceNeed
from harness.study.storage import default_storage
from harness.training.hooks import HOOKS
from harness.training.losses import LOSSES
from harness.training.optimizers import OPTIMIZERS
from harness.training.ranks import torchrun_size
from harness.training.schedules import SCHEDULES


def check_run(cfg: RunConfig) -> None:
    """Raise a UserError for the first thing in ``cfg`` that could not work on this machine."""
    check_device(cfg.settings.device)
    check_search(cfg)
    # The base recipe too: a value every config's tricks replace is still a typo to report.
    recipes = (cfg.recipe, *trial_recipes(cfg))
    for recipe in recipes:
        check_recipe(recipe)
    check_trial_devices(cfg, recipes)
    check_workers(cfg)
    check_data_root(cfg.recipe.data.root)
    check_stores(cfg.settings.tracking_uri, cfg.settings.storage, cfg.study.name)
    if cfg.settings.out is not None:
        check_writable_folder("out", cfg.settings.out)


def check_search(cfg: RunConfig) -> None:
    """Every numeric search range of an Optuna study must be a real interval."""
    for key, span in cfg.study.search.items():
        low = finite_number(f"search {key} low", span.low)
        high = finite_number(f"search {key} high", span.high)
        if low >= high:
            raise UserError(f"search {key}: low {low:g} must be below high {high:g}")
        if span.log and low <= 0:
            raise UserError(f"search {key}: a log range needs low above 0, got {low:g}")


def trial_recipes(cfg: RunConfig) -> Iterator[Recipe]:
    """Yield the recipe of every config a study can train (each option, for a search)."""
    plan = cfg.plan()
    if cfg.study.design.queued:
        for toggles in cfg.configs:
            yield plan.trial_recipe(dict(toggles), cfg.seeds[0])
        return
    numeric = {key: span.low for key, span in cfg.study.search.items()}
    yield plan.trial_recipe(dict(cfg.fixed), cfg.seeds[0], numeric)
    for trick, options in cfg.factors.items():
        for option in options:
            yield plan.trial_recipe({**cfg.fixed, trick: option}, cfg.seeds[0], numeric)


def check_recipe(recipe: Recipe) -> None:
    """Every name in one trial's recipe registered (its values' ranges: ``recipe.validate``).

    The registries sit above the recipe's layer, so the names are checked here, for the
    recipe of every trial after its tricks.
    """
    optimizer, model = recipe.optimizer, recipe.model
    names = {
        "model.arch": (ARCHITECTURES, [model.arch]),
        "model.stem": (STEMS, [model.stem]),
        "model.shortcut": (SHORTCUTS, [model.shortcut]),
        "optimizer.name": (OPTIMIZERS, [optimizer.name]),
        "schedule.name": (SCHEDULES, [recipe.schedule.name]),
        "loss.name": (LOSSES, [recipe.loss.name]),
        "augment.ops": (AUGMENTATIONS, list(recipe.augment.ops)),
        "trainer.hooks": (HOOKS, list(recipe.trainer.hooks)),
    }
    for key, (registry, values) in names.items():
        for name in values:
            if name not in registry:
                raise unknown_choice(key, name, registry.names())
    initializers = [*INITIALIZERS, *DATA_INITIALIZERS]
    for name in (model.init, *model.post_init):
        if name not in initializers:
            raise unknown_choice("model.init", name, initializers)


def check_trial_devices(cfg: RunConfig, recipes: Iterable[Recipe],
                        cuda_count: int | None = None) -> None:
    """Check that the trials' ``trainer.devices`` ranks, ``workers`` of them at once, fit here.

    Args:
        cfg: The run.
        recipes: Every recipe the study can train.
        cuda_count: GPUs visible here; None asks torch.
    """
    launch = cfg.launch
    started = torchrun_size()
    if started > 1 and (launch.workers != 1 or not launch.starter.in_process(1)):
        raise UserError(f"under torchrun ({started} ranks) a study runs as one worker; drop "
                        f"workers= and launcher=")
    for trainer in {(r.trainer.devices, r.trainer.sync_bn) for r in recipes}:
        devices, sync_bn = trainer
        if started > 1:
            if devices not in (1, started):
                raise UserError(f"trainer.devices={devices} but torchrun started {started} "
                                f"ranks; leave it out or make it {started}")
            # torchrun placed the ranks, maybe on several machines: no GPUs to count here.
            check_device_fit(cfg.settings.device, started, sync_bn=sync_bn, cuda_count=started)
        else:
            launch.starter.check_trials_fit(cfg.settings.device, DeviceNeed(devices, sync_bn),
                                            launch, cuda_count)


def check_workers(cfg: RunConfig, cores: int | None = None, gpus: int | None = None) -> None:
    """Check that ``workers`` is no more than the study's trials and this machine can use.

    A worker beyond the trials has nothing to claim. A local worker beyond the cores (or the
    GPU slots, ``trials_per_gpu`` per GPU, where there are more of those) would only share a
    core with another and slow both; a Slurm worker runs on a node of its own, so there only
    the trials count (``slurm.cluster=local`` runs the array here, so the machine counts too).
    ``launcher=slurm`` must also be able to submit from here.

    Args:
        cfg: The run.
        cores: CPU cores this process may use; None asks the OS.
        gpus: GPUs visible here; None asks torch.
    """
    launch = cfg.launch
    launch.starter.check_can_start()
    if launch.workers == "auto":  # one per GPU slot, so within what the machine has
        return
    trials = cfg.plan().total_trials
    limits = [(trials, f"the study has {trials} trial(s), one per worker at most")]
    if launch.starter.uses_this_machine():
        if cores is None:
            cores = len(usable_cores())
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        slots = gpus * launch.trials_per_gpu
        here = f"{cores} core(s)" + (f" and {gpus} GPU(s) × trials_per_gpu="
                                     f"{launch.trials_per_gpu}" if gpus else "")
        limits.append((max(cores, slots), f"this machine has {here}, and a worker more would "
                                          f"only share one with another"))
    cap, why = min(limits)
    if launch.workers > cap:
        raise UserError(f"workers={launch.workers} is more than can be used: {why}; use "
                        f"workers={cap} or fewer")


def check_data_root(root: str) -> None:
    """Check that the data root is a name the file system allows, and a folder if it exists."""
    path = check_path_names("data.root", root)
    if path.exists() and not path.is_dir():
        raise UserError(f"data.root '{root}' is a file; name the folder that holds train/ and "
                        f"test/")


def check_stores(tracking_uri: str, storage: str | None, study: str) -> None:
    """Check both stores: schemes, drivers, paths, and that neither file is the other tool's."""
    check_tracking(tracking_uri)
    check_storage_target(storage if storage is not None else default_storage(study, tracking_uri))


def check_storage_target(storage: str) -> None:
    """Check that an Optuna storage's file, if any, is a journal or Optuna's own database."""
    if "://" in storage:
        check_driver("storage", storage)
        if storage.startswith("sqlite:///"):
            path = check_optuna_sqlite("storage", storage.removeprefix("sqlite:///"))
            if not path.parent.is_dir():  # SQLite creates the file, never its folder
                raise UserError(f"storage '{storage}': folder '{path.parent}' does not exist")
        return
    check_journal("storage", Path(storage.removeprefix("journal:")))


def check_export(tracking_uri: str, out: str | None) -> None:
    """Check what ``harness.export`` names: an existing MLflow store and a writable ``out``."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(f"no MLflow store at '{path}'; run a study first or pass "
                            f"tracking_uri=sqlite:///PATH")
    check_tracking(tracking_uri)
    if out is not None:
        check_writable_folder("out", out)

