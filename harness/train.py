"""The one training loop. Every trick and every study trains through ``fit``.

The data already sits on the device, normalised (``harness.data.prepare_data``), so a step is an
index, an optional batched augmentation, a forward and a backward: no DataLoader, no PIL. On CUDA
the loop uses bf16 autocast and channels_last; on the CPU it uses every core and is deterministic.
``trainer.compile`` trains through ``torch.compile`` where it pays (``harness.compiling``).
Tricks that act inside a step do so through the recipe's hooks (``harness.hooks``); a stage no
hook uses is skipped at no cost. ``trainer.devices=N`` trains one run on N devices with DDP
(``harness.distributed``); with one device none of that code runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
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

from harness import compiling, distributed
from harness.data import PreparedData, augment, shuffled_rows
from harness.distributed import Group
from harness.divergence import DivergenceWatch
from harness.evaluate import Evaluation, Infer, evaluate, predict, score
from harness.hooks import HookContext, build_hooks, evaluation_infer
from harness.losses import build_loss
from harness.models import build_model
from harness.optimizers import build_optimizer
from harness.recipe import Recipe
from harness.schedules import build_schedule

# Called after every epoch with (epoch number from 1, that epoch's metrics). A callback may raise
# to stop the run, e.g. optuna.TrialPruned; the exception reaches the caller of ``fit``.
EpochCallback = Callable[[int, dict[str, float]], None]

# How often the loop looks at the loss for NaN/inf, in steps; a NaN stays NaN in the running sum,
# so none is missed. On one CUDA device a look does not wait for the GPU (harness.divergence).
_DIVERGENCE_CHECK_STEPS = 25


def resolve_device(name: str = "auto") -> torch.device:
    """Return the device for ``name``: ``auto`` picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """Return a human name for ``device``, e.g. ``cuda:NVIDIA H100`` or ``cpu:2 cores``.

    On the CPU it counts the cores this process may use, which is the thread count ``fit``
    trains with: a worker of ``workers=2`` on 2 cores is ``cpu:1 core``. The count belongs to
    the result: another thread count sums in another order, and CPU runs are reproducible bit
    for bit only at the same one.
    """
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        cores = usable_cores()
        return f"cpu:{cores} core{'' if cores == 1 else 's'}"
    return device.type


