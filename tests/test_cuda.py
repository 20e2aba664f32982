"""The CUDA paths of the loop, for the first machine with a GPU: `pytest -m cuda`.

Skipped without a GPU. benchmarks/gpu_check.sh runs them in its first step; the same logic is
covered on the CPU by test_train.py, so these check what only a GPU has: bf16 autocast,
channels_last, torch.compile, device-resident shuffles and host syncs.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from harness.data import prepare_data
from harness.recipe import DataSpec, ModelSpec, OptimizerSpec, Recipe, ScheduleSpec, TrainerSpec
from harness.tracking.checkpoint import load_checkpoint, save_checkpoint
from harness.training.evaluate import evaluate
from harness.training.placement import Placement
from harness.training.trainer import fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def gpu_data(learnable_folder):
    return prepare_data(DataSpec(name="imagefolder", root=str(learnable_folder), val_size=30),
                        "cuda")


def recipe(**trainer) -> Recipe:
    """SimpleCNN (no batch norm) in fp32 unless ``trainer`` says otherwise."""
    settings = dict(epochs=1, batch_size=16, precision="fp32") | trainer
    return Recipe(model=ModelSpec(arch="simplecnn"), optimizer=OptimizerSpec(lr=0.01),
                  schedule=ScheduleSpec(name="constant"), trainer=TrainerSpec(**settings))


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.parameters()])


def test_auto_precision_is_bf16_autocast_and_channels_last(gpu_data):
    run = dataclasses.replace(recipe(precision="auto"), model=ModelSpec(arch="resnet18", width=8))
    placement = Placement.for_recipe(run, torch.device("cuda"))
    assert placement.autocast_dtype is torch.bfloat16
    assert placement.memory_format is torch.channels_last
    result = fit(run, gpu_data, device="cuda", progress=False)
    assert result.status == "finished"
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert result.model(gpu_data.val_x[:4]).dtype is torch.bfloat16
    assert result.predict(gpu_data.val_x[:4]).dtype is torch.float32


def test_compile_on_and_off_give_the_same_losses(gpu_data):
    plain = fit(recipe(epochs=2), gpu_data, device="cuda", progress=False)
    compiled = fit(recipe(epochs=2, compile=True), gpu_data, device="cuda", progress=False)
    for a, b in zip(plain.history, compiled.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3, abs=1e-4)


def test_grad_accumulation_equals_the_large_batch(gpu_data):
    # No batch norm, fp32, and 80 images (whole batches only): two half batches accumulated
    # are one full batch's mean gradient.
    data = _first(gpu_data, 80)
    whole = fit(recipe(batch_size=16), data, device="cuda", progress=False)
    halves = fit(recipe(batch_size=8, grad_accum=2), data, device="cuda", progress=False)
    assert torch.allclose(weights(whole.model), weights(halves.model), atol=1e-4)


def test_checkpoint_round_trip_from_the_gpu(gpu_data, tmp_path):
    run = recipe()
    result = fit(run, gpu_data, device="cuda", progress=False)
    path = save_checkpoint(tmp_path / "model.pt", result.model, run, gpu_data.classes,
                           gpu_data.in_channels, gpu_data.image_size, gpu_data.mean,
                           gpu_data.std, "digest")
    loaded = load_checkpoint(path, "cuda")
    assert torch.equal(weights(loaded.model), weights(result.model))
    torch.testing.assert_close(loaded.model.eval()(gpu_data.val_x),
                               result.model.eval()(gpu_data.val_x))


def test_evaluation_equals_on_gpu_and_cpu(gpu_data):
    result = fit(recipe(), gpu_data, device="cuda", progress=False)
    on_gpu = evaluate(result.model, gpu_data.val_x, gpu_data.val_y, gpu_data.classes)
    model = result.model.cpu()
    on_cpu = evaluate(model, gpu_data.val_x.cpu(), gpu_data.val_y.cpu(), gpu_data.classes)
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=1e-3)
    # An argmax may flip on a near tie between fp32 kernels; more than one would be a bug.
    assert abs(on_gpu.accuracy - on_cpu.accuracy) <= 100.0 / len(gpu_data.val_y) + 1e-9


def test_divergence_is_caught_on_the_gpu(gpu_data):
    run = dataclasses.replace(recipe(epochs=3), optimizer=OptimizerSpec(lr=1e12))
    result = fit(run, gpu_data, device="cuda", progress=False)
    assert result.status == "diverged"
    assert result.epochs_completed < 3


def _first(data, images: int):
    """The data with only its first ``images`` training images."""
    return dataclasses.replace(data, train_x=data.train_x[:images], train_y=data.train_y[:images])


def _implicit_syncs(data, images: int) -> int:
    """Count the host syncs torch flags during one epoch over ``images`` training images."""
    subset = _first(data, images)
    run = recipe(batch_size=2)
    fit(run, subset, device="cuda", progress=False)  # warm-up: allocator, kernels, cuBLAS
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(run, subset, device="cuda", progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_host_sync_per_step(gpu_data):
    # An epoch of 20 steps and one of 44 may differ in their syncs only if steps sync.
    assert _implicit_syncs(gpu_data, 40) == _implicit_syncs(gpu_data, 88)
