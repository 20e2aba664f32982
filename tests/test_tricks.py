"""Every trick in ablations/: its options build and train, and each does what its paper says."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from tiny_data import tiny_data
from torch import nn

from harness.core.errors import UserError
from harness.core.registry import Registry
from harness.models import build_model
from harness.recipe import SECTIONS, ModelSpec, OptimizerSpec, Recipe, TrainerSpec, field_types
from harness.training.loop import seed_everything
from harness.training.losses import build_loss
from harness.training.optimizers import build_optimizer, parameter_groups
from harness.training.trainer import fit
from harness.tricks import (
    TRICKS,
    Trick,
    appended,
    apply_toggles,
    describe_tricks,
    load_tricks,
    removed,
    toggle_changes,
)

load_tricks()

HARNESS = Path(__file__).resolve().parents[1] / "harness"
NUM_CLASSES = 3
ALL_OPTIONS = [(name, option) for name in TRICKS for option in TRICKS.get(name).options]


def small_recipe(**sections) -> Recipe:
    """A recipe whose model trains in milliseconds on a CPU."""
    return Recipe(**{"model": ModelSpec(width=4), **sections})


def image_size(recipe: Recipe) -> tuple[int, int]:
    # The seed's CNN loses 12 pixels to its two 5×5 convs and pools, so it needs at least 16.
    return (32, 32) if recipe.model.arch == "simplecnn" else (16, 16)


def build(recipe: Recipe, size: tuple[int, int] | None = None) -> nn.Module:
    return build_model(recipe.model, num_classes=NUM_CLASSES, in_channels=3,
                       image_size=size or image_size(recipe))


def apply(recipe: Recipe, trick: str, option: str) -> Recipe:
    return TRICKS.get(trick).apply(recipe, option)


# --- the registry as a whole ---------------------------------------------------------------------

def test_the_tricks_of_the_brief_are_registered():
    expected = {"stem", "init", "optimizer", "depth", "label_smoothing", "resnet_d", "zero_gamma",
                "no_bias_decay", "schedule", "augment", "mixup", "cutmix", "ema", "lookahead",
                "tta", "grad_clip", "nesterov", "whitening", "dirac", "bias_scaler",
                "alternating_flip"}
    assert expected <= set(TRICKS)


def test_the_option_names_stores_and_studies_use_are_kept():
    kept = {"stem": ["none", "deep"], "init": ["default", "xavier", "kaiming"],
            "optimizer": ["sgd", "adam"], "depth": ["resnet18", "resnet34", "simplecnn"],
            "label_smoothing": ["0.0", "0.1"], "resnet_d": ["off", "on"],
            "zero_gamma": ["off", "on"], "no_bias_decay": ["off", "on"],
            "schedule": ["constant", "warmup_cosine"], "augment": ["none", "crop_flip"]}
    for name, options in kept.items():
        assert list(TRICKS.get(name).options)[:len(options)] == options


@pytest.mark.parametrize("name", list(TRICKS))
def test_trick_has_two_options_and_a_one_line_doc(name):
    trick = TRICKS.get(name)
    assert len(trick.options) >= 2
    assert trick.doc.strip() and "\n" not in trick.doc
    assert all(isinstance(option, str) for option in trick.options)


@pytest.mark.parametrize("name", list(TRICKS))
def test_first_option_is_neutral_on_the_default_recipe(name):
    trick = TRICKS.get(name)
    assert trick.apply(small_recipe(), trick.default) == small_recipe()


def test_defaults_undo_every_other_option():
    # Each default is an explicit setter, so it restores the baseline whatever the base recipe
    # says. The exceptions are by design: sgd keeps the base lr (it is the lr that suits SGD) and
    # Adam-only fields, and constant ignores the warmup length.
    kept = {"optimizer.lr", "optimizer.betas", "optimizer.eps", "schedule.warmup_epochs"}
    for name, option in ALL_OPTIONS:
        trick = TRICKS.get(name)
        changed = trick.apply(trick.apply(small_recipe(), option), trick.default)
        differ = {key for key, value in changed.flat().items()
                  if small_recipe().flat()[key] != value}
        assert differ <= kept, f"{name}={option} then {trick.default} leaves {differ}"


@pytest.mark.parametrize(("name", "option"), ALL_OPTIONS)
def test_option_builds_and_trains_through_the_loop(name, option):
    # Five steps of fit (lookahead's period) with every hook the option brings, then an
    # evaluation through them.
    recipe = apply(small_recipe(trainer=TrainerSpec(epochs=1, batch_size=2, eval_batch_size=4)),
                   name, option)
    data = tiny_data(train=10, val=4, test=4, classes=NUM_CLASSES, size=image_size(recipe)[0])
    seed_everything(recipe.seed)
    start = build_model(recipe.model, NUM_CLASSES, 3, data.image_size, sample=data.train_x)

    result = fit(recipe, data, device="cpu", progress=False)

    assert result.status == "finished", result.reason
    assert math.isfinite(result.history[-1]["train_loss"])
    trained = result.model.state_dict()
    assert any(not torch.equal(value, trained[key]) for key, value in start.state_dict().items()
               if value.is_floating_point())
    assert result.evaluate(data.test_x, data.test_y, data.classes).count == 4


# --- each trick's own behaviour ------------------------------------------------------------------

def test_deep_stem_downsamples_by_four_to_the_model_width():
    recipe = apply(Recipe(model=ModelSpec(width=8)), "stem", "deep")
    model = build(recipe, (32, 32))
    out = model.stem(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 8, 8, 8)
    assert [m.out_channels for m in model.stem.modules() if isinstance(m, nn.Conv2d)] == [4, 4, 8]


def test_deep_stem_keeps_at_least_one_channel_on_width_one():
    model = build(apply(Recipe(model=ModelSpec(width=1)), "stem", "deep"))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("arch", ["resnet18", "simplecnn"])
def test_xavier_init_has_the_xavier_bound_and_zero_biases(arch):
    recipe = apply(apply(small_recipe(), "depth", arch), "init", "xavier")
    model = build(recipe)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        assert layer.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        if layer.bias is not None:
            assert torch.count_nonzero(layer.bias) == 0
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_kaiming_init_uses_fan_out_spread():
    model = build(apply(Recipe(model=ModelSpec(width=16)), "init", "kaiming"))
    conv = model.stages[3][0].conv2  # 128 → 128 channels, 3×3: enough weights for a stable std
    expected = math.sqrt(2 / (conv.out_channels * 9))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_zero_gamma_zeroes_every_last_norm_and_nothing_else():
    model = build(apply(small_recipe(), "zero_gamma", "on"))
    last_norms = {id(m.last_norm) for m in model.modules() if hasattr(m, "last_norm")}
    assert len(last_norms) == 8  # two blocks in each of ResNet-18's four stages
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(norm.weight == (0 if id(norm) in last_norms else 1))


def test_zero_gamma_adds_itself_once_and_off_keeps_other_post_inits():
    on = apply(apply(small_recipe(), "zero_gamma", "on"), "zero_gamma", "on")
    assert on.model.post_init == ("zero_last_norm_gamma",)
    base = small_recipe(model=ModelSpec(width=4, post_init=("default", "zero_last_norm_gamma")))
    assert apply(base, "zero_gamma", "off").model.post_init == ("default",)


def test_resnet_d_shortcut_average_pools_where_it_downsamples():
    model = build(apply(small_recipe(), "resnet_d", "on"))
    blocks = [m for m in model.modules() if hasattr(m, "shortcut")]
    strided = [block.shortcut for block in blocks if block.conv1.stride == (2, 2)]
    assert len(strided) == 3  # the first block of stages 2-4
    for shortcut in strided:
        pools = [m for m in shortcut.modules() if isinstance(m, nn.AvgPool2d)]
        convs = [m for m in shortcut.modules() if isinstance(m, nn.Conv2d)]
        assert len(pools) == 1 and pools[0].stride == 2
        assert [c.stride for c in convs] == [(1, 1)]


def test_resnet_d_shortcut_matches_odd_sizes_of_the_residual_branch():
    model = build(apply(small_recipe(), "resnet_d", "on"), (15, 15))
    assert model(torch.randn(2, 3, 15, 15)).shape == (2, NUM_CLASSES)


def test_no_bias_decay_puts_biases_and_norms_in_an_undecayed_group():
    recipe = apply(small_recipe(), "no_bias_decay", "on")
    model = build(recipe)
    decayed, undecayed = parameter_groups(model, recipe.optimizer)
    assert decayed["weight_decay"] == recipe.optimizer.weight_decay > 0
    assert undecayed["weight_decay"] == 0.0
    expected = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                for p in m.parameters()} | {id(model.fc.bias)}
    assert {id(p) for p in undecayed["params"]} == expected
    off = apply(recipe, "no_bias_decay", "off")
    assert len(parameter_groups(model, off.optimizer)) == 1


def test_label_smoothing_costs_a_confident_correct_prediction():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    plain = build_loss(apply(small_recipe(), "label_smoothing", "0.0").loss)
    smoothed_recipe = apply(small_recipe(), "label_smoothing", 0.1)  # a YAML float works too
    smoothed = build_loss(smoothed_recipe.loss)
    assert smoothed_recipe.loss == dataclasses.replace(small_recipe().loss, smoothing=0.1)
    assert smoothed(logits, labels) > plain(logits, labels)


@pytest.mark.parametrize("option", ["0.1", "0.2"])
def test_label_smoothing_is_torchs_on_labels_and_smooths_soft_targets(option):
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    epsilon = float(option)
    loss = build_loss(apply(small_recipe(), "label_smoothing", option).loss)
    expected = nn.CrossEntropyLoss(label_smoothing=epsilon)(logits, labels)
    torch.testing.assert_close(loss(logits, labels), expected)
    soft = torch.softmax(torch.randn(8, 5), dim=1)
    torch.testing.assert_close(loss(logits, soft),
                               nn.CrossEntropyLoss(label_smoothing=epsilon)(logits, soft))


def test_adam_uses_the_seeds_settings_times_lr_factor():
    recipe = apply(small_recipe(optimizer=OptimizerSpec(lr_factor=0.5)), "optimizer", "adam")
    optimizer = build_optimizer(build(recipe), recipe.optimizer)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    assert optimizer.defaults["eps"] == 1e-9
    assert optimizer.defaults["lr"] == pytest.approx(1e-3 * 0.5)


def test_sgd_keeps_the_base_lr():
    base = small_recipe(optimizer=OptimizerSpec(name="adam", lr=0.2, momentum=0.0))
    recipe = apply(base, "optimizer", "sgd")
    optimizer = build_optimizer(build(recipe), recipe.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.2 and optimizer.defaults["momentum"] == 0.9


def test_resnet34_is_larger_than_resnet18():
    def size(arch: str) -> int:
        return sum(p.numel() for p in build(apply(small_recipe(), "depth", arch)).parameters())

    assert size("resnet34") > size("resnet18")


def test_triangular_schedule_rises_from_its_start_and_falls_to_its_end():
    recipe = apply(small_recipe(), "schedule", "triangular")
    spec = dataclasses.replace(recipe.schedule, warmup_epochs=2.0, start_lr_fraction=0.2,
                               final_lr_fraction=0.07)
    from harness.training.schedules import build_schedule

    schedule = build_schedule(spec, 100, 10)  # warmup: 20 steps
    assert schedule(0) == pytest.approx(0.2)
    assert schedule(10) == pytest.approx(0.6)
    assert schedule(20) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(1.0 - 0.93 * 0.5)
    assert schedule(100) == pytest.approx(0.07)


def test_warmup_cosine_keeps_a_base_warmup_or_uses_a_short_one():
    recipe = apply(small_recipe(), "schedule", "warmup_cosine")
    assert (recipe.schedule.name, recipe.schedule.warmup_epochs) == ("warmup_cosine", 0.1)
    base = dataclasses.replace(small_recipe(), schedule=dataclasses.replace(
        small_recipe().schedule, warmup_epochs=2.0))
    assert apply(base, "schedule", "warmup_cosine").schedule.warmup_epochs == 2.0


def test_augment_switches_crop_and_flip_and_keeps_the_padding():
    base = small_recipe()
    base = dataclasses.replace(base, augment=dataclasses.replace(base.augment, crop_padding=2))
    recipe = apply(base, "augment", "crop_flip")
    assert recipe.augment.ops == ("crop", "flip") and recipe.augment.crop_padding == 2
    assert apply(recipe, "augment", "none").augment.ops == ()


# --- toggles -------------------------------------------------------------------------------------

def test_apply_toggles_composes_tricks_on_one_section():
    recipe = apply_toggles(small_recipe(), {"zero_gamma": "on", "init": "xavier", "stem": "deep"})
    assert recipe.model.init == "xavier"
    assert recipe.model.post_init == ("zero_last_norm_gamma",)
    assert recipe.model.stem == "deep"
    assert recipe.toggles == {"zero_gamma": "on", "init": "xavier", "stem": "deep"}
    model = build(recipe)
    assert all(torch.all(m.last_norm.weight == 0) for m in model.modules()
               if hasattr(m, "last_norm"))


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(UserError, match="default, kaiming, xavier"):
        apply_toggles(small_recipe(), {"init": "glorot"})


# --- declarative options -------------------------------------------------------------------------

def test_an_option_maps_recipe_keys_to_values_converted_to_their_type():
    trick = Trick("t", "doc", {"off": {}, "on": {"model.width": 8.0, "augment.ops": ["crop"],
                                                 "trainer.hooks.ema": {"decay": "0.5"}}})
    recipe = trick.apply(small_recipe(), "on")
    assert recipe.model.width == 8 and isinstance(recipe.model.width, int)
    assert recipe.augment.ops == ("crop",)
    assert recipe.trainer.hooks == {"ema": {"decay": 0.5}}
    assert trick.changes("on") == {"model.width": "8.0", "augment.ops": "[crop]",
                                   "trainer.hooks.ema": "{'decay': '0.5'}"}


def test_none_removes_a_mapping_entry_and_changes_edit_tuples():
    base = small_recipe(model=ModelSpec(width=4, post_init=("a",)),
                        trainer=TrainerSpec(hooks={"ema": {"decay": 0.5}, "tta": {}}))
    trick = Trick("t", "doc", {"off": {"trainer.hooks.ema": None, "model.post_init": removed("a")},
                               "on": {"model.post_init": appended("b")}})
    off = trick.apply(base, "off")
    assert off.trainer.hooks == {"tta": {}} and off.model.post_init == ()
    assert trick.apply(trick.apply(base, "on"), "on").model.post_init == ("a", "b")
    assert trick.changes("off") == {"trainer.hooks.ema": "removed", "model.post_init": "- a"}


def test_a_function_on_a_whole_section_is_the_escape_hatch():
    def double_width(spec: ModelSpec) -> ModelSpec:
        """Twice as wide."""
        return dataclasses.replace(spec, width=spec.width * 2)

    trick = Trick("t", "doc", {"off": {}, "on": {"model": double_width}})
    assert trick.apply(small_recipe(), "on").model.width == 8
    assert trick.changes("on") == {"model": "by double_width (Twice as wide)"}


@pytest.mark.parametrize(("options", "message"), [
    ({"on": {"modle.width": 8}}, "unknown section 'modle'"),
    ({"on": {"model.widht": 8}}, "unknown field 'model.widht'"),
    ({"on": {"model.width.x": 8}}, "is not a mapping"),
    ({"on": {"model": 8}}, "needs a function"),
    ({"on": {"model.width": lambda w: w}}, "must be a Change"),
])
def test_an_option_naming_nothing_fails_when_the_trick_is_made(options, message):
    with pytest.raises(ValueError, match=message):
        Trick("t", "doc", options)


def test_list_tricks_shows_what_every_option_changes():
    text = describe_tricks()
    for name in TRICKS:
        trick = TRICKS.get(name)
        assert f"{name}  {trick.doc}" in text
        for option in trick.options:
            for key in trick.changes(option):
                assert key in text
    assert "on             trainer.hooks.mixup = {'alpha': 1.0}" in text
    assert "deep            model.stem = deep" in text


def test_toggle_changes_are_the_recipe_keys_a_config_changes():
    base = small_recipe()
    changes = toggle_changes(base, {"stem": "deep", "ema": "on", "init": "default"})
    assert changes == {"model.stem": "deep", "trainer.hooks.ema.decay": 0.999}
    with_ema = apply_toggles(base, {"ema": "on"})
    assert toggle_changes(with_ema, {"ema": "off"}) == {"trainer.hooks": {},
                                                        "trainer.hooks.ema.decay": None}


# --- the house rule: harness/ knows no trick by name ---------------------------------------------

def _from_ablations(entry: object) -> bool:
    return str(getattr(entry, "__module__", "")).startswith("ablations")


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def harness_words() -> set[str]:
    """The harness's own vocabulary: recipe sections and fields, and the parts it registers."""
    words = set(SECTIONS)
    for section in SECTIONS:
        words |= set(field_types(section))
    for registry in Registry.instances:
        if registry is not TRICKS:
            words |= {name for name in registry if not _from_ablations(registry.get(name))}
    return words


