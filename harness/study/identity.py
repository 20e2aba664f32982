"""A trial's identity: a digest of what it computes, so a grown study finds what is already done.

Two trials with one identity train the same network on the same pixels with the same random
draws, so one finished run answers for both. The identity hashes:

- the **resolved recipe** after the trial's tricks, without its ``toggles`` (the names of the
  options that made it): a trick at its neutral default changes nothing in the recipe, so a
  factor added to a study at its default keeps the identity of the configs that existed before;
- the **derived torch seed** (part of the recipe) and the **replicate seed** the user asked for;
- the **budget** (its recipe is in the recipe already; the name keeps budgets apart in any case);
- the **dataset digest** of the study's base data (``Dataset.digest``: the sha256 of the decoded
  images, labels and class names, whatever path or format they came from). The recipe's
  ``data`` section says how that set is split and subsampled, so the two together fix the
  pixels a trial sees. The digest is read once, when the study is prepared (the command loads
  the base data before it writes anything), so every identity is known before any trial runs.

The study key (:func:`harness.study.plan.study_key`) is not part of it: one trial belongs to any
number of study configurations.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness.recipe import Recipe

IDENTITY_LENGTH = 24  # hex digits: 96 bits, no collision among any number of trials one stores


def computed_content(recipe: Recipe) -> dict[str, Any]:
    """Return what a recipe computes: the whole recipe without the names of its toggles."""
    content = recipe.to_dict()
    content.pop("toggles", None)
    return content


def trial_identity(recipe: Recipe, replicate: int, budget: str, dataset_digest: str) -> str:
    """Return the identity of a trial (see the module's doc).

    Args:
        recipe: The trial's resolved recipe, tricks applied and its torch seed derived.
        replicate: The replicate seed of the study's ``seeds``.
        budget: The study's budget (smoke | cpu | full).
        dataset_digest: The digest of the study's base data set.
    """
    content = {"recipe": computed_content(recipe), "replicate": replicate, "budget": budget,
               "dataset": dataset_digest}
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_LENGTH]
