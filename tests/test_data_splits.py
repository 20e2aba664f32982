"""Splitting (harness.data.splits) and preparing/batching (harness.data.prepare)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from harness.core.errors import UserError
from harness.data import Dataset, ImageSet, iterate_batches, load_dataset, make_splits, prepare_data
from harness.data.sources import clear_memo
from harness.data.splits import stratified_counts
from harness.recipe import DataSpec

TRAIN_COUNTS = (500, 300, 200)
TEST_COUNTS = (50, 30, 20)


def image_set(counts: tuple[int, ...]) -> ImageSet:
    """Images whose two pixels spell their own index, so a split can be traced back."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    ids = torch.arange(len(labels))
    images = torch.stack([ids // 256, ids % 256], dim=1).to(torch.uint8).view(-1, 1, 1, 2)
    return ImageSet(images, labels)


def ids(part: ImageSet) -> list[int]:
    pixels = part.images.view(-1, 2).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(image_set(TRAIN_COUNTS), image_set(TEST_COUNTS), ["x", "y", "z"], "d", "test")


def test_subsets_keep_class_proportions(dataset: Dataset) -> None:
    spec = DataSpec(val_size=100, train_size=50, test_size=10)
    splits = make_splits(dataset, spec)
    assert torch.bincount(splits.val.labels).tolist() == [50, 30, 20]
    assert torch.bincount(splits.train.labels).tolist() == [25, 15, 10]
    assert torch.bincount(splits.test.labels).tolist() == [5, 3, 2]


def test_sizes_are_exact_with_largest_remainder(dataset: Dataset) -> None:
    generator = torch.Generator().manual_seed(0)
    assert stratified_counts([5, 3, 2], 7, generator) == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert sum(stratified_counts([3, 3, 3], 4, generator)) == 4
    assert stratified_counts([0, 4], 2, generator) == [0, 2]
    for val_size in (1, 7, 333, 999):
        splits = make_splits(dataset, DataSpec(val_size=val_size))
        assert len(splits.val) == val_size
        assert len(splits.train) == 1000 - val_size


def test_val_and_train_are_disjoint_and_cover_train(dataset: Dataset) -> None:
    splits = make_splits(dataset, DataSpec(val_size=100))
    val, train = set(ids(splits.val)), set(ids(splits.train))
    assert not val & train
    assert val | train == set(range(1000))
    # Labels travel with their images.
    assert torch.equal(splits.train.labels, dataset.train.labels[ids(splits.train)])


def test_splits_are_deterministic_per_seed(dataset: Dataset) -> None:
    spec = DataSpec(val_size=100, train_size=300, test_size=20, split_seed=3)
    first, again = make_splits(dataset, spec), make_splits(dataset, spec)
    other = make_splits(dataset, DataSpec(val_size=100, train_size=300, test_size=20,
                                          split_seed=4))
    for name in ("train", "val", "test"):
        assert ids(getattr(first, name)) == ids(getattr(again, name))
        assert ids(getattr(first, name)) != ids(getattr(other, name))


def test_val_does_not_depend_on_train_or_test_size(dataset: Dataset) -> None:
    reference = ids(make_splits(dataset, DataSpec(val_size=100)).val)
    for train_size, test_size in ((None, 10), (50, None), (900, 100), (1, 1)):
        spec = DataSpec(val_size=100, train_size=train_size, test_size=test_size)
        assert ids(make_splits(dataset, spec).val) == reference


def test_empty_val_keeps_its_shape(dataset: Dataset) -> None:
    splits = make_splits(dataset, DataSpec(val_size=0))
    assert splits.val.images.shape == (0, 1, 1, 2)
    assert splits.val.labels.shape == (0,)
    assert len(splits.train) == 1000
    assert len(splits.test) == 100


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"val_size": 1000}, "data.val_size=1000 leaves no training images"),
        ({"val_size": 100, "train_size": 901}, "data.train_size=901 is more than the 900"),
        ({"val_size": 0, "test_size": 101}, "data.test_size=101 is more than the 100 test images"),
        ({"val_size": 0, "train_size": 0}, "data.train_size must be a positive integer"),
    ],
)
def test_too_large_sizes_are_user_errors(dataset: Dataset, changes: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_splits(dataset, DataSpec(**changes))


# --- prepare_data and iterate_batches ----------------------------------------------------------


@pytest.fixture
def folder_spec(tiny_folder: Path) -> DataSpec:
    clear_memo()
    return DataSpec(name="imagefolder", root=str(tiny_folder), val_size=3)


def test_prepare_normalises_train_to_zero_mean(folder_spec: DataSpec) -> None:
    data = prepare_data(folder_spec)

    assert data.train_x.dtype == torch.float32
    assert data.train_x.shape == (9, 3, 8, 8)
    assert data.val_x.shape == (3, 3, 8, 8)
    assert data.test_x.shape == (6, 3, 8, 8)
    assert data.train_y.dtype == torch.int64
    assert (data.in_channels, data.image_size, data.num_classes) == (3, (8, 8), 3)
    assert data.classes == ["a", "b", "c"]
    assert len(data.mean) == 3 and len(data.std) == 3
    assert all(0 < m < 1 for m in data.mean)
    per_channel = data.train_x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3), atol=1e-5,
                               rtol=0)
    assert data.digest == load_dataset(folder_spec).digest


def test_prepare_broadcasts_given_statistics(folder_spec: DataSpec) -> None:
    spec = dataclasses.replace(folder_spec, mean=(0.5,), std=(0.25,))
    data = prepare_data(spec)
    raw = make_splits(load_dataset(spec), spec).train.images.float() / 255
    assert data.mean == (0.5, 0.5, 0.5)
    torch.testing.assert_close(data.train_x, (raw - 0.5) / 0.25)


def test_three_statistics_for_grey_images_is_an_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, mode="L")
    spec = DataSpec(name="imagefolder", root=str(root), val_size=0, mean=(0.1, 0.2, 0.3))
    with pytest.raises(UserError, match="data.mean has 3 values but the images have 1"):
        prepare_data(spec)
    assert prepare_data(DataSpec(name="imagefolder", root=str(root), val_size=0)).in_channels == 1


@pytest.mark.parametrize("shuffle", [True, False])
def test_iterate_batches_visits_every_row_once(shuffle: bool) -> None:
    x = torch.arange(103).float().view(-1, 1)
    y = torch.arange(103)
    generator = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, 10, shuffle=shuffle, generator=generator))

    assert [len(b) for b, _ in batches] == [10] * 10 + [3]
    seen = torch.cat([labels for _, labels in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert (seen.tolist() == list(range(103))) is not shuffle
    for inputs, labels in batches:
        assert torch.equal(inputs.view(-1).long(), labels)


def test_iterate_batches_is_deterministic_per_generator() -> None:
    x, y = torch.randn(50, 2), torch.arange(50)

    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([b for _, b in iterate_batches(x, y, 8, shuffle=True,
                                                        generator=generator)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
