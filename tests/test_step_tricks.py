"""The tricks that act inside a step or at evaluation, and airbench's, each on its own.

Each does what its paper says, checked on its own hook, initializer or network.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_data import tiny_data
from torch import nn

from harness.models import build_model
from harness.recipe import ModelSpec, OptimizerSpec, Recipe, ScheduleSpec, TrainerSpec
from harness.training.evaluate import evaluate, plain_infer
from harness.training.hooks import HOOKS, HookContext, evaluation_infer
from harness.training.optimizers import build_optimizer, parameter_groups
from harness.training.trainer import fit
from harness.tricks import TRICKS, apply_toggles, load_tricks

load_tricks()

CLASSES = 8


def context(model: nn.Module | None = None, **fields) -> HookContext:
    model = model or nn.Linear(2, 2)
    return HookContext(model, CLASSES, torch.Generator().manual_seed(0), **fields)


def hook(trick: str, option: str = "on", model: nn.Module | None = None, **fields):
    """Build the one hook a trick's option adds, as the loop would."""
    hooks = apply_toggles(Recipe(), {trick: option}).trainer.hooks
    ((name, settings),) = hooks.items()
    return HOOKS.get(name)(settings, context(model, **fields))


def airbench(width: int = 4, **model) -> ModelSpec:
    return ModelSpec(arch="airbench", width=width, **model)


def constant_images(count: int = CLASSES, size: int = 8) -> torch.Tensor:
    """Image i is the constant i+1, so any mix of two images shows its weights."""
    return (torch.arange(count, dtype=torch.float32) + 1).view(-1, 1, 1, 1).expand(
        count, 3, size, size).clone()


# --- mixup and cutmix ----------------------------------------------------------------------------

def test_mixup_mixes_images_and_targets_by_one_share():
    mixup = hook("mixup")
    images, labels = constant_images(), torch.arange(CLASSES)  # image i has class i
    mixed, targets = mixup.transform_batch(images, labels, labels, epoch=1)

    assert targets.shape == (CLASSES, CLASSES)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(CLASSES))
    share = targets[labels, labels]
    assert torch.allclose(share, share[0]), "one λ per batch"
    assert 0.0 < share[0] < 1.0
    # Image c is the constant c+1, so a mixed image is its target's mean of those constants.
    torch.testing.assert_close(mixed[:, 0, 0, 0], targets @ (labels + 1.0))
    assert not torch.equal(mixed, images)


def test_mixup_draws_a_new_share_every_batch_from_the_runs_seed():
    first, second = hook("mixup"), hook("mixup")
    labels = torch.arange(CLASSES)
    shares = []
    for _ in range(3):
        a = first.transform_batch(constant_images(), labels, labels, 1)[1]
        b = second.transform_batch(constant_images(), labels, labels, 1)[1]
        torch.testing.assert_close(a, b)  # the same seed repeats
        shares.append(float(a[0, 0]))
    assert len(set(shares)) == 3


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    cutmix = hook("cutmix")
    images, labels = constant_images(size=16), torch.arange(CLASSES)
    seen_partial = False
    for _ in range(5):
        mixed, targets = cutmix.transform_batch(images, labels, labels, epoch=1)
        own = (mixed == images).float().mean(dim=(1, 2, 3))  # share of pixels kept
        torch.testing.assert_close(targets[labels, labels], own)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(CLASSES))
        seen_partial |= bool(0 < own[0] < 1)
    assert seen_partial


# --- ema -----------------------------------------------------------------------------------------

def small_recipe(**trainer) -> Recipe:
    return Recipe(model=ModelSpec(width=4), optimizer=OptimizerSpec(lr=0.05),
                  schedule=ScheduleSpec(),
                  trainer=TrainerSpec(**{"epochs": 2, "batch_size": 4, "eval_batch_size": 8,
                                         **trainer}))


def test_ema_weights_differ_from_the_raw_ones_and_are_the_ones_evaluated():
    data = tiny_data(train=16, val=8, test=8, size=16)
    raw = fit(small_recipe(), data, device="cpu", progress=False)
    averaged = fit(apply_toggles(small_recipe(), {"ema": "on"}), data, device="cpu",
                   progress=False)

    # EMA leaves training alone, so the raw run's weights are the EMA run's live weights.
    assert raw.history[-1]["train_loss"] == averaged.history[-1]["train_loss"]
    differ = [not torch.allclose(a, b) for a, b in zip(raw.model.parameters(),
                                                        averaged.model.parameters())]
    assert all(differ)
    val = evaluate(averaged.model, data.val_x, data.val_y, data.classes, 8)
    assert averaged.history[-1]["val_loss"] == val.loss
    assert val.loss != evaluate(raw.model, data.val_x, data.val_y, data.classes, 8).loss


