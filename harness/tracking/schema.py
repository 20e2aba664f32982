"""The MLflow tag, metric, param and artifact names the harness writes and reads: their one home.

Every writer (the study runner, :mod:`~harness.tracking.trial_logging`) and every reader
(:mod:`harness.report`) imports these, so a name is never spelled twice. The module imports
nothing but the standard library, so readers pay nothing for it. The functions at the end build
what a study's parent run and each trial run are tagged and given as params: the one place that
writes a study's identity out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


class Tag:
    """The MLflow tag names of studies (parent runs) and trials."""

    ROLE = "harness.role"  # "parent" (one per study) or "trial" (one per trial)
    PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI folds children under it
    STUDY = "harness.study"
    STUDY_KEY = "harness.study_key"
    BUDGET = "harness.budget"
    KIND = "harness.kind"  # grid | fractional | optuna: what stores before designs read
    DESIGN = "harness.design"  # JSON: the design's name and settings
    FACTORS = "harness.factors"  # JSON: trick → options in study order
    DEFAULTS = "harness.defaults"  # JSON: trick → neutral option
    FIXED = "harness.fixed"  # JSON: trick → option held in every trial
    CONFIGS = "harness.configs"  # JSON list of configs, for studies that are not full factorials
    OPTUNA_STORAGE = "harness.optuna_storage"
    OPTUNA_STUDY = "harness.optuna_study_name"
    TOGGLES = "harness.toggles"  # JSON: trick → option of this trial
    SEED = "harness.seed"  # the replicate seed the user asked for (seeds=[0,1,2])
    TORCH_SEED = "harness.torch_seed"  # the seed the run actually used, derived (see study)
    CONFIG = "harness.config"  # "TRICK=OPTION,...": the config's label
    TRIAL = "harness.trial"  # Optuna trial number
    WORKER = "harness.worker"  # which worker of its command ran the trial (0, 1, ...)
    DEVICE = "harness.device"
    DATASET_DIGEST = "harness.dataset_digest"
    FAILURE = "harness.failure"  # diverged | crashed | pruned | interrupted | stale
    FAILURE_REASON = "harness.failure_reason"
    HOST = "harness.host"
    GIT_SHA = "harness.git_sha"
    VERSION = "harness.version"
    TORCH_VERSION = "harness.torch_version"
    PYTHON_VERSION = "harness.python_version"
    NOTE = "mlflow.note.content"
    IDENTITY = "harness.identity"  # what a trial computes (harness.study.identity)
    REPLACES = "harness.replaces"  # on a run: the FINISHED run(s) of its identity it replaced
    REPLACED_BY = "harness.replaced_by"  # on a run another run of its identity replaced
    COMMAND = "harness.command"  # on a parent: JSON list of the command line's overrides
    CALLS = "harness.calls"  # on a parent: JSON of option → call, written with the report
    ALPHA = "harness.alpha"  # on a parent: the family-wise error rate its calls are made at
    TEST_DIGEST = "harness.test_digest"  # on a trial: digest of its test set, in its order
    COMPILE = "harness.compile"  # on a trial: "compiled", or "eager: WHY" (training.compiling)
    # On a FINISHED run that a later study adopted instead of training it again: one tag per
    # adopting parent run, ``harness.adopted_by.<parent run id>``, so a search finds them.
    ADOPTED_BY_PREFIX = "harness.adopted_by."

    @classmethod
    def adopted_by(cls, parent_run_id: str) -> str:
        """Return the tag that links an adopted run to the parent run of a study that reuses it."""
        return f"{cls.ADOPTED_BY_PREFIX}{parent_run_id}"


class Metric:
    """Final metrics of one trial run (accuracies in percent, 0-100).

    Besides these, a trial logs ``test_<name>`` for every metric of
    :data:`harness.training.metrics.METRICS` (``test_top5``, and any a trick registers).
    """

    TEST_ACC = "test_acc"
    TEST_LOSS = "test_loss"
    VAL_ACC = "val_acc"  # logged every epoch; MLflow keeps the last value as the run's
    TRAIN_SECONDS = "train_seconds"  # in training steps: compiling and evaluation left out
    COMPILE_SECONDS = "compile_seconds"  # paid before the first step (harness.training.compiling)
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


def study_tags(*, study: str, budget: str, kind: str, design: Mapping[str, Any],
               factors: Mapping[str, Sequence[str]], defaults: Mapping[str, str],
               fixed: Mapping[str, str], configs: Sequence[Mapping[str, str]] | None,
               optuna_storage: str, optuna_study: str, device: str, dataset_digest: str,
               description: str, command: Sequence[str]) -> dict[str, str]:
    """Return the tags of a study's parent run, each named by :class:`Tag`.

    ``configs`` are the cells of a design that lists them (a fraction, a listed set), each over
    the factors; None where the factors' cross or a search defines them. The mappings are
    written as JSON.
    """
    return {
        Tag.STUDY: study, Tag.BUDGET: budget, Tag.KIND: kind, Tag.DESIGN: json.dumps(design),
        Tag.FACTORS: json.dumps(factors), Tag.DEFAULTS: json.dumps(defaults),
        Tag.FIXED: json.dumps(fixed),
        **({Tag.CONFIGS: json.dumps([{k: c[k] for k in factors} for c in configs])}
           if configs is not None else {}),
        Tag.OPTUNA_STORAGE: optuna_storage, Tag.OPTUNA_STUDY: optuna_study,
        Tag.DEVICE: device, Tag.DATASET_DIGEST: dataset_digest,
        Tag.NOTE: description, Tag.COMMAND: json.dumps(list(command)),
    }


def trial_tags(*, study: str, budget: str, toggles: Mapping[str, str], seed: int, config: str,
               trial: int, device: str, dataset_digest: str, study_key: str, torch_seed: int,
               worker: int, identity: str) -> dict[str, str]:
    """Return the tags of one trial run (the environment's tags are added by provenance)."""
    return {
        Tag.STUDY: study, Tag.BUDGET: budget, Tag.TOGGLES: json.dumps(toggles),
        Tag.SEED: str(seed), Tag.CONFIG: config, Tag.TRIAL: str(trial), Tag.DEVICE: device,
        Tag.DATASET_DIGEST: dataset_digest, Tag.STUDY_KEY: study_key,
        Tag.TORCH_SEED: str(torch_seed), Tag.WORKER: str(worker), Tag.IDENTITY: identity,
    }


def trial_params(toggles: Mapping[str, str], seed: int, searched: Mapping[str, float],
                 recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Return the params of one trial run.

    They are each trick's option, the seed, what a search chose, and the whole recipe flattened
    (its seed as ``torch_seed``, its toggles left out).
    """
    flat = {("torch_seed" if k == "seed" else k): v for k, v in recipe.items()
            if not k.startswith("toggles.")}
    return {**toggles, Param.SEED: seed, **searched, **flat}
