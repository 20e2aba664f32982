"""Two-level fractional factorials: generators of minimum aberration, and what they alias.

A ``2^(k-p)`` fraction runs the full factorial of ``k - p`` base factors and sets each of the
``p`` added factors to the product of some base columns (its generator). The generators fix the
defining relation: every product of generator words, each word a set of factors whose product is
constant. Its shortest word is the design's resolution, and the counts of words of each length
(the word-length pattern) rank designs of one size: fewer short words, less aliasing (minimum
aberration, Fries & Hunter 1980).

Published tables and libraries list the generators, and some list them wrong (pyDOE's
``fracfact_by_res`` returned resolution IV for V at 9-10 factors until mid-2026), so the search
here builds each candidate and measures it; :func:`fraction` checks what it returns as well.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from harness.core.errors import UserError

SEARCH_LIMIT = 200_000
"""Generator sets tried exhaustively per fraction size; past it the search is greedy."""


@dataclass(frozen=True)
class Fraction:
    """A two-level fraction of ``k`` factors: its generators and its defining relation.

    Factors are numbered ``0..k-1``; the first ``k - p`` are the base factors. A word is a
    bitmask of factors.
    """

    k: int
    generators: tuple[int, ...]  # one word per added factor, its own bit included

    @property
    def p(self) -> int:
        """How many factors are added: the fraction is ``1 / 2^p`` of the full factorial."""
        return len(self.generators)

    @property
    def runs(self) -> int:
        """Cells of the fraction."""
        return 2 ** (self.k - self.p)

    @property
    def words(self) -> tuple[int, ...]:
        """Every word of the defining relation (all products of generator words)."""
        return defining_words(self.generators)

    @property
    def resolution(self) -> int:
        """The shortest word's length; a full factorial's is unbounded (``math.inf``)."""
        lengths = [w.bit_count() for w in self.words]
        return min(lengths) if lengths else math.inf

    @property
    def word_length_pattern(self) -> tuple[int, ...]:
        """Counts of words of length 1, 2, ..., k."""
        return word_length_pattern(self.words, self.k)

    def signs(self) -> list[tuple[int, ...]]:
        """Return every cell's level (-1 or +1) of each factor, base factors in standard order.

        Of the ``2^p`` fractions the generators define, this is the one with the all -1 cell,
        the baseline of every default: each word ``w`` holds as ``I = (-1)^|w| w``.
        """
        base = self.k - self.p
        rows = []
        for levels in itertools.product((-1, 1), repeat=base):
            row = list(reversed(levels))  # factor 0 changes fastest, as in Yates' order
            for word in self.generators:
                sign = word_sign(word)
                for factor in range(base):
                    if word >> factor & 1:
                        sign *= row[factor]
                row.append(sign)
            rows.append(tuple(row))
        return rows

    def aliases(self, effect: int) -> list[int]:
        """Return the effects aliased with ``effect`` (a word), shortest first."""
        return sorted((effect ^ w for w in self.words), key=_by_length)


def word_sign(word: int) -> int:
    """Return the sign of ``word`` in the defining relation of the fraction with the baseline."""
    return -1 if word.bit_count() % 2 else 1


def defining_words(generators: tuple[int, ...]) -> tuple[int, ...]:
    """Return every product of one or more generator words (symmetric differences)."""
    words = []
    for size in range(1, len(generators) + 1):
        for chosen in itertools.combinations(generators, size):
            word = 0
            for g in chosen:
                word ^= g
            words.append(word)
    return tuple(words)


def word_length_pattern(words: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Return counts of words of length 1..k."""
    counts = [0] * k
    for word in words:
        counts[word.bit_count() - 1] += 1
    return tuple(counts)


def fraction(k: int, resolution: int) -> Fraction:
    """Return the smallest two-level fraction of ``k`` factors with at least ``resolution``.

    Among fractions of that size it is one of minimum aberration where the search is exhaustive
    (below :data:`SEARCH_LIMIT` generator sets), else the best a greedy search finds. A full
    factorial is returned when no fraction has the resolution.

    Raises:
        UserError: ``resolution`` below 3, or the built design's resolution below it (a bug).
    """
    if resolution < 3:
        raise UserError(f"resolution must be 3 or more (main effects clear of each other), got "
                        f"{resolution}")
    for p in range(k - 1, 0, -1):
        found = _search(k, p, resolution)
        if found is not None:
            break
    else:
        found = Fraction(k, ())
    if found.resolution < resolution:  # never: the search measures each design it returns
        raise UserError(f"the 2^({k}-{found.p}) fraction built has resolution {found.resolution}, "
                        f"below the {resolution} asked for")
    return found


