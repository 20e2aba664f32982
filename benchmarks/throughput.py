"""Training throughput, side by side: the harness loop eager and compiled, a bare loop, the seed's.

For each case (a model and a batch size) this prints training images/s for

  (a) ``harness.training.trainer.fit`` on a Recipe: val_size=0 (no per-epoch eval), constant lr, SGD
      lr 1e-3 momentum 0.9 (the seed's), no augmentation, no progress bars, eager
      (``trainer.compile=false``). Two epochs over ``--images`` images; the second (warm)
      epoch's ``images_per_sec`` is reported.
  (d) the same with ``trainer.compile=true``: ``torch.compile`` (harness.training.compiling). Its
      compile seconds are paid before the first step and reported apart (``compile s``: the
      first repeat's, cold in this process; later repeats reuse the compiled graph).
  (b) a minimal hand-written loop over the same preloaded tensors (``PreparedData.train_x``/
      ``train_y``), the same model (``build_model``, same seed), batch size, optimizer and loss:
      randperm, index_select, forward, cross-entropy, backward, SGD step. A warm-up, then one timed
      pass over the same number of images.
  (c) the seed's pipeline: ``ImageFolder(<data>/train)`` with ToTensor + Normalize(0.5) and a
      ``DataLoader(shuffle=True, num_workers=2)``, same model and batch size, and the seed's
      ``running_loss += loss.item()`` every step. The worker start-up (time to the first
      batch) is reported separately and NOT in the images/s; the warm-up batches come from the
      same iterator, then the same number of images is timed.

Each measurement also counts the process's minor page faults per image (``faults/img``): when
glibc hands freed activations back to the kernel, every step faults them in again, which costs
tens of per cent and depends on the allocator's history. ``--tune-malloc`` stops that for all
three columns, to show what the harness would gain from doing it itself.

Measurements are interleaved (a, b, c, d, then b, c, d, a, ...) because the machine is
shared and noisy; with ``--repeats R`` the median of each column is reported and the ratios are
of the medians, and a second table gives the best of the R (a disturbance only slows a run).
All three run with the same torch thread count and the same precision and memory layout (the
harness's ``Placement``: fp32 on the CPU; bf16 autocast and channels_last on CUDA).

    python benchmarks/throughput.py --quick
    python benchmarks/throughput.py --cases resnet18-w8-b128 --skip-seed
    python benchmarks/throughput.py --json throughput.json
    python benchmarks/throughput.py --tune-malloc
    python benchmarks/throughput.py --cases simplecnn-b128 --toggles ema=on,grad_clip=on

``--toggles`` applies trick options to (a) only, e.g. tricks that act through the loop's step
hooks (``harness.training.hooks``): (a)/(b) is then the cost of those hooks on top of the bare loop.
Without it, (a) runs the loop with its hook points present and no hook registered.
``--devices N`` trains (a) on N DDP ranks (``trainer.devices``; gloo ranks on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from harness.core.devices import resolve_device
from harness.core.errors import UserError
from harness.data import PreparedData, load_dataset, prepare_data
from harness.models import build_model
from harness.recipe import (
    AugmentSpec,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    Recipe,
    ScheduleSpec,
    TrainerSpec,
)
from harness.training.placement import Placement, device_name
from harness.training.trainer import fit
from harness.tricks import apply_toggles

# The seed's optimizer: plain SGD, no weight decay.
LR = 1e-3
MOMENTUM = 0.9
SEED = 0
# The seed's Normalize((0.5,)*3, (0.5,)*3), in [0, 1] pixel units; given to the harness too so
# all three paths feed the model the same values.
SEED_MEAN = (0.5, 0.5, 0.5)
SEED_STD = (0.5, 0.5, 0.5)
SEED_WORKERS = 2

# Default cases, with the images timed per measurement sized so one measurement of the slowest
# column takes seconds, not minutes, on 2 CPU cores (see /work/shared/MEASURED.md for the rates).
DEFAULT_CASES = ("simplecnn-b128", "simplecnn-b5", "resnet18-b256", "resnet18-w8-b128")
DEFAULT_IMAGES = {"simplecnn-b128": 12800, "simplecnn-b5": 5000, "resnet18-b256": 2560,
                  "resnet18-b128": 6400}
QUICK_IMAGES = {"simplecnn-b128": 2560, "simplecnn-b5": 1000, "resnet18-b256": 512,
                "resnet18-b128": 1280}
FALLBACK_IMAGES = 2560  # for a case not in the tables above

# glibc mallopt parameters (malloc.h) and the values --tune-malloc sets. By default glibc serves
# allocations above a (self-adjusting) threshold with mmap and trims freed memory at the top of
# the heap back to the kernel, so a training step whose activations are MiBs can fault every page
# of them in again, every step. 32 MiB is the largest mmap threshold glibc accepts on 64-bit; a
# 1 GiB trim threshold keeps a step's working set (a few hundred MiB for ResNet-18 w16 at batch
# 256) resident.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 << 20
_TRIM_THRESHOLD_BYTES = 1 << 30

# Acceptance targets from the issue, measured on 2 CPU cores: (case, ratio, minimum).
TARGETS = (
    ("simplecnn-b128", "a/b", 0.95),
    ("resnet18-w16-b256", "a/b", 0.95),
    ("simplecnn-b128", "a/c", 3.0),
    ("simplecnn-b5", "a/c", 3.0),
    ("resnet18-w8-b128", "d/b", 1.4),  # compiled harness against the bare eager loop
)


@dataclass(frozen=True)
class Case:
    """One model at one batch size, timed over ``images`` images per measurement."""

    arch: str
    width: int  # first-stage channels; SimpleCNN has fixed widths and ignores it
    batch_size: int
    images: int

    @property
    def name(self) -> str:
        """E.g. ``simplecnn-b128`` or ``resnet18-w16-b256``."""
        if self.arch == "simplecnn":
            return f"{self.arch}-b{self.batch_size}"
        return f"{self.arch}-w{self.width}-b{self.batch_size}"


@dataclass(frozen=True)
class Measurement:
    """One timed pass: its rate and what else the process did meanwhile."""

    images_per_sec: float
    # Minor page faults of this process per image in the timed images: memory the allocator
    # handed back to the kernel and faults in again. They cost wall time (zeroing 4 KiB pages)
    # and depend on the allocator's history, so they explain rates that differ between repeats.
    faults_per_image: float
    threads: int  # torch intra-op threads while timing
    startup_s: float = 0.0  # (c) only: from iter(loader) to the first batch, not in the rate
    compile_s: float = 0.0  # (d) only: compiling before the first step, not in the rate


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass
class CaseResult:
    """Per-repeat figures of one case, in images/s, and the worker start-up in seconds."""

    case: Case
    harness: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    seed: list[float] = field(default_factory=list)
    seed_startup_s: list[float] = field(default_factory=list)
    compiled: list[float] = field(default_factory=list)
    compile_s: list[float] = field(default_factory=list)
    threads: dict[str, list[int]] = field(
        default_factory=lambda: {"a": [], "b": [], "c": [], "d": []})
    faults_per_image: dict[str, list[float]] = field(
        default_factory=lambda: {"a": [], "b": [], "c": [], "d": []})
    loadavg_1min: list[float] = field(default_factory=list)  # before each repeat
    orders: list[str] = field(default_factory=list)  # the order a, b, c ran in, per repeat

    def add(self, column: str, measured: Measurement) -> None:
        """Record one measurement of column ``a``, ``b``, ``c`` or ``d``."""
        {"a": self.harness, "b": self.bare, "c": self.seed, "d": self.compiled}[column].append(
            measured.images_per_sec)
        self.threads[column].append(measured.threads)
        self.faults_per_image[column].append(measured.faults_per_image)
        if column == "c":
            self.seed_startup_s.append(measured.startup_s)
        if column == "d":
            self.compile_s.append(measured.compile_s)

    def medians(self) -> dict[str, float]:
        """Median images/s per column and the ratios of those medians."""
        return self._summary(statistics.median)

    def best(self) -> dict[str, float]:
        """Highest images/s per column and their ratios: a disturbance only ever slows a run
        down, so on a shared machine the best of R estimates the undisturbed rate."""
        return self._summary(max)

    def _summary(self, pick: Callable[[list[float]], float]) -> dict[str, float]:
        nan = float("nan")
        a, b, c, d = (pick(v) if v else nan
                      for v in (self.harness, self.bare, self.seed, self.compiled))
        return {"a": a, "b": b, "c": c, "d": d, "a/b": a / b, "a/c": a / c, "d/b": d / b,
                "d/a": d / a,
                "startup_s": statistics.median(self.seed_startup_s) if self.seed_startup_s
                else nan,
                "compile_s": self.compile_s[0] if self.compile_s else nan}


# --- the three measurements --------------------------------------------------------------------


def make_recipe(case: Case, spec: DataSpec, precision: str) -> Recipe:
    """The harness recipe for a case: the seed's optimizer, nothing that costs outside a step."""
    return Recipe(
        data=spec,
        model=ModelSpec(arch=case.arch, width=case.width),
        optimizer=OptimizerSpec(name="sgd", lr=LR, momentum=MOMENTUM, weight_decay=0.0),
        schedule=ScheduleSpec(name="constant"),
        augment=AugmentSpec(ops=()),
        trainer=TrainerSpec(epochs=2, batch_size=case.batch_size, precision=precision,
                            compile=False),
        seed=SEED,
    )


