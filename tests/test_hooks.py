"""The step hooks of the one loop: each stage runs where it should, and unused ones cost nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
import torch
from tiny_data import tiny_data
from torch import nn

from harness.core.errors import UserError
from harness.models import build_model
from harness.recipe import ModelSpec, OptimizerSpec, Recipe, ScheduleSpec, TrainerSpec
from harness.training.hooks import (
    HOOKS,
    HookContext,
    Hooks,
    StepHook,
    build_hooks,
    class_probabilities,
)
from harness.training.loop import seed_everything
from harness.training.trainer import fit

CALLS: list[tuple] = []  # what the recording hook saw, in order


class Recorder(StepHook):
    """Records every stage it is called at; scales the loss by ``scale``."""

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.scale = settings["scale"]
        self.context = context

    def transform_batch(self, images, targets, rows, epoch):
        CALLS.append(("batch", epoch, rows.tolist(), targets.tolist()))
        return images, targets

    def wrap_loss(self, loss_fn):
        CALLS.append(("wrap_loss",))
        return lambda logits, targets: loss_fn(logits, targets) * self.scale

    def before_update(self, optimizer):
        # The loop keeps a real torch optimizer; its lr is the schedule's (constant here).
        assert isinstance(optimizer, torch.optim.Optimizer)
        CALLS.append(("before_update", optimizer.param_groups[0]["lr"]))

    def after_update(self, step):
        CALLS.append(("after_update", step))

    def after_step(self, step):
        CALLS.append(("after_step", step))

    def evaluation_model(self, model):
        CALLS.append(("evaluation_model",))
        return model

    def wrap_infer(self, infer):
        def doubled(model, images):
            return infer(model, images) * 2

        return doubled


HOOKS.register("test_recorder")(Recorder)


def recipe(**trainer) -> Recipe:
    return Recipe(model=ModelSpec(arch="simplecnn"),
                  optimizer=OptimizerSpec(lr=0.01, momentum=0.0, weight_decay=0.0),
                  schedule=ScheduleSpec(),
                  trainer=TrainerSpec(**{"epochs": 2, "batch_size": 4, "eval_batch_size": 8,
                                         **trainer}))


@pytest.fixture
def data():
    return tiny_data(train=8, val=4, test=4, size=32)


def test_every_stage_runs_where_the_loop_says(data):
    CALLS.clear()
    result = fit(recipe(hooks={"test_recorder": {"scale": 1.0}}), data, device="cpu",
                 progress=False)
    stages = [call[0] for call in CALLS]
    assert stages[0] == "wrap_loss"
    batches = [call for call in CALLS if call[0] == "batch"]
    assert [call[1] for call in batches] == [1, 1, 2, 2]  # epochs count from 1
    for epoch in (1, 2):  # the rows of an epoch are the training split once, with its labels
        rows = sum((call[2] for call in batches if call[1] == epoch), [])
        assert sorted(rows) == list(range(8))
        labels = sum((call[3] for call in batches if call[1] == epoch), [])
        assert labels == data.train_y[rows].tolist()
    assert [call[1] for call in CALLS if call[0] == "after_step"] == [1, 2, 3, 4]
    assert [call[1] for call in CALLS if call[0] == "before_update"] == [0.01] * 4
    # Each step: its gradients' batch, then before_update, the update, after_update, after_step.
    steps = [call[0] for call in CALLS if call[0] != "evaluation_model"]
    assert steps[1:] == ["batch", "before_update", "after_update", "after_step"] * 4
    assert [call[1] for call in CALLS if call[0] == "after_update"] == [1, 2, 3, 4]
    # Before each epoch's validation, and once more for the run's model.
    assert stages.count("evaluation_model") == 3
    plain = result.model(data.test_x).detach()
    torch.testing.assert_close(result.predict(data.test_x), 2 * plain)


def test_the_loss_wrapper_changes_what_is_minimised():
    # One step of plain SGD: a loss scaled by 3 moves every weight 3 times as far.
    data = tiny_data(train=4, val=0, test=4, size=32)
    run = recipe(epochs=1)
    seed_everything(run.seed)
    start = build_model(run.model, 3, 3, (32, 32))

    def moved(hooks: dict) -> list[torch.Tensor]:
        model = fit(dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, hooks=hooks)),
                    data, device="cpu", progress=False).model
        return [p.detach() - p0.detach() for p, p0 in zip(model.parameters(), start.parameters())]

    for plain, tripled in zip(moved({}), moved({"test_recorder": {"scale": 3.0}})):
        torch.testing.assert_close(tripled, 3 * plain, rtol=1e-4, atol=1e-7)


def test_unused_stages_are_left_out():
    hooks = Hooks([StepHook()])
    assert hooks.transform_batch is None and hooks.after_step is None and hooks.infer is None
    assert hooks.before_update is None and hooks.after_update is None
    model = nn.Linear(2, 2)
    assert hooks.evaluation_model(model) is model


def test_a_recipe_without_hooks_builds_none():
    context = HookContext(nn.Linear(2, 2), 2, torch.Generator())
    hooks = build_hooks(Recipe(), context)
    assert hooks.hooks == [] and hooks.transform_batch is None and hooks.infer is None


def test_an_unknown_hook_or_a_missing_setting_is_one_line():
    context = HookContext(nn.Linear(2, 2), 2, torch.Generator())
    with pytest.raises(UserError, match="unknown hook 'nope'"):
        build_hooks(Recipe(trainer=TrainerSpec(hooks={"nope": {}})), context)
    with pytest.raises(UserError, match="trainer.hooks.ema needs a value for 'decay'"):
        from harness.tricks import load_tricks

        load_tricks()
        build_hooks(Recipe(trainer=TrainerSpec(hooks={"ema": {}})), context)


def test_class_probabilities_are_one_hot_for_labels_and_kept_for_soft_targets():
    assert class_probabilities(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    assert class_probabilities(soft, 3) is soft


def test_hooks_settings_are_part_of_the_recipe_and_its_flat_params():
    values = {"trainer": {"hooks": {"ema": {"decay": 0.99}, "tta": {}}}}
    recipe = Recipe.from_dict(values)
    assert recipe.trainer.hooks == {"ema": {"decay": 0.99}, "tta": {}}
    flat = recipe.flat()
    assert flat["trainer.hooks.ema.decay"] == 0.99 and flat["trainer.hooks.tta"] == {}
    assert Recipe().flat()["trainer.hooks"] == {}
    with pytest.raises(UserError, match="trainer.hooks.ema.decay must be a number"):
        Recipe.from_dict({"trainer": {"hooks": {"ema": {"decay": "fast"}}}})