def trick_words() -> tuple[set[str], set[str]]:
    """Names only tricks bring, as (whole strings, words inside identifiers).

    Trick names, their non-neutral options and the parts they register count. A neutral option
    names the harness's own behaviour ("none", "sgd"), a word of the harness's vocabulary is the
    field a trick sets ("init", "nesterov"), and words under three letters ("on") or numbers
    would match by chance, so those are left out. A one-word trick name that is plain English
    ("depth") counts as a whole string, which is how the harness would read a toggle
    (``toggles["depth"]``), but not inside identifiers, where it is just a word (a lock's
    ``_depth``); coined words (compound names, options, parts) count there too.
    """
    names: set[str] = set(TRICKS)
    coined: set[str] = set()
    for name in TRICKS:
        trick = TRICKS.get(name)
        coined |= {option for option in trick.options if option != trick.default}
    for registry in Registry.instances:
        if registry is not TRICKS:
            coined |= {name for name in registry if _from_ablations(registry.get(name))}
    coined |= {name for name in names if "_" in name}

    def keep(words: set[str]) -> set[str]:
        return {w.lower() for w in words - harness_words() if len(w) >= 3 and not _is_number(w)}

    return keep(names | coined), keep(coined)


TRICK_STRINGS, IDENTIFIER_WORDS = trick_words()
# Underscores separate words here, so apply_xavier_init counts but xavierish does not.
TRICK_WORD = re.compile(
    rf"(?<![a-z0-9])({'|'.join(map(re.escape, sorted(IDENTIFIER_WORDS, key=len, reverse=True)))})"
    rf"(?![a-z0-9])", re.IGNORECASE)


