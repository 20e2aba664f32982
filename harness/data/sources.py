"""Find a data set on disk, decode it once into uint8 tensors, and cache the tensors.

Two layouts are read: an ImageFolder tree (``train/<class>/<image>``, ``test/<class>/<image>``)
and, for CIFAR-10, the official python batches (``cifar-10-batches-py/``). Decoding 60,000 JPEGs
takes seconds, so the tensors are saved in ``<root>/.harness-cache/<key>.pt`` and reused while the
images are unchanged, and kept in memory so a study of many trials reads them once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.core.errors import UserError, unknown_choice
from harness.recipe import DataSpec

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)
DATASETS = ("cifar10", "imagefolder")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)

# Bump when the decoding or the cache layout changes, so old cache files stop matching.
_FORMAT_VERSION = 1
_CACHE_DIR_NAME = ".harness-cache"
_BATCHES_DIR = "cifar-10-batches-py"
# Modes that hold one grey channel; everything else is decoded as RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Below this many images a process pool costs more than it saves.
_POOL_MIN_IMAGES = 2000
_POOL_CHUNK = 1000
_POOL_MAX_WORKERS = 8
# Data sets kept in memory; two covers a study switching between a full and a resized copy.
_MEMO_SIZE = 2
_MEMO: OrderedDict[tuple[str, str], Dataset] = OrderedDict()


@dataclass(frozen=True)
class ImageSet:
    """Images and their labels, aligned by index."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A decoded data set: the train and test images, the class names, and where they came from.

    ``digest`` is the sha256 of the decoded content (images, labels and class names), so two runs
    with equal digests saw the same pixels whatever path or format they were read from.
    """

    train: ImageSet
    test: ImageSet
    classes: list[str]
    digest: str
    source: str


@dataclass(frozen=True)
class _Found:
    """A located data set, listed but not yet decoded."""

    layout: str  # "folder" or "batches"
    root: Path
    source: str
    fingerprint: tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns) per file
    classes: tuple[str, ...] = ()  # folder only; the batches name their own classes
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # split → (path, label)


def load_dataset(spec: DataSpec) -> Dataset:
    """Return the decoded train and test images that ``spec`` names.

    A data set already decoded in this process, or cached on disk for the same files, is reused;
    any change to an image file (its size or modification time) decodes it afresh.

    Args:
        spec: The data section of a recipe; ``name``, ``root``, ``download`` and ``image_size``
            are read here.

    Returns:
        The data set, images as uint8 ``[N, C, H, W]`` on the CPU. Its tensors are shared with
        every other caller that loads the same files, so they must not be changed in place.

    Raises:
        UserError: The data cannot be found, an image cannot be read, or the images do not fit
            together (differing sizes, differing class folders).
    """
    root = Path(spec.root).expanduser().resolve()
    if spec.name == "cifar10":
        found = _find_cifar10(root, spec.download)
    elif spec.name == "imagefolder":
        found = _scan_folder(root, f"ImageFolder {root}")
    else:
        raise unknown_choice("dataset", spec.name, DATASETS)

    key = _cache_key(spec, found.fingerprint)
    memo_key = (key, str(root))
    if memo_key in _MEMO:
        _MEMO.move_to_end(memo_key)
        return _MEMO[memo_key]

    dataset = _read_cache(root, key, found.source)
    if dataset is None:
        dataset = _decode(found, spec.image_size)
        _write_cache(root, key, dataset)
    _MEMO[memo_key] = dataset
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return dataset


def clear_memo() -> None:
    """Forget the data sets held in memory, so the next load reads the disk cache or decodes."""
    _MEMO.clear()


# --- finding the files -------------------------------------------------------------------------


def _find_cifar10(root: Path, download: bool) -> _Found:
    if (root / "train").is_dir() or (root / "test").is_dir():
        found = _scan_folder(root, f"CIFAR-10 ImageFolder {root}")
        if found.classes != CIFAR10_CLASSES:
            raise UserError(
                f"the class folders under '{root}' are not CIFAR-10's ({', '.join(found.classes)}"
                f" instead of {', '.join(CIFAR10_CLASSES)}); set data.name=imagefolder to use "
                "other images"
            )
        return found
    if not (root / _BATCHES_DIR).is_dir():
        if not download:
            raise UserError(
                f"no CIFAR-10 found under '{root}': expected an ImageFolder tree "
                f"(train/<class>/*.jpg, test/<class>/*.jpg) or the official batches "
                f"({_BATCHES_DIR}/); set data.root=PATH to a local copy, or data.download=true"
            )
        _download_cifar10(root)
    batches = root / _BATCHES_DIR
    return _Found("batches", root, f"CIFAR-10 batches {batches}", _fingerprint_dir(root, batches))


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10  # imported late: only this path needs it

    try:
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except Exception as exc:  # any failure (no network, disk full) ends the same way for a user
        raise UserError(
            f"no CIFAR-10 found under '{root}' and downloading it failed ({_one_line(exc)}); "
            "set data.root=PATH to a local copy (an ImageFolder tree or cifar-10-batches-py/)"
        ) from None


def _scan_folder(root: Path, source: str) -> _Found:
    """List ``root/{train,test}/<class>/<image>``, checking the tree is complete and consistent."""
    if not root.is_dir():
        raise UserError(
            f"data root '{root}' does not exist or is not a folder; set data.root=PATH to a "
            "folder holding train/<class>/<image> and test/<class>/<image>"
        )
    classes_of: dict[str, list[str]] = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(
                f"no '{split}' folder in '{root}': an ImageFolder root needs "
                f"train/<class>/<image> and test/<class>/<image>"
            )
        with os.scandir(split_dir) as entries:
            names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise UserError(f"no class folders in '{split_dir}': expected {split}/<class>/<image>")
        classes_of[split] = names
    if classes_of["train"] != classes_of["test"]:
        only_train = sorted(set(classes_of["train"]) - set(classes_of["test"]))
        only_test = sorted(set(classes_of["test"]) - set(classes_of["train"]))
        raise UserError(
            f"the class folders of '{root / 'train'}' and '{root / 'test'}' differ: only in "
            f"train: {', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'}"
        )

    classes = tuple(classes_of["train"])
    files: dict[str, list[tuple[str, int]]] = {}
    fingerprint: list[tuple[str, int, int]] = []
    for split in ("train", "test"):
        files[split] = []
        for label, name in enumerate(classes):
            class_dir = root / split / name
            with os.scandir(class_dir) as entries:
                images = sorted((e for e in entries if _is_image(e)), key=lambda e: e.name)
            if not images:
                raise UserError(
                    f"class folder '{class_dir}' holds no images (looked for "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            for entry in images:
                stat = entry.stat()
                files[split].append((entry.path, label))
                fingerprint.append((f"{split}/{name}/{entry.name}", stat.st_size, stat.st_mtime_ns))
    return _Found("folder", root, source, tuple(fingerprint), classes, files)


def _is_image(entry: os.DirEntry[str]) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    )


def _fingerprint_dir(root: Path, folder: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stat = path.stat()
            out.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


# --- decoding ----------------------------------------------------------------------------------


def _decode(found: _Found, image_size: int | None) -> Dataset:
    if found.layout == "batches":
        train, test, classes = _decode_batches(found.root, image_size)
    else:
        train, test = _decode_folder(found, image_size)
        classes = list(found.classes)
    return Dataset(train, test, classes, _content_digest(train, test, classes), found.source)


def _decode_batches(root: Path, image_size: int | None) -> tuple[ImageSet, ImageSet, list[str]]:
    from torchvision.datasets import CIFAR10  # imported late: only this path needs it

    parts = []
    classes: list[str] = []
    for train in (True, False):
        try:
            batches = CIFAR10(str(root), train=train, download=False)
        except Exception as exc:  # torchvision raises RuntimeError for missing or bad files
            raise UserError(
                f"cannot read the CIFAR-10 batches in '{root / _BATCHES_DIR}': "
                f"{_one_line(exc)}; set data.root=PATH to an intact copy, or data.download=true"
            ) from None
        array = batches.data  # uint8 [N, H, W, C]
        if image_size is not None and array.shape[1:3] != (image_size, image_size):
            array = np.stack([_resize(Image.fromarray(a), image_size) for a in array])
        images = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()
        parts.append(ImageSet(images, torch.tensor(batches.targets, dtype=torch.int64)))
        classes = list(batches.classes)
    return parts[0], parts[1], classes


def _decode_folder(found: _Found, image_size: int | None) -> tuple[ImageSet, ImageSet]:
    listed = found.files["train"] + found.files["test"]
    paths = [path for path, _ in listed]
    arrays = _decode_all(paths, image_size)

    first = arrays[0].shape[:2]
    for path, array in zip(paths, arrays):
        if array.shape[:2] != first:
            raise UserError(
                f"images under '{found.root}' differ in size: '{paths[0]}' is "
                f"{first[1]}x{first[0]} but '{path}' is {array.shape[1]}x{array.shape[0]}; "
                "set data.image_size=N to resize every image to N x N"
            )
    # One colour image makes the whole set RGB; grey images then repeat their channel.
    if all(a.ndim == 2 for a in arrays):
        stacked = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
    else:
        rgb = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        stacked = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
    del arrays

    labels = torch.tensor([label for _, label in listed], dtype=torch.int64)
    n_train = len(found.files["train"])
    # Clones, not views: torch.save writes a view's whole storage, which would double the cache.
    train = ImageSet(stacked[:n_train].clone(), labels[:n_train].clone())
    test = ImageSet(stacked[n_train:].clone(), labels[n_train:].clone())
    return train, test


def _decode_all(paths: list[str], image_size: int | None) -> list[np.ndarray]:
    """Decode every image, in a pool of forked processes when there are many."""
    workers = _worker_count()
    if len(paths) < _POOL_MIN_IMAGES or workers < 2:
        return _decode_chunk(paths, image_size)
    chunks = [paths[i : i + _POOL_CHUNK] for i in range(0, len(paths), _POOL_CHUNK)]
    # Fork, not spawn: a spawned worker would spend a second importing torch before decoding,
    # and the workers touch only PIL and numpy, which are safe after a fork.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        decoded = list(pool.map(_decode_chunk, chunks, itertools.repeat(image_size)))
    finally:
        pool.shutdown(cancel_futures=True)
    return list(itertools.chain.from_iterable(decoded))


def _worker_count() -> int:
    if not sys.platform.startswith("linux"):  # fork is unsafe on macOS and absent on Windows
        return 1
    return min(len(os.sched_getaffinity(0)), _POOL_MAX_WORKERS)


def _decode_chunk(paths: list[str], image_size: int | None) -> list[np.ndarray]:
    return [_decode_image(path, image_size) for path in paths]


def _decode_image(path: str, image_size: int | None) -> np.ndarray:
    """Return one image as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (colour)."""
    try:
        with Image.open(path) as opened:
            image = _grey_or_rgb(opened)
            return _resize(image, image_size)
    except Exception as exc:  # PIL raises many types for broken files; all mean the same here
        raise UserError(f"cannot read image '{path}': {_one_line(exc)}") from None


def _grey_or_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Keep the high byte: convert("L") would clip every value above 255 to white.
        wide = np.asarray(image).astype(np.uint16)
        return Image.fromarray((wide >> 8).astype(np.uint8), mode="L")
    return image.convert("L" if image.mode in _GRAY_MODES else "RGB")


def _resize(image: Image.Image, size: int | None) -> np.ndarray:
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _content_digest(train: ImageSet, test: ImageSet, classes: list[str]) -> str:
    digest = hashlib.sha256()
    header = {
        "classes": classes,
        "shapes": [list(t.shape) for t in (train.images, train.labels, test.images, test.labels)],
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for tensor in (train.images, train.labels, test.images, test.labels):
        digest.update(tensor.contiguous().numpy().data)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the disk cache ----------------------------------------------------------------------------


def _cache_key(spec: DataSpec, fingerprint: tuple[tuple[str, int, int], ...]) -> str:
    """Hash what decides the decoded tensors: the files as listed and the decoding settings."""
    key = hashlib.sha256()
    settings = {"format": _FORMAT_VERSION, "name": spec.name, "image_size": spec.image_size}
    key.update(json.dumps(settings, sort_keys=True).encode())
    for relative, size, mtime_ns in fingerprint:
        key.update(f"\n{relative}\0{size}\0{mtime_ns}".encode())
    return key.hexdigest()


def _cache_dirs(root: Path) -> list[Path]:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [root / _CACHE_DIR_NAME, base / "ablation-harness"]


def _read_cache(root: Path, key: str, source: str) -> Dataset | None:
    for folder in _cache_dirs(root):
        path = folder / f"{key}.pt"
        if not path.is_file():
            continue
        try:
            return _from_blob(torch.load(path, map_location="cpu", weights_only=True), source)
        except Exception as exc:  # a damaged cache is only a lost shortcut: decode again
            warnings.warn(
                f"ignoring damaged data cache '{path}' ({_one_line(exc)}); decoding again",
                stacklevel=3,
            )
    return None


def _from_blob(blob: dict, source: str) -> Dataset:
    if blob.get("format") != _FORMAT_VERSION:
        raise ValueError(f"cache format {blob.get('format')!r}, expected {_FORMAT_VERSION}")
    train = ImageSet(blob["train_images"], blob["train_labels"])
    test = ImageSet(blob["test_images"], blob["test_labels"])
    for part in (train, test):
        if part.images.dtype != torch.uint8 or part.labels.dtype != torch.int64:
            raise ValueError("unexpected tensor types")
        if part.images.ndim != 4 or part.labels.shape != part.images.shape[:1]:
            raise ValueError("unexpected tensor shapes")
    classes = [str(name) for name in blob["classes"]]
    # Re-hashing costs ~0.1 s for CIFAR-10 and catches a file damaged after it was written.
    digest = _content_digest(train, test, classes)
    if digest != blob["digest"]:
        raise ValueError("content does not match its digest")
    return Dataset(train, test, classes, digest, source)


def _write_cache(root: Path, key: str, dataset: Dataset) -> None:
    blob = {
        "format": _FORMAT_VERSION,
        "classes": list(dataset.classes),
        "digest": dataset.digest,
        "train_images": dataset.train.images,
        "train_labels": dataset.train.labels,
        "test_images": dataset.test.images,
        "test_labels": dataset.test.labels,
    }
    for folder in _cache_dirs(root):
        tmp = folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as handle:
                    torch.save(blob, handle)
                # Readers see the old file or the whole new one, never a half-written one.
                os.replace(tmp, folder / f"{key}.pt")
            finally:
                tmp.unlink(missing_ok=True)
            return
        except OSError:
            continue  # not writable (read-only data, full disk): try the next place
    warnings.warn(
        f"could not write the data cache under '{root / _CACHE_DIR_NAME}' or the user cache; "
        "the next run decodes the images again",
        stacklevel=3,
    )
