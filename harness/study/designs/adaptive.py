"""``seeds=auto``: any design repeated in rounds, one replicate more each, until every call is made.

Round 1 runs the design at the study's own seeds; each further round adds the next seed to every
cell, as a grown study (finished runs are adopted by identity, so nothing trains twice). After
each round the report calls every option; the rounds stop when none is ``undetermined``, when
the remaining ones cannot be settled by more seeds (the test set's own noise is too large for
them), at ``max_seeds``, or when the next round would end past ``max_minutes``.

Error control across the looks is Bonferroni over the pre-declared looks: with L possible looks
(``max_seeds`` minus the first round's seed count, plus one), each look calls at level
``alpha / L``. The chance that any look makes a wrong call is then at most the sum of the looks'
chances, ``alpha``, whatever the dependence between the looks and whenever the rounds stop. It
gives up some power against a group-sequential boundary, and needs no model of how the looks'
statistics are correlated, which the report's per-option t tests with estimated variance do not
offer.

The decisions depend only on the stored runs of each round's seeds, so a command that crashed or
was stopped re-runs the finished rounds as reports (nothing trains) and goes on in the round it
was in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

AUTO = "auto"
DEFAULT_MAX_SEEDS = 5


@dataclass(frozen=True)
class Rounds:
    """The pre-declared rounds of a ``seeds=auto`` study.

    Attributes:
        first: The first round's seeds (the study's own, shifted by ``seed_offset``).
        max_seeds: Seeds per cell at the last possible round.
        max_minutes: Wall-time cap of the whole command; None for none.
    """

    first: tuple[int, ...]
    max_seeds: int = DEFAULT_MAX_SEEDS
    max_minutes: float | None = None

    @property
    def looks(self) -> int:
        """Return how many rounds, hence looks at the calls, there can be."""
        return self.max_seeds - len(self.first) + 1

    def look_alpha(self, alpha: float) -> float:
        """Return the family-wise error rate each look calls at, so all looks hold at ``alpha``."""
        return alpha / self.looks

    def seeds(self) -> Iterator[tuple[int, ...]]:
        """Yield each round's seeds: the first round's, then one new integer more each round."""
        seeds = list(self.first)
        following = max(seeds) + 1
        yield tuple(seeds)
        while len(seeds) < self.max_seeds:
            seeds.append(following)
            following += 1
            yield tuple(seeds)


def projected_seconds(trials: int, seconds_per_trial: float, workers: int) -> float:
    """Return a round's projected wall time: its trials spread over the workers."""
    return trials * seconds_per_trial / max(workers, 1)