def test_ema_moves_the_average_a_warmed_up_share_toward_the_weights():
    model = nn.Linear(3, 2)
    ema = hook("ema", model=model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.after_step(1)  # decay min(0.999, 2/11): the average keeps 2/11 of itself
    average = ema.evaluation_model(model)
    assert average is not model and not average.weight.requires_grad
    torch.testing.assert_close(average.weight, start + 9 / 11)


# --- lookahead -----------------------------------------------------------------------------------

def test_lookahead_slow_weights_move_toward_the_fast_ones_every_k_steps():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def train(model: nn.Module, optimizer, steps: int, lookahead=None) -> None:
        for _ in range(steps):
            F.mse_loss(model(x), y).backward()
            optimizer.step()
            if lookahead is not None:
                train.steps += 1
                lookahead.after_update(train.steps)
            optimizer.zero_grad()

    train.steps = 0

    model = nn.Linear(3, 1)
    plain = nn.Linear(3, 1)
    plain.load_state_dict(model.state_dict())
    start = model.weight.detach().clone()
    lookahead = hook("lookahead", model=model, total_steps=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, 4, lookahead)
    assert torch.equal(lookahead.evaluation_model(model).weight, start)  # no sync yet

    train(model, optimizer, 1, lookahead)
    train(plain, torch.optim.SGD(plain.parameters(), lr=0.1), 5)
    fast = plain.weight.detach()
    kept = 0.95**5  # at the last step of the run, (t/T)^3 = 1
    slow = lookahead.evaluation_model(model).weight
    torch.testing.assert_close(slow, kept * start + (1 - kept) * fast)
    assert (slow - fast).norm() < (start - fast).norm()
    torch.testing.assert_close(model.weight.detach(), slow)  # the fast weights restart there


# --- tta -----------------------------------------------------------------------------------------

def test_tta_averages_the_logits_of_six_views_and_changes_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    images = torch.randn(4, 3, 8, 8)
    infer = hook("tta").wrap_infer(plain_infer)
    with torch.no_grad():
        logits = infer(model, images)
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        views = {"plain": images, "up_left": padded[:, :, :8, :8],
                 "down_right": padded[:, :, 2:, 2:]}
        mean = {k: (model(v) + model(v.flip(3))) / 2 for k, v in views.items()}
        expected = mean["plain"] / 2 + (mean["up_left"] + mean["down_right"]) / 4
        plain = model(images)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, plain)


def test_tta_is_used_by_every_evaluation_of_the_run_and_by_a_rebuilt_checkpoint():
    data = tiny_data(train=16, val=8, test=8, size=16)
    recipe = apply_toggles(small_recipe(), {"tta": "on", "ema": "on"})
    result = fit(recipe, data, device="cpu", progress=False)
    plain = evaluate(result.model, data.val_x, data.val_y, data.classes, 8)
    with_views = result.evaluate(data.val_x, data.val_y, data.classes)
    assert result.history[-1]["val_loss"] == with_views.loss != plain.loss

    # What a checkpoint holds (the evaluated weights and the recipe) re-evaluates exactly.
    rebuilt = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size)
    rebuilt.load_state_dict(result.model.state_dict())
    infer = evaluation_infer(recipe, rebuilt, data.num_classes)
    again = evaluate(rebuilt, data.test_x, data.test_y, data.classes, 8, infer=infer)
    test = result.evaluate(data.test_x, data.test_y, data.classes)
    assert (again.accuracy, again.loss) == (test.accuracy, test.loss)


# --- grad_clip, nesterov, bias_scaler ------------------------------------------------------------

def test_grad_clip_bounds_the_global_gradient_norm_of_a_step():
    model = nn.Linear(4, 4, bias=False)
    clip = hook("grad_clip", model=model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.weight.detach().clone()
    (model.weight.sum() * 1000).backward()  # gradient norm 4000
    clip.before_update(optimizer)
    optimizer.step()
    torch.testing.assert_close((model.weight - before).norm(), torch.tensor(1.0))


def test_nesterov_reaches_the_optimizer():
    recipe = apply_toggles(small_recipe(), {"nesterov": "on"})
    optimizer = build_optimizer(nn.Linear(2, 2), recipe.optimizer)
    assert optimizer.defaults["nesterov"] is True


def test_bias_scaler_raises_the_norm_biases_lr_and_keeps_their_decay_per_step():
    recipe = apply_toggles(Recipe(model=airbench()), {"bias_scaler": "on"})
    model = build_model(recipe.model, 10)
    groups = parameter_groups(model, recipe.optimizer)
    spec = recipe.optimizer
    scaled = [g for g in groups if "lr" in g]
    assert len(scaled) == 1
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in scaled[0]["params"]} == {id(m.bias) for m in norms}
    assert scaled[0]["lr"] == pytest.approx(64 * spec.effective_lr)
    assert scaled[0]["lr"] * scaled[0]["weight_decay"] == pytest.approx(
        spec.effective_lr * spec.weight_decay)
    optimizer = build_optimizer(model, spec)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [spec.effective_lr, 64 * spec.effective_lr])


