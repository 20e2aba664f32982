"""Carve validation, training and test subsets out of a data set, stratified by class.

The validation set is drawn first, from its own random stream seeded by ``split_seed`` alone, so it
stays the same whatever ``train_size`` or ``test_size`` a trial asks for; the run seed never
touches it, so every seed of a study is judged on the same images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from harness.core.errors import UserError
from harness.data.sources import Dataset, ImageSet
from harness.recipe import DataSpec


@dataclass(frozen=True)
class Splits:
    """The three subsets a run uses; ``val`` may hold no images (N=0) but keeps its shape."""

    train: ImageSet
    val: ImageSet
    test: ImageSet


def make_splits(dataset: Dataset, spec: DataSpec) -> Splits:
    """Split ``dataset`` as ``spec`` asks: val from train, then a train subset, then a test subset.

    Every subset keeps the class proportions of the set it is drawn from, rounded by largest
    remainder so its size is exact. Indices within a subset stay in data set order.

    Args:
        dataset: The decoded train and test images.
        spec: Reads ``val_size``, ``train_size``, ``test_size`` and ``split_seed``.

    Returns:
        The train, val and test subsets.

    Raises:
        UserError: A size is out of range: negative, zero for ``train_size``/``test_size``, or
            larger than the images it is drawn from (``val_size`` must leave a training image).
    """
    n_train = len(dataset.train)
    for key, size in (("train_size", spec.train_size), ("test_size", spec.test_size)):
        if size is not None and size < 1:
            raise UserError(f"data.{key} must be a positive integer or null for all, got {size}")
    if spec.val_size < 0:
        raise UserError(f"data.val_size must be 0 or more, got {spec.val_size}")
    if spec.val_size >= n_train:
        raise UserError(
            f"data.val_size={spec.val_size} leaves no training images: the training set has "
            f"{n_train} images"
        )
    num_classes = len(dataset.classes)
    labels = dataset.train.labels
    everything = torch.arange(n_train)
    val_idx, rest_idx = _stratified(everything, labels, spec.val_size, num_classes,
                                    _generator(spec.split_seed, "val"))
    if spec.train_size is not None:
        if spec.train_size > len(rest_idx):
            raise UserError(
                f"data.train_size={spec.train_size} is more than the {len(rest_idx)} training "
                f"images left after data.val_size={spec.val_size}"
            )
        rest_idx, _ = _stratified(rest_idx, labels[rest_idx], spec.train_size, num_classes,
                                  _generator(spec.split_seed, "train"))

    test = dataset.test
    if spec.test_size is not None:
        if spec.test_size > len(test):
            raise UserError(
                f"data.test_size={spec.test_size} is more than the {len(test)} test images"
            )
        test_idx, _ = _stratified(torch.arange(len(test)), test.labels, spec.test_size,
                                  num_classes, _generator(spec.split_seed, "test"))
        test = _take(test, test_idx)
    return Splits(train=_take(dataset.train, rest_idx), val=_take(dataset.train, val_idx),
                  test=test)


def stratified_counts(class_counts: list[int], total: int, generator: torch.Generator) -> list[int]:
    """Share ``total`` among classes in proportion to ``class_counts``, summing exactly.

    Each class gets the floor of its exact share; the leftover units go to the largest
    remainders, ties broken at random so no class is favoured by its index.

    Args:
        class_counts: Images per class in the set drawn from.
        total: How many to draw; at most ``sum(class_counts)``.
        generator: Breaks ties between equal remainders.

    Returns:
        How many to draw from each class.
    """
    size = sum(class_counts)
    if size == 0:
        return [0] * len(class_counts)
    # Integer arithmetic keeps the shares exact, so rounding never depends on float error.
    shares = [total * count // size for count in class_counts]
    remainders = [total * count % size for count in class_counts]
    order = torch.randperm(len(class_counts), generator=generator).tolist()
    order.sort(key=lambda c: -remainders[c])  # stable: equal remainders keep the random order
    for c in order[: total - sum(shares)]:
        shares[c] += 1
    return shares


def _stratified(indices: torch.Tensor, labels: torch.Tensor, count: int, num_classes: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``count`` of ``indices`` stratified by ``labels``; return (picked, rest), sorted."""
    class_counts = torch.bincount(labels, minlength=num_classes).tolist()
    quotas = stratified_counts(class_counts, count, generator)
    by_class = torch.argsort(labels, stable=True)
    picked, rest = [], []
    start = 0
    for size, quota in zip(class_counts, quotas):
        members = indices[by_class[start : start + size]]
        members = members[torch.randperm(size, generator=generator)]
        picked.append(members[:quota])
        rest.append(members[quota:])
        start += size
    return torch.cat(picked).sort().values, torch.cat(rest).sort().values


def _generator(split_seed: int, stage: str) -> torch.Generator:
    # One stream per stage, so drawing one subset never shifts the random numbers of another.
    seed = int.from_bytes(hashlib.sha256(f"{split_seed}/{stage}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(seed)


def _take(images: ImageSet, indices: torch.Tensor) -> ImageSet:
    return ImageSet(images.images.index_select(0, indices), images.labels.index_select(0, indices))
