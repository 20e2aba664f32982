"""Batched training augmentations: tensor ops on the batch's own device, random per image.

Each augmentation takes a float batch ``[B, C, H, W]``, the recipe's ``AugmentSpec`` and a
``torch.Generator``, and returns a new batch; the input is never changed in place. All randomness
comes from the generator, so a seeded run repeats exactly. The generator may live on the CPU
while the batch is on an accelerator: the few random numbers per batch are drawn where the
generator lives and then moved.

The batch is already normalised (see ``harness.data.prepare``), so zero padding fills with the
training set's mean colour rather than black.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.core.errors import UserError
from harness.core.registry import Registry
from harness.recipe import AugmentSpec

Augmentation = Callable[[torch.Tensor, AugmentSpec, torch.Generator], torch.Tensor]

AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")

# AugmentSpec.crop_fill → the mode of F.pad.
_PAD_MODES = {"zeros": "constant", "reflect": "reflect"}


def augment(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Apply ``spec.ops`` to a batch, in order.

    Args:
        x: Float images ``[B, C, H, W]``.
        spec: Names the operations and their settings.
        generator: The source of every random number.

    Returns:
        The augmented batch, same shape, dtype and device as ``x``.

    Raises:
        UserError: An operation is not registered.
    """
    for name in spec.ops:
        x = AUGMENTATIONS.get(name)(x, spec, generator)
    return x


@AUGMENTATIONS.register("crop")
def random_crop(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Pad by ``spec.crop_padding`` on every side, then crop back to H×W at a random offset.

    The padding is zeros (the mean colour) or, with ``spec.crop_fill="reflect"``, the image
    mirrored at its border.

    Each image gets its own offset. The crop is one ``gather`` over each padded image plane with
    per-image flat indices: no Python loop over the batch, and about five times faster on a CPU
    than indexing with separate image, channel, row and column tensors.
    """
    pad = spec.crop_padding
    if pad < 0:
        raise UserError(f"augment.crop_padding must be 0 or more, got {pad}")
    if pad == 0 or x.shape[0] == 0:
        return x
    batch, channels, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=_PAD_MODES[spec.crop_fill])
    padded_width = width + 2 * pad
    offsets = _randint(2 * pad + 1, (2, batch), generator, x.device)  # (row, column) per image
    starts = offsets[0] * padded_width + offsets[1]  # [B]
    rows = torch.arange(height, device=x.device)[:, None] * padded_width
    window = (rows + torch.arange(width, device=x.device)).view(-1)  # [H*W], from the start
    index = (starts[:, None] + window).unsqueeze(1).expand(batch, channels, -1)
    return padded.flatten(2).gather(2, index).view(batch, channels, height, width)


@AUGMENTATIONS.register("flip")
def random_flip(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left to right with probability one half."""
    flip = _rand((x.shape[0],), generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, size, generator=generator, device=generator.device).to(device)


def _rand(size: tuple[int, ...], generator: torch.Generator,
          device: torch.device) -> torch.Tensor:
    return torch.rand(size, generator=generator, device=generator.device).to(device)
