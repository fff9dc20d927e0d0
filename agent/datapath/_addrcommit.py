"""Commits of the address model to the kernel maps, all or nothing.

Writes keep every lookup valid while they happen: new entries are written
before anything points at them, host entries before the /24 slot says to
look at them, and removals come last. Large changes (a policy load) take a
vectorised path; single bans touch one entry, one host entry, one slot.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from agent.contract.keys import PrefixKey
from agent.contract.keys import bits as family_bits

from ._addrmodel import SRC, AddressModel, Entry
from ._ipv4 import Dir4, Host4
from ._ipv6 import Lpm6
from ._slots import Slots
from ._srcentries import SrcEntries

log = structlog.get_logger()


class Inflight:
    """What a commit changed in the model while planning, to put back if it fails."""

    __slots__ = ("allocated", "perm", "popped", "released", "wrote")

    def __init__(self) -> None:
        self.popped: list[tuple[PrefixKey, Entry]] = []  # empty entries taken out of the model
        self.allocated: list[Entry] = []  # entries given a slot in src_entries
        self.perm: dict[int, bool] = {}  # entry -> was it a permanent ban before
        self.wrote = False  # whether a kernel write had begun
        self.released = False  # whether the slots of the popped entries went back to the free list


class Committer:
    """Writes the model's pending edits (or the whole model) to src_entries, host4, lpm6 and dir4."""

    def __init__(
        self, model: AddressModel, slots: Slots, entries: SrcEntries, dir4: Dir4, host4: Host4, lpm6: Lpm6
    ) -> None:
        self._model = model
        self._slots = slots
        self._entries = entries
        self._dir4 = dir4
        self._host4 = host4
        self._lpm6 = lpm6
        self._inflight: Inflight | None = None
        # False until the model has been written whole (at start, after a load
        # from the kernel, after a failed commit had begun writing): until then
        # a commit rereads host4 and lpm6 and writes the whole model.
        self.synced = False

    def sync(self, now: int) -> None:
        """Write the whole model, diffing against what the kernel holds (all or nothing, as ``commit``)."""
        self._transaction(now, lambda: self._sync(now))

    def commit(self, now: int) -> int:
        """Write pending edits; returns how many prefixes changed.

        All or nothing: when anything fails (a full map, a kernel error), the
        edits since the last commit are undone, the kernel is brought back to
        the model, and the error is raised. The model never lists a ban the
        kernel does not hold, and one bad edit cannot block later commits.
        """
        n = len(self._model.dirty)

        def write() -> None:
            if not self.synced:
                self._sync(now)
            elif n:
                self._commit(now, full=n > max(2000, len(self._model.src) // 4))

        self._transaction(now, write)
        return n

    def rollback(self, now: int) -> None:
        """Put the model back as it was at the last commit; rewrite the kernel if a write had begun."""
        model = self._model
        fl, self._inflight = self._inflight, None
        wrote = fl is not None and fl.wrote
        if fl is not None:
            for key, ent in fl.popped:
                model.src[key] = ent
                model.index(key, SRC)
            if fl.released:
                # Their slots went back to the free list: take them out again, or
                # two prefixes would one day share a slot.
                self._slots.take_back({ent.idx for _key, ent in fl.popped if ent.idx})
            if not wrote:
                for ent in fl.allocated:
                    self._slots.release([ent.idx])
                    ent.idx = 0
                self._slots.restore_perm(fl.perm)
        model.revert()
        if wrote:
            # The kernel holds part of the failed commit: write the restored
            # model whole. If that fails too, the next commit tries again.
            self.synced = False
            try:
                self._sync(now)
            except Exception as e:  # noqa: BLE001 — the first error is the one the caller gets
                log.error("address_table_resync_failed", error=str(e),
                          hint="the next commit writes the whole table again")
            finally:
                self._inflight = None

    def _transaction(self, now: int, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException:
            self.rollback(now)
            raise
        self._inflight = None
        self._model.settled()

    def _sync(self, now: int) -> None:
        self._host4.reread()
        self._lpm6.reread()
        self._commit(now, full=True)
        self.synced = True

    def _commit(self, now: int, full: bool) -> None:
        model, slots = self._model, self._slots
        fl = self._inflight = Inflight()
        dirty = model.dirty
        model.dirty = set()

        # 1. Which source entries need their effective state (re)written:
        #    the dirty ones and every source prefix inside a dirty one.
        touched: set[PrefixKey]
        if full:
            touched = set(model.src)
        else:
            touched = {k for k in dirty if k in model.src}
            for key in dirty:
                if key[2] < family_bits(key[0]):
                    touched.update(model.src_lens.inside(key))
        freed: list[int] = []
        for key in [k for k in touched if model.src[k].empty()]:
            ent = model.src.pop(key)
            fl.popped.append((key, ent))
            touched.discard(key)
            dirty.add(key)
            model.unindex(key, SRC)
            if ent.idx:
                freed.append(ent.idx)
        # Plan everything, and fail on capacity, before the first write.
        for key in touched:
            ent = model.src[key]
            if ent.idx == 0:
                ent.idx = slots.alloc()
                fl.allocated.append(ent)
        idxs, rows, perm = self._entries.rows_for(sorted(touched), now)
        for idx, is_perm in zip(idxs.tolist(), perm, strict=True):
            slots.set_perm(idx, is_perm, fl.perm)
        for idx in freed:
            slots.set_perm(idx, False, fl.perm)
        v4_dirty = [k for k in dirty if k[0] == 4]
        v6_dirty = [k for k in dirty if k[0] == 6]
        host_adds, host_dels = self._host4.plan(v4_dirty, full)
        lpm_adds, lpm_dels = self._lpm6.plan(v6_dirty, full)
        self._host4.check_capacity(host_adds, host_dels)

        # 2. Entries, then the lookup structures: additions, slots, removals.
        fl.wrote = True
        self._entries.write(idxs, rows)
        self._host4.write(host_adds)
        self._lpm6.write(lpm_adds)
        self._dir4.write(v4_dirty, full)
        self._host4.delete(host_dels)
        self._lpm6.delete(lpm_dels)
        # 3. Entries nothing points at any more.
        if freed:
            self._entries.clear(freed)
            slots.release(freed)
            fl.released = True
