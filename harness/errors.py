"""The one exception type that reaches a person as a single line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input: a bad key, value, name, path or URL.

    The command-line entry points print the message as one line and exit with code 2. The message
    must say what was wrong and, where there is a fixed set, name the valid choices.
    """


def unknown_choice(kind: str, name: object, choices: Iterable[str]) -> UserError:
    """Build the error for a name that is not one of ``choices``, with a close match if any."""
    choices = sorted(choices)
    hint = difflib.get_close_matches(str(name), choices, n=1)
    maybe = f" (did you mean '{hint[0]}'?)" if hint else ""
    return UserError(f"unknown {kind} '{name}'{maybe}; choose one of: {', '.join(choices)}")
