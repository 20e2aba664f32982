"""``trainer.compile``: train through ``torch.compile`` where it pays, eager where it does not.

``auto`` compiles on CUDA and on the CPU when the run trains enough images for the faster steps
to repay the compilation; ``true`` always tries; ``false`` (the default) never does. The default
stays eager because on 2 CPU cores the compiled loop measured 1.24-1.29x a ResNet's eager rate
and 0.62x SimpleCNN's (BENCHMARKS.md), which a cold compile per architecture mostly eats.

Compilation is paid before the first timed step, by one forward and backward pass on zeros of
the training batch's shape (:func:`prepare_forward`), so a run's ``train_seconds`` stays
comparable with an eager run's and the compile seconds are logged apart. That pass leaves the
model as it was: its weights, batch-norm statistics, gradients and the global random state are
restored.

The compiled artifacts are reused three ways, so a study pays for each distinct graph about
once: within a process, dynamo keeps one entry per graph (modules are inlined, so a new model of
the same architecture hits the entry of the last); across processes and studies, Inductor's FX
graph cache and AOTAutograd's cache live in one folder (:func:`use_cache_folder`, beside the
data cache). A batch of another size (an epoch's last, smaller batch) runs eager through the
same module rather than compiling a second graph.

Where compiling fails (no C++ compiler, an unsupported op, a platform Inductor cannot build
for), the run trains eager, says so once per process and reason, and records which way it ran.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Below this many training images (epochs × training rows) ``auto`` stays eager on the CPU: a
# cold compile of a CIFAR ResNet takes 30-65 s on 2 cores, and a compiled step saves about 40%
# (BENCHMARKS.md), so a run must train for a minute or so before compiling repays itself.
AUTO_MIN_IMAGES = 50_000
# Distinct graphs one process keeps compiled before dynamo falls back to eager (its default, 8,
# is less than a study's architectures × precisions may need).
_GRAPHS_PER_PROCESS = 64

_said: set[str] = set()


@dataclass(frozen=True)
class CompileDecision:
    """Whether a run trains compiled, and why; ``reason`` is what the run's tag records."""

    compiled: bool
    reason: str

    @property
    def tag(self) -> str:
        """The run's ``harness.compile`` tag: ``compiled`` or ``eager: WHY``."""
        return "compiled" if self.compiled else f"eager: {self.reason}"


def decide(setting: bool | str, device: torch.device, images: int, *,
           distributed: bool = False) -> CompileDecision:
    """Decide whether a run should try ``torch.compile``.

    Args:
        setting: ``trainer.compile``: True, False or ``"auto"``.
        device: The device the run trains on.
        images: The images the run trains on in all (epochs × training rows).
        distributed: The run trains on several ranks with DDP, which stays eager.
    """
    if setting is False:
        return CompileDecision(False, "trainer.compile=false")
    if distributed:
        return CompileDecision(False, "DDP ranks train eager")
    if setting is True:
        return CompileDecision(True, "trainer.compile=true")
    if device.type not in ("cuda", "cpu"):
        return CompileDecision(False, f"auto compiles on cuda and cpu, not {device.type}")
    if device.type == "cpu" and images < AUTO_MIN_IMAGES:
        return CompileDecision(False, f"auto: {images:,} training images is too few to repay "
                                      f"compiling on the CPU (from {AUTO_MIN_IMAGES:,})")
    return CompileDecision(True, "auto")


def use_cache_folder(folder: Path) -> None:
    """Keep Inductor's compiled artifacts in ``folder``, unless the user chose a folder already.

    Every worker of a study reads the same folder, so the second process to compile a graph
    finds it compiled. A folder that cannot be created leaves torch's default (in /tmp).
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


@dataclass
class PreparedForward:
    """The callable a run's steps go through, and what compiling it cost."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    decision: CompileDecision
    compile_seconds: float = 0.0


def prepare_forward(model: nn.Module, decision: CompileDecision, sample_shape: tuple[int, ...],
                    *, device: torch.device, memory_format: torch.memory_format,
                    autocast: Callable[[], contextlib.AbstractContextManager]) -> PreparedForward:
    """Compile ``model`` for batches of ``sample_shape``, or return it eager with the reason.

    Compiling happens here, in one forward and backward pass on zeros, timed as
    ``compile_seconds``; the model is restored afterwards. Any failure falls back to eager.
    """
    if not decision.compiled:
        return PreparedForward(model, decision)
    _allow_many_graphs()
    # Inductor's C++ builder warns on every CPU-only machine that it found no CUDA runtime.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(model, dynamic=False)
    saved = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    started = time.perf_counter()
    try:
        zeros = torch.zeros(sample_shape, device=device).contiguous(memory_format=memory_format)
        with autocast():
            logits = compiled(zeros)
        logits.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - any compiler failure means: train eager
        fallback = CompileDecision(False, f"compiling failed ({_first_line(error)})")
        say_once(f"trainer.compile: {fallback.reason}; training eager")
        return PreparedForward(model, fallback)
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
    seconds = time.perf_counter() - started
    full = sample_shape[0]

    def forward(images: torch.Tensor) -> torch.Tensor:
        # Only the batch size the graph was compiled for goes through it; an epoch's last,
        # smaller batch runs eager through the same module (same weights) instead of compiling
        # a second graph.
        return compiled(images) if images.shape[0] == full else model(images)

    return PreparedForward(forward, decision, seconds)


def say_once(line: str) -> None:
    """Print ``line`` the first time this process meets it."""
    if line not in _said:
        _said.add(line)
        print(line, flush=True)


def _allow_many_graphs() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), _GRAPHS_PER_PROCESS))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__
