"""The ``key=value`` command lines, and the guard that turns every failure into one line.

:func:`parse_arguments` reads Hydra's override grammar (lists as ``[a,b]``, quoting); ``run`` and
``export`` both parse with it, into :class:`~harness.config.settings.Settings`. The results and
dashboard commands take plain text values (:func:`key_values`).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from harness.core.checks import check_integer_size, too_large
from harness.core.errors import UserError, crash_line, error_line, unknown_choice
from harness.recipe import plain

Value = TypeVar("Value")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_UNEXPECTED = 1


class Argument(NamedTuple):
    """One ``key=value``: the value as Hydra's grammar types it, and the text as typed."""

    value: Any
    text: str


def parse_arguments(args: Sequence[str], *, later_wins: bool = False) -> dict[str, Argument]:
    """Parse ``key=value`` strings with Hydra's override grammar, in the order given.

    Args:
        args: The arguments.
        later_wins: A key given again replaces its earlier value, as in Hydra: ``harness.run``
            layers a command line over a Makefile's or a script's. Otherwise it is refused.

    Raises:
        UserError: An argument without ``=``, a key given twice (unless ``later_wins``), a
            control character, a
            grammar error (the line says how to quote), a sweep, ``+``/``~`` overrides, an
            interpolation, or an integer too large to be meant.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    values: dict[str, Argument] = {}
    for arg in args:
        if "=" not in arg:
            raise UserError(f"cannot read '{arg}': it is not key=value; overrides look like "
                            f"key=value, e.g. budget=cpu")
        key, _, text = arg.partition("=")
        control = next((char for char in arg if unicodedata.category(char) == "Cc"), None)
        if control is not None:
            raise UserError(f"cannot read '{arg}': it holds the control character "
                            f"{control!r}; no setting means one, so type it again without")
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"cannot read '{arg}': {first}; quote a path with spaces or "
                            f"non-ASCII characters, e.g. '{key}=\"{text}\"' (lists look like "
                            f"[a,b])") from None
        except ValueError as exc:  # Hydra's int() of a number past Python's 4300-digit limit
            numbers = re.findall(r"\d+", text)
            if not numbers:
                raise UserError(f"cannot read '{arg}': {exc}") from None
            raise too_large(key, max(numbers, key=len)) from None
        if override.is_sweep_override():
            raise UserError(f"'{arg}' is a sweep; give a factor's options as a list instead, "
                            f"e.g. factors.TRICK=[OPTION_A,OPTION_B]")
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise UserError(f"'{arg}': only plain key=value overrides are supported")
        key = override.key_or_group
        if key in values and not later_wins:
            raise UserError(f"argument '{key}' is given twice")
        value = plain(override.value())
        check_integer_size(key, value)
        if "${" in str(value):
            # OmegaConf would resolve it later, reading the environment or failing with a
            # traceback; a command line means its values literally.
            raise UserError(f"'{arg}': interpolations (${{...}}) are not supported on the "
                            f"command line; give the value itself")
        values[key] = Argument(value, text)
    return values


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into ``{key: python value}``, a repeated key's later value."""
    return {key: argument.value
            for key, argument in parse_arguments(args, later_wins=True).items()}


def key_values(argv: Sequence[str], defaults: Mapping[str, Value], empty_allowed: bool = False
               ) -> dict[str, Value | str]:
    """Return ``defaults`` updated by ``key=value`` arguments.

    Raises:
        UserError: An argument without ``=``, an unknown or repeated key, or (unless
            ``empty_allowed``) an empty value.
    """
    given: dict[str, str] = {}
    for argument in argv:
        key, equals, value = argument.partition("=")
        if not equals:
            raise UserError(f"argument '{argument}' is not key=value; keys: {', '.join(defaults)}")
        if key not in defaults:
            raise unknown_choice("argument", key, defaults)
        if key in given:
            raise UserError(f"argument '{key}' is given twice")
        if not value and not empty_allowed:
            raise UserError(f"argument '{key}=' has no value")
        given[key] = value
    return {**defaults, **given}


def guarded(program: str, command: Callable[[], str | None], interrupted: str = "interrupted",
            interrupted_code: int = EXIT_INTERRUPTED) -> int:
    """Run ``command`` and print what it returns; return the exit code.

    A user's mistake is one ``error:`` line and exit code 2, Ctrl-C one line, anything else one
    line naming the file with the traceback (exit code 1).
    """
    try:
        text = command()
    except UserError as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return interrupted_code
    except Exception as exc:  # noqa: BLE001 - the outermost guard: one line, details in a file
        print(crash_line(exc, program), file=sys.stderr)
        return EXIT_UNEXPECTED
    if text is not None:
        print(text)
    return 0
