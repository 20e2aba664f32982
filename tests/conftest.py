"""Shared test helpers: tiny generated image folders instead of real data sets."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def make_image_folder(
    root: Path | str,
    classes: Sequence[str] = ("a", "b", "c"),
    per_class_train: int = 4,
    per_class_test: int = 2,
    size: tuple[int, int] = (8, 8),
    mode: str = "RGB",
    ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write random images as ``root/{train,test}/<class>/NNNN<ext>`` and return ``root``.

    ``size`` is (width, height) as PIL has it; ``mode`` is a PIL mode such as "RGB" or "L";
    ``ext`` picks the format (".png" is lossless, ".jpg" is not).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    shape = (height, width) if mode in ("L", "1") else (height, width, len(mode))
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i:04d}{ext}")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A 3-class RGB ImageFolder of 8x8 PNGs: 4 train and 2 test images per class."""
    return make_image_folder(tmp_path / "images")


def make_learnable_folder(root: Path | str, classes: Sequence[str] = ("red", "green", "blue"),
                          per_class_train: int = 40, per_class_test: int = 12,
                          size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """Write noisy images whose class is their dominant colour channel, so a net can learn them."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (height, width, 3)).astype(np.uint8)
                pixels[..., index % 3] += 120
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def learnable_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class ImageFolder of 16x16 PNGs that a small net learns in one epoch."""
    return make_learnable_folder(tmp_path_factory.mktemp("learnable"))


REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = (REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz").resolve()


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 JPEG copy as an ImageFolder tree; skips when it is not on this machine.

    Uses ``./data`` when `make data` unpacked it there, else unpacks the shared tarball once.
    """
    local = REPO / "data"
    if (local / "train").is_dir() and (local / "test").is_dir():
        return local
    if not CIFAR_TARBALL.is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_TARBALL}; end-to-end test skipped")
    target = tmp_path_factory.mktemp("cifar10")
    if shutil.which("tar"):  # ~3 s, where Python's tarfile takes over a minute for 60k files
        subprocess.run(["tar", "xzf", str(CIFAR_TARBALL), "-C", str(target)], check=True)
    else:
        with tarfile.open(CIFAR_TARBALL) as archive:
            archive.extractall(target, filter="data")
    return target
