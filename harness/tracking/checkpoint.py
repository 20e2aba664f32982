"""Checkpoints that carry their recipe, so a run can be rebuilt and re-evaluated from one file."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.errors import UserError
from harness.models import build_model
from harness.recipe import Recipe
from harness.tricks import load_tricks

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what it was trained on."""

    model: nn.Module
    recipe: Recipe
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset_digest: str


def save_checkpoint(path: str | Path, model: nn.Module, recipe: Recipe, classes: list[str],
                    in_channels: int, image_size: tuple[int, int], mean: tuple[float, ...],
                    std: tuple[float, ...], dataset_digest: str) -> Path:
    """Write the weights and everything needed to rebuild the model, atomically.

    Only tensors, numbers, strings, lists and dicts go in, so it loads with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "state_dict": state,
        "recipe": recipe.to_dict(),
        "classes": list(classes),
        "in_channels": int(in_channels),
        "image_size": [int(s) for s in image_size],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "dataset_digest": dataset_digest,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint from its recipe and load its weights."""
    load_tricks()  # parts named in the recipe may come from ablations/
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at '{path}'") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read checkpoint '{path}': {exc}") from None
    recipe = Recipe.from_dict(payload["recipe"])
    model = build_model(recipe.model, len(payload["classes"]), payload["in_channels"],
                        tuple(payload["image_size"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    return Checkpoint(model, recipe, payload["classes"], tuple(payload["mean"]),
                      tuple(payload["std"]), payload["dataset_digest"])
