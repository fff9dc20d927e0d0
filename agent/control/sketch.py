"""Bounded heavy-hitter counting for attack records.

An attack record keeps its top sources and ports for as long as the attack
lasts. A spoofed flood brings a new source address with nearly every
sample; an exact counter would grow by millions of keys over an hour.
`TopK` merges each tick's exact counts and, when it holds more than twice
its capacity, keeps only the ``capacity`` largest (a merge-and-prune
summary in the spirit of Misra-Gries). A key that is heavy throughout is
never pruned; a key pruned early and heavy later is undercounted by what it
had then. Cost per tick: linear in that tick's distinct keys.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping
from operator import itemgetter
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TopK(Generic[K]):
    """The heaviest keys of a stream, in bounded memory."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.total = 0
        self._counts: dict[K, int] = {}

    def update(self, counts: Mapping[K, int]) -> None:
        """Add one batch of exact counts."""
        mine = self._counts
        get = mine.get
        for key, n in counts.items():
            mine[key] = get(key, 0) + n
            self.total += n
        if len(mine) > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        self._counts = dict(heapq.nlargest(self.capacity, self._counts.items(), key=itemgetter(1)))

    def top(self, n: int) -> list[tuple[K, int]]:
        """The n heaviest keys with their counts, heaviest first."""
        return heapq.nlargest(n, self._counts.items(), key=itemgetter(1))

    def __len__(self) -> int:
        return len(self._counts)
