"""The loop's fast paths on CUDA, and their logic on the CPU: no host sync, fused kernels."""

import pytest
import torch

from harness.training.divergence import DivergenceWatch


def test_cpu_watch_looks_every_n_steps():
    watch = DivergenceWatch(torch.device("cpu"), every=5)
    assert not watch.diverged(0, torch.tensor(1.0))
    assert not watch.diverged(3, torch.tensor(float("nan")))  # not a step it looks at
    assert watch.diverged(5, torch.tensor(float("nan")))
    assert watch.diverged(10, torch.tensor(float("inf")))
    assert not watch.diverged(15, torch.tensor(2.0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_watch_sees_a_nan_a_look_later_without_syncing():
    watch = DivergenceWatch(torch.device("cuda"), every=1)
    loss = torch.tensor(float("nan"), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = watch.diverged(0, loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert not first  # its copy was only just enqueued
    assert watch.diverged(1, loss)


def test_no_fused_optimizer_kernels_off_cuda():
    from harness.training.optimizers import fused_on_cuda

    cpu = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    assert fused_on_cuda(cpu) == {}
    assert fused_on_cuda([]) == {}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_optimizer_kernels_when_every_parameter_is_on_cuda():
    from harness.training.optimizers import fused_on_cuda

    cpu = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    gpu = [{"params": [torch.nn.Parameter(torch.zeros(2, device="cuda"))]}]
    assert fused_on_cuda(gpu) == {"fused": True}
    assert fused_on_cuda(cpu + gpu) == {}
