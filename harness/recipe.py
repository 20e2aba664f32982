"""The Recipe: a frozen, JSON-able description of one training run, and nothing else.

Tricks turn a study's base recipe into a trial's recipe (see ``harness.tricks``). The recipe is
logged whole to MLflow and stored in every checkpoint, so a run can be rebuilt from it alone.
Where the code runs (the device) is not part of the recipe; it is recorded as a tag instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.core.checks import finite_number
from harness.core.errors import UserError, unknown_choice

CROP_FILLS = ("zeros", "reflect")  # what fills the padding of a random crop


@dataclass(frozen=True)
class DataSpec:
    """Which images, which split, and how they are normalised."""

    name: str = "cifar10"  # cifar10 | imagefolder
    root: str = "./data"
    download: bool = False  # fetch the official CIFAR-10 batches when nothing is found locally
    image_size: int | None = None  # resize every image to this square size; None keeps it
    val_size: int = 5000  # images carved from train for choosing; the test set never chooses
    train_size: int | None = None  # stratified subset of what is left of train; None for all
    test_size: int | None = None  # stratified subset of test; None for all
    split_seed: int = 0  # fixed apart from the run seed so every seed sees the same val set
    mean: tuple[float, ...] | None = None  # None: measured per channel on the training split
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """The network: an architecture and the parts it is assembled from."""

    arch: str = "resnet18"
    width: int = 64  # channels of the first stage; 64 is the paper's ResNet, 8-16 suits a CPU
    stem: str = "conv3x3"
    shortcut: str = "projection"
    init: str = "default"  # weight initialiser applied after construction
    post_init: tuple[str, ...] = ()  # further initialisers applied after ``init``, in order


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and its hyper-parameters; the effective lr is ``lr * lr_factor``."""

    name: str = "sgd"
    lr: float = 0.05
    lr_factor: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    decay_excludes: tuple[str, ...] = ()  # parameter kinds without weight decay: bias, norm
    # lr multiplier of the biases (β) of norm layers; their decay per step stays as it was
    norm_bias_lr_factor: float = 1.0

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimizer is built with."""
        return self.lr * self.lr_factor


@dataclass(frozen=True)
class LossSpec:
    """The training loss."""

    name: str = "cross_entropy"
    smoothing: float = 0.0  # ε: targets become (1-ε)·target + ε/classes; 0 leaves them as they are


@dataclass(frozen=True)
class ScheduleSpec:
    """The learning-rate schedule, stepped once per optimizer step."""

    name: str = "constant"  # constant | warmup_cosine | one registered by a trick
    warmup_epochs: float = 0.0
    start_lr_fraction: float = 0.0  # where a linear warmup starts, as a fraction of the peak lr
    final_lr_fraction: float = 0.0  # where the decay ends, as a fraction of the peak lr


@dataclass(frozen=True)
class AugmentSpec:
    """Batched, on-device augmentations applied to training batches only."""

    ops: tuple[str, ...] = ()  # e.g. ("crop", "flip")
    crop_padding: int = 4  # pixels of padding around the image before a random crop
    crop_fill: str = "zeros"  # zeros (the mean colour, as images are normalised) | reflect


@dataclass(frozen=True)
class TrainerSpec:
    """How long and in what batches to train."""

    epochs: int = 2
    batch_size: int = 128
    eval_batch_size: int = 1000
    grad_accum: int = 1  # optimizer steps every this many batches
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    # torch.compile the model: "auto" where it should pay (CUDA, and the CPU for runs long
    # enough to repay compiling), true to always try, false never (training.compiling). Off by
    # default: on 2 CPU cores it gained 1.24-1.29x on a ResNet and lost on SimpleCNN
    # (BENCHMARKS.md), which does not repay a cold compile per architecture.
    compile: bool | str = False
    # Devices that train one run together with DDP (GPUs, or CPU ranks with gloo); batch_size
    # is the global batch, split across them, and the lr is left as it is.
    devices: int = 1
    sync_bn: bool = False  # with devices > 1: BatchNorm statistics over the global batch
    # Step hooks by registered name (training.hooks), in order, each with the numbers it reads,
    # e.g. {"NAME": {"decay": 0.999}}. Empty: the loop runs no hook at all.
    hooks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "true"/"false" typed as text mean the booleans: one spelling each, so an identity
        # does not depend on how the value was written.
        if isinstance(self.compile, str) and self.compile.lower() in ("true", "false"):
            object.__setattr__(self, "compile", self.compile.lower() == "true")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines one training run's result, given the code version."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    seed: int = 0
    toggles: Mapping[str, str] = field(default_factory=dict)  # trick → option that made it

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Return plain nested dicts and lists, fit for JSON, YAML and ``torch.load``."""
        return plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Return ``{"model.width": 64, ...}``: one entry per leaf, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        """Build a recipe from nested plain values, failing loudly on any unknown key."""
        return _build(cls, values, "")


# The parts of a recipe a trick may change (see harness.tricks).
SECTIONS = ("data", "model", "optimizer", "loss", "schedule", "augment", "trainer")


def field_types(section: str) -> dict[str, Any]:
    """Return ``{field: annotated type}`` of one recipe section, e.g. of ``"model"``."""
    return typing.get_type_hints(typing.get_type_hints(Recipe)[section])


