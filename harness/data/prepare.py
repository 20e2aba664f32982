"""Turn a ``DataSpec`` into normalised tensors on the training device, and batch them.

Everything a training step needs is done here once, up front: decode, split, convert to float,
normalise, move to the device. A step then only slices preloaded tensors, which keeps the loop
within a few per cent of a bare loop over tensors; a DataLoader with per-batch transforms would
cost more than the small models studied here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.core.errors import UserError
from harness.data.sources import load_dataset
from harness.data.splits import make_splits
from harness.recipe import DataSpec


@dataclass
class PreparedData:
    """Normalised float32 images ``[N, C, H, W]`` and int64 labels, already on the device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units, as subtracted
    std: tuple[float, ...]
    digest: str  # of the whole decoded data set (see ``Dataset.digest``)
    source: str
    test_digest: str = ""  # of the test split's images and labels, in their order


    @property
    def in_channels(self) -> int:
        """Channels per image: 1 for grey, 3 for colour."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width of every image."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        """How many classes the labels index."""
        return len(self.classes)


def prepare_data(spec: DataSpec, device: torch.device | str = "cpu") -> PreparedData:
    """Load, split and normalise the data ``spec`` describes, and place it on ``device``.

    Args:
        spec: The data section of a recipe. ``mean`` and ``std`` (1 or 3 values, in [0, 1] pixel
            units) are used when given; each one left as None is measured per channel on the
            training split.
        device: Where the tensors go; they are moved once, as uint8, and converted there.

    Returns:
        The prepared splits with the statistics used.

    Raises:
        UserError: From loading or splitting, or when ``mean``/``std`` have 3 values for grey
            images.
    """
    device = torch.device(device)
    dataset = load_dataset(spec)
    splits = make_splits(dataset, spec)
    channels = splits.train.images.shape[1]
    if spec.mean is None or spec.std is None:
        measured_mean, measured_std = _measure(splits.train.images)
    mean = measured_mean if spec.mean is None else _per_channel("data.mean", spec.mean, channels)
    std = measured_std if spec.std is None else _per_channel("data.std", spec.std, channels)
    return PreparedData(
        train_x=_normalise(splits.train.images, mean, std, device),
        train_y=splits.train.labels.to(device),
        val_x=_normalise(splits.val.images, mean, std, device),
        val_y=splits.val.labels.to(device),
        test_x=_normalise(splits.test.images, mean, std, device),
        test_y=splits.test.labels.to(device),
        classes=list(dataset.classes),
        mean=mean,
        std=std,
        digest=dataset.digest,
        source=dataset.source,
        test_digest=test_digest(splits.test.images, splits.test.labels),
    )


def test_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Return the sha256 of a test split's uint8 images and labels, in their order.

    Two runs' per-example results line up exactly when their test digests are equal.
    """
    digest = hashlib.sha256()
    for tensor in (images, labels):
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().data)
    return digest.hexdigest()


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches covering every row once; the last batch may be smaller.

    Args:
        x: Inputs, first dimension the examples.
        y: Targets aligned with ``x``.
        batch_size: Rows per batch.
        shuffle: Visit the rows in a random order drawn from ``generator``.
        generator: Random source for the order; on the CPU or on ``x``'s device. None uses
            torch's global generator.

    Yields:
        Batches: views of ``x`` and ``y`` in order, or gathered copies when shuffled.
    """
    if not shuffle:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    for rows in shuffled_rows(x.shape[0], batch_size, generator, x.device):
        yield x.index_select(0, rows), y.index_select(0, rows)


def shuffled_rows(count: int, batch_size: int, generator: torch.Generator | None,
                  device: torch.device) -> Iterator[torch.Tensor]:
    """Yield the row indices of one epoch's batches, in a random order drawn from ``generator``.

    Args:
        count: Rows to cover, each once.
        batch_size: Rows per batch; the last batch may be smaller.
        generator: Random source for the order, on the CPU or on ``device``. None uses torch's
            global generator.
        device: Where the indices go (the data's device).

    Yields:
        int64 index tensors on ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    # One permutation per epoch; a per-batch gather then costs no more than the batch itself.
    where = generator.device if generator is not None else device
    order = torch.randperm(count, generator=generator, device=where).to(device)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def _measure(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    if images.shape[0] == 0:
        raise UserError("cannot measure data.mean/data.std on an empty training split")
    # A histogram of the 256 levels gives exact moments, several times faster than float sums.
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        weights = counts / counts.sum()
        mean = float((weights * levels).sum())
        var = max(float((weights * levels**2).sum()) - mean**2, 0.0)
        means.append(mean)
        # A constant channel has no spread; dividing by 1 keeps it at zero instead of blowing up.
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _per_channel(key: str, values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if key == "data.std" and min(values, default=1.0) <= 0:
        raise UserError(f"{key} values must be positive, got {list(values)}")
    if len(values) == channels:
        return tuple(float(v) for v in values)
    if len(values) == 1:
        return (float(values[0]),) * channels
    raise UserError(f"{key} has {len(values)} values but the images have {channels} channel(s)")


def _normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
               device: torch.device) -> torch.Tensor:
    # Move as uint8 (a quarter of the bytes) and convert on the device.
    x = images.to(device).to(torch.float32)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, -1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
    return x.mul_(scale).sub_(shift)