# --- airbench's network, whitening, dirac, alternating flip --------------------------------------

def test_airbench_net_has_the_papers_widths_and_frozen_norm_scales():
    model = build_model(airbench(width=64), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 24, (2, 2)), (24, 64, (3, 3)), (64, 64, (3, 3)), (64, 256, (3, 3)),
        (256, 256, (3, 3)), (256, 256, (3, 3)), (256, 256, (3, 3))]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and not any(n.weight.requires_grad for n in norms)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1.95e6 < trainable < 2.0e6  # airbench94's ~2M


def correlated_images(count: int = 64, size: int = 12) -> torch.Tensor:
    """Images whose neighbouring pixels and channels correlate, as natural ones do."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(count, 3, size + 1, size + 1, generator=generator)
    smooth = (noise[:, :, 1:, 1:] + noise[:, :, :-1, 1:] + noise[:, :, 1:, :-1]) / 3
    return smooth + 0.5 * smooth.mean(dim=1, keepdim=True)


def test_whitening_freezes_a_first_layer_whose_patch_outputs_have_identity_covariance():
    images = correlated_images()
    recipe = apply_toggles(Recipe(model=airbench()), {"whitening": "on"})
    model = build_model(recipe.model, 10, image_size=(12, 12), sample=images)
    first = model.first
    assert not first.weight.requires_grad
    with torch.no_grad():
        outputs = F.conv2d(images, first.weight[:12])  # the 12 directions; 12: are negatives
    flat = outputs.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.02, rtol=0)
    torch.testing.assert_close(first.weight[12:], -first.weight[:12])
    # Without the trick the same layer decorrelates nothing.
    plain = build_model(Recipe(model=airbench()).model, 10, image_size=(12, 12), sample=images)
    with torch.no_grad():
        raw = F.conv2d(images, plain.first.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    assert not torch.allclose(raw.T @ raw / len(raw), torch.eye(12), atol=0.2)


def test_whitening_layer_does_not_train_and_its_bias_stops_after_its_epochs():
    data = tiny_data(train=16, val=4, test=4, size=16)
    recipe = apply_toggles(dataclasses.replace(small_recipe(epochs=4), model=airbench()),
                           {"whitening": "on"})
    start = build_model(recipe.model, 3, 3, (16, 16), sample=data.train_x).first
    first = fit(recipe, data, device="cpu", progress=False).model.first
    assert torch.equal(first.weight, start.weight)
    assert not torch.equal(first.bias, start.bias)  # trained for 3 epochs, then kept
    shorter = dataclasses.replace(recipe, trainer=dataclasses.replace(recipe.trainer, epochs=3))
    after_three = fit(shorter, data, device="cpu", progress=False).model.first
    assert torch.equal(first.bias, after_three.bias)


def test_dirac_makes_each_resolution_keeping_conv_pass_its_input_through():
    recipe = apply_toggles(Recipe(model=airbench()), {"dirac": "on"})
    model = build_model(recipe.model, 10)
    block = model.blocks[1]  # 4 → 16 channels, then 16 → 16
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = block.conv1(x)
        torch.testing.assert_close(out[:, :4], x)
        assert out[:, 4:].abs().sum() > 0  # the other filters keep their random start
        h = torch.randn(2, 16, 4, 4)
        torch.testing.assert_close(block.conv2(h), h)
    assert model.first.weight.shape[2:] == (2, 2)  # an even kernel is left alone


def test_alternating_flip_shows_each_image_both_ways_in_two_epochs():
    flip = hook("alternating_flip", train_size=64)
    images = torch.randn(64, 3, 4, 4)
    rows = torch.randperm(64)
    batch = images[rows]

    def flipped(epoch: int) -> torch.Tensor:
        out, targets = flip.transform_batch(batch, rows, rows, epoch)
        assert torch.equal(targets, rows)
        mirrored = (out == batch.flip(3)).flatten(1).all(1)
        assert torch.all(mirrored ^ (out == batch).flatten(1).all(1))
        return mirrored

    first, second, third = flipped(1), flipped(2), flipped(3)
    assert torch.all(first ^ second) and torch.equal(first, third)
    assert 16 < int(first.sum()) < 48


def test_alternating_flip_replaces_the_random_flip():
    base = Recipe(augment=dataclasses.replace(Recipe().augment, ops=("crop", "flip")))
    recipe = apply_toggles(base, {"alternating_flip": "on"})
    assert recipe.augment.ops == ("crop",) and "alternating_flip" in recipe.trainer.hooks


def test_every_new_trick_cites_a_paper_in_its_doc():
    for name in ("mixup", "cutmix", "ema", "lookahead", "tta", "grad_clip", "nesterov",
                 "whitening", "dirac", "bias_scaler", "alternating_flip"):
        doc = TRICKS.get(name).doc
        assert any(str(year) in doc for year in range(1980, 2030)), doc
