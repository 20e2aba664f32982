import json

import pytest

from harness.core.errors import UserError
from harness.recipe import Recipe


def test_round_trip_through_plain_dicts():
    recipe = Recipe.from_dict({"model": {"width": 16, "post_init": ["a"]},
                               "optimizer": {"betas": [0.9, 0.98]}, "seed": 3})
    assert recipe.model.width == 16
    assert recipe.model.post_init == ("a",)
    assert recipe.optimizer.betas == (0.9, 0.98)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_flat_has_one_key_per_leaf():
    flat = Recipe().flat()
    assert flat["trainer.batch_size"] == 128
    assert flat["seed"] == 0
    assert "model.width" in flat and "data.root" in flat


@pytest.mark.parametrize("values, message", [
    ({"model": {"widht": 8}}, "unknown recipe key 'model.widht'"),
    ({"nope": 1}, "unknown recipe key 'nope'"),
    ({"trainer": {"batch_size": -5}}, "trainer.batch_size must be a positive integer"),
    ({"trainer": {"epochs": "two"}}, "trainer.epochs must be an integer"),
    ({"data": {"download": "yes"}}, "data.download must be true or false"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas needs 2 values"),
    ({"trainer": {"precision": "fp8"}}, "unknown trainer.precision 'fp8'"),
    ({"data": {"std": [0.5, 0.0, 0.5]}}, "data.std values must be positive"),
    ({"augment": {"crop_fill": "wrap"}}, "unknown augment.crop_fill 'wrap'"),
    ({"optimizer": {"norm_bias_lr_factor": 0}}, "norm_bias_lr_factor must be positive"),
    ({"trainer": {"hooks": {"a": 1}}}, "trainer.hooks.a must be a mapping"),
])
def test_bad_values_fail_with_one_line_naming_the_key(values, message):
    with pytest.raises(UserError) as info:
        Recipe.from_dict(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError, match="did you mean 'model.width'"):
        Recipe.from_dict({"model": {"widht": 8}})


def test_toggles_stay_option_names_and_hook_settings_become_numbers():
    recipe = Recipe.from_dict({"toggles": {"label_smoothing": 0.1, "stem": "deep"},
                               "trainer": {"hooks": {"h": {"k": 2}}}})
    assert recipe.toggles == {"label_smoothing": "0.1", "stem": "deep"}
    assert recipe.trainer.hooks == {"h": {"k": 2.0}}
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_a_trial_recipe_is_range_checked_when_it_is_built():
    """Tricks build each trial's recipe with ``replace``: its values are checked as it is made."""
    import dataclasses

    base = Recipe()
    with pytest.raises(UserError, match=r"optimizer.momentum must be in \[0, 1\]"):
        dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer, momentum=2.0))
    with pytest.raises(UserError, match="optimizer.lr must be a finite number"):
        dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer,
                                                                lr=float("nan")))
    with pytest.raises(UserError, match="trainer.hooks.ema.decay must be a finite number"):
        dataclasses.replace(base, trainer=dataclasses.replace(
            base.trainer, hooks={"ema": {"decay": float("inf")}}))
