"""The address table: allow/deny/ban prefixes and protected prefixes, compiled
into the structures the program looks up once per address.

Kernel side (bpf/maps.h):

* ``dir4`` — one slot per IPv4 /24 (16M slots, mmap'd here): the allow/ban
  entry of the longest source prefix of length <= 24 covering the /24, the
  protected group of the longest such destination prefix, and a flag saying
  that longer prefixes exist inside the /24;
* ``host4`` — per IPv4 address, for addresses covered by prefixes longer
  than /24: the same answer, computed over every prefix;
* ``lpm6`` — an LPM trie over every IPv6 prefix, each node carrying the
  answer for itself (merged with the prefixes covering it);
* ``src_entries`` — one entry per source prefix (mmap'd): the effective
  allow/ban state (its own records merged with those of covering prefixes,
  because a lookup only returns the longest match) and each origin's own
  records, so that the daemon rebuilds this model from the kernel after a
  restart.

Why this shape: ``floodguard bench prefixes`` measures it against an LPM trie
and against one hash per prefix length, with varying addresses; a /24 array
answers in one memory access and the host table is only consulted for /24s
that need it.

Writes keep every lookup valid while they happen: new entries are written
before anything points at them, host entries before the /24 slot says to
look at them, and removals come last. Large changes (a policy load) take a
vectorised path; single bans touch one entry, one host entry, one slot.

The parts, one job each: ``_addrmodel`` (prefixes, records, the undo log),
``_prefixlens`` (longest-match index), ``_expiries`` (the expiry heap),
``_slots`` (src_entries' free list), ``_srcentries``, ``_ipv4`` and ``_ipv6``
(one kernel structure each), ``_addrcommit`` (all-or-nothing commits).
``AddressTable`` wires them together and is the one API the daemon uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.keys import IPAddress, IPNetwork, PrefixKey, Record
from agent.contract.keys import bits as family_bits

from ._addrcommit import Committer
from ._addrmodel import AddressModel, Entry, SrcState, check_record, merge
from ._ipv4 import Dir4, Host4
from ._ipv6 import Lpm6
from ._slots import Slots
from ._srcentries import SrcEntries
from .errors import CapacityError
from .maps import Maps

__all__ = ["AddressTable", "CapacityError", "SrcState", "check_record", "merge"]


def count_bans(records: Iterable[tuple[object, int, int, tuple[int, int, int, int]]], now_ns: int) -> dict[str, int]:
    """Enforced, unexpired bans per origin label, from ``AddressTable.records()``.

    For the daemon to call under its lock when bans change; monitor-only bans
    drop nothing and are not counted. ``now_ns`` is CLOCK_MONOTONIC.
    """
    out = {o.label: 0 for o in abi.Origin}
    for _key, kind, origin, (expires, _created, flags, _reason) in records:
        if kind == abi.SRC_BAN and flags & abi.SRC_BAN and (expires == 0 or expires > now_ns):
            out[abi.Origin(origin).label] += 1
    return out


class AddressTable:
    """The model of the address maps, and the writer that keeps them in sync."""

    def __init__(self, maps: Maps) -> None:
        self._model = AddressModel()
        self._entries = SrcEntries(maps["src_entries"], self._model)
        self.max_entries = self._entries.max_entries
        self._slots = Slots(self.max_entries)
        self._dir4 = Dir4(maps["dir4"], self._model, self._slots)
        self._host4 = Host4(maps["host4"], self._model, self._slots)
        self._lpm6 = Lpm6(maps["lpm6"], self._model, self._slots)
        self._committer = Committer(self._model, self._slots, self._entries, self._dir4, self._host4, self._lpm6)
        # Bumped by every edit that can change which records exist; ban_counts() recounts only then.
        self._generation = 0
        self._counted: tuple[int, dict[str, int]] | None = None

    # --- lifetime ----------------------------------------------------------

    def close(self) -> None:
        self._dir4.close()
        self._entries.close()

    def load_from_kernel(self) -> int:
        """Rebuild the source model from src_entries (after a restart).

        Destination prefixes are not stored in the kernel: the daemon sets
        them from the policy before the first commit. Returns the number of
        prefixes found.
        """
        loaded = self._entries.read()
        self._model.load(loaded.entries, loaded.expiries)
        self._slots.load(loaded.taken, loaded.perm)
        self._committer.synced = False
        self._generation += 1
        return len(self._model.src)

    # --- the model ---------------------------------------------------------

    @property
    def src(self) -> dict[PrefixKey, Entry]:
        return self._model.src

    @property
    def dst(self) -> dict[PrefixKey, int]:
        return self._model.dst

    @property
    def pending(self) -> int:
        return len(self._model.dirty)

    # --- edits (nothing reaches the kernel before commit) ------------------

    def set_record(self, net: IPNetwork | PrefixKey, kind: int, origin: int, record: Record | None) -> bool:
        """Set (or with None, remove) one origin's ban or allow record on a
        prefix. Returns whether anything changed."""
        changed = self._model.set_record(net, kind, origin, record)
        self._generation += changed
        return changed

    def get_record(self, key: PrefixKey, kind: int, origin: int) -> Record | None:
        return self._model.get_record(key, kind, origin)

    def replace_origin(
        self, origin: int, bans: dict[PrefixKey, Record], allows: dict[PrefixKey, Record]
    ) -> int:
        """Make one origin's records exactly these; other origins are untouched.

        Returns the number of prefixes whose records changed.
        """
        changed = self._model.replace_origin(origin, bans, allows)
        self._generation += bool(changed)
        return changed

    def set_watch(self, watch: dict[PrefixKey, int]) -> int:
        """Make the watched source prefixes exactly these (prefix -> watch set id 1..255).

        A watched prefix gets an entry of its own (so that every address it
        covers finds the set id in the one lookup it already makes); entries
        inside it inherit the id, a longer watched prefix overriding. Returns
        how many prefixes changed.
        """
        return self._model.set_watch(watch)

    def watched(self) -> dict[PrefixKey, int]:
        return {k: e.watch for k, e in self._model.src.items() if e.watch}

    def set_destinations(self, dst: dict[PrefixKey, int]) -> None:
        """Make the protected prefixes exactly these (prefix -> group id)."""
        self._model.set_destinations(dst)

    def records(self, origin: int | None = None) -> Iterator[tuple[PrefixKey, int, int, Record]]:
        """(prefix, kind, origin, record) for every record, optionally of one origin."""
        return self._model.records(origin)

    def expire(self, now: int) -> list[tuple[PrefixKey, int, int, Record]]:
        """Remove records whose expiry has passed; returns what was removed, soonest expiry first.

        Costs what is due, not what exists: the expiries are a heap."""
        removed = self._model.expire(now)
        self._generation += bool(removed)
        return removed

    def ban_counts(self, now: int) -> dict[str, int]:
        """Enforced, unexpired bans per origin label (the metrics' ``floodguard_bans_active``).

        Counted again only after an edit, an expiry or a rollback: a scrape
        between two changes costs a dict copy, not a walk over every record.
        """
        if self._counted is None or self._counted[0] != self._generation:
            self._counted = (self._generation, count_bans(self._model.records(), now))
        return dict(self._counted[1])

    # --- lookups (the model's answer, as the program would give it) --------

    def lookup(self, addr: IPAddress) -> tuple[PrefixKey | None, PrefixKey | None]:
        """Longest source prefix and longest protected prefix covering addr."""
        return self._model.lookup(addr)

    def covering_sources(self, addr: IPAddress) -> list[PrefixKey]:
        """Every source prefix covering addr, longest first (for explain)."""
        return list(self._model.src_lens.covering(addr.version, int(addr), family_bits(addr.version)))

    def effective(self, key: PrefixKey, now: int) -> SrcState:
        return merge(self._model.covering_records(key), now)

    # --- commit ------------------------------------------------------------

    def sync(self, now: int) -> None:
        """Write the whole model, diffing against what the kernel holds (all or nothing, as ``commit``)."""
        self._committer.sync(now)

    def commit(self, now: int) -> int:
        """Write pending edits; returns how many prefixes changed.

        All or nothing: when anything fails (a full map, a kernel error), the
        edits since the last commit are undone, the kernel is brought back to
        the model, and the error is raised. The model never lists a ban the
        kernel does not hold, and one bad edit cannot block later commits.
        """
        try:
            return self._committer.commit(now)
        except BaseException:
            self._generation += 1  # the edits were undone
            raise

    def rollback(self, now: int) -> None:
        """Undo the edits since the last commit (a caller that gives up before committing)."""
        self._generation += 1
        self._committer.rollback(now)

    # --- reading back (tests, explain) -------------------------------------

    def kernel_answer(self, addr: IPAddress) -> tuple[int, int, int]:
        """(src entry, group, flags) as the kernel structures answer for addr
        (flags without FG_ADDR_HOSTS, which only steers the lookup)."""
        if addr.version == 4:
            a = int(addr)
            slot = self._dir4.slot(a)
            if (slot >> 48) & abi.ADDR_HOSTS:
                got = self._host4.get(a)
                if got is not None:
                    return got
            return slot & 0xFFFFFFFF, (slot >> 32) & 0xFFFF, ((slot >> 48) & 0xFF) & ~abi.ADDR_HOSTS
        return self._lpm6.get(int(addr))

    def entry(self, idx: int) -> abi.SrcEntry:
        return self._entries.entry(idx)

    def index_of(self, key: PrefixKey) -> int:
        ent = self._model.src.get(key)
        return ent.idx if ent is not None else 0

    @property
    def _dir(self) -> np.ndarray[Any, Any]:
        """dir4's slots as an array (tests check that nothing is left in it)."""
        return self._dir4.array
