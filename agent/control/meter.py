"""Rates from cumulative counters: packets/s and bits/s per group and per host.

The kernel only ever adds to its counters; a rate is the difference between
two reads over the time between them. A counter that went backwards was
reset (the program or the map was replaced, or the LRU evicted the host and
counted it afresh), so its whole current value is what happened since. The
first read only sets the starting point: a cumulative count since boot is
not a rate. Everything is vectorised: 100k hosts cost a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agent.contract.keys import IPAddress, address_of

from .port import (
    D_BYTES,
    D_DROPPED,
    D_PACKETS,
    F_BYTES,
    F_DROPPED_BYTES,
    F_DROPPED_PACKETS,
    F_NEW_SOURCES,
    F_PACKETS,
    DstSnapshot,
)

Float = NDArray[np.float64]


def counter_delta(cur: NDArray[np.uint64], prev: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """cur - prev, element by element, taking a decrease as a reset to zero."""
    out: NDArray[np.uint64] = cur - prev
    reset = cur < prev
    if reset.any():
        out[reset] = cur[reset]
    return out


@dataclass(frozen=True)
class GroupRates:
    """Per (gid, class) rates over one tick of ``dt`` seconds."""

    dt: float
    pps: Float
    bps: Float
    dropped_pps: Float
    dropped_bps: Float
    new_sources_ps: Float

    @property
    def groups(self) -> int:
        return int(self.pps.shape[0])


@dataclass(frozen=True)
class DstRates:
    """Per (host, class) rates over one tick; rows in no particular order."""

    dt: float
    family: NDArray[np.uint8]
    addr_hi: NDArray[np.uint64]
    addr_lo: NDArray[np.uint64]
    group: NDArray[np.int64]
    pps: Float
    bps: Float
    dropped_pps: Float

    def __len__(self) -> int:
        return int(self.family.shape[0])

    def address(self, i: int) -> IPAddress:
        return address_of(int(self.family[i]), (int(self.addr_hi[i]) << 64) | int(self.addr_lo[i]))


class GroupRows:
    """Row indices of each group in one tick's DstRates, computed on first use.

    A few groups: one comparison over all rows each. Many: sort the rows by
    group once and cut the sorted order into slices.
    """

    FEW = 8

    def __init__(self, d: DstRates) -> None:
        self._d = d
        self._cache: dict[int, NDArray[np.int64]] = {}
        self._order: NDArray[np.int64] | None = None
        self._sorted: NDArray[np.int64] | None = None

    def __call__(self, gid: int) -> NDArray[np.int64]:
        rows = self._cache.get(gid)
        if rows is not None:
            return rows
        d = self._d
        if len(d) == 0:
            rows = np.zeros(0, dtype=np.int64)
        elif len(self._cache) < self.FEW:
            rows = np.flatnonzero(d.group == gid)
        else:
            if self._order is None:
                self._order = np.argsort(d.group, kind="stable")
                self._sorted = d.group[self._order]
            assert self._sorted is not None
            lo, hi = np.searchsorted(self._sorted, [gid, gid + 1])
            rows = self._order[lo:hi]
        self._cache[gid] = rows
        return rows


class _HostKeys:
    """One 64-bit key per host: the IPv4 address itself, or a number given to each
    IPv6 address on first sight (IPv6 hosts are few; IPv4 needs no table at all)."""

    FIRST_V6 = 1 << 32

    def __init__(self) -> None:
        self._v6: dict[tuple[int, int], int] = {}
        self._next = self.FIRST_V6

    def keys(self, snap: DstSnapshot) -> NDArray[np.uint64]:
        out = snap.addr_lo.copy()
        v6 = np.flatnonzero(snap.family != 4)
        if len(v6):
            ids = self._v6
            if len(ids) > 2 * len(v6) + 1024:
                # Forget hosts gone from the map; those still there keep their numbers,
                # or their whole cumulative count would look like one tick's traffic.
                present = set(zip(snap.addr_hi[v6].tolist(), snap.addr_lo[v6].tolist(), strict=True))
                self._v6 = ids = {k: v for k, v in ids.items() if k in present}
            for i in v6.tolist():
                k = (int(snap.addr_hi[i]), int(snap.addr_lo[i]))
                if k not in ids:
                    ids[k] = self._next
                    self._next += 1
                out[i] = ids[k]
        return out


class RateMeter:
    """Turns successive counter reads into rates; remembers only the last read.

    Hosts are matched between reads by a 64-bit key. A hash map is read in
    bucket order, which does not change while the set of hosts does not: then
    the rows line up and no matching is needed. Otherwise the last read is
    sorted by key once and each host found by binary search.
    """

    def __init__(self) -> None:
        self._at_ns: int | None = None
        self._groups: NDArray[np.uint64] | None = None
        self._dst: DstSnapshot | None = None
        self._dst_keys: NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self._host_keys = _HostKeys()

    def reset(self) -> None:
        """Forget the last read: the next one only sets a new starting point."""
        self._at_ns = None
        self._groups = None
        self._dst = None

    def update(
        self, now_ns: int, groups: NDArray[np.uint64], dst: DstSnapshot
    ) -> tuple[GroupRates, DstRates] | None:
        """Rates since the previous read, or None on the first read (or a clock that did not move)."""
        prev_ns, prev_groups, prev_dst, prev_keys = self._at_ns, self._groups, self._dst, self._dst_keys
        if prev_ns is not None and now_ns <= prev_ns:
            return None  # nothing elapsed: keep the older starting point
        keys = self._host_keys.keys(dst)
        self._at_ns, self._groups, self._dst, self._dst_keys = now_ns, groups, dst, keys
        if prev_ns is None or prev_groups is None or prev_dst is None:
            return None
        dt = (now_ns - prev_ns) / 1e9
        return self._group_rates(groups, prev_groups, dt), self._dst_rates(dst, keys, prev_dst, prev_keys, dt)

    @staticmethod
    def _group_rates(cur: NDArray[np.uint64], prev: NDArray[np.uint64], dt: float) -> GroupRates:
        if cur.shape != prev.shape:
            # The map was resized (a restart with other capacities): count from zero.
            prev = np.zeros_like(cur)
        d = counter_delta(cur, prev).astype(np.float64) / dt
        return GroupRates(
            dt=dt,
            pps=d[:, :, F_PACKETS],
            bps=d[:, :, F_BYTES] * 8.0,
            dropped_pps=d[:, :, F_DROPPED_PACKETS],
            dropped_bps=d[:, :, F_DROPPED_BYTES] * 8.0,
            new_sources_ps=d[:, :, F_NEW_SOURCES],
        )

    @staticmethod
    def _dst_rates(
        cur: DstSnapshot, keys: NDArray[np.uint64], prev: DstSnapshot, prev_keys: NDArray[np.uint64], dt: float
    ) -> DstRates:
        c, p = cur.counters, prev.counters
        if len(prev_keys) == 0:
            old = np.zeros_like(c)
        elif len(prev_keys) == len(keys) and np.array_equal(prev_keys, keys):
            old = p
        else:
            order = np.argsort(prev_keys, kind="stable")
            ranked = prev_keys[order]
            pos = np.minimum(np.searchsorted(ranked, keys), len(ranked) - 1)
            found = ranked[pos] == keys
            # A host first counted since the last read: all of its count is new.
            old = np.where(found[:, None, None], p[order[pos]], np.uint64(0))
        d = counter_delta(c, old).astype(np.float64)
        return DstRates(
            dt=dt,
            family=cur.family,
            addr_hi=cur.addr_hi,
            addr_lo=cur.addr_lo,
            group=cur.group,
            pps=d[:, D_PACKETS] / dt,
            bps=d[:, D_BYTES] * (8.0 / dt),
            dropped_pps=d[:, D_DROPPED] / dt,
        )
