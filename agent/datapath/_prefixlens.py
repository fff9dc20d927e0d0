"""Prefixes of one kind by (family, length): the index every longest-match
question of the address table is answered from.

Kept per length rather than in a trie because the lengths in use are few and
each is one set lookup; sorted IPv4 arrays are built lazily for the range
queries of ``inside`` and dropped on the next edit of their length.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from agent.contract.keys import PrefixKey
from agent.contract.keys import bits as family_bits


class Lengths:
    """Prefixes of one kind (source or destination) by (family, length)."""

    def __init__(self) -> None:
        self.by_len: dict[tuple[int, int], set[int]] = {}
        self._desc: dict[int, list[int]] = {}
        self._sorted: dict[int, np.ndarray[Any, Any]] = {}  # IPv4 length -> sorted addresses

    def add(self, key: PrefixKey) -> None:
        fam, addr, plen = key
        s = self.by_len.get((fam, plen))
        if s is None:
            self.by_len[(fam, plen)] = s = set()
            self._desc.pop(fam, None)
        s.add(addr)
        if fam == 4:
            self._sorted.pop(plen, None)

    def discard(self, key: PrefixKey) -> None:
        fam, addr, plen = key
        s = self.by_len.get((fam, plen))
        if s is not None:
            s.discard(addr)
            if fam == 4:
                self._sorted.pop(plen, None)
            if not s:
                del self.by_len[(fam, plen)]
                self._desc.pop(fam, None)

    def sorted4(self, length: int) -> np.ndarray[Any, Any]:
        """IPv4 prefixes of one length as a sorted array, for range queries."""
        got = self._sorted.get(length)
        if got is None:
            addrs = self.by_len.get((4, length), set())
            got = np.sort(np.fromiter(addrs, dtype=np.int64, count=len(addrs)))
            self._sorted[length] = got
        return got

    def lengths(self, fam: int) -> list[int]:
        """Lengths in use, longest first."""
        got = self._desc.get(fam)
        if got is None:
            got = sorted((p for f, p in self.by_len if f == fam), reverse=True)
            self._desc[fam] = got
        return got

    def covering(self, fam: int, addr: int, max_len: int, min_len: int = 0) -> Iterator[PrefixKey]:
        """Known prefixes covering addr/max_len (itself included), longest first."""
        bits = family_bits(fam)
        for length in self.lengths(fam):
            if length > max_len:
                continue
            if length < min_len:
                break
            shift = bits - length
            a = (addr >> shift) << shift if length else 0
            if a in self.by_len[(fam, length)]:
                yield (fam, a, length)

    def inside(self, key: PrefixKey) -> Iterator[PrefixKey]:
        """Known prefixes strictly inside key."""
        fam, addr, plen = key
        bits = family_bits(fam)
        for length in self.lengths(fam):
            if length <= plen:
                continue
            addrs = self.by_len[(fam, length)]
            span = length - plen
            if span <= 12 and (1 << span) < len(addrs):
                step = 1 << (bits - length)
                for i in range(1 << span):
                    a = addr + i * step
                    if a in addrs:
                        yield (fam, a, length)
            elif fam == 4:
                arr = self.sorted4(length)
                lo, hi = np.searchsorted(arr, [addr, addr + (1 << (bits - plen))])
                for a in arr[lo:hi].tolist():
                    yield (fam, a, length)
            else:
                shift = bits - plen
                top = addr >> shift if plen else 0
                for a in addrs:
                    if plen == 0 or (a >> shift) == top:
                        yield (fam, a, length)