def coerce(hint: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to the annotated type ``hint``, or raise a UserError naming ``path``."""
    return _coerce(hint, value, path)


def validate(recipe: Recipe) -> None:
    """Raise a UserError for values no run could use, naming the key and the rule.

    Every value's range is checked here, on construction, so a trial's recipe after its tricks
    is checked as the base recipe is; that its names are registered is checked by
    ``harness.config.preflight.check_recipe``, above the registries.
    """
    for key, value in recipe.flat().items():
        for number in value if isinstance(value, list | tuple) else [value]:
            if isinstance(number, float) and not math.isfinite(number):
                raise UserError(f"{key} must be a finite number, got {number}")
    for name, values in recipe.trainer.hooks.items():
        for key, value in dict(values).items():
            finite_number(f"trainer.hooks.{name}.{key}", value)
    optimizer = recipe.optimizer
    if not 0.0 <= optimizer.momentum <= 1.0:
        raise UserError(f"optimizer.momentum must be in [0, 1], got {optimizer.momentum:g}")
    if not all(0.0 <= beta < 1.0 for beta in optimizer.betas):
        raise UserError(f"optimizer.betas must be in [0, 1), got {list(optimizer.betas)}")
    if optimizer.eps <= 0 or optimizer.lr_factor <= 0:
        raise UserError("optimizer.eps and optimizer.lr_factor must be positive")
    positive = {
        "trainer.epochs": recipe.trainer.epochs,
        "trainer.batch_size": recipe.trainer.batch_size,
        "trainer.eval_batch_size": recipe.trainer.eval_batch_size,
        "trainer.grad_accum": recipe.trainer.grad_accum,
        "trainer.devices": recipe.trainer.devices,
        "model.width": recipe.model.width,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{key} must be a positive integer, got {value}")
    for key, value in {
        "data.image_size": recipe.data.image_size,
        "data.train_size": recipe.data.train_size,
        "data.test_size": recipe.data.test_size,
    }.items():
        if value is not None and value <= 0:
            raise UserError(f"{key} must be a positive integer or null for all, got {value}")
    if recipe.trainer.batch_size < 2 * recipe.trainer.devices:
        raise UserError(f"trainer.batch_size={recipe.trainer.batch_size} leaves some of the "
                        f"{recipe.trainer.devices} devices under 2 images a batch")
    if recipe.data.val_size < 0:
        raise UserError(f"data.val_size must be 0 or more, got {recipe.data.val_size}")
    if recipe.optimizer.effective_lr <= 0:
        raise UserError(f"optimizer.lr × lr_factor must be positive, got {recipe.optimizer.lr}")
    if recipe.optimizer.weight_decay < 0:
        raise UserError("optimizer.weight_decay must be 0 or more")
    if not 0.0 <= recipe.loss.smoothing < 1.0:
        raise UserError(f"loss.smoothing must be in [0, 1), got {recipe.loss.smoothing}")
    if recipe.optimizer.norm_bias_lr_factor <= 0:
        raise UserError("optimizer.norm_bias_lr_factor must be positive, got "
                        f"{recipe.optimizer.norm_bias_lr_factor}")
    if recipe.augment.crop_fill not in CROP_FILLS:
        raise unknown_choice("augment.crop_fill", recipe.augment.crop_fill, CROP_FILLS)
    if recipe.trainer.compile not in (True, False, "auto"):
        raise unknown_choice("trainer.compile", recipe.trainer.compile, ["auto", "true", "false"])
    if recipe.trainer.precision not in ("auto", "fp32", "bf16"):
        raise unknown_choice("trainer.precision", recipe.trainer.precision,
                             ["auto", "fp32", "bf16"])
    for key, stats in (("data.mean", recipe.data.mean), ("data.std", recipe.data.std)):
        if stats is not None and len(stats) not in (1, 3):
            raise UserError(f"{key} needs 1 or 3 values, got {len(stats)}")
    if recipe.data.std is not None and min(recipe.data.std) <= 0:
        raise UserError("data.std values must be positive")


def plain(value: Any) -> Any:
    """Return ``value`` as plain JSON-able data: mappings as dicts, sequences as lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise UserError(f"'{prefix or 'recipe'}' must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise unknown_choice("recipe key", path, [f"{prefix}{n}" for n in names])
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Convert a config value to the annotated type, or raise a UserError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{path}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for hint_ in inner[:-1]:  # the first type the value fits, e.g. bool, then str
            with contextlib.suppress(UserError):
                return _coerce(hint_, value, path)
        return _coerce(inner[-1], value, path)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            value = [value]
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != 2:
                raise UserError(f"{path} needs 2 values, got {list(value)}")
            return tuple(_coerce(a, v, path) for a, v in zip(args, value))
        return tuple(_coerce(item, v, path) for v in value)
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise UserError(f"{path} must be a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        if inner is str:  # toggles: option names, whatever YAML made of them
            return {str(k): str(v) for k, v in value.items()}
        return {str(k): _coerce(inner, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{path} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{path} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{path} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{path} must be a string, got {value!r}")
    return value