def measure_harness(recipe: Recipe, data: PreparedData, device: torch.device) -> Measurement:
    """(a) images/s of the second epoch of ``fit``; the first epoch is the warm-up."""
    faults: list[int] = []  # at the end of each epoch
    threads: list[int] = []
    # The callback runs right after an epoch's clock stops (with val_size=0 there is no eval),
    # so the difference of the two readings is the second epoch's faults.
    result = fit(recipe, data, device=device, progress=False,
                 callbacks=[lambda epoch, metrics: (faults.append(_minor_faults()),
                                                    threads.append(torch.get_num_threads()))])
    if result.status != "finished":
        raise RuntimeError(f"harness run {result.status}: {result.reason}")
    last = result.history[-1]
    images = last["images_per_sec"] * last["epoch_seconds"]
    return Measurement(last["images_per_sec"], (faults[-1] - faults[-2]) / images, threads[-1],
                       compile_s=result.compile_seconds)


def _autocast(placement: Placement) -> contextlib.AbstractContextManager:
    if placement.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.autocast_dtype)


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the clock would stop before the work does.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fresh_model(recipe: Recipe, num_classes: int, in_channels: int,
                 image_size: tuple[int, int], placement: Placement) -> nn.Module:
    # The same seed and builder as ``fit``, so all three paths train the identical network.
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, num_classes, in_channels, image_size)
    return model.to(placement.device, memory_format=placement.memory_format).train()


