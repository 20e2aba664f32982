"""Every registered part trains: each stem, shortcut, initialiser, optimizer, schedule, loss and
augmentation, the harness's own and those the tricks add, in one short run of its own.

The parts are read from the registries after the tricks loaded, so a part a trick adds is
exercised here without a test of its own (``adamw``, say, which no study varies).
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.registry import Registry
from harness.data import prepare_data
from harness.data.augment import AUGMENTATIONS
from harness.models.parts import ARCHITECTURES, DATA_INITIALIZERS, INITIALIZERS, SHORTCUTS, STEMS
from harness.recipe import (
    AugmentSpec,
    DataSpec,
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    Recipe,
    ScheduleSpec,
    TrainerSpec,
)
from harness.training.losses import LOSSES
from harness.training.optimizers import OPTIMIZERS
from harness.training.schedules import SCHEDULES
from harness.training.trainer import fit
from harness.tricks import load_tricks

load_tricks()

_PRODUCT = ("harness.", "ablations.")  # the modules that are the product, not its tests

BASE = Recipe(
    model=ModelSpec(arch="resnet18", width=4),
    optimizer=OptimizerSpec(lr=0.01),
    trainer=TrainerSpec(epochs=1, batch_size=32, eval_batch_size=64),
)


def _recipe(kind: str, name: str) -> Recipe:
    """BASE with the part ``name`` of registry ``kind`` in its place."""
    model, replace = BASE.model, dataclasses.replace
    recipes = {
        "architecture": lambda: replace(BASE, model=replace(model, arch=name)),
        "stem": lambda: replace(BASE, model=replace(model, stem=name)),
        "shortcut": lambda: replace(BASE, model=replace(model, shortcut=name)),
        "initializer": lambda: replace(BASE, model=replace(model, init=name)),
        "data initializer": lambda: replace(BASE, model=replace(model, post_init=(name,))),
        "optimizer": lambda: replace(BASE, optimizer=replace(BASE.optimizer, name=name)),
        "schedule": lambda: replace(BASE, schedule=ScheduleSpec(name=name, warmup_epochs=0.5)),
        "loss": lambda: replace(BASE, loss=LossSpec(name=name, smoothing=0.1)),
        "augmentation": lambda: replace(BASE, augment=AugmentSpec(ops=(name,))),
    }
    return recipes[kind]()


PARTS = [(kind, name) for kind, registry in (
    ("architecture", ARCHITECTURES), ("stem", STEMS), ("shortcut", SHORTCUTS),
    ("initializer", INITIALIZERS), ("data initializer", DATA_INITIALIZERS),
    ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES),
    ("augmentation", AUGMENTATIONS)) for name in registry.names()]


@pytest.fixture(scope="module")
def data(learnable_folder):
    return prepare_data(DataSpec(name="imagefolder", root=str(learnable_folder), val_size=30))


def test_the_tricks_add_parts_to_the_registries():
    names = {name for _, name in PARTS}
    assert {"adamw", "deep"} <= names, sorted(names)


@pytest.mark.parametrize(("kind", "name"), PARTS, ids=[f"{k}={n}" for k, n in PARTS])
def test_every_registered_part_trains(data, kind, name):
    result = fit(_recipe(kind, name), data, device="cpu", progress=False)
    assert result.status == "finished", result.reason
    assert result.epochs_completed == 1
    assert math.isfinite(result.history[-1]["train_loss"])
    test = result.evaluate(data.test_x, data.test_y, data.classes)
    assert 0.0 <= test.accuracy <= 100.0 and math.isfinite(test.loss)


def test_a_fresh_process_registers_the_same_parts_from_the_recorded_modules():
    # A DDP rank starts bare and imports Registry.modules() to get the caller's parts and hooks.
    # Test modules that registered parts of their own are not importable from a bare process.
    modules = [m for m in Registry.modules() if m.startswith(_PRODUCT)]
    assert "ablations.mixup" in modules and "harness.models.parts" in modules
    script = ("import importlib, json, sys\n"
              "from harness.core.registry import Registry\n"
              "for name in sys.argv[1:]:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps({r.kind: r.names() for r in Registry.instances}))\n")
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    there = json.loads(done.stdout)
    here = {r.kind: [n for n in r.names() if r.origin(n).startswith(_PRODUCT)]
            for r in Registry.instances}
    for kind, names in here.items():
        if names:
            assert there.get(kind) == names, kind
