"""The one training loop. Every trick and every study trains through ``fit``.

The data already sits on the device, normalised (``harness.data.prepare_data``), so a step is an
index, an optional batched augmentation, a forward and a backward: no DataLoader, no PIL. On CUDA
the loop uses bf16 autocast and channels_last; on the CPU it uses every core and is deterministic.
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
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.data import PreparedData, augment, iterate_batches
from harness.evaluate import evaluate
from harness.losses import build_loss
from harness.models import build_model
from harness.optimizers import build_optimizer
from harness.recipe import Recipe
from harness.schedules import build_schedule

# Called after every epoch with (epoch number from 1, that epoch's metrics). A callback may raise
# to stop the run, e.g. optuna.TrialPruned; the exception reaches the caller of ``fit``.
EpochCallback = Callable[[int, dict[str, float]], None]

# How often the loop looks at the loss for NaN/inf, in steps. Each look is a device sync on CUDA,
# so not every step; a NaN stays NaN in the running sum, so none is missed.
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
    """Return a human name for ``device``, e.g. ``cuda:NVIDIA H100`` or ``cpu:2 cores``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{os.cpu_count()} cores"
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
    """What ``fit`` returns: the model and how the run went."""

    model: nn.Module
    placement: Placement
    status: str  # "finished" | "diverged"
    reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # time in training steps, without the per-epoch val evaluation
    images_seen: int = 0

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
        data: Splits already on ``device``, normalised.
        device: A torch device or ``auto``.
        callbacks: Called after each epoch with its metrics.
        progress: Show an epoch bar and a batch bar with images/s and ETA.
        description: Label of the progress bars.

    Returns:
        The trained model and the run's status and per-epoch history. A loss that turns NaN or
        inf ends the run with status ``diverged``; it does not raise.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type == "cpu":
        torch.set_num_threads(usable_cores())
        keep_freed_memory()
    placement = Placement.for_recipe(recipe, device)
    seed_everything(recipe.seed)
    generator = torch.Generator(device=data.train_x.device).manual_seed(recipe.seed)

    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size)
    model = model.to(device, memory_format=placement.memory_format)
    optimizer = build_optimizer(model, recipe.optimizer)
    loss_fn = build_loss(recipe.loss)
    trainer = recipe.trainer
    batches_per_epoch = math.ceil(len(data.train_y) / trainer.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / trainer.grad_accum)
    schedule = build_schedule(recipe.schedule, steps_per_epoch * trainer.epochs, steps_per_epoch)
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    forward = model
    if trainer.compile and device.type == "cuda":
        forward = torch.compile(model)

    channels_last = placement.memory_format == torch.channels_last
    # A disabled torch.autocast still costs microseconds a step; fp32 runs skip it entirely.
    autocast = (functools.partial(torch.autocast, device.type, dtype=placement.autocast_dtype)
                if placement.autocast_dtype is not None else contextlib.nullcontext)
    result = TrainResult(model=model, placement=placement, status="finished")
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
        batches = iterate_batches(data.train_x, data.train_y, trainer.batch_size, shuffle=True,
                                  generator=generator)
        for index, (images, labels) in enumerate(batches):
            if len(labels) == 1 and index > 0:
                # Batch norm cannot train on one image: the odd one out of this epoch's shuffle
                # is left for the next; gradients already accumulated still take their step.
                if index % trainer.grad_accum:
                    step = _optimizer_step(optimizer, schedule, peak_lrs, step)
                break
            if recipe.augment.ops:
                images = augment(images, recipe.augment, generator)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = forward(images)
                loss = loss_fn(logits, labels)
            (loss / trainer.grad_accum if trainer.grad_accum > 1 else loss).backward()
            if (index + 1) % trainer.grad_accum == 0 or index + 1 == batches_per_epoch:
                step = _optimizer_step(optimizer, schedule, peak_lrs, step)
            loss_sum += loss.detach().float() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += len(labels)
            batch_bar.update(len(labels))
            if index % _DIVERGENCE_CHECK_STEPS == 0 and not torch.isfinite(loss_sum).item():
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        batch_bar.close()
        result.train_seconds += elapsed
        result.images_seen += seen
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            result.status = "diverged"
            result.reason = (f"training loss became {train_loss} in epoch {epoch} after "
                             f"{seen} images (lr {recipe.optimizer.effective_lr:g})")
            break
        metrics = _epoch_metrics(model, data, placement, trainer.eval_batch_size)
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
        for callback in callbacks:
            callback(epoch, metrics)
    epoch_bar.close()
    return result


def _optimizer_step(optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                    peak_lrs: list[float], step: int) -> int:
    """Set the scheduled lr, step, clear the gradients; return the next step number."""
    multiplier = schedule(step)
    for group, peak in zip(optimizer.param_groups, peak_lrs):
        group["lr"] = peak * multiplier
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step + 1


def _epoch_metrics(model: nn.Module, data: PreparedData, placement: Placement,
                   batch_size: int) -> dict[str, Any]:
    if len(data.val_y) == 0:
        return {}
    scores = evaluate(model, data.val_x, data.val_y, data.classes, batch_size,
                      placement.autocast_dtype, placement.memory_format)
    return {"val_loss": scores.loss, "val_acc": scores.accuracy}


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    shown = {"loss": metrics["train_loss"], "val_acc": metrics.get("val_acc"),
             "img/s": metrics["images_per_sec"]}
    return {key: f"{value:.3g}" for key, value in shown.items() if value is not None}
