"""``fit``: train the model a recipe describes, in this process or on DDP ranks started for it.

The one entry point to training. It picks the device, then either runs the loop here
(:func:`harness.training.loop.train_in_group`), as one device or as a rank torchrun started, or
starts ``trainer.devices`` ranks that each run it (:mod:`harness.training.devices`). Calls go
one way, from here down: the loop never calls back up.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.core.devices import resolve_device
from harness.data import PreparedData
from harness.recipe import Recipe
from harness.training import ranks
from harness.training.devices import fit_on_devices
from harness.training.loop import EpochCallback, TrainResult, train_in_group


def fit(recipe: Recipe, data: PreparedData, *, device: torch.device | str = "auto",
        callbacks: Sequence[EpochCallback] = (), progress: bool = True,
        description: str = "train") -> TrainResult:
    """Train the model a recipe describes on prepared data.

    Args:
        recipe: The full description of the run.
        data: Splits already on ``device``, normalised. Ranks of a run on several devices may
            get it on the CPU: each moves only its shard of the training set to its device.
        device: A torch device or ``auto``.
        callbacks: Called after each epoch with its metrics.
        progress: Show an epoch bar and a batch bar with images/s and ETA.
        description: Label of the progress bars.

    Returns:
        The trained model and the run's status and per-epoch history. A loss that turns NaN or
        inf ends the run with status ``diverged``; it does not raise. With
        ``trainer.devices=N`` the ranks train and this process runs the callbacks; the result
        is the same as on one device, its model on ``device``.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    group = ranks.current_group()
    if recipe.trainer.devices > 1 or group.active:
        ranks.check_devices(recipe.trainer, device, group)
    if recipe.trainer.devices > 1 and not group.active:
        return fit_on_devices(recipe, data, device, callbacks, progress, description)
    if group.active:
        device = ranks.rank_device(device, group)
    if ranks.joined_torchrun():
        # Under torchrun rank 0 runs the study and the others train what it announces; a
        # failure only some ranks see would leave the others waiting, so it ends the job.
        if group.leader:
            ranks.announce(recipe, data.digest)
        with ranks.fatal_unless_shared():
            return train_in_group(recipe, data, device, callbacks, progress, description, group)
    return train_in_group(recipe, data, device, callbacks, progress, description, group)
