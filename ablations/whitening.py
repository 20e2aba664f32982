"""Trick ``whitening``: a frozen first layer that whitens the images' patches.

airbench (Jordan 2024, after tysam-code's hlb-CIFAR10 and Page 2018's Myrtle ResNet)
sets the first convolution from the training data: the eigenvectors of the covariance of its
k×k input patches, each divided by the square root of its eigenvalue (plus ε=5e-4), and their
negatives, so the GELU after it passes both signs. Its output channels are then uncorrelated
with unit variance, and its weights are never trained. The bias trains for the first
``epochs`` (airbench: 3) and is then frozen as well. The covariance is measured on the first
5,000 training images, as airbench does. airbench's layer has 2·C·k² filters (24 for RGB at
k=2); ``off`` leaves it an ordinary trainable convolution.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import UserError
from harness.models.parts import DATA_INITIALIZERS
from harness.training.hooks import HOOKS, HookContext, StepHook, setting
from harness.tricks import Trick, appended, register, removed

INITIALIZER = "whiten_patches"
HOOK = "freeze_first_bias"
SAMPLE_IMAGES = 5000
EPSILON = 5e-4  # added to each eigenvalue, so near-constant directions are not blown up
CHUNK_IMAGES = 500  # patches of this many images at a time bound the memory used


def first_conv(model: nn.Module) -> nn.Conv2d:
    """Return the first convolution of ``model``, in module order."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise UserError("whitening needs a network with a convolution")


def patch_covariance(images: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Return the (uncentred) covariance of all k×k patches of ``images``, in float64.

    Patches are flattened channel-major, as a convolution's weight is: ``[C·kh·kw]``.
    """
    total, count = None, 0
    for chunk in images.split(CHUNK_IMAGES):
        patches = F.unfold(chunk.float(), kernel)  # [B, C·kh·kw, positions]
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        product = patches.T @ patches
        total = product if total is None else total + product
        count += patches.shape[0]
    if total is None:
        raise UserError("whitening needs training images to measure patches on")
    return total / count


@DATA_INITIALIZERS.register(INITIALIZER)
def whiten_patches(model: nn.Module, images: torch.Tensor) -> None:
    """Set the first conv to whiten its patches (eigenvectors and negatives), and freeze it.

    airbench's first layer has 2·C·k² filters, one pair per patch direction. A layer with fewer
    gets the leading directions (largest eigenvalues first); with more, the filters beyond the
    pairs keep their initialisation.
    """
    layer = first_conv(model)
    if layer.groups != 1:
        raise UserError("whitening needs an ordinary first convolution, not a grouped one")
    dimension = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    pairs = min(layer.out_channels // 2, dimension)
    covariance = patch_covariance(images[:SAMPLE_IMAGES], layer.kernel_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:pairs], eigenvectors.flip(1)[:, :pairs]
    filters = eigenvectors.T / torch.sqrt(eigenvalues + EPSILON)[:, None]
    filters = filters.reshape(pairs, *layer.weight.shape[1:]).to(layer.weight)
    with torch.no_grad():
        layer.weight[:2 * pairs] = torch.cat((filters, -filters))
        if layer.bias is not None:
            layer.bias.zero_()
    layer.weight.requires_grad_(False)


class FreezeFirstBias(StepHook):
    """Stop training the first convolution's bias after ``epochs`` epochs.

    The bias keeps its gradient and is put back to its value of the last training step after
    every later step. Turning its gradient off instead would break DDP, which expects a
    gradient for every parameter it was given.
    """

    def __init__(self, settings: Mapping[str, float], context: HookContext) -> None:
        self.bias = first_conv(context.model).bias
        self.last_step = round(setting(settings, "epochs", HOOK) * context.steps_per_epoch)
        self.kept: torch.Tensor | None = None

    def after_step(self, step: int) -> None:
        """Keep the bias of the last training step, or put it back to that."""
        if self.bias is None:
            return
        if self.kept is None:
            if step >= self.last_step:
                self.kept = self.bias.detach().clone()
            return
        with torch.no_grad():
            self.bias.copy_(self.kept)


HOOKS.register(HOOK)(FreezeFirstBias)

register(Trick(
    name="whitening",
    doc="Frozen patch-whitening first layer from the training data's patch covariance "
        "(Jordan 2024, airbench).",
    options={
        "off": {"model.post_init": removed(INITIALIZER), f"trainer.hooks.{HOOK}": None},
        "on": {"model.post_init": appended(INITIALIZER),
               f"trainer.hooks.{HOOK}": {"epochs": 3.0}},
    },
))