def _search(k: int, p: int, resolution: int) -> Fraction | None:
    """Return the minimum-aberration ``2^(k-p)`` fraction of that resolution, or None."""
    base = k - p
    # An added factor's word is its own bit and at least resolution - 1 base factors.
    candidates = [sum(1 << f for f in subset)
                  for size in range(max(resolution - 1, 2), base + 1)
                  for subset in itertools.combinations(range(base), size)]
    if len(candidates) < p:
        return None
    if math.comb(len(candidates), p) > SEARCH_LIMIT:
        return _greedy(k, p, resolution, candidates)
    best: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    for chosen in itertools.combinations(candidates, p):
        generators = tuple(word | 1 << (base + j) for j, word in enumerate(chosen))
        words = defining_words(generators)
        if min(w.bit_count() for w in words) < resolution:
            continue
        pattern = word_length_pattern(words, k)
        if best is None or pattern < best[0]:
            best = (pattern, generators)
    return None if best is None else Fraction(k, best[1])


def _greedy(k: int, p: int, resolution: int, candidates: list[int]) -> Fraction | None:
    """Add generators one at a time, each the one that keeps the pattern smallest."""
    base = k - p
    chosen: list[int] = []
    for _ in range(p):
        best: tuple[tuple[int, ...], int] | None = None
        for word in candidates:
            if word in chosen:
                continue
            generators = tuple(w | 1 << (base + i) for i, w in enumerate([*chosen, word]))
            words = defining_words(generators)
            if min(w.bit_count() for w in words) < resolution:
                continue
            pattern = word_length_pattern(words, k)
            if best is None or pattern < best[0]:
                best = (pattern, word)
        if best is None:
            return None
        chosen.append(best[1])
    return Fraction(k, tuple(w | 1 << (base + i) for i, w in enumerate(chosen)))


def word_name(word: int, names: list[str], joiner: str = "×") -> str:
    """Return a word as factor names, e.g. ``stem×init``."""
    return joiner.join(name for index, name in enumerate(names) if word >> index & 1)


def alias_lines(found: Fraction, names: list[str]) -> list[str]:
    """Return the fraction's defining relation and its aliasing among mains and two-ways."""
    if not found.generators:
        return [f"full factorial of {found.k} two-level factors: nothing is aliased"]
    added = ", ".join(f"{names[found.k - found.p + j]} = {'-' if word_sign(g) < 0 else ''}"
                      f"{word_name(g & ~(1 << (found.k - found.p + j)), names)}"
                      for j, g in enumerate(found.generators))
    lines = [f"2^({found.k}-{found.p}) fraction, {found.runs} cells, resolution "
             f"{_roman(found.resolution)}: {added}",
             "defining relation: I = " + " = ".join(
                 ("-" if word_sign(w) < 0 else "") + word_name(w, names)
                 for w in sorted(found.words, key=_by_length))]
    if found.resolution >= 5:
        lines.append("every main effect and two-way interaction is aliased only with "
                     "interactions of three or more factors")
        return lines
    lines.append("main effects are aliased only with interactions of three or more factors")
    pairs = [a | b for a, b in itertools.combinations([1 << i for i in range(found.k)], 2)]
    seen: set[int] = set()
    for pair in pairs:
        if pair in seen:
            continue
        chain = [e for e in found.aliases(pair) if e.bit_count() == 2]
        together = [pair, *chain]
        seen.update(together)
        if chain:
            lines.append("cannot tell apart: " + " = ".join(word_name(e, names) for e in together))
    return lines


def _by_length(word: int) -> tuple[int, int]:
    return word.bit_count(), word


def _roman(number: float) -> str:
    numerals = {3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII", 9: "IX", 10: "X"}
    return numerals.get(number, str(number))
