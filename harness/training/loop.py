"""The one training loop, in one process. Every trick and every study trains through it.

The data already sits on the device, normalised (``harness.data.prepare_data``), so a step is an
index, an optional batched augmentation, a forward and a backward: no DataLoader, no PIL. On CUDA
the loop uses bf16 autocast and channels_last; on the CPU it uses every core and is deterministic.
``trainer.compile`` trains through ``torch.compile`` where it pays (``harness.training.compiling``).
Tricks that act inside a step do so through the recipe's hooks (:mod:`~harness.training.hooks`); a
stage no hook uses is skipped at no cost. With ``trainer.devices=N`` each of N DDP ranks runs this
loop in its :class:`~harness.training.ranks.Group`; starting them is
:mod:`harness.training.devices`'s job, and the loop never calls it.
:func:`harness.training.trainer.fit` is the entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from harness.core.devices import usable_cores
from harness.data import PreparedData, augment, shuffled_rows
from harness.models import build_model
from harness.recipe import Recipe
from harness.training import compiling
from harness.training.divergence import DivergenceWatch
from harness.training.evaluate import Evaluation, Infer, evaluate, predict, score
from harness.training.hooks import HookContext, Hooks, build_hooks
from harness.training.losses import build_loss
from harness.training.optimizers import build_optimizer
from harness.training.placement import Placement
from harness.training.ranks import Group, Shard, StoppedByLeader, shared
from harness.training.schedules import build_schedule

# Called after every epoch with (epoch number from 1, that epoch's metrics). A callback may raise
# to stop the run, e.g. optuna.TrialPruned; the exception reaches the caller of ``fit``.
EpochCallback = Callable[[int, dict[str, float]], None]

# How often the loop looks at the loss for NaN/inf, in steps; a NaN stays NaN in the running sum,
# so none is missed. On one CUDA device a look does not wait for the GPU (training.divergence).
_DIVERGENCE_CHECK_STEPS = 25


@dataclass
class TrainResult:
    """What ``fit`` returns: the model and how the run went.

    ``model`` is the module the run's evaluation uses, and the one to checkpoint: the trained
    network, or what the hooks evaluate in its place (e.g. its averaged weights). It has the
    same architecture and state_dict keys as the trained network. ``infer`` is how evaluation
    turns images into logits (None: one forward pass); :meth:`evaluate` and :meth:`predict`
    apply it.
    """

    model: nn.Module
    placement: Placement
    status: str  # "finished" | "diverged"
    reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # time in training steps, without the per-epoch val evaluation
    compile_seconds: float = 0.0  # paid before the first step, not part of train_seconds
    compile_tag: str = "eager: trainer.compile=false"  # which way it ran (training.compiling)
    images_seen: int = 0
    infer: Infer | None = None
    eval_batch_size: int = 1000

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Return the float32 logits of ``images`` as the run evaluates them."""
        return predict(self.model, images, self.eval_batch_size, self.placement.autocast_dtype,
                       self.placement.memory_format, self.infer)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor,
                 classes: Sequence[str]) -> Evaluation:
        """Score the run's model on a labelled set, with the run's evaluation hooks."""
        return evaluate(self.model, images, labels, classes, self.eval_batch_size,
                        self.placement.autocast_dtype, self.placement.memory_format, self.infer)

    @property
    def epochs_completed(self) -> int:
        """Epochs that ran to their end."""
        return len(self.history)

    @property
    def images_per_second(self) -> float:
        """Training throughput over the whole run."""
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process rather than return it to the kernel.

    By default glibc serves allocations above its mmap threshold with fresh pages and trims the
    heap after frees, so every step's activations page-fault in anew: measured on 2 cores, this
    costs SimpleCNN at batch 128 up to 35% of its images/s (BENCHMARKS.md). Raising both
    thresholds once makes the allocator reuse the memory. Returns whether it applied (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return bool(libc.mallopt(mmap_threshold, 32 << 20)) and bool(
            libc.mallopt(trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # musl or another libc: leave it as it is
        return False


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (model initialisation, dropout)."""
    torch.manual_seed(seed)


def train_in_group(recipe: Recipe, data: PreparedData, device: torch.device,
                   callbacks: Sequence[EpochCallback], progress: bool, description: str,
                   group: Group) -> TrainResult:
    """Train in this process: on one device, or as one of several ranks of ``group``.

    Args:
        recipe: The full description of the run.
        data: Splits on ``device``, normalised; ranks may get them on the CPU and move only
            their shard of the training set to ``device``.
        device: The device this process trains on (a rank's own one).
        callbacks: Called after each epoch with its metrics (on rank 0 only).
        progress: Show an epoch bar and a batch bar with images/s and ETA.
        description: Label of the progress bars.
        group: The ranks this process trains among; one rank alone is the plain loop.
    """
    if device.type == "cpu":
        # Ranks on one machine share its cores.
        torch.set_num_threads(max(1, len(usable_cores()) // group.size))
        keep_freed_memory()
    placement = Placement.for_recipe(recipe, device)
    seed_everything(recipe.seed)
    # Where the data lives on one device, on the rank's device with several: the same stream
    # of shuffles and draws as one device there.
    generator = torch.Generator(device=device if group.active else data.train_x.device)
    generator.manual_seed(recipe.seed)
    # With several ranks ``data`` may sit on the CPU: only this rank's shard of the training set
    # and its share of the validation set go to the device.
    take, validation = _training_rows(data, group, device)

    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size,
                        sample=data.train_x)
    model = model.to(device, memory_format=placement.memory_format)
    trainer = recipe.trainer
    if group.active and trainer.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    batches_per_epoch = math.ceil(len(data.train_y) / trainer.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / trainer.grad_accum)
    total_steps = steps_per_epoch * trainer.epochs
    hooks = build_hooks(recipe, HookContext(model, data.num_classes, generator,
                                            len(data.train_y), steps_per_epoch, total_steps))
    optimizer = build_optimizer(model, recipe.optimizer)
    # The schedule multiplies each group's peak lr, the one the optimizer was built with.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_schedule(recipe.schedule, total_steps, steps_per_epoch))
    loss_fn = hooks.wrap_loss(build_loss(recipe.loss))
    transform_batch = hooks.transform_batch
    last_lr = optimizer.param_groups[0]["lr"]
    forward = model
    if group.active:
        # DDP averages the gradients over the ranks; the loss below is scaled so that average
        # is the global batch's mean gradient even when the shares differ by a row.
        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                          else None)
    channels_last = placement.memory_format == torch.channels_last
    # A disabled torch.autocast still costs microseconds a step; fp32 runs skip it entirely.
    autocast = (functools.partial(torch.autocast, device.type, dtype=placement.autocast_dtype)
                if placement.autocast_dtype is not None else contextlib.nullcontext)
    decision = compiling.decide(trainer.compile, device, trainer.epochs * len(data.train_y),
                                distributed=group.active)
    if decision.compiled:
        compiling.use_cache_folder(Path(recipe.data.root).expanduser() / ".harness-cache"
                                   / "inductor")
    batch_shape = (min(trainer.batch_size, len(data.train_y)), *data.train_x.shape[1:])
    prepared = compiling.prepare_forward(model, decision, batch_shape, device=device,
                                         memory_format=placement.memory_format,
                                         autocast=autocast)
    if not group.active:
        forward = prepared.forward
    result = TrainResult(model=model, placement=placement, status="finished", infer=hooks.infer,
                         eval_batch_size=trainer.eval_batch_size,
                         compile_seconds=prepared.compile_seconds,
                         compile_tag=prepared.decision.tag)
    epoch_bar = tqdm(range(1, trainer.epochs + 1), desc=description, unit="epoch",
                     disable=not progress, leave=False, dynamic_ncols=True)
    step = 0
    model.train()
    for epoch in epoch_bar:
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        batch_bar = tqdm(total=len(data.train_y), desc=f"epoch {epoch}/{trainer.epochs}",
                         unit="img", unit_scale=True, disable=not progress, leave=False,
                         dynamic_ncols=True)
        started = time.perf_counter()
        watch = DivergenceWatch(device, _DIVERGENCE_CHECK_STEPS)
        batches = shuffled_rows(len(data.train_y), trainer.batch_size, generator,
                                generator.device)
        for index, rows in enumerate(batches):
            if len(rows) < 2 * group.size and index > 0:
                # Batch norm cannot train on one image (per rank): the odd ones out of this
                # epoch's shuffle are left for the next; gradients already accumulated still
                # take their step.
                if index % trainer.grad_accum:
                    step, last_lr = _optimizer_step(optimizer, scheduler, hooks, step)
                break
            images, labels = take(rows)
            if recipe.augment.ops:
                images = augment(images, recipe.augment, generator)
            targets = labels  # a batch hook may make them soft; accuracy counts the labels
            if transform_batch is not None:
                images, targets = transform_batch(images, labels, rows, epoch)
            if group.active:
                # Every rank put the same global batch together; each trains on its slice of it.
                start, stop = group.bounds(len(rows))
                images, targets = images[start:stop], targets[start:stop]
                labels = labels[start:stop]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = forward(images)
                loss = loss_fn(logits, targets)
            scale = trainer.grad_accum * (len(rows) / (len(labels) * group.size))
            (loss / scale if scale != 1 else loss).backward()
            if (index + 1) % trainer.grad_accum == 0 or index + 1 == batches_per_epoch:
                step, last_lr = _optimizer_step(optimizer, scheduler, hooks, step)
            loss_sum += loss.detach().float() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(labels)
            batch_bar.update(len(labels))
            if group.active:
                # Ranks must agree on when to stop, so they look together, synchronously.
                if index % _DIVERGENCE_CHECK_STEPS == 0 and group.any(
                        not torch.isfinite(loss_sum).item(), device):
                    break
            elif watch.diverged(index, loss_sum):
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        batch_bar.close()
        if group.active:
            totals = group.sum(torch.stack([loss_sum, correct.to(loss_sum), loss_sum.new_tensor(
                float(seen))]))
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
        result.train_seconds += elapsed
        result.images_seen += seen
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            result.status = "diverged"
            result.reason = (f"training loss became {train_loss} in epoch {epoch} after "
                             f"{seen} images (lr {recipe.optimizer.effective_lr:g})")
            break
        result.model = hooks.evaluation_model(model)
        metrics = _epoch_metrics(result, validation, group)
        metrics.update(
            epoch=float(epoch),
            train_loss=train_loss,
            train_acc=100.0 * correct.item() / max(seen, 1),
            lr=last_lr,
            images_per_sec=seen / elapsed if elapsed > 0 else 0.0,
            epoch_seconds=elapsed,
        )
        result.history.append(metrics)
        epoch_bar.set_postfix(_postfix(metrics))
        _run_callbacks(callbacks, epoch, metrics, group, device)
    epoch_bar.close()
    result.model = hooks.evaluation_model(model)
    return result


def _optimizer_step(optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, hooks: Hooks,
                    step: int) -> tuple[int, float]:
    """Take one optimizer step with the hooks around it, then move the lr to the next step's.

    Returns:
        The number of steps taken so far, and the lr this step took (of the first group).
    """
    if hooks.before_update is not None:
        hooks.before_update(optimizer)
    optimizer.step()
    if hooks.after_update is not None:
        hooks.after_update(step + 1)
    taken = optimizer.param_groups[0]["lr"]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if hooks.after_step is not None:
        hooks.after_step(step + 1)
    return step + 1, taken


def _run_callbacks(callbacks: Sequence[EpochCallback], epoch: int, metrics: dict[str, float],
                   group: Group, device: torch.device) -> None:
    """Run the callbacks on rank 0; a callback that raises stops every rank."""
    if not group.active:
        for callback in callbacks:
            callback(epoch, metrics)
        return
    stop: BaseException | None = None
    if group.leader:
        try:
            for callback in callbacks:
                callback(epoch, metrics)
        except Exception as error:  # noqa: BLE001 - re-raised below, once every rank knows
            stop = error
    if group.any(stop is not None, device):
        raise shared(stop if stop is not None else StoppedByLeader(f"epoch {epoch}"))


@dataclass(frozen=True)
class _Validation:
    """The validation images a rank scores, and every label.

    One device scores every image; each of several ranks scores its share.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def _training_rows(data: PreparedData, group: Group, device: torch.device) -> tuple[
        Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], _Validation]:
    """Return how a batch's rows become images and labels, and what validation scores."""
    if not group.active:
        def take(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return data.train_x.index_select(0, rows), data.train_y.index_select(0, rows)

        return take, _Validation(data.val_x, data.val_y, data.classes)
    shard = Shard.of(data.train_x, data.train_y, group, device)
    start, stop = group.bounds(len(data.val_y))
    return shard.batch, _Validation(data.val_x[start:stop].to(device), data.val_y.to(device),
                                    data.classes)


def _epoch_metrics(result: TrainResult, validation: _Validation,
                   group: Group) -> dict[str, Any]:
    if len(validation.labels) == 0:
        return {}
    if group.active:
        # Each rank scores its share of the validation set; the gathered logits are scored
        # whole, so the metrics are those of one device.
        logits = result.predict(validation.images)
        if len(validation.images) == 0:  # fewer images than ranks: this rank has none
            logits = logits.new_zeros((0, len(validation.classes)))
        logits = group.gather_rows(logits, len(validation.labels))
        scores = score(logits, validation.labels, validation.classes)
    else:
        scores = result.evaluate(validation.images, validation.labels, validation.classes)
    return {"val_loss": scores.loss, "val_acc": scores.accuracy}


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"loss": metrics["train_loss"], "val_acc": metrics.get("val_acc"),
             "img/s": metrics["images_per_sec"]}
    return {key: f"{value:.3g}" for key, value in shown.items() if value is not None}
