"""Step hooks: how a trick acts inside the one training loop without copying it.

``trainer.hooks`` names hooks from :data:`HOOKS` with the numbers each reads, e.g.
``{"NAME": {"decay": 0.999}}``. A registered entry is a factory ``(settings, context) -> StepHook``,
called once per run after the model is built. A hook overrides only the stages it acts at:

===================  ==========================================================================
stage                when, and what it may change
===================  ==========================================================================
``transform_batch``  every batch, after ``augment.ops``: the images and the targets (class
                     indices, or class probabilities ``[B, classes]`` for soft or mixed ones)
``wrap_loss``        once: the loss function ``(logits, targets) -> loss``
``before_update``    before every optimizer step, the gradients complete (e.g. clip them)
``after_update``     right after every optimizer step, before the others' ``after_step``, with
                     the number of steps taken so far (e.g. to pull the weights toward a copy)
``after_step``       after every optimizer step, with the number of steps taken so far
``evaluation_model`` before every evaluation: which module is evaluated (e.g. averaged weights);
                     the module returned at the end of training is the run's model
``wrap_infer``       once: how a batch of images becomes logits at evaluation (e.g. views)
===================  ==========================================================================

Hooks act in the order ``trainer.hooks`` lists them. A stage no hook overrides costs the loop
nothing: :class:`Hooks` leaves it out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import UserError
from harness.core.registry import Registry
from harness.recipe import Recipe
from harness.training.evaluate import Infer, plain_infer

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class HookContext:
    """What a hook may know about its run when it is built.

    Attributes:
        model: The network being trained, on the training device.
        num_classes: Width of the logits, for soft targets.
        generator: The run's random source; hooks draw from it so a seeded run repeats.
        train_size: Images in the training split (batch rows index them).
        steps_per_epoch: Optimizer steps in one epoch.
        total_steps: Optimizer steps in the whole run.
    """

    model: nn.Module
    num_classes: int
    generator: torch.Generator
    train_size: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0

    @classmethod
    def for_evaluation(cls, model: nn.Module, num_classes: int) -> HookContext:
        """Return a context for evaluating a trained model, e.g. one rebuilt from a checkpoint."""
        return cls(model, num_classes, torch.Generator().manual_seed(0))


class StepHook:
    """A trick acting at one or more stages of a step. Override only the stages you need."""

    def transform_batch(self, images: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
                        epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch to train on; ``rows`` index the training split, ``epoch`` is from 1."""
        return images, targets

    def wrap_loss(self, loss_fn: LossFn) -> LossFn:
        """Return the loss function to train with."""
        return loss_fn

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Act before every step of ``optimizer``, once the step's gradients are complete."""

    def after_update(self, step: int) -> None:
        """Act right after optimizer step number ``step`` (from 1), before any ``after_step``."""

    def after_step(self, step: int) -> None:
        """Act after optimizer step number ``step`` (from 1)."""

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """Return the module to evaluate in place of ``model`` (what earlier hooks returned)."""
        return model

    def wrap_infer(self, infer: Infer) -> Infer:
        """Return how a batch of images becomes logits at evaluation."""
        return infer


HookFactory = Callable[[Mapping[str, float], HookContext], StepHook]
HOOKS: Registry[HookFactory] = Registry("hook")


class WeightCopy:
    """A frozen copy of a model whose floating-point state can follow the live model.

    Weights and BN statistics are kept; hooks that average weights or keep slow ones use it.

    Args:
        model: The live model; the copy starts equal to it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        live, kept = model.state_dict(), self.module.state_dict()
        # state_dict tensors alias the modules' own, so these lists stay valid for the whole run.
        floating = [key for key, value in live.items() if value.is_floating_point()]
        self.live = [live[key] for key in floating]
        self.kept = [kept[key] for key in floating]
        self.counters = [(kept[key], live[key]) for key in live if key not in floating]

    @torch.no_grad()
    def move_toward_live(self, fraction: float) -> None:
        """Move every kept tensor ``fraction`` of the way to the live one (1 copies it)."""
        torch._foreach_lerp_(self.kept, self.live, fraction)
        for kept, live in self.counters:
            kept.copy_(live)

    @torch.no_grad()
    def copy_to_live(self) -> None:
        """Overwrite the live model's state with the kept one."""
        torch._foreach_copy_(self.live, self.kept)


