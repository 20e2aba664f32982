"""Tricks as toggles: the registry that ``ablations/`` fills, and how toggles change a recipe.

A trick has a name, one line of doc and options. The first option is the neutral default, the
baseline every effect is measured against. Each option maps recipe sections (``model``,
``optimizer``, ``loss``, ``schedule``, ``augment``, ``data``, ``trainer``) to a small function
that returns the changed section. This module knows no trick by name: adding one is adding a file
to ``ablations/``, which :func:`load_tricks` imports.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError, unknown_choice
from harness.recipe import SECTIONS, Recipe
from harness.registry import Registry

SectionChange = Callable[[Any], Any]


@dataclass(frozen=True)
class Trick:
    """One toggle of a study.

    Args:
        name: The key a study or the command line uses, e.g. ``"init"``.
        doc: One line saying what the trick does and where it comes from.
        options: Option name → {recipe section → function(section) -> section}. The first option
            is the neutral default.
    """

    name: str
    doc: str
    options: Mapping[str, Mapping[str, SectionChange]]

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"trick '{self.name}' has no options")
        for option, changes in self.options.items():
            for section in changes:
                if section not in SECTIONS:
                    raise ValueError(
                        f"trick '{self.name}' option '{option}' changes unknown section "
                        f"'{section}'; sections are {', '.join(SECTIONS)}"
                    )

    @property
    def default(self) -> str:
        """The neutral option: the baseline of every study."""
        return next(iter(self.options))

    def option(self, value: object) -> str:
        """Return the option name matching ``value`` (``0.1`` matches ``"0.1"``), or raise."""
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if text in self.options:
            return text
        for name in self.options:
            try:
                if float(name) == float(value):  # type: ignore[arg-type]
                    return name
            except (TypeError, ValueError):
                continue
        raise unknown_choice(f"option of trick '{self.name}'", value, self.options)

    def apply(self, recipe: Recipe, value: object) -> Recipe:
        """Return ``recipe`` with this trick's option ``value`` applied to its sections."""
        changes = self.options[self.option(value)]
        updates = {section: change(getattr(recipe, section)) for section, change in changes.items()}
        return dataclasses.replace(recipe, **updates)


TRICKS: Registry[Trick] = Registry("trick")


def register(trick: Trick) -> Trick:
    """Add ``trick`` to the registry; call it once at the bottom of each ``ablations/`` file."""
    return TRICKS.register(trick.name)(trick)


def load_tricks(package: str = "ablations") -> Registry[Trick]:
    """Import every module of ``package`` so each registers its trick and its parts."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    return TRICKS


def apply_toggles(recipe: Recipe, toggles: Mapping[str, object]) -> Recipe:
    """Apply each trick's chosen option to ``recipe`` and record the toggles in it.

    Tricks are applied in the order given, so a study's factor order decides precedence when two
    tricks change the same field.
    """
    load_tricks()
    resolved: dict[str, str] = dict(recipe.toggles)
    for name, value in toggles.items():
        trick = TRICKS.get(name)
        recipe = trick.apply(recipe, value)
        resolved[name] = trick.option(value)
    return dataclasses.replace(recipe, toggles=resolved)


def describe_tricks() -> str:
    """Return the text of ``--list-tricks``: each trick, its options (default first), its doc."""
    load_tricks()
    lines = []
    for name in TRICKS:
        trick = TRICKS.get(name)
        options = ", ".join(
            f"{opt} (default)" if opt == trick.default else opt for opt in trick.options
        )
        lines.append(f"{name:<16} {options}\n{'':<16} {trick.doc}")
    return "\n".join(lines)


def check_toggles(toggles: Mapping[str, object]) -> dict[str, str]:
    """Normalise ``{trick: option}`` to option names, raising a UserError for unknown ones."""
    load_tricks()
    if not isinstance(toggles, Mapping):
        raise UserError(f"toggles must map trick names to options, got {toggles!r}")
    return {name: TRICKS.get(name).option(value) for name, value in toggles.items()}
