"""Putting back what was saved: the records of old pins (an upgrade) or of the state file (a reboot).

They go in after the policy, a batch at a time, each batch one all-or-nothing
commit: the policy's own entries always fit first, and when the saved records
do not all fit (a smaller ``capacity`` than the machine they were saved on,
a state file copied from a bigger gateway) the agent starts with as many as
fit — operator bans first, then the longest-lived automatic ones — and says
how many it left out, instead of failing its first commit and crash-looping
with no program attached.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from agent.contract import abi
from agent.contract.keys import PrefixKey, Record, key_network
from agent.datapath.addrtable import AddressTable
from agent.datapath.errors import CapacityError

log = structlog.get_logger("agent.daemon")

#: Records per commit while everything fits; a refused batch is retried in smaller ones.
BATCH = 1024

Saved = tuple[PrefixKey, int, int, Record]


def _priority(item: Saved) -> tuple[int, int]:
    _key, _kind, origin, (expires, _created, _flags, _reason) = item
    # Operator entries first; then those that last longest (0 = permanent).
    return (0 if origin == abi.Origin.OPERATOR else 1, -(expires or (1 << 63)))


def put_back(table: AddressTable, records: Sequence[Saved], now: int) -> tuple[int, int]:
    """Write ``records`` into the model and the kernel as far as they fit; returns (restored, left out)."""
    todo = sorted(records, key=_priority)
    restored = skipped = 0
    batch, i = BATCH, 0
    while i < len(todo):
        chunk = todo[i : i + batch]
        for key, kind, origin, rec in chunk:
            try:
                table.set_record(key, kind, origin, rec)
            except ValueError as e:  # one bad entry must not keep the guard from starting
                log.warning("state_entry_skipped", prefix=str(key_network(key)), error=str(e))
                skipped += 1
        try:
            table.commit(now)
        except CapacityError as e:
            if batch > 1:
                batch = max(1, batch // 8)  # the commit undid the chunk: try smaller pieces
                continue
            left = len(todo) - i
            log.error("state_entries_left_out", left_out=left, restored=restored, error=str(e),
                      hint="the saved bans do not fit this policy's capacity: raise capacity.prefixes "
                           "(or capacity.hosts4 / prefixes6) and restart to restore them all")
            return restored - skipped, left
        restored += len(chunk)
        i += len(chunk)
    return restored - skipped, 0


__all__ = ["BATCH", "put_back"]
