"""The package's structure: every module imports, no import circle, and no arrow upwards.

The layers are written down once, here, lowest first; README's "Layout" is the map of them. A
module belongs to the layer of the longest prefix that names it, and may import its own layer and
those below. Imports inside functions count (they are arrows all the same); imports only for
type checkers do not.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import harness

ROOT = Path(harness.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("harness", "harness.core")),
    ("recipe", ("harness.recipe",)),
    ("data and models", ("harness.data", "harness.models")),
    ("training", ("harness.training",)),
    ("tricks", ("harness.tricks",)),
    ("tracking", ("harness.tracking",)),
    ("study plan", ("harness.study.spec", "harness.study.plan", "harness.study.identity",
                    "harness.study.designs", "harness.study.journal", "harness.study.storage")),
    ("report", ("harness.report",)),
    ("study run", ("harness.study",)),
    ("config", ("harness.config",)),
    ("session", ("harness.study.rounds", "harness.study.reporting")),
    ("entry points", ("harness.run", "harness.export", "harness.results", "harness.dashboard")),
]


def modules() -> list[str]:
    """Every module of the package, by dotted name."""
    names = ["harness"]
    names += [info.name for info in pkgutil.walk_packages([str(ROOT)], "harness.")]
    return sorted(names)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that names ``module``."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best


def source(module: str) -> Path:
    path = ROOT.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, known: set[str]) -> set[str]:
    """The harness modules ``module`` imports anywhere in its code, not for type checkers only."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from harness.training import loop`` imports the module harness.training.loop.
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source(module).read_text()))
    return {name for name in found if name in known and name != module}


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {module: imports(module, known) for module in known}


@pytest.mark.parametrize("module", modules())
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_no_arrow_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
              f"({LAYERS[layer_of(target)][0]})"
              for module, targets in sorted(graph().items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_no_import_circle() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module)
    # A package's __init__ that re-exports its modules imports them, and they import their
    # siblings by full name, which goes through the package: that is no circle of the code's own.
    real = [circle for circle in circles
            if not any(circle[i + 1].startswith(circle[i] + ".") for i in range(len(circle) - 1))]
    assert real == []


def test_few_loose_modules() -> None:
    loose = sorted(path.name for path in ROOT.glob("*.py"))
    assert len(loose) <= 8, loose


def test_the_layers_name_every_package() -> None:
    prefixes = {prefix for _, group in LAYERS for prefix in group}
    for package in sorted(path.parent.name for path in ROOT.glob("*/__init__.py")):
        assert any(p == f"harness.{package}" or p.startswith(f"harness.{package}.")
                   for p in prefixes), package