def measure_bare(recipe: Recipe, data: PreparedData, placement: Placement, images: int,
                 warmup_batches: int) -> Measurement:
    """(b) images/s of a minimal loop over the preloaded tensors, after ``warmup_batches``."""
    device = placement.device
    model = _fresh_model(recipe, data.num_classes, data.in_channels, data.image_size, placement)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data.train_x, data.train_y
    batch = recipe.trainer.batch_size
    count = x.shape[0]

    def step(index: torch.Tensor) -> None:
        # index_select, not x[index]: on the CPU the advanced-indexing gather measured about 5x
        # slower (225 vs 42 us per batch of 128 on 1 thread), and the bare loop should be the
        # fastest plain loop so that a/b measures the harness's own overhead.
        inputs = x.index_select(0, index)
        if placement.memory_format != torch.contiguous_format:
            inputs = inputs.contiguous(memory_format=placement.memory_format)
        with _autocast(placement):
            loss = loss_fn(model(inputs), y.index_select(0, index))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    order = torch.randperm(count, device=device)
    for i in range(warmup_batches):
        step(order[(i * batch) % count:][:batch])
    _sync(device)
    # One epoch over ``images`` images, the last batch possibly short, as the harness's epoch.
    faults = _minor_faults()
    started = time.perf_counter()
    order = torch.randperm(count, device=device)
    for start in range(0, images, batch):
        step(order[start : min(start + batch, images)])
    _sync(device)
    elapsed = time.perf_counter() - started
    return Measurement(images / elapsed, (_minor_faults() - faults) / images,
                       torch.get_num_threads())


