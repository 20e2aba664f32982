"""A journal's torn last record, cut off at open; a journal damaged in the middle, refused.

Optuna's ``JournalFileBackend`` writes one JSON record per line. A power cut or a full disk can
stop a write half-way and leave a torn last line. Optuna's reader already skips an unterminated
or unparsable *last* line, but it offers no repair: the next record is appended onto the torn
bytes and lost with them, and once a record follows, every read of the journal fails (a new
study there dies in ``create_new_study`` with ``AssertionError: Should not reach.``).

So a journal is checked when it is opened (:func:`repair_journal`): a torn last record is copied
aside to ``<journal>.torn-<UTC time>`` and cut off, and every complete record is kept. A last
record that is complete but lacks its newline gets the newline, since Optuna would skip it and
glue the next record onto it. A record in the middle that cannot be parsed is not a torn write
but damage, and no rule says which records after it still hold; that journal is refused and
left as it is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from harness.core.errors import UserError

TORN_SUFFIX = ".torn-"


@dataclass(frozen=True)
class JournalScan:
    """What a journal's bytes hold: complete records, then perhaps a torn or damaged line."""

    keep: int  # bytes of the complete records at the head, every one ending with its newline
    records: int  # how many complete records those bytes hold
    torn: bytes = b""  # after them: the last record, unfinished or unparsable
    unterminated: bool = False  # the last record is complete but its newline is missing
    damaged_line: int | None = None  # 1-based line of an unparsable record in the middle

    @property
    def intact(self) -> bool:
        """Nothing to repair or refuse."""
        return not (self.torn or self.unterminated or self.damaged_line)


def is_record(line: bytes) -> bool:
    """Return whether one line (without its newline) is a whole journal record."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return False
    return isinstance(record, dict) and "op_code" in record


def scan_journal(content: bytes) -> JournalScan:
    """Find where a journal's complete records end, and what follows them.

    Every line but the last must be a record; the first one that is not makes the journal
    damaged. The last line is torn when it is not a record, whether or not it ends in a newline.
    """
    lines = content.split(b"\n")
    tail = lines.pop()  # what follows the last newline: b"" when the file ends with one
    # With no tail, the last terminated line is the last record: the one a torn write leaves.
    last_line = len(lines) - 1 if not tail else None
    offset = 0
    for number, line in enumerate(lines):
        if not is_record(line):
            if number != last_line:
                return JournalScan(offset, number, damaged_line=number + 1)
            return JournalScan(offset, number, torn=line + b"\n")
        offset += len(line) + 1
    if not tail:
        return JournalScan(offset, len(lines))
    if is_record(tail):
        return JournalScan(len(content), len(lines) + 1, unterminated=True)
    return JournalScan(offset, len(lines), torn=tail)


def repair_journal(path: Path, announce: Callable[[str], None] = print) -> JournalScan:
    """Cut a torn last record off a journal file, or refuse a journal damaged in the middle.

    A tail that looks torn is judged again under the lock Optuna's backend appends under, so a
    live writer half-way through a record is never taken for a torn one. Says in one line what
    it did; raises a UserError naming the file and the line when a middle record cannot be
    parsed, and then changes nothing.
    """
    if not path.is_file():
        return JournalScan(0, 0)  # Optuna creates it
    unlocked = scan_journal(path.read_bytes())
    if unlocked.intact:  # the common case, with no lock for the other workers to wait on
        return unlocked
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        scan = scan_journal(path.read_bytes())
        if scan.damaged_line is not None:
            raise UserError(
                f"journal {path}: line {scan.damaged_line} is not a complete record, so the "
                f"journal is damaged in the middle (not a torn last write) and was left as it "
                f"is; restore it from a backup, or move it aside to start the study afresh")
        if scan.unterminated:
            _append(path, b"\n")
            announce(f"journal {path}: its last record lacked its newline (an interrupted "
                     f"write); added it, and all {scan.records} records are kept")
        elif scan.torn:
            aside = _save_aside(path, scan.torn)
            _truncate(path, scan.keep)
            announce(f"journal {path}: its last record was torn by an interrupted write "
                     f"({len(scan.torn)} bytes); saved them to {aside} and cut them off, and "
                     f"all {scan.records} complete records are kept")
    finally:
        lock.release()
    return scan


def _save_aside(path: Path, torn: bytes) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}")
    count = 1
    while aside.exists():  # two repairs in one second: never overwrite the first one's bytes
        count += 1
        aside = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}-{count}")
    with aside.open("xb") as file:
        file.write(torn)
        file.flush()
        os.fsync(file.fileno())
    return aside


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)
        file.flush()
        os.fsync(file.fileno())


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