def class_probabilities(targets: torch.Tensor, num_classes: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``targets`` as ``[B, classes]`` probabilities (one-hot for class indices)."""
    if targets.is_floating_point():
        return targets
    return F.one_hot(targets, num_classes).to(dtype)


def setting(settings: Mapping[str, float], name: str, hook: str) -> float:
    """Return a hook's setting, or raise a UserError naming the recipe key that is missing."""
    try:
        return float(settings[name])
    except KeyError:
        raise UserError(f"trainer.hooks.{hook} needs a value for '{name}', e.g. "
                        f"trainer.hooks.{hook}.{name}=...") from None


class Hooks:
    """The hooks of one run, composed per stage; a stage no hook overrides is ``None``.

    Args:
        hooks: Built hooks, in the recipe's order.
    """

    def __init__(self, hooks: Iterable[StepHook]) -> None:
        self.hooks = list(hooks)
        batch = self._overriding("transform_batch")
        self.transform_batch = _chain_batches(batch) if batch else None
        self.before_update = _chain_calls([h.before_update
                                           for h in self._overriding("before_update")])
        self.after_update = _chain_calls([h.after_update
                                          for h in self._overriding("after_update")])
        self.after_step = _chain_calls([h.after_step for h in self._overriding("after_step")])

    def _overriding(self, stage: str) -> list[StepHook]:
        return [h for h in self.hooks if getattr(type(h), stage) is not getattr(StepHook, stage)]

    def wrap_loss(self, loss_fn: LossFn) -> LossFn:
        """Return ``loss_fn`` wrapped by every hook, first hook innermost."""
        for hook in self._overriding("wrap_loss"):
            loss_fn = hook.wrap_loss(loss_fn)
        return loss_fn

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """Return the module to evaluate: ``model`` passed through every hook in order."""
        for hook in self._overriding("evaluation_model"):
            model = hook.evaluation_model(model)
        return model

    @property
    def infer(self) -> Infer | None:
        """How evaluation turns images into logits; ``None`` when no hook changes it."""
        hooks = self._overriding("wrap_infer")
        if not hooks:
            return None
        infer = plain_infer
        for hook in hooks:
            infer = hook.wrap_infer(infer)
        return infer


def build_hooks(recipe: Recipe, context: HookContext) -> Hooks:
    """Build the hooks ``recipe.trainer.hooks`` names, in order.

    Raises:
        UserError: A name is not registered, or a hook misses a setting it needs.
    """
    factories = [(HOOKS.get(name), settings) for name, settings in recipe.trainer.hooks.items()]
    return Hooks(factory(settings, context) for factory, settings in factories)


def evaluation_infer(recipe: Recipe, model: nn.Module, num_classes: int) -> Infer | None:
    """Return how a trained model of ``recipe`` is evaluated (``None``: a plain forward).

    The run's model (``TrainResult.model``) already holds the weights that are evaluated, so
    this is all a checkpoint needs, besides its weights, to re-evaluate exactly.
    """
    return build_hooks(recipe, HookContext.for_evaluation(model, num_classes)).infer


def _chain_batches(hooks: list[StepHook]):
    if len(hooks) == 1:
        return hooks[0].transform_batch

    def transform(images, targets, rows, epoch):
        for hook in hooks:
            images, targets = hook.transform_batch(images, targets, rows, epoch)
        return images, targets

    return transform


def _chain_calls(calls: list[Callable[..., None]]) -> Callable[..., None] | None:
    """Return one callable that makes ``calls`` in order; None when there are none."""
    if not calls:
        return None
    if len(calls) == 1:
        return calls[0]

    def each(*args: object) -> None:
        for call in calls:
            call(*args)

    return each
