"""Which ``torch.compile`` options pay for a CIFAR ResNet's training step on this CPU.

Trains the harness's ResNet-18 (``--width``, default 8) on one fixed random batch
(``--batch``, default 128): forward, cross-entropy, backward, an SGD step (lr 1e-3, momentum
0.9), with glibc told to keep freed memory (``keep_freed_memory``, as the harness does). The
variants, built one after another in one process, are then timed interleaved (in order, then in
reverse, ...) over ``--repeats`` rounds of 40 steps, and each one's median images/s and its ratio
to eager are printed:

  eager       the model as it is;
  compile     ``torch.compile(model)``: what ``trainer.compile=true`` does;
  cppwrap     the same with Inductor's ``cpp_wrapper`` (C++ instead of Python between kernels);
  autotune    the same with ``max_autotune`` (Inductor benchmarks its GEMM/conv templates);
  wholestep   forward, loss and backward compiled as one function, and the optimizer step too;
  clcompile   channels_last and ``torch.compile``.

    python benchmarks/compile_options.py --variants eager,compile,autotune,wholestep
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from harness.models import build_model
from harness.recipe import ModelSpec
from harness.training.loop import keep_freed_memory

VARIANTS = ("eager", "compile", "cppwrap", "autotune", "wholestep", "clcompile")
STEPS = 40


def build_step(name: str, width: int, batch: int) -> Callable[[], None]:
    """Return one training step of the variant ``name``, compiled (by two calls) if it compiles."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    torch.manual_seed(0)
    memory_format = torch.channels_last if name == "clcompile" else torch.contiguous_format
    model = build_model(ModelSpec(arch="resnet18", width=width), 10).train()
    model = model.to(memory_format=memory_format)
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    # Read when a graph is compiled, i.e. at this variant's first steps below.
    inductor.cpp_wrapper = name == "cppwrap"
    inductor.max_autotune = name == "autotune"
    forward = model if name == "eager" else torch.compile(model, dynamic=False)

    def backward() -> None:
        loss_fn(model(images) if name == "wholestep" else forward(images), labels).backward()

    run_backward = torch.compile(backward, dynamic=False) if name == "wholestep" else backward
    run_optimizer = torch.compile(optimizer.step) if name == "wholestep" else optimizer.step

    def step() -> None:
        run_backward()
        run_optimizer()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="eager,compile,autotune,wholestep")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or "eager" not in names:
        parser.error(f"variants are {', '.join(VARIANTS)}, eager among them; got {args.variants}")
    keep_freed_memory()
    steps = {}
    for name in names:
        started = time.perf_counter()
        steps[name] = build_step(name, args.width, args.batch)
        print(f"{name}: built and compiled in {time.perf_counter() - started:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            for _ in range(3):  # warm the allocator and caches after the other variants
                steps[name]()
            started = time.perf_counter()
            for _ in range(STEPS):
                steps[name]()
            rates[name].append(STEPS * args.batch / (time.perf_counter() - started))
    eager = statistics.median(rates["eager"])
    print(f"ResNet-18 w{args.width} b{args.batch}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; img/s, median of {args.repeats}")
    for name in names:
        median = statistics.median(rates[name])
        print(f"{name:10s} {median:8.0f}  x{median / eager:.2f}  "
              f"{[round(rate) for rate in rates[name]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