def test_the_word_list_comes_from_the_registry():
    # The words of the tricks and parts the brief names, found without listing them here.
    assert {"xavier", "kaiming", "label_smoothing", "resnet_d", "zero_gamma", "no_bias_decay",
            "avgpool", "zero_last_norm_gamma", "mixup", "cutmix", "lookahead", "ema", "tta",
            "dirac", "airbench", "alternating_flip", "triangular",
            "whiten_patches"} <= IDENTIFIER_WORDS
    assert {"depth", "whitening"} <= TRICK_STRINGS - IDENTIFIER_WORDS
    # Words the harness owns are not trick words, though tricks use them.
    assert not {"sgd", "adam", "resnet34", "warmup_cosine", "init", "nesterov", "on", "off",
                "none", "0.1"} & TRICK_STRINGS


def trick_names_in(source: str) -> list[str]:
    """Return the identifiers and string values in ``source``'s code that name a trick.

    Docstrings and comments are prose and are skipped. A string counts only when it is a trick
    word as a whole, since ``== "xavier"`` or ``register("xavier")`` is what the rule forbids,
    while a usage example inside an error message is not. Keyword names of calls are skipped too:
    ``CrossEntropyLoss(label_smoothing=...)`` is torch's vocabulary, not the harness's.
    """
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    strings: set[str] = set()
    identifiers: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                strings.add(node.value)
        elif isinstance(node, ast.Name):
            identifiers.add(node.id)
        elif isinstance(node, ast.Attribute):
            identifiers.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            identifiers.add(node.name)
        elif isinstance(node, ast.arg):
            identifiers.add(node.arg)
        elif isinstance(node, ast.alias):
            identifiers.add(node.asname or node.name)
    found = {s for s in strings if s.strip().lower() in TRICK_STRINGS}
    found |= {name for name in identifiers if TRICK_WORD.search(name)}
    return sorted(found)


@pytest.mark.parametrize("path", sorted(HARNESS.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(HARNESS)))
def test_harness_code_names_no_trick(path):
    found = trick_names_in(path.read_text())
    assert not found, f"harness/{path.relative_to(HARNESS)} names tricks in code: {found}"


def test_the_house_rule_check_catches_a_trick_name():
    assert trick_names_in('if init == "xavier":\n    pass\n') == ["xavier"]
    assert trick_names_in("def apply_xavier_init(model):\n    pass\n") == ["apply_xavier_init"]
    assert trick_names_in("spec.zero_gamma = True\n") == ["zero_gamma"]
    assert trick_names_in('def f():\n    """Not xavier here."""\n') == []
    assert trick_names_in('raise ValueError("e.g. init=[default,xavier]")\n') == []
    assert trick_names_in('option = toggles["depth"]\n') == ["depth"]
    assert trick_names_in("lock_depth = 1\n") == []
    assert trick_names_in("def update_ema(model):\n    pass\n") == ["update_ema"]