def seed_loader(root: Path, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """The seed's pipeline over ``<root>/train``: decode and normalise per batch, in workers."""
    import torchvision
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(SEED_MEAN, SEED_STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                       num_workers=workers)


def measure_seed(recipe: Recipe, loader: torch.utils.data.DataLoader, placement: Placement,
                 images: int, warmup_batches: int) -> Measurement:
    """(c) images/s through the seed's DataLoader, and its worker start-up in seconds.

    The start-up (fork the workers, decode the first batch) is timed apart; the warm-up batches
    come from the same iterator, so the timed images are in the workers' steady state. Should an
    epoch end inside the timed images, the next epoch's iterator start is timed, as it costs the
    seed's loop too.
    """
    device = placement.device
    num_classes = len(loader.dataset.classes)
    image = loader.dataset[0][0]
    model = _fresh_model(recipe, num_classes, image.shape[0], tuple(image.shape[1:]), placement)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    running_loss = [0.0]

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
        # On CUDA the batch is copied to the device per step, as the seed's loop does.
        inputs = inputs.to(device, memory_format=placement.memory_format)
        labels = labels.to(device)
        with _autocast(placement):
            loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # The seed's loop reads the loss every step for its running average (a sync on CUDA).
        running_loss[0] += loss.item()

    started = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    startup = time.perf_counter() - started
    step(*first)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    for _ in range(warmup_batches - 1):
        step(*next_batch())
    _sync(device)
    faults = _minor_faults()  # of this process only; the workers' are their own
    started = time.perf_counter()
    seen = 0
    while seen < images:
        inputs, labels = next_batch()
        step(inputs, labels)
        seen += len(labels)
    _sync(device)
    elapsed = time.perf_counter() - started
    measured = Measurement(seen / elapsed, (_minor_faults() - faults) / seen,
                           torch.get_num_threads(), startup)
    del batches  # shuts the workers down now, not during the next measurement
    return measured


def tune_malloc() -> bool:
    """Keep freed memory in the process (glibc only); return whether glibc took the settings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success, 0 on a rejected value.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


# --- running the cases ---------------------------------------------------------------------------


def parse_case(text: str, width: int, images: int | None, quick: bool) -> Case:
    """Parse ``arch[-w<width>]-b<batch>``, e.g. ``simplecnn-b5`` or ``resnet18-w8-b64``."""
    arch, *parts = text.strip().split("-")
    batch = None
    for part in parts:
        if part[:1] in ("w", "b") and part[1:].isdigit():
            if part[0] == "w":
                width = int(part[1:])
            else:
                batch = int(part[1:])
        else:
            raise UserError(f"case '{text}': expected arch[-w<width>]-b<batch>, e.g. resnet18-b256")
    if batch is None or batch < 1 or width < 1:
        raise UserError(f"case '{text}' needs a positive batch size, e.g. {arch}-b128")
    key = f"{arch}-b{batch}"
    table = QUICK_IMAGES if quick else DEFAULT_IMAGES
    default = table.get(key, FALLBACK_IMAGES // (4 if quick else 1))
    return Case(arch, width, batch, images if images is not None else default)


def data_spec(root: Path, images: int) -> DataSpec:
    """The harness's data: ``images`` training images, no validation, the seed's normalisation."""
    # test_size is the smallest stratified subset: the benchmark never evaluates, and
    # normalising all 10,000 test images would only cost memory.
    common = dict(root=str(root), val_size=0, train_size=images, test_size=10,
                  mean=SEED_MEAN, std=SEED_STD)
    try:
        spec = DataSpec(name="cifar10", **common)
        load_dataset(spec)  # decodes or reads the cache; kept in memory for prepare_data
        return spec
    except UserError:
        # Not CIFAR-10's class folders: any other ImageFolder tree works as well for timing.
        return DataSpec(name="imagefolder", **common)


def run_case(case: Case, args: argparse.Namespace, device: torch.device,
             log: Callable[[str], None]) -> CaseResult:
    """Measure one case ``args.repeats`` times, interleaving a, b, c."""
    spec = data_spec(args.data, case.images)
    recipe = make_recipe(case, spec, args.precision)
    harness_recipe = apply_toggles(recipe, args.toggles)
    if args.devices > 1:
        harness_recipe = replace(harness_recipe,
                                 trainer=replace(harness_recipe.trainer, devices=args.devices))
    placement = Placement.for_recipe(recipe, device)
    data = prepare_data(spec, device)
    loader = seed_loader(args.data, case.batch_size, SEED_WORKERS)
    # A quarter of the timed images, at least 2 batches: past the first steps' one-off costs
    # (allocator growth, oneDNN/cuDNN primitive set-up) and, for (c), the workers' first batches.
    # (a) warms up for a whole epoch instead; its per-epoch figure is all fit reports.
    warmup = max(2, math.ceil(case.images / case.batch_size / 4))
    out = CaseResult(case)
    compiled_recipe = replace(harness_recipe,
                              trainer=replace(harness_recipe.trainer, compile=True))
    measure = {
        "a": lambda: measure_harness(harness_recipe, data, device),
        "b": lambda: measure_bare(recipe, data, placement, case.images, warmup),
        "c": lambda: measure_seed(recipe, loader, placement, case.images, warmup),
        "d": lambda: measure_harness(compiled_recipe, data, device),
    }
    columns = "ab" + ("" if args.skip_seed else "c") + ("" if args.skip_compiled else "d")
    for repeat in range(args.repeats):
        out.loadavg_1min.append(os.getloadavg()[0])
        # Rotate the order (abcd, bcda, ...) so no column always runs straight after the
        # DataLoader's workers exit, or always first after the data is prepared.
        shift = repeat % len(columns)
        order = columns[shift:] + columns[:shift]
        for column in order:
            # fit sets the thread count itself (every core on the CPU); the others get the same.
            torch.set_num_threads(args.threads)
            out.add(column, measure[column]())
            gc.collect()
        out.orders.append(order)
        rates = {"a": out.harness, "b": out.bare, "c": out.seed, "d": out.compiled}
        shown = "  ".join(f"{k} {rates[k][-1]:,.0f}" for k in columns)
        faults = "/".join(f"{out.faults_per_image[k][-1]:.0f}" for k in columns)
        extra = (f"; c start-up {out.seed_startup_s[-1]:.2f} s" if "c" in columns else "") + (
            f"; d compiled in {out.compile_s[-1]:.1f} s" if "d" in columns else "")
        log(f"  {case.name} repeat {repeat + 1}/{args.repeats} ({order}): {shown} img/s  "
            f"(page faults/img {'/'.join(columns)} {faults}{extra}; "
            f"load {out.loadavg_1min[-1]:.2f})")
    return out


def machine_info(device: torch.device, threads: int) -> dict[str, object]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "threads": threads,
        "device": device_name(device),
        "python": platform.python_version(),
    }
    return info


def print_table(results: list[CaseResult], repeats: int, best: bool = False) -> None:
    """One row per case: images/s of a-d (median, or best of the repeats), and the ratios."""
    header = (f"{'case':<20} {'images':>7} {'(a) harness':>12} {'(b) bare':>10} "
              f"{'(c) seed DL':>12} {'(d) compiled':>13} {'a/b':>6} {'a/c':>6} {'d/b':>6} "
              f"{'c start-up':>11} {'compile s':>10} {'faults/img a/b/c/d':>19}")
    if repeats > 1:
        header += f"  {'a/b per repeat':<16}"
    print(header)
    print("-" * len(header))
    for result in results:
        m = result.best() if best else result.medians()
        faults = "/".join(f"{statistics.median(v):.0f}" if v else "-"
                          for v in result.faults_per_image.values())
        row = (f"{result.case.name:<20} {result.case.images:>7} {m['a']:>12,.0f} {m['b']:>10,.0f} "
               f"{m['c']:>12,.0f} {m['d']:>13,.0f} {m['a/b']:>6.3f} {m['a/c']:>6.2f} "
               f"{m['d/b']:>6.3f} {m['startup_s']:>9.2f} s {m['compile_s']:>8.1f} s "
               f"{faults:>19}")
        if repeats > 1:
            ratios = [a / b for a, b in zip(result.harness, result.bare)]
            row += f"  {min(ratios):.3f}-{max(ratios):.3f}"
        print(row)


def check_targets(results: list[CaseResult], device: torch.device) -> list[dict[str, object]]:
    """The issue's acceptance targets for the cases that ran (they are stated for 2 CPU cores)."""
    by_name = {r.case.name: r.medians() for r in results}
    checks = []
    for name, ratio, minimum in TARGETS:
        if name in by_name:
            value = by_name[name][ratio]
            if math.isnan(value):  # its column was skipped
                continue
            checks.append({"case": name, "ratio": ratio, "value": value, "minimum": minimum,
                           "met": value >= minimum})
    if checks:
        note = "" if device.type == "cpu" else " (stated for 2 CPU cores; this is not one)"
        print(f"\nTargets{note}:")
        for c in checks:
            print(f"  {c['case']:<20} {c['ratio']} = {c['value']:.3f}  (>= {c['minimum']})  "
                  f"{'met' if c['met'] else 'NOT met'}")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Training images/s of the harness loop (a), a bare loop over the same "
                    "tensors (b), the seed's ImageFolder+DataLoader pipeline (c) and the compiled "
                    "harness loop (d), side by side.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer images and 1 repeat: the whole run in under a minute")
    parser.add_argument("--images", type=int, default=None,
                        help="images timed per measurement, for every case (default: per case, "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items()) + ")")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated arch[-w<width>]-b<batch> (default: %(default)s)")
    parser.add_argument("--width", type=int, default=16,
                        help="ResNet first-stage channels where a case names none (default 16)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved a,b,c repeats; medians are reported (default 5, "
                             "--quick 1)")
    parser.add_argument("--data", type=Path, default=Path("./data"),
                        help="data root holding train/<class>/*.jpg (default ./data)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the harness's trainer.precision; (b) and (c) follow it "
                             "(auto: fp32 on the CPU, bf16 on CUDA)")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="set glibc's mmap and trim thresholds first (for all three columns), "
                             "so freed activations are reused instead of faulted in again")
    parser.add_argument("--toggles", default="",
                        help="comma-separated TRICK=OPTION applied to (a) only, e.g. ema=on: "
                             "the cost of those tricks' step hooks (default: none)")
    parser.add_argument("--devices", type=int, default=1,
                        help="train (a) on this many DDP ranks (gloo on the CPU): its images/s "
                             "is the global rate; its page faults are the launcher's only")
    parser.add_argument("--skip-seed", action="store_true",
                        help="leave out (c), the seed's DataLoader pipeline")
    parser.add_argument("--skip-compiled", action="store_true",
                        help="leave out (d), the compiled harness (its first compile takes "
                             "30-65 s a case on 2 cores)")
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    args = parser.parse_args(argv)
    items = [item.strip() for item in args.toggles.split(",") if item.strip()]
    if any("=" not in item for item in items):
        parser.error(f"--toggles needs TRICK=OPTION items, got {args.toggles!r}")
    args.toggles = dict(item.split("=", 1) for item in items)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1 or (args.images is not None and args.images < 1):
        parser.error("--repeats and --images must be positive")
    if not (args.data / "train").is_dir():
        parser.error(f"no {args.data / 'train'}: the seed's pipeline (c) needs the JPEG "
                     f"ImageFolder tree; run `make data`")

    try:
        cases = [parse_case(text, args.width, args.images, args.quick)
                 for text in args.cases.split(",") if text.strip()]
    except UserError as error:
        parser.error(str(error))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = resolve_device(args.device)
    # fit uses every core on the CPU (training.loop), so (b) and (c) are given the same count.
    args.threads = (os.cpu_count() or 1) if device.type == "cpu" else torch.get_num_threads()
    torch.set_num_threads(args.threads)
    info = machine_info(device, args.threads)
    if args.tune_malloc:
        info["malloc"] = "tuned" if tune_malloc() else "tuning not available (not glibc)"
    else:
        info["malloc"] = "default"
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        started = time.perf_counter()
        results = [run_case(case, args, device, log) for case in cases]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started

    print(f"\nTraining images/s, median of {args.repeats} interleaved repeat(s); ratios of the "
          f"medians; (c) excludes its worker start-up, shown apart.")
    print_table(results, args.repeats)
    if args.repeats > 1:
        print(f"\nThe same, best of the {args.repeats} repeats per column (a disturbance only "
              f"slows a run, so this is the closer estimate of the undisturbed rates):")
        print_table(results, args.repeats, best=True)
    checks = check_targets(results, device)
    print(f"\n{seconds:.0f} s in all; 1-min load average before the repeats: "
          + ", ".join(f"{r.case.name} {statistics.median(r.loadavg_1min):.2f}" for r in results))

    for result in results:
        used = {key: sorted(set(values)) for key, values in result.threads.items() if values}
        if len({tuple(v) for v in used.values()}) != 1:
            print(f"warning: {result.case.name} ran with differing thread counts {used}",
                  file=sys.stderr)

    if args.json is not None:
        payload = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "seconds": seconds,
            "cases": [{"name": r.case.name, **asdict(r), "medians": r.medians(),
                       "best": r.best()} for r in results],
            "targets": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
