"""The ``key=value`` command lines of the export, results and dashboard commands.

Parsing against a table of defaults, and the guard that turns every failure into one line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from harness.core.errors import UserError, crash_line, error_line, unknown_choice

Value = TypeVar("Value")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_UNEXPECTED = 1


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
