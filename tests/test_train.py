import dataclasses

import pytest
import torch

from harness.data import prepare_data
from harness.recipe import (
    AugmentSpec,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    Recipe,
    ScheduleSpec,
    TrainerSpec,
)
from harness.training.schedules import build_schedule
from harness.training.trainer import fit


@pytest.fixture(scope="module")
def data(learnable_folder):
    return prepare_data(DataSpec(name="imagefolder", root=str(learnable_folder), val_size=30))


def small_recipe(**changes) -> Recipe:
    recipe = Recipe(
        model=ModelSpec(arch="resnet18", width=4),
        optimizer=OptimizerSpec(lr=0.05),
        augment=AugmentSpec(ops=("crop", "flip"), crop_padding=2),
        schedule=ScheduleSpec(name="warmup_cosine", warmup_epochs=0.5),
        trainer=TrainerSpec(epochs=2, batch_size=16, eval_batch_size=64),
    )
    return dataclasses.replace(recipe, **changes)


def test_learns_the_learnable_set(data):
    recipe = small_recipe(trainer=TrainerSpec(epochs=4, batch_size=16))
    result = fit(recipe, data, device="cpu", progress=False)
    assert result.status == "finished"
    assert result.epochs_completed == 4
    assert result.history[-1]["val_acc"] > 70.0  # chance is 33%
    assert result.images_seen == 4 * len(data.train_y)


def test_same_recipe_and_seed_give_the_same_metrics_on_cpu(data):
    first = fit(small_recipe(), data, device="cpu", progress=False)
    second = fit(small_recipe(), data, device="cpu", progress=False)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[h[k] for k in keys] for h in first.history] == [
        [h[k] for k in keys] for h in second.history]
    other = fit(small_recipe(seed=1), data, device="cpu", progress=False)
    assert other.history[-1]["train_loss"] != first.history[-1]["train_loss"]


def test_divergence_ends_the_run_without_raising(data):
    recipe = small_recipe(optimizer=OptimizerSpec(lr=1e12), schedule=ScheduleSpec())
    result = fit(recipe, data, device="cpu", progress=False)
    assert result.status == "diverged"
    assert "became nan" in result.reason or "became inf" in result.reason
    assert result.epochs_completed < recipe.trainer.epochs


def test_callbacks_get_every_epoch_metric(data):
    seen = []
    fit(small_recipe(), data, device="cpu", progress=False,
        callbacks=[lambda epoch, metrics: seen.append((epoch, metrics))])
    assert [epoch for epoch, _ in seen] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec"):
        assert key in seen[0][1]


def test_gradient_accumulation_equals_a_bigger_batch(data):
    # No batch norm and no momentum, so two accumulated halves are one big step exactly.
    base = small_recipe(model=ModelSpec(arch="simplecnn"), augment=AugmentSpec(),
                        schedule=ScheduleSpec(),
                        optimizer=OptimizerSpec(lr=0.01, momentum=0.0, weight_decay=0.0),
                        trainer=TrainerSpec(epochs=1, batch_size=18))
    assert len(data.train_y) % 18 == 0  # equal only when no short last group exists
    big = fit(base, data, device="cpu", progress=False)
    halves = fit(dataclasses.replace(
        base, trainer=TrainerSpec(epochs=1, batch_size=9, grad_accum=2)), data, device="cpu",
        progress=False)
    for a, b in zip(big.model.parameters(), halves.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_progress_bars_show_images_per_second(data, capsys):
    fit(small_recipe(trainer=TrainerSpec(epochs=1, batch_size=16)), data, device="cpu",
        progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err
    assert "epoch 1/1" in err


def test_warmup_cosine_schedule_shape():
    schedule = build_schedule(ScheduleSpec(name="warmup_cosine", warmup_epochs=1), 100, 10)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5, abs=0.02)
    assert schedule(99) < 0.01
