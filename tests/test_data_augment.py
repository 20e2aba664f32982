from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import UserError
from harness.data import AUGMENTATIONS, augment
from harness.recipe import AugmentSpec


def batch(size: int = 64, channels: int = 3, height: int = 8, width: int = 8) -> torch.Tensor:
    """Identical images with distinct, non-zero pixels, so any shift or flip shows."""
    image = torch.arange(1, channels * height * width + 1, dtype=torch.float32)
    return image.view(1, channels, height, width).repeat(size, 1, 1, 1)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_holds_crop_and_flip() -> None:
    assert {"crop", "flip"} <= set(AUGMENTATIONS.names())
    with pytest.raises(UserError, match="unknown augmentation 'cutout'"):
        augment(batch(), AugmentSpec(ops=("cutout",)), generator())


def test_crop_keeps_shape_and_shifts_each_image_differently() -> None:
    x = batch(64, height=8, width=6)
    spec = AugmentSpec(ops=("crop",), crop_padding=2)
    out = augment(x, spec, generator())

    assert out.shape == x.shape
    assert out.dtype == x.dtype
    padded = F.pad(x[0], (2, 2, 2, 2))
    offsets = []
    for image in out:
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(image, padded[:, dy : dy + 8, dx : dx + 6])]
        assert len(matches) == 1, "every output is one window of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 10  # 25 possible offsets over 64 images
    assert torch.equal(x, batch(64, height=8, width=6)), "the input is left alone"


def test_reflect_fill_crops_windows_of_the_mirrored_border() -> None:
    x = batch(64, height=8, width=6)
    spec = AugmentSpec(ops=("crop",), crop_padding=2, crop_fill="reflect")
    out = augment(x, spec, generator())
    padded = F.pad(x[:1], (2, 2, 2, 2), mode="reflect")[0]
    assert all(any(torch.equal(image, padded[:, dy:dy + 8, dx:dx + 6])
                   for dy in range(5) for dx in range(5)) for image in out)
    assert not (out == 0).any(), "no zeros come in from the border"


def test_crop_without_padding_is_identity() -> None:
    x = batch()
    assert torch.equal(augment(x, AugmentSpec(ops=("crop",), crop_padding=0), generator()), x)


def test_negative_padding_is_a_user_error() -> None:
    with pytest.raises(UserError, match="augment.crop_padding"):
        augment(batch(), AugmentSpec(ops=("crop",), crop_padding=-1), generator())


def test_flip_mirrors_about_half() -> None:
    x = batch(1000)
    out = augment(x, AugmentSpec(ops=("flip",)), generator())

    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept), "each image is either unchanged or mirrored"
    assert 400 < int(flipped.sum()) < 600


@pytest.mark.parametrize("ops", [("crop",), ("flip",), ("crop", "flip")])
def test_same_seed_same_result(ops: tuple[str, ...]) -> None:
    x = batch(32)
    spec = AugmentSpec(ops=ops)
    first = augment(x, spec, generator(7))
    assert torch.equal(first, augment(x, spec, generator(7)))
    assert not torch.equal(first, augment(x, spec, generator(8)))


def test_ops_apply_in_order_from_one_generator() -> None:
    x = torch.randn(16, 3, 8, 8)
    spec = AugmentSpec(ops=("crop", "flip"), crop_padding=1)
    rng = generator(3)
    by_hand = AUGMENTATIONS.get("flip")(AUGMENTATIONS.get("crop")(x, spec, rng), spec, rng)
    assert torch.equal(augment(x, spec, generator(3)), by_hand)


def test_no_ops_returns_the_batch() -> None:
    x = batch()
    assert augment(x, AugmentSpec(), generator()) is x
