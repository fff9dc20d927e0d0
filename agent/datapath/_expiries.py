"""The expiries of the address model's records, as a heap, so that a tick
costs what is due, not what exists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heapify, heappop, heappush

from agent.contract.keys import PrefixKey, Record

#: Stale expiry heap entries tolerated beyond as many as the heap held when last compacted.
_EXPIRY_SLACK = 1024

#: (expires, prefix, SRC_BAN or SRC_ALLOW, origin): one record's expiry, as pushed when it was set.
Expiry = tuple[int, PrefixKey, int, int]


class ExpiryHeap:
    """Every record with an expiry has an entry here; entries whose record was
    replaced or removed since are stale and skipped when they come up.

    ``current`` answers the record a heap entry stands for, if it is still the
    one in place (None when stale).
    """

    def __init__(self, current: Callable[[Expiry], Record | None]) -> None:
        self._current = current
        self._heap: list[Expiry] = []
        self._limit = _EXPIRY_SLACK

    def reset(self, items: list[Expiry]) -> None:
        """Hold exactly these (a model rebuilt from the kernel)."""
        heapify(items)
        self._heap = items
        self._limit = 2 * len(items) + _EXPIRY_SLACK

    def push(self, item: Expiry) -> None:
        heappush(self._heap, item)
        if len(self._heap) > self._limit:
            # Drop the stale entries (and duplicates): each current record once.
            self.reset(list({e for e in self._heap if self._current(e) is not None}))

    def due(self, now: int) -> Iterator[tuple[Expiry, Record]]:
        """Entries due at now whose record is still in place, soonest first, each with its record."""
        while self._heap and self._heap[0][0] <= now:
            item = heappop(self._heap)
            rec = self._current(item)
            if rec is None:
                continue  # replaced or removed since this entry was pushed
            yield item, rec
