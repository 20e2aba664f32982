"""A trial's identity: a digest of what it computes, so a grown study finds what is already done.

Two trials with one identity train the same network on the same pixels with the same random
draws, so one finished run answers for both. The identity hashes:

- the **resolved recipe** after the trial's tricks, without its ``toggles`` (the names of the
  options that made it): a trick at its neutral default changes nothing in the recipe, so a
  factor added to a study at its default keeps the identity of the configs that existed before.
  It is also without ``data.root``: where the images live is not what they are, so the same data
  through a symlink or in a moved folder has the same trials (the digest below says what it is);
- the **derived torch seed** (part of the recipe) and the **replicate seed** the user asked for;
- the **budget** (its recipe is in the recipe already; the name keeps budgets apart in any case);
- the **dataset digest** of the study's base data (``Dataset.digest``: the sha256 of the decoded
  images, labels and class names, whatever path or format they came from). The recipe's
  ``data`` section says how that set is split and subsampled, so the two together fix the
  pixels a trial sees. The digest is read once, when the study is prepared (the command loads
  the base data before it writes anything), so every identity is known before any trial runs.

The study key (:func:`harness.study.plan.study_key`) is not part of it: one trial belongs to any
number of study configurations.

Stores written before ``data.root`` left the identity hold identities that hash it too
(``with_root=True`` computes that form), so a grown study still finds their runs
(:func:`harness.study.reuse.adopt_finished`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness.recipe import Recipe

IDENTITY_LENGTH = 24  # hex digits: 96 bits, no collision among any number of trials one stores


def computed_content(recipe: Recipe, *, with_root: bool = False) -> dict[str, Any]:
    """Return what a recipe computes: the whole recipe without its toggles' names and data root.

    Args:
        recipe: The recipe.
        with_root: Keep ``data.root``, as identities and seeds written before did.
    """
    content = recipe.to_dict()
    content.pop("toggles", None)
    if not with_root:
        content["data"].pop("root", None)
    return content


def trial_identity(recipe: Recipe, replicate: int, budget: str, dataset_digest: str, *,
                   with_root: bool = False) -> str:
    """Return the identity of a trial (see the module's doc).

    Args:
        recipe: The trial's resolved recipe, tricks applied and its torch seed derived.
        replicate: The replicate seed of the study's ``seeds``.
        budget: The study's budget (smoke | cpu | full).
        dataset_digest: The digest of the study's base data set.
        with_root: Hash ``data.root`` too: the identity as stores written before hold it.
    """
    content = {"recipe": computed_content(recipe, with_root=with_root), "replicate": replicate,
               "budget": budget, "dataset": dataset_digest}
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_LENGTH]
