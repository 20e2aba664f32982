"""Tricks as toggles: the registry that ``ablations/`` fills, and how toggles change a recipe.

A trick has a name, one line of doc and options. The first option is the neutral default, the
baseline every effect is measured against. An option is a mapping of what it changes:

* ``"section.field": value`` sets a field, e.g. ``{"model.stem": "deep"}``;
* ``"section.field": Change`` computes the field from its old value, e.g.
  ``{"model.post_init": appended("NAME")}`` (see :func:`appended`, :func:`removed`);
* ``"section.field.key": value`` sets one entry of a mapping field, e.g.
  ``{"trainer.hooks.NAME": {"decay": 0.999}}``; ``None`` removes the entry;
* ``"section": function`` is the escape hatch: ``function(section) -> section``.

Values are converted to the field's type (a list becomes a tuple). This module knows no trick by
name: adding one is adding a file to ``ablations/``, which :func:`load_tricks` imports.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.core.errors import unknown_choice
from harness.core.registry import Registry
from harness.recipe import SECTIONS, Recipe, coerce, field_types


@dataclass(frozen=True)
class Change:
    """A field's new value computed from its old one, with a text saying how.

    Args:
        text: What the change does, for ``--list-tricks``, e.g. ``"+ NAME"``.
        function: ``old value -> new value``.
    """

    text: str
    function: Callable[[Any], Any]

    def __call__(self, old: Any) -> Any:
        """Return the new value."""
        return self.function(old)

    def __str__(self) -> str:
        return self.text


def appended(item: str) -> Change:
    """Return a change that puts ``item`` last in a tuple field, once, keeping the others."""
    return Change(f"+ {item}", lambda old: (*(x for x in old if x != item), item))


def removed(item: str) -> Change:
    """Return a change that takes ``item`` out of a tuple field, keeping the others."""
    return Change(f"- {item}", lambda old: tuple(x for x in old if x != item))


@dataclass(frozen=True)
class Trick:
    """One toggle of a study.

    Args:
        name: The key a study or the command line uses, e.g. ``"init"``.
        doc: One line saying what the trick does and where it comes from.
        options: Option name → what it changes (see the module's doc). The first option is the
            neutral default.

    Raises:
        ValueError: An option names a section or field the recipe does not have.
    """

    name: str
    doc: str
    options: Mapping[str, Mapping[str, Any]]

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"trick '{self.name}' has no options")
        for option, changes in self.options.items():
            for key, change in changes.items():
                _check_key(f"trick '{self.name}' option '{option}'", key, change)

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
        """Return ``recipe`` with this trick's option ``value`` applied."""
        sections = {name: getattr(recipe, name) for name in SECTIONS}
        for key, change in self.options[self.option(value)].items():
            section, _, rest = key.partition(".")
            sections[section] = _change_section(sections[section], section, rest, change)
        return dataclasses.replace(recipe, **sections)

    def changes(self, value: object) -> dict[str, str]:
        """Return what option ``value`` changes, as ``{recipe key: text}``."""
        return {key: _describe(change)
                for key, change in self.options[self.option(value)].items()}


TRICKS: Registry[Trick] = Registry("trick")


def register(trick: Trick) -> Trick:
    """Add ``trick`` to the registry; call it once at the bottom of each ``ablations/`` file."""
    caller = sys._getframe(1).f_globals.get("__name__", "__main__")
    return TRICKS.register(trick.name, module=caller)(trick)


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


def toggle_changes(recipe: Recipe, toggles: Mapping[str, object]) -> dict[str, Any]:
    """Return the recipe keys that ``toggles`` change in ``recipe``, with their new values.

    Keys are those of :meth:`Recipe.flat`, e.g. ``{"model.stem": "deep"}``; a key the toggles
    remove (a hook's setting) maps to None. The toggles themselves are left out. Fit for
    ``--dry-run`` and for logging beside the recipe.
    """
    before = recipe.flat()
    after = apply_toggles(recipe, toggles).flat()
    changed = {key: value for key, value in after.items()
               if not key.startswith("toggles") and before.get(key, _ABSENT) != value}
    for key in before.keys() - after.keys():
        # An emptied mapping shows as its own key; a filled one only through its entries.
        if not key.startswith("toggles") and not any(k.startswith(f"{key}.") for k in after):
            changed[key] = None
    return changed


def describe_tricks() -> str:
    """Return the text of ``--list-tricks``: each trick, its doc, each option and its changes."""
    load_tricks()
    lines = []
    for name in TRICKS:
        trick = TRICKS.get(name)
        lines.append(f"{name}  {trick.doc}")
        width = max(len(option) for option in trick.options) + len(" (default)")
        for option in trick.options:
            label = f"{option} (default)" if option == trick.default else option
            changes = ", ".join(f"{key} {_shown(text)}"
                                for key, text in trick.changes(option).items())
            lines.append(f"    {label:<{width}}  {changes}")
    return "\n".join(lines)


_ABSENT = object()


def _check_key(where: str, key: str, change: Any) -> None:
    section, _, rest = key.partition(".")
    if section not in SECTIONS:
        raise ValueError(f"{where} changes unknown section '{section}'; sections are "
                         f"{', '.join(SECTIONS)}")
    if not rest:
        if not callable(change):
            raise ValueError(f"{where}: '{key}' is a whole section, so it needs a function")
        return
    if callable(change) and not isinstance(change, Change):
        raise ValueError(f"{where}: '{key}' is a field, so a computed value must be a Change "
                         f"(e.g. appended(...)); a function goes on the whole section")
    name, _, entry = rest.partition(".")
    types = field_types(section)
    if name not in types:
        raise ValueError(f"{where} changes unknown field '{section}.{name}'; fields are "
                         f"{', '.join(types)}")
    if entry and typing.get_origin(types[name]) not in (Mapping, dict):
        raise ValueError(f"{where}: '{section}.{name}' is not a mapping, so '{key}' names nothing")


def _change_section(spec: Any, section: str, rest: str, change: Any) -> Any:
    if not rest:
        return change(spec)
    name, _, entry = rest.partition(".")
    hint = field_types(section)[name]
    path = f"{section}.{name}"
    old = getattr(spec, name)
    if entry:
        entries = dict(old)
        new = change(entries.get(entry)) if isinstance(change, Change) else change
        if new is None:
            entries.pop(entry, None)
        else:
            entries[entry] = new
        return dataclasses.replace(spec, **{name: coerce(hint, entries, path)})
    new = change(old) if isinstance(change, Change) else change
    return dataclasses.replace(spec, **{name: coerce(hint, new, path)})


def _describe(change: Any) -> str:
    if isinstance(change, Change):
        return change.text
    if change is None:
        return "removed"
    if callable(change):
        doc = (change.__doc__ or "").strip().splitlines()
        return f"by {change.__name__}" + (f" ({doc[0].rstrip('.')})" if doc else "")
    if isinstance(change, tuple | list):
        return f"[{', '.join(map(str, change))}]"
    return str(change)


def _shown(text: str) -> str:
    # "+ NAME" and "by function" read as they are; a plain value reads as "= value".
    return text if text.startswith(("+ ", "- ", "by ", "removed")) else f"= {text}"
