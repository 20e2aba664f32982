"""Images in: find, decode, cache, split, normalise, batch and augment them."""

from harness.data.augment import AUGMENTATIONS, augment
from harness.data.prepare import PreparedData, iterate_batches, prepare_data, shuffled_rows
from harness.data.sources import Dataset, ImageSet, load_dataset
from harness.data.splits import Splits, make_splits

__all__ = [
    "AUGMENTATIONS",
    "Dataset",
    "ImageSet",
    "PreparedData",
    "Splits",
    "augment",
    "iterate_batches",
    "load_dataset",
    "make_splits",
    "prepare_data",
    "shuffled_rows",
]
