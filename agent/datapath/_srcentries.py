"""``src_entries``, mmap'd: one row per source prefix with its effective
allow/ban state (its own records merged with those of covering prefixes,
because a lookup only returns the longest match) and each origin's own
records, so that the daemon rebuilds its model from the kernel after a
restart (``read``, also what pin migration uses).
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.keys import PrefixKey, Record, from_words, words

from ._addrmodel import AddressModel, Entry, merge, merge_cached
from ._expiries import Expiry
from .maps import Table

_ENTRY_DTYPE = abi.SRC_ENTRY_DTYPE
_RECORD_DTYPE = abi.SRC_RECORD_DTYPE


@dataclass
class Loaded:
    """What src_entries holds, decoded: the model's source prefixes and what goes with them."""

    entries: list[tuple[PrefixKey, Entry]]
    expiries: list[Expiry]
    taken: list[int]  # slots in use
    perm: set[int]  # slots holding a permanent enforced ban


class SrcEntries:
    """The rows of src_entries: built from the model, written in place, read back."""

    def __init__(self, table: Table, model: AddressModel) -> None:
        self._model = model
        self._entry_size = ct.sizeof(abi.SrcEntry)
        self._mm = table.mmap()
        self.max_entries = table.max_entries
        self._rows = np.frombuffer(self._mm, dtype=_ENTRY_DTYPE, count=self.max_entries)

    def close(self) -> None:
        del self._rows
        self._mm.close()

    def entry(self, idx: int) -> abi.SrcEntry:
        return abi.SrcEntry.from_buffer_copy(self._mm, idx * self._entry_size)

    def read(self) -> Loaded:
        """Decode every row in use (after a restart, or from pins being migrated)."""
        rows = self._rows
        used = np.nonzero(rows["family"])[0]
        used = used[used > 0]
        fams = rows["family"][used].tolist()
        plens = rows["prefix_len"][used].tolist()
        addrs = rows["addr"][used].tolist()
        bans = rows["ban"][used].tolist()
        allows = rows["allow"][used].tolist()
        entries: list[tuple[PrefixKey, Entry]] = []
        expiries: list[Expiry] = []
        for i, idx in enumerate(used.tolist()):
            fam = fams[i]
            key: PrefixKey = (fam, from_words(fam, addrs[i]), plens[i])
            ent = Entry(idx)
            for o in range(abi.ORIGIN_MAX):
                b, a = bans[i][o], allows[i][o]
                if b[2]:
                    ent.ban[o] = (int(b[0]), int(b[1]), int(b[2]), int(b[3]))
                    if b[0]:
                        expiries.append((int(b[0]), key, abi.SRC_BAN, o))
                if a[2]:
                    ent.allow[o] = (int(a[0]), int(a[1]), int(a[2]), int(a[3]))
                    if a[0]:
                        expiries.append((int(a[0]), key, abi.SRC_ALLOW, o))
            entries.append((key, ent))
        perm = (rows["flags"][used] == abi.SRC_BAN) & (rows["ban_expires"][used] == 0) & (rows["watch"][used] == 0)
        return Loaded(entries, expiries, used.tolist(), set(used[perm].tolist()))

    def rows_for(
        self, keys: list[PrefixKey], now: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[bool]]:
        """The rows (effective state, prefix, own records) of these entries,
        their indexes, and which of them are permanent enforced bans."""
        if not keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_ENTRY_DTYPE), []
        model = self._model
        n = len(keys)
        ents = [model.src[k] for k in keys]
        idxs = np.fromiter((e.idx for e in ents), dtype=np.int64, count=n)
        rows = np.zeros(n, dtype=_ENTRY_DTYPE)
        fams = np.fromiter((k[0] for k in keys), dtype=np.uint8, count=n)
        plens = np.fromiter((k[2] for k in keys), dtype=np.uint8, count=n)
        addrs = np.zeros((n, 4), dtype=np.uint32)
        is4 = fams == 4
        v4 = np.fromiter((k[1] if k[0] == 4 else 0 for k in keys), dtype=np.uint32, count=n)
        # network order in memory = the host-order value byte-swapped
        addrs[is4, 0] = v4[is4].byteswap()
        for i in np.flatnonzero(~is4).tolist():
            addrs[i] = words(6, keys[i][1])
        covered = self._has_ancestor4(v4, plens) & is4
        covered |= ~is4  # IPv6: walk the few v6 lengths in use
        eff_rows: list[tuple[int, int, int, int, int]] = []
        watch_ids: list[int] = []
        ban_rows: list[list[tuple[int, Record]]] = [[] for _ in range(abi.ORIGIN_MAX)]
        allow_rows: list[list[tuple[int, Record]]] = [[] for _ in range(abi.ORIGIN_MAX)]
        merged = merge_cached
        walk = covered.tolist()
        for i, ent in enumerate(ents):
            st = merge(model.covering_records(keys[i]), now) if walk[i] else merged(ent.records(), now)
            eff_rows.append(
                (st.ban_expires, st.ban_monitor_expires, st.allow_expires, st.allow_monitor_expires, st.flags)
            )
            watch_ids.append(model.watch_of(keys[i]) if walk[i] else ent.watch)
            for o in range(abi.ORIGIN_MAX):
                if ent.ban[o] is not None:
                    ban_rows[o].append((i, ent.ban[o]))  # type: ignore[arg-type]
                if ent.allow[o] is not None:
                    allow_rows[o].append((i, ent.allow[o]))  # type: ignore[arg-type]
        eff = np.array(eff_rows, dtype=np.uint64).reshape(n, 5)
        rows["ban_expires"] = eff[:, 0]
        rows["ban_monitor_expires"] = eff[:, 1]
        rows["allow_expires"] = eff[:, 2]
        rows["allow_monitor_expires"] = eff[:, 3]
        rows["flags"] = eff[:, 4]
        rows["watch"] = np.asarray(watch_ids, dtype=np.uint16)
        rows["family"] = fams
        rows["prefix_len"] = plens
        rows["addr"] = addrs
        rec_dtype = _RECORD_DTYPE
        for field, per_origin in (("ban", ban_rows), ("allow", allow_rows)):
            for o, items in enumerate(per_origin):
                if items:
                    where = np.fromiter((i for i, _ in items), dtype=np.int64, count=len(items))
                    rows[field][where, o] = np.array([r for _, r in items], dtype=rec_dtype)
        # A watched source's packets are counted from its entry: no shortcut past it.
        perm = (eff[:, 4] == abi.SRC_BAN) & (eff[:, 0] == 0) & (rows["watch"] == 0)
        return idxs, rows, perm.tolist()

    def _has_ancestor4(self, addrs: np.ndarray[Any, Any], plens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """For each IPv4 prefix, whether a shorter source prefix covers it
        (one vectorised membership test per length in use)."""
        lens = self._model.src_lens
        out = np.zeros(len(addrs), dtype=bool)
        for length in lens.lengths(4):
            if length == 32:
                continue
            nets = lens.by_len[(4, length)]
            cand = plens > length
            if not cand.any():
                continue
            mask = np.uint32(((1 << length) - 1) << (32 - length)) if length else np.uint32(0)
            table = np.fromiter(nets, dtype=np.uint32, count=len(nets))
            out |= cand & np.isin(addrs & mask, table)
        return out

    def write(self, idxs: np.ndarray[Any, Any], rows: np.ndarray[Any, Any]) -> None:
        """Write entries in one go.

        Existing entries change in place: their flags are first reduced to
        the flags kept, so no reader pairs an old flag with a new expiry;
        the new flags land with the full rows.
        """
        if not len(idxs):
            return
        cur = self._rows[idxs]
        live = cur["family"] != 0
        if live.any():
            keep = cur["flags"][live] & rows["flags"][live]
            self._rows["flags"][idxs[live]] = keep
        self._rows[idxs] = rows

    def clear(self, idxs: list[int]) -> None:
        """Zero entries nothing points at any more."""
        self._rows[np.array(idxs, dtype=np.int64)] = np.zeros(1, dtype=_ENTRY_DTYPE)
