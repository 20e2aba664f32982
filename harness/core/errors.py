"""The one exception type that reaches a person as a single line and exit code 2."""

from __future__ import annotations

import difflib
import os
import unicodedata
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


def one_line(text: str) -> str:
    r"""Return ``text`` on one line, with every control character escaped as ``\xNN``.

    Messages echo what the user typed; a raw escape sequence in it would recolour or rewrite the
    terminal, and a newline would split the one line a script reads.
    """
    folded = " ".join(text.split())
    return "".join(_escaped(char) for char in folded)


def _escaped(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Cf"):  # control and invisible format characters
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def abbreviated(text: str, limit: int = 40) -> str:
    """Return ``text``, or its start and its length when longer than ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:20]}... ({len(text)} characters)"


def error_line(exc: BaseException) -> str:
    """Return ``error: <message>`` on one line, however many lines the message had."""
    return "error: " + one_line(str(exc))


def crash_line(exc: BaseException, program: str) -> str:
    """Save the traceback of an unexpected exception to a file; return one line that names it.

    The last resort of the command-line entry points: a person sees what failed and where the
    details are, not a page of traceback.
    """
    import tempfile
    import time
    import traceback
    from pathlib import Path

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = Path(tempfile.gettempdir()) / f"{program}-crash-{stamp}-{os.getpid()}.log"
    log.write_text("".join(traceback.format_exception(exc)))
    return (f"error: unexpected {type(exc).__name__}: {one_line(str(exc))[:300]} "
            f"(traceback in {log}; please report it)")
