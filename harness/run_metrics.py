"""The MLflow metric and param names a trial writes and the report reads: their one home.

The tag names live in :class:`harness.tracking.Tag`; these are the numbers. Both
:mod:`harness.trial_logging` (the writer) and :mod:`harness.report` (the reader) import them.
"""

from __future__ import annotations


class Metric:
    """Final metrics of one trial run (accuracies in percent, 0-100)."""

    TEST_ACC = "test_acc"
    TEST_LOSS = "test_loss"
    VAL_ACC = "val_acc"  # logged every epoch; MLflow keeps the last value as the run's
    TRAIN_SECONDS = "train_seconds"  # in training steps: compiling and evaluation left out
    COMPILE_SECONDS = "compile_seconds"  # paid before the first step (harness.compiling)
    EPOCHS = "epochs_completed"
    IMAGES_PER_SEC = "images_per_sec_mean"
    TEST_IMAGES = "test_images"  # how many test images the accuracy is over
    PER_CLASS_PREFIX = "test_acc_"  # + class name: per-class test accuracy


class Artifact:
    """Artifact paths of one trial run that the report reads."""

    # The class each test image was predicted as, with the labels, in the test set's fixed order
    # (numpy .npz: ``predicted`` and ``labels``); the run's tag harness.test_digest names the
    # order, so two runs' vectors are known to line up.
    TEST_PREDICTIONS = "examples/test_predictions.npz"


class Param:
    """Params of one trial run the report reads (each trick's option is a param named by it)."""

    SEED = "seed"  # the replicate seed; the derived torch seed is param ``torch_seed``
    TEST_SIZE = "data.test_size"  # the recipe's test subset; "None" means the whole test split
