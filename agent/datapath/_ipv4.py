"""IPv4 in the kernel: ``dir4``, one slot per /24 (16M slots, mmap'd here),
and ``host4``, per address, for the /24s that hold prefixes longer than /24.

A slot holds the allow/ban entry of the longest source prefix of length <= 24
covering the /24, the protected group of the longest such destination prefix,
and a flag saying that longer prefixes exist inside the /24; a host entry
holds the same answer, computed over every prefix. The host table is only
consulted for /24s that need it, so most addresses cost one memory access.
"""

from __future__ import annotations

import ctypes as ct
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.keys import PrefixKey, from_words, words

from ._addrmodel import DST, HOST_BITS, SRC, AddressModel
from ._slots import Slots
from .errors import CapacityError
from .maps import Table

_DIR_SLOTS = 1 << abi.DIR4_BITS
_FULL_REPAINT_SLOTS = 1 << 20
#: Up to this many slots, permanent entries are found by set lookups rather than np.isin.
_SET_LOOKUP_SLOTS = 1 << 16
#: (src entry, group, flags): struct fg_addr_info.
_Answer = tuple[int, int, int]


class Dir4:
    """The /24 slots, painted from the model's IPv4 prefixes of length <= 24."""

    def __init__(self, table: Table, model: AddressModel, slots: Slots) -> None:
        self._model = model
        self._slots = slots
        self._mm = table.mmap()
        self.array = np.frombuffer(self._mm, dtype=np.uint64, count=_DIR_SLOTS)

    def close(self) -> None:
        del self.array
        self._mm.close()

    def slot(self, addr: int) -> int:
        """The slot of addr as the kernel holds it (struct fg_addr_info as a little-endian u64)."""
        return int(self.array[addr >> HOST_BITS])

    def write(self, v4_dirty: list[PrefixKey], full: bool) -> None:
        if full:
            if self._count_short4() + len(self._model.long4) > 4096:
                self._repaint_all()
                return
            ranges = self._maximal_ranges()
            for first, n in ranges:
                self._repaint(first, n)
            # Slots still set outside every range belonged to prefixes that
            # are gone: cleared last.
            stale = np.flatnonzero(self.array)
            if len(stale) and not ranges:  # nothing is left: every slot goes
                self.array[stale] = 0
            elif len(stale):
                starts = np.array([f for f, _ in ranges], dtype=np.int64)
                ends = starts + np.array([n for _, n in ranges], dtype=np.int64)
                pos = np.searchsorted(starts, stale, side="right") - 1
                inside = (pos >= 0) & (stale < ends[np.maximum(pos, 0)])
                self.array[stale[~inside]] = 0
            return
        ranges_d: dict[int, int] = {}
        total = 0
        for _fam, addr, plen in v4_dirty:
            length = min(plen, abi.DIR4_BITS)
            n = 1 << (abi.DIR4_BITS - length)
            first = (addr >> HOST_BITS) & ~(n - 1)
            if ranges_d.get(first, 0) < n:
                total += n
                ranges_d[first] = n
        if total > _FULL_REPAINT_SLOTS:
            self._repaint_all()
            return
        for first, n in ranges_d.items():
            self._repaint(first, n)

    def _count_short4(self) -> int:
        return sum(
            len(a) for lens in (self._model.src_lens, self._model.dst_lens) for (f, p), a in lens.by_len.items()
            if f == 4 and p <= abi.DIR4_BITS
        )

    def _maximal_ranges(self) -> list[tuple[int, int]]:
        """Slot ranges of IPv4 prefixes not inside another one, sorted."""
        cand: list[tuple[int, int]] = []
        for lens in (self._model.src_lens, self._model.dst_lens):
            for (f, length), addrs in lens.by_len.items():
                if f != 4:
                    continue
                if length <= abi.DIR4_BITS:
                    n = 1 << (abi.DIR4_BITS - length)
                    cand.extend((a >> HOST_BITS, n) for a in addrs)
        cand.extend((b, 1) for b in self._model.long4)
        cand.sort(key=lambda r: (r[0], -r[1]))
        out: list[tuple[int, int]] = []
        end = -1
        for first, n in cand:
            if first + n <= end:
                continue
            out.append((first, n))
            end = first + n
        return out

    def _repaint(self, first: int, n: int) -> None:
        src, grp = self._paint(first, n)
        want = self._combine(first, src, grp)
        cur = self.array[first : first + n]
        diff = np.flatnonzero(cur != want)
        cur[diff] = want[diff]

    def _repaint_all(self) -> None:
        """Every slot, vectorised; compared and written a chunk at a time."""
        src, grp = self._paint(0, _DIR_SLOTS)
        chunk = 1 << 20
        hosts = np.zeros(_DIR_SLOTS, dtype=bool)
        if self._model.long4:
            hosts[np.fromiter(self._model.long4, dtype=np.int64, count=len(self._model.long4))] = True
        flag = np.uint64(abi.ADDR_HOSTS << 48)
        perm = self._slots.perm_array()
        banned = np.uint64(abi.ADDR_BANNED << 48)
        for first in range(0, _DIR_SLOTS, chunk):
            s = src[first : first + chunk]
            want = s.astype(np.uint64)
            want |= grp[first : first + chunk].astype(np.uint64) << np.uint64(32)
            want[hosts[first : first + chunk]] |= flag
            if len(perm):
                want[np.isin(s, perm)] |= banned
            cur = self.array[first : first + chunk]
            diff = np.flatnonzero(cur != want)
            cur[diff] = want[diff]

    def _combine(self, first: int, src: np.ndarray[Any, Any], grp: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Slot values (struct fg_addr_info as a little-endian u64)."""
        n = len(src)
        want = src.astype(np.uint64) | (grp.astype(np.uint64) << np.uint64(32))
        if self._slots.perm:
            if n <= _SET_LOOKUP_SLOTS:
                # A reload repaints thousands of small ranges: looking each slot's
                # entry up in the set beats building an array of every permanent entry each time.
                perm = self._slots.perm
                banned = np.fromiter((v in perm for v in src.tolist()), dtype=bool, count=n)
            else:
                banned = np.isin(src, self._slots.perm_array())
            want[banned] |= np.uint64(abi.ADDR_BANNED << 48)
        if n == 1:
            if first in self._model.long4:
                want[0] |= np.uint64(abi.ADDR_HOSTS << 48)
            return want
        if n <= len(self._model.long4):
            blocks = [b - first for b in range(first, first + n) if b in self._model.long4]
        else:
            blocks = [b - first for b in self._model.long4 if first <= b < first + n]
        if blocks:
            want[np.array(blocks, dtype=np.int64)] |= np.uint64(abi.ADDR_HOSTS << 48)
        return want

    def _paint(self, first: int, n: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Source entry and group of each slot in [first, first + n), from
        the prefixes of length <= 24 (longer ones live in host4)."""
        src = np.zeros(n, dtype=np.uint32)
        grp = np.zeros(n, dtype=np.uint16)
        range_len = abi.DIR4_BITS - (n.bit_length() - 1)
        last = first + n
        for kind, lens in ((SRC, self._model.src_lens), (DST, self._model.dst_lens)):
            target = src if kind == SRC else grp
            for length in sorted(p for f, p in lens.by_len if f == 4 and p <= abi.DIR4_BITS):
                addrs = lens.by_len[(4, length)]
                span = 1 << (abi.DIR4_BITS - length)
                if length <= range_len:
                    # at most one prefix of this length covers the range
                    shift = 32 - length
                    a = ((first << HOST_BITS) >> shift) << shift if length else 0
                    if a in addrs:
                        target[:] = self._value(kind, (4, a, length))
                    continue
                if len(addrs) > 64 * max(1, n // span) and n < _DIR_SLOTS:
                    # few slots, many prefixes: look the candidates up
                    found = [
                        a
                        for a in range(first << HOST_BITS, last << HOST_BITS, span << HOST_BITS)
                        if a in addrs
                    ]
                else:
                    found = [a for a in addrs if first <= (a >> HOST_BITS) < last]
                if not found:
                    continue
                starts = np.fromiter((a >> HOST_BITS for a in found), dtype=np.int64, count=len(found)) - first
                vals = np.fromiter(
                    (self._value(kind, (4, a, length)) for a in found), dtype=target.dtype, count=len(found)
                )
                if span == 1:
                    target[starts] = vals
                else:
                    pos = (starts[:, None] + np.arange(span, dtype=np.int64)).ravel()
                    target[pos] = np.repeat(vals, span)
        return src, grp

    def _value(self, kind: int, key: PrefixKey) -> int:
        return self._model.src[key].idx if kind == SRC else self._model.dst[key]


class Host4:
    """host4: the per-address answers inside /24s that hold prefixes longer than /24."""

    def __init__(self, table: Table, model: AddressModel, slots: Slots) -> None:
        self._table = table
        self._model = model
        self._slots = slots
        # what the kernel holds, as we wrote it
        self._held: dict[int, _Answer] = {}

    def reread(self) -> None:
        """Take what the kernel holds as the starting point of the next diff."""
        self._held = {}
        for k, v in self._table.items():
            self._held[from_words(4, (k.value, 0, 0, 0))] = (int(v.src_entry), int(v.group), int(v.flags))

    def get(self, addr: int) -> _Answer | None:
        got = self._table.get(ct.c_uint32(words(4, addr)[0]))
        if got is None:
            return None
        return int(got.src_entry), int(got.group), int(got.flags)

    def check_capacity(self, adds: dict[int, _Answer], dels: list[int]) -> None:
        if len(self._held) + len(adds) - len(dels) > self._table.max_entries:
            raise CapacityError(
                f"host4 needs {len(self._held) + len(adds) - len(dels)} entries, capacity "
                f"is {self._table.max_entries}: raise capacity.hosts4 in the policy and restart"
            )

    def _answer(self, addr: int) -> _Answer:
        idx, group = self._model.longest(4, addr, 32)
        return idx, group, self._slots.flags_of(idx)

    def _block_hosts(self, block: int) -> dict[int, _Answer]:
        """Desired host4 entries of one /24: every address covered by a
        prefix longer than /24, answered over all prefixes."""
        out: dict[int, _Answer] = {}
        for key in self._model.long4.get(block, ()):
            _fam, addr, plen = key
            if plen == 32:
                # nothing is longer than a /32: its own entry, if it is a source
                if addr not in out:
                    ent = self._model.src.get(key)
                    d = next(self._model.dst_lens.covering(4, addr, 32), None)
                    if ent is None:
                        s_ = next(self._model.src_lens.covering(4, addr, 32), None)
                        idx = self._model.src[s_].idx if s_ else 0
                    else:
                        idx = ent.idx
                    out[addr] = (idx, self._model.dst[d] if d else 0, self._slots.flags_of(idx))
                continue
            for a in range(addr, addr + (1 << (32 - plen))):
                if a not in out:
                    out[a] = self._answer(a)
        return out

    def plan(
        self, v4_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[int, _Answer], list[int]]:
        if full:
            blocks = set(self._model.long4) | {a >> HOST_BITS for a in self._held}
        else:
            blocks = set()
            host_blocks = {a >> HOST_BITS for a in self._held}
            for _fam, addr, plen in v4_dirty:
                if plen > abi.DIR4_BITS:
                    blocks.add(addr >> HOST_BITS)
                else:
                    first = addr >> HOST_BITS
                    last = first + (1 << (abi.DIR4_BITS - plen))
                    if last - first <= len(self._model.long4):
                        blocks.update(b for b in range(first, last) if b in self._model.long4)
                    else:
                        blocks.update(b for b in self._model.long4 if first <= b < last)
                    if last - first <= len(host_blocks):
                        blocks.update(b for b in range(first, last) if b in host_blocks)
                    else:
                        blocks.update(b for b in host_blocks if first <= b < last)
        adds: dict[int, _Answer] = {}
        dels: list[int] = []
        have_by_block: dict[int, list[int]] = {}
        if full or len(blocks) > 64:
            for a in self._held:
                b = a >> HOST_BITS
                if b in blocks:
                    have_by_block.setdefault(b, []).append(a)
        else:
            for b in blocks:
                base = b << HOST_BITS
                have_by_block[b] = [a for a in range(base, base + 256) if a in self._held]
        for b in blocks:
            want = self._block_hosts(b)
            adds.update({a: v for a, v in want.items() if self._held.get(a) != v})
            dels.extend(a for a in have_by_block.get(b, ()) if a not in want)
        return adds, dels

    def write(self, adds: dict[int, _Answer]) -> None:
        if not adds:
            return
        n = len(adds)
        keys = np.fromiter((a for a in adds), dtype=np.uint32, count=n).byteswap()
        vals = np.zeros(n, dtype=abi.ADDR_INFO_DTYPE)
        vals["src_entry"] = np.fromiter((v[0] for v in adds.values()), dtype=np.uint32, count=n)
        vals["group"] = np.fromiter((v[1] for v in adds.values()), dtype=np.uint16, count=n)
        vals["flags"] = np.fromiter((v[2] for v in adds.values()), dtype=np.uint8, count=n)
        from . import bpfsys

        bpfsys.update_batch(self._table.fd, keys.tobytes(), vals.tobytes(), n)
        self._held.update(adds)

    def delete(self, dels: list[int]) -> None:
        if not dels:
            return
        from . import bpfsys

        keys = np.array(dels, dtype=np.uint32).byteswap()
        bpfsys.delete_batch(self._table.fd, keys.tobytes(), len(dels))
        for a in dels:
            self._held.pop(a, None)