@dataclass(frozen=True)
class Placement:
    """How tensors and the model sit on the device: precision and memory layout."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    memory_format: torch.memory_format

    @classmethod
    def for_recipe(cls, recipe: Recipe, device: torch.device) -> Placement:
        """bf16 autocast and channels_last on CUDA under ``precision=auto``; fp32 elsewhere."""
        precision = recipe.trainer.precision
        use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        channels_last = device.type == "cuda"
        return cls(device, torch.bfloat16 if use_bf16 else None,
                   torch.channels_last if channels_last else torch.contiguous_format)


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
    compile_tag: str = "eager: trainer.compile=false"  # which way it ran (harness.compiling)
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


def usable_cores() -> int:
    """Return the cores this process may run on (affinity and cgroup masks included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


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


def fit(recipe: Recipe, data: PreparedData, *, device: torch.device | str = "auto",
        callbacks: Sequence[EpochCallback] = (), progress: bool = True,
        description: str = "train") -> TrainResult:
    """Train the model a recipe describes on prepared data.

    Args:
        recipe: The full description of the run.
        data: Splits already on ``device``, normalised. Ranks of a run on several devices may
            get it on the CPU: each moves only its shard of the training set to its device.
        device: A torch device or ``auto``.
        callbacks: Called after each epoch with its metrics.
        progress: Show an epoch bar and a batch bar with images/s and ETA.
        description: Label of the progress bars.

    Returns:
        The trained model and the run's status and per-epoch history. A loss that turns NaN or
        inf ends the run with status ``diverged``; it does not raise. With
        ``trainer.devices=N`` the ranks train and this process runs the callbacks; the result
        is the same as on one device, its model on ``device``.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    group = distributed.current_group()
    if recipe.trainer.devices > 1 or group.active:
        distributed.check_devices(recipe.trainer, device, group)
    if recipe.trainer.devices > 1 and not group.active:
        return _fit_on_devices(recipe, data, device, callbacks, progress, description)
    if group.active:
        device = distributed.rank_device(device, group)
    if distributed.joined_torchrun():
        # Under torchrun rank 0 runs the study and the others train what it announces; a
        # failure only some ranks see would leave the others waiting, so it ends the job.
        if group.leader:
            distributed.announce(recipe, data.digest)
        with distributed.fatal_unless_shared():
            return _fit_here(recipe, data, device, callbacks, progress, description, group)
    return _fit_here(recipe, data, device, callbacks, progress, description, group)


def _fit_here(recipe: Recipe, data: PreparedData, device: torch.device,
              callbacks: Sequence[EpochCallback], progress: bool, description: str,
              group: Group) -> TrainResult:
    """Train in this process: on one device, or as one of several ranks."""
    if device.type == "cpu":
        # Ranks on one machine share its cores.
        torch.set_num_threads(max(1, usable_cores() // group.size))
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
    optimizer = hooks.wrap_optimizer(build_optimizer(model, recipe.optimizer))
    loss_fn = hooks.wrap_loss(build_loss(recipe.loss))
    transform_batch, after_step = hooks.transform_batch, hooks.after_step
    schedule = build_schedule(recipe.schedule, total_steps, steps_per_epoch)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
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
                    step = _optimizer_step(optimizer, schedule, peak_lrs, step, after_step)
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
                step = _optimizer_step(optimizer, schedule, peak_lrs, step, after_step)
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
            lr=optimizer.param_groups[0]["lr"],
            images_per_sec=seen / elapsed if elapsed > 0 else 0.0,
            epoch_seconds=elapsed,
        )
        result.history.append(metrics)
        epoch_bar.set_postfix(_postfix(metrics))
        _run_callbacks(callbacks, epoch, metrics, group, device)
    epoch_bar.close()
    result.model = hooks.evaluation_model(model)
    return result


def _optimizer_step(optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                    peak_lrs: list[float], step: int,
                    after_step: Callable[[int], None] | None) -> int:
    """Set the scheduled lr, step, clear the gradients, run the after-step hooks.

    Returns:
        The number of steps taken so far.
    """
    multiplier = schedule(step)
    for group, peak in zip(optimizer.param_groups, peak_lrs):
        group["lr"] = peak * multiplier
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if after_step is not None:
        after_step(step + 1)
    return step + 1


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
        raise distributed.shared(stop if stop is not None
                                 else distributed.StoppedByLeader(f"epoch {epoch}"))


def _fit_on_devices(recipe: Recipe, data: PreparedData, device: torch.device,
                    callbacks: Sequence[EpochCallback], progress: bool,
                    description: str) -> TrainResult:
    """Train on ``trainer.devices`` ranks and rebuild their result here, on ``device``."""
    finished, stopped = distributed.fit_on_devices(fit, recipe, data, device, callbacks,
                                                   progress, description)
    if stopped is not None:
        raise stopped
    placement = Placement.for_recipe(recipe, device)
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size)
    model.load_state_dict(distributed.load_state(finished))
    model = model.to(device, memory_format=placement.memory_format)
    return TrainResult(model=model, placement=placement, status=finished.status,
                       reason=finished.reason, history=finished.history,
                       train_seconds=finished.train_seconds, images_seen=finished.images_seen,
                       infer=evaluation_infer(recipe, model, data.num_classes),
                       eval_batch_size=recipe.trainer.eval_batch_size,
                       compile_tag=compiling.decide(recipe.trainer.compile, device, 0,
                                                    distributed=True).tag)


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
    shard = distributed.Shard.of(data.train_x, data.train_y, group, device)
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
