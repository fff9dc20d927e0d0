"""Slots of src_entries: which are free, and which hold a permanent enforced ban.

Slot 0 is never handed out: an address answer of 0 means "no source prefix".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.contract import abi

from .errors import CapacityError


class Slots:
    """The free list of src_entries, and the slots whose address answers carry FG_ADDR_BANNED."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[int] = []
        self._next_idx = 1
        # entries whose effective state is a permanent enforced ban and nothing
        # else: their address answers carry FG_ADDR_BANNED
        self.perm: set[int] = set()

    def load(self, taken: list[int], perm: set[int]) -> None:
        """Exactly these slots are in use (read back from the kernel)."""
        self.perm = perm
        used = set(taken)
        self._next_idx = max(used, default=0) + 1
        self._free = [i for i in range(self._next_idx - 1, 0, -1) if i not in used]

    def alloc(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next_idx >= self.capacity:
            raise CapacityError(
                f"src_entries is full ({self.capacity - 1} prefixes): raise capacity.prefixes "
                f"in the policy and restart"
            )
        idx = self._next_idx
        self._next_idx += 1
        return idx

    def release(self, idxs: list[int]) -> None:
        self._free.extend(idxs)

    def take_back(self, idxs: set[int]) -> None:
        """Released slots in use again (a rolled-back commit's freed entries)."""
        self._free = [i for i in self._free if i not in idxs]

    def set_perm(self, idx: int, on: bool, was_log: dict[int, bool]) -> None:
        """Mark or unmark one slot as a permanent ban; the first change notes what it was in was_log."""
        was = idx in self.perm
        if was == on:
            return
        was_log.setdefault(idx, was)
        (self.perm.add if on else self.perm.discard)(idx)

    def restore_perm(self, was_log: dict[int, bool]) -> None:
        for idx, was in was_log.items():
            (self.perm.add if was else self.perm.discard)(idx)

    def flags_of(self, idx: int) -> int:
        return abi.ADDR_BANNED if idx and idx in self.perm else 0

    def perm_array(self) -> np.ndarray[Any, Any]:
        return np.fromiter(self.perm, dtype=np.uint32, count=len(self.perm))
