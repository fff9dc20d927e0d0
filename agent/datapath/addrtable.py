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
and against one hash per prefix length, with varying addresses, at 1,000,000
prefixes; a /24 array answers in one memory access and the host table is
only consulted for /24s that need it.

Writes keep every lookup valid while they happen: new entries are written
before anything points at them, host entries before the /24 slot says to
look at them, and removals come last.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import abi
from .errors import CapacityError
from .maps import Maps

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PrefixKey = tuple[int, int, int]  # (family 4|6, network as int, prefix length)
# One origin's record about one prefix: (expires_ns, created_ns, flags, reason_id)
Record = tuple[int, int, int, int]

_DIR_SLOTS = 1 << abi.DIR4_BITS
_HOST_BITS = 32 - abi.DIR4_BITS
_FULL_REPAINT_SLOTS = 1 << 20
_V4_MASK = (1 << 32) - 1
_V6_MASK = (1 << 128) - 1

BAN_KINDS = (abi.SRC_BAN, abi.SRC_BAN_MONITOR)
ALLOW_KINDS = (abi.SRC_ALLOW, abi.SRC_ALLOW_MONITOR)


def prefix_key(net: IPNetwork) -> PrefixKey:
    return (net.version, int(net.network_address), net.prefixlen)


def key_network(key: PrefixKey) -> IPNetwork:
    fam, addr, plen = key
    if fam == 4:
        return ipaddress.IPv4Network((addr, plen))
    return ipaddress.IPv6Network((addr, plen))


def _bits(fam: int) -> int:
    return 32 if fam == 4 else 128


def _covers(outer: PrefixKey, inner: PrefixKey) -> bool:
    fam, addr, plen = outer
    if fam != inner[0] or plen > inner[2]:
        return False
    shift = _bits(fam) - plen
    return (inner[1] >> shift) == (addr >> shift) if plen else True


def _words(fam: int, addr: int) -> tuple[int, int, int, int]:
    """An address as the program's 4 x u32 in network order, read as little-endian words."""
    raw = addr.to_bytes(4 if fam == 4 else 16, "big").ljust(16, b"\0")
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8, 12))  # type: ignore[return-value]


def _addr_from_words(fam: int, words: Any) -> int:
    raw = b"".join(int(w).to_bytes(4, "little") for w in words)
    return int.from_bytes(raw[:4] if fam == 4 else raw, "big")


@dataclass(frozen=True)
class SrcState:
    """Effective state of a source prefix (what the program reads)."""

    flags: int = 0
    ban_expires: int = 0
    ban_monitor_expires: int = 0
    allow_expires: int = 0
    allow_monitor_expires: int = 0


class _Entry:
    """A source prefix: its slot in src_entries and each origin's records."""

    __slots__ = ("allow", "ban", "idx")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ban: list[Record | None] = [None] * abi.ORIGIN_MAX
        self.allow: list[Record | None] = [None] * abi.ORIGIN_MAX

    def empty(self) -> bool:
        return not any(self.ban) and not any(self.allow)

    def records(self) -> Iterator[Record]:
        for r in self.ban:
            if r is not None:
                yield r
        for r in self.allow:
            if r is not None:
                yield r


def merge(records: Iterable[Record], now: int) -> SrcState:
    """Fold records into the effective state; expired records do not count.

    For each kind the expiry is the latest one, 0 (never) beating any time:
    a prefix is banned while any record bans it.
    """
    exp: dict[int, int] = {}
    for expires, _created, flags, _reason in records:
        if expires and expires <= now:
            continue
        cur = exp.get(flags)
        if cur is None or (cur != 0 and (expires == 0 or expires > cur)):
            exp[flags] = expires
    f = 0
    for bit in exp:
        f |= bit
    return SrcState(
        flags=f,
        ban_expires=exp.get(abi.SRC_BAN, 0),
        ban_monitor_expires=exp.get(abi.SRC_BAN_MONITOR, 0),
        allow_expires=exp.get(abi.SRC_ALLOW, 0),
        allow_monitor_expires=exp.get(abi.SRC_ALLOW_MONITOR, 0),
    )


class AddressTable:
    """The model of the address maps, and the writer that keeps them in sync."""

    def __init__(self, maps: Maps) -> None:
        self._maps = maps
        self._entries_t = maps["src_entries"]
        self._host4_t = maps["host4"]
        self._lpm6_t = maps["lpm6"]
        self._entry_size = ct.sizeof(abi.SrcEntry)
        self._entries_mm = self._entries_t.mmap()
        self._entries_base = ct.addressof(ct.c_char.from_buffer(self._entries_mm))
        self._dir_mm = maps["dir4"].mmap()
        self._dir = np.frombuffer(self._dir_mm, dtype=np.uint64, count=_DIR_SLOTS)
        self.max_entries = self._entries_t.max_entries

        self.src: dict[PrefixKey, _Entry] = {}
        self.dst: dict[PrefixKey, int] = {}
        # prefixes by (family, length), for ancestor and descendant walks
        self._by_len: dict[tuple[int, int], set[int]] = {}
        # IPv4 prefixes longer than the /24 slots, per /24 block
        self._long4: dict[int, set[PrefixKey]] = {}
        # what the kernel holds in host4 and lpm6, as we wrote it
        self._host4: dict[int, tuple[int, int]] = {}
        self._lpm6: dict[tuple[int, int], tuple[int, int]] = {}
        self._free: list[int] = []
        self._next_idx = 1
        self._dirty: set[PrefixKey] = set()
        self._synced = False

    # --- lifetime ----------------------------------------------------------

    def close(self) -> None:
        del self._dir
        self._dir_mm.close()
        self._entries_mm.close()

    def load_from_kernel(self) -> None:
        """Rebuild the source model from src_entries (after a restart).

        Destination prefixes are not stored in the kernel: the daemon sets
        them from the policy before the first sync().
        """
        view = np.frombuffer(self._entries_mm, dtype=np.uint8, count=self.max_entries * self._entry_size)
        rows = view.reshape(self.max_entries, self._entry_size)
        family_off = abi.SrcEntry.family.offset
        used = np.nonzero(rows[:, family_off])[0]
        self.src.clear()
        self._by_len.clear()
        self._long4.clear()
        for idx in used.tolist():
            if idx == 0:
                continue
            e = abi.SrcEntry.from_buffer_copy(self._entries_mm, idx * self._entry_size)
            key: PrefixKey = (int(e.family), _addr_from_words(e.family, e.addr), int(e.prefix_len))
            ent = _Entry(idx)
            for o in range(abi.ORIGIN_MAX):
                b, a = e.ban[o], e.allow[o]
                if b.flags:
                    ent.ban[o] = (int(b.expires), int(b.created), int(b.flags), int(b.reason))
                if a.flags:
                    ent.allow[o] = (int(a.expires), int(a.created), int(a.flags), int(a.reason))
            self.src[key] = ent
            self._index(key)
        taken = {e.idx for e in self.src.values()}
        self._next_idx = max(taken, default=0) + 1
        self._free = [i for i in range(1, self._next_idx) if i not in taken]
        self._synced = False

    # --- edits (nothing reaches the kernel before commit) ------------------

    def set_record(self, net: IPNetwork | PrefixKey, kind: int, origin: int, record: Record | None) -> None:
        """Set (or with None, remove) one origin's ban or allow record on a prefix."""
        key = net if isinstance(net, tuple) else prefix_key(net)
        ent = self.src.get(key)
        if ent is None:
            if record is None:
                return
            ent = _Entry(0)
            self.src[key] = ent
            self._index(key)
        slots = ent.ban if kind in BAN_KINDS else ent.allow
        if slots[origin] == record:
            return
        slots[origin] = record
        self._dirty.add(key)

    def replace_origin(
        self, origin: int, bans: dict[PrefixKey, Record], allows: dict[PrefixKey, Record]
    ) -> int:
        """Make one origin's records exactly these; other origins are untouched.

        Returns the number of prefixes whose records changed.
        """
        before = len(self._dirty)
        for key, ent in list(self.src.items()):
            if ent.ban[origin] is not None and key not in bans:
                self.set_record(key, abi.SRC_BAN, origin, None)
            if ent.allow[origin] is not None and key not in allows:
                self.set_record(key, abi.SRC_ALLOW, origin, None)
        for key, rec in bans.items():
            self.set_record(key, abi.SRC_BAN, origin, rec)
        for key, rec in allows.items():
            self.set_record(key, abi.SRC_ALLOW, origin, rec)
        return len(self._dirty) - before

    def set_destinations(self, dst: dict[PrefixKey, int]) -> None:
        """Make the protected prefixes exactly these (prefix -> group id)."""
        for key in list(self.dst):
            if key not in dst:
                del self.dst[key]
                self._dirty.add(key)
                self._maybe_unindex(key)
        for key, group in dst.items():
            if self.dst.get(key) != group:
                if key not in self.dst:
                    self._index(key)
                self.dst[key] = group
                self._dirty.add(key)

    def records(self, origin: int | None = None) -> Iterator[tuple[PrefixKey, int, int, Record]]:
        """(prefix, kind, origin, record) for every record, optionally of one origin."""
        for key, ent in self.src.items():
            for o in range(abi.ORIGIN_MAX) if origin is None else (origin,):
                b, a = ent.ban[o], ent.allow[o]
                if b is not None:
                    yield key, abi.SRC_BAN, o, b
                if a is not None:
                    yield key, abi.SRC_ALLOW, o, a

    def expire(self, now: int) -> list[tuple[PrefixKey, int, int, Record]]:
        """Remove records whose expiry has passed; returns what was removed."""
        gone = []
        for key, kind, origin, rec in list(self.records()):
            if rec[0] and rec[0] <= now:
                self.set_record(key, kind, origin, None)
                gone.append((key, kind, origin, rec))
        return gone

    @property
    def pending(self) -> int:
        return len(self._dirty)

    # --- lookups (the model's answer, as the program would give it) --------

    def lookup(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[PrefixKey | None, PrefixKey | None]:
        """Longest source prefix and longest protected prefix covering addr."""
        fam = addr.version
        a = int(addr)
        best_src = best_dst = None
        for plen in range(_bits(fam), -1, -1):
            if (fam, plen) not in self._by_len:
                continue
            shift = _bits(fam) - plen
            net = (a >> shift) << shift if plen else 0
            k = (fam, net, plen)
            if best_src is None and k in self.src:
                best_src = k
            if best_dst is None and k in self.dst:
                best_dst = k
            if best_src and best_dst:
                break
        return best_src, best_dst

    def effective(self, key: PrefixKey, now: int) -> SrcState:
        return merge(self._covering_records(key), now)

    # --- commit ------------------------------------------------------------

    def sync(self, now: int) -> None:
        """Write the whole model, diffing against what the kernel holds."""
        self._host4 = {}
        for k, v in self._host4_t.items():
            self._host4[_addr_from_words(4, (k.value, 0, 0, 0))] = (int(v.src_entry), int(v.group))
        self._lpm6 = {}
        for k, v in self._lpm6_t.items():
            self._lpm6[(_addr_from_words(6, k.addr), int(k.prefixlen))] = (int(v.src_entry), int(v.group))
        for key in self.src:
            self._dirty.add(key)
        self._commit(now, full=True)
        self._synced = True

    def commit(self, now: int) -> int:
        """Write pending edits; returns how many prefixes changed."""
        if not self._synced:
            n = len(self._dirty)
            self.sync(now)
            return n
        n = len(self._dirty)
        if n:
            self._commit(now, full=False)
        return n

    def _commit(self, now: int, full: bool) -> None:
        dirty = self._dirty
        self._dirty = set()

        # 1. Which source entries need their effective state (re)written:
        #    the dirty ones and every source prefix inside a dirty one.
        touched: set[PrefixKey] = set()
        for key in dirty:
            if key in self.src:
                touched.add(key)
            if key[2] < _bits(key[0]):
                touched.update(k for k in self._descendants(key) if k in self.src)
        removed = [k for k in touched if self.src[k].empty()]
        freed: list[int] = []
        for key in removed:
            ent = self.src.pop(key)
            touched.discard(key)
            self._maybe_unindex(key)
            if ent.idx:
                freed.append(ent.idx)
        for key in touched:
            ent = self.src[key]
            if ent.idx == 0:
                ent.idx = self._alloc()
            self._write_entry(key, ent, now)

        # 2. The lookup structures.
        v4_dirty = [k for k in dirty if k[0] == 4]
        v6_dirty = [k for k in dirty if k[0] == 6]
        host_adds, host_dels, blocks_gaining, blocks_losing = self._plan_host4(v4_dirty, full)
        lpm_adds, lpm_dels = self._plan_lpm6(v6_dirty, full)
        if len(self._host4) + len(host_adds) > self._host4_t.max_entries:
            raise CapacityError(
                f"host4 needs {len(self._host4) + len(host_adds)} entries, capacity is "
                f"{self._host4_t.max_entries}: raise capacity.hosts4 in the policy and restart"
            )
        self._write_host4(host_adds)
        self._write_lpm6(lpm_adds)
        self._write_dir4(v4_dirty, full)
        self._delete_host4(host_dels)
        self._delete_lpm6(lpm_dels)
        del blocks_gaining, blocks_losing
        # 3. Entries nothing points at any more.
        for idx in freed:
            ct.memset(self._entries_base + idx * self._entry_size, 0, self._entry_size)
            self._free.append(idx)

    # --- entries -----------------------------------------------------------

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next_idx >= self.max_entries:
            raise CapacityError(
                f"src_entries is full ({self.max_entries - 1} prefixes): raise capacity.prefixes "
                f"in the policy and restart"
            )
        idx = self._next_idx
        self._next_idx += 1
        return idx

    def _covering_records(self, key: PrefixKey) -> Iterator[Record]:
        fam, addr, plen = key
        bits = _bits(fam)
        for length in range(plen, -1, -1):
            if (fam, length) not in self._by_len:
                continue
            shift = bits - length
            k = (fam, (addr >> shift) << shift if length else 0, length)
            ent = self.src.get(k)
            if ent is not None:
                yield from ent.records()

    def _write_entry(self, key: PrefixKey, ent: _Entry, now: int) -> None:
        st = merge(self._covering_records(key), now)
        e = abi.SrcEntry()
        e.ban_expires = st.ban_expires
        e.ban_monitor_expires = st.ban_monitor_expires
        e.allow_expires = st.allow_expires
        e.allow_monitor_expires = st.allow_monitor_expires
        e.flags = st.flags
        e.family = key[0]
        e.prefix_len = key[2]
        e.addr[:] = _words(key[0], key[1])
        for o in range(abi.ORIGIN_MAX):
            for slot, rec in ((e.ban[o], ent.ban[o]), (e.allow[o], ent.allow[o])):
                if rec is not None:
                    slot.expires, slot.created, slot.flags, slot.reason = rec
        base = self._entries_base + ent.idx * self._entry_size
        cur = abi.SrcEntry.from_address(base)
        if cur.family:
            # In place: drop flags that go away first, so that no reader
            # combines an old flag with a new expiry; add new flags last.
            cur.flags = cur.flags & e.flags
            tail = ct.sizeof(abi.SrcEntry) - abi.SrcEntry.flags.offset - 4
            ct.memmove(base, ct.addressof(e), abi.SrcEntry.flags.offset)
            ct.memmove(base + abi.SrcEntry.flags.offset + 4, ct.addressof(e) + abi.SrcEntry.flags.offset + 4, tail)
            cur.flags = e.flags
        else:
            ct.memmove(base, ct.addressof(e), self._entry_size)

    # --- indexes -----------------------------------------------------------

    def _index(self, key: PrefixKey) -> None:
        fam, addr, plen = key
        self._by_len.setdefault((fam, plen), set()).add(addr)
        if fam == 4 and plen > abi.DIR4_BITS:
            self._long4.setdefault(addr >> _HOST_BITS, set()).add(key)

    def _maybe_unindex(self, key: PrefixKey) -> None:
        if key in self.src or key in self.dst:
            return
        fam, addr, plen = key
        s = self._by_len.get((fam, plen))
        if s is not None:
            s.discard(addr)
            if not s:
                del self._by_len[(fam, plen)]
        if fam == 4 and plen > abi.DIR4_BITS:
            b = self._long4.get(addr >> _HOST_BITS)
            if b is not None:
                b.discard(key)
                if not b:
                    del self._long4[addr >> _HOST_BITS]

    def _descendants(self, key: PrefixKey) -> Iterator[PrefixKey]:
        """Known prefixes strictly inside key."""
        fam, addr, plen = key
        bits = _bits(fam)
        for (f, length), addrs in self._by_len.items():
            if f != fam or length <= plen:
                continue
            span = length - plen
            if span <= 12 and (1 << span) < len(addrs):
                step = 1 << (bits - length)
                for i in range(1 << span):
                    a = addr + i * step
                    if a in addrs:
                        yield (fam, a, length)
            else:
                shift = bits - plen
                for a in addrs:
                    if plen == 0 or (a >> shift) == (addr >> shift):
                        yield (fam, a, length)

    # --- answers for a prefix node -----------------------------------------

    def _idx_of(self, key: PrefixKey | None) -> int:
        if key is None:
            return 0
        ent = self.src.get(key)
        return ent.idx if ent is not None else 0

    def _answer(self, key: PrefixKey, min_len: int = 0) -> tuple[int, int]:
        """(src entry index, group) of the longest src/dst prefixes covering
        key (itself included) with length >= min_len."""
        fam, addr, plen = key
        bits = _bits(fam)
        src_idx = group = 0
        found_src = found_dst = False
        for length in range(plen, min_len - 1, -1):
            if (fam, length) not in self._by_len:
                continue
            shift = bits - length
            k = (fam, (addr >> shift) << shift if length else 0, length)
            if not found_src:
                ent = self.src.get(k)
                if ent is not None:
                    src_idx, found_src = ent.idx, True
            if not found_dst and k in self.dst:
                group, found_dst = self.dst[k], True
            if found_src and found_dst:
                break
        return src_idx, group

    # --- IPv4: host table --------------------------------------------------

    def _block_hosts(self, block: int) -> dict[int, tuple[int, int]]:
        """Desired host4 entries of one /24: every address covered by a
        prefix longer than /24, answered over all prefixes."""
        out: dict[int, tuple[int, int]] = {}
        for key in self._long4.get(block, ()):
            _, addr, plen = key
            for i in range(1 << (32 - plen)):
                a = addr + i
                if a not in out:
                    out[a] = self._answer((4, a, 32))
        return out

    def _plan_host4(
        self, v4_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[int, tuple[int, int]], list[int], set[int], set[int]]:
        if full:
            blocks = set(self._long4) | {a >> _HOST_BITS for a in self._host4}
        else:
            blocks = set()
            for fam, addr, plen in v4_dirty:
                if plen > abi.DIR4_BITS:
                    blocks.add(addr >> _HOST_BITS)
                else:
                    first = addr >> _HOST_BITS
                    last = first + (1 << (abi.DIR4_BITS - plen))
                    if last - first <= len(self._long4):
                        blocks.update(b for b in range(first, last) if b in self._long4)
                    else:
                        blocks.update(b for b in self._long4 if first <= b < last)
        adds: dict[int, tuple[int, int]] = {}
        dels: list[int] = []
        gaining: set[int] = set()
        losing: set[int] = set()
        by_block: dict[int, list[int]] = {}
        for a in self._host4:
            b = a >> _HOST_BITS
            if b in blocks:
                by_block.setdefault(b, []).append(a)
        for b in blocks:
            want = self._block_hosts(b)
            have = by_block.get(b, [])
            if want and not have:
                gaining.add(b)
            if have and not want:
                losing.add(b)
            for a, v in want.items():
                if self._host4.get(a) != v:
                    adds[a] = v
            dels.extend(a for a in have if a not in want)
        return adds, dels, gaining, losing

    def _write_host4(self, adds: dict[int, tuple[int, int]]) -> None:
        if not adds:
            return
        pairs = []
        for a, (idx, group) in adds.items():
            k = ct.c_uint32(_words(4, a)[0])
            pairs.append((k, abi.AddrInfo(src_entry=idx, group=group)))
        self._host4_t.update_many(pairs)
        self._host4.update(adds)

    def _delete_host4(self, dels: list[int]) -> None:
        if not dels:
            return
        self._host4_t.delete_many([ct.c_uint32(_words(4, a)[0]) for a in dels])
        for a in dels:
            self._host4.pop(a, None)

    # --- IPv4: /24 slots ---------------------------------------------------

    def _write_dir4(self, v4_dirty: list[PrefixKey], full: bool) -> None:
        ranges: list[tuple[int, int]] = []
        total = 0
        if not full:
            for _fam, addr, plen in v4_dirty:
                length = min(plen, abi.DIR4_BITS)
                first = (addr >> _HOST_BITS) >> (abi.DIR4_BITS - length) << (abi.DIR4_BITS - length)
                n = 1 << (abi.DIR4_BITS - length)
                ranges.append((first, n))
                total += n
        if full or total > _FULL_REPAINT_SLOTS:
            want = self._paint(0, _DIR_SLOTS)
            diff = np.nonzero(self._dir != want)[0]
            self._dir[diff] = want[diff]
            return
        for first, n in ranges:
            want = self._paint(first, n)
            cur = self._dir[first : first + n]
            diff = np.nonzero(cur != want)[0]
            cur[diff] = want[diff]

    def _paint(self, first: int, n: int) -> np.ndarray[Any, Any]:
        """Desired dir4 slot values for slots [first, first + n)."""
        src = np.zeros(n, dtype=np.uint64)
        grp = np.zeros(n, dtype=np.uint64)
        range_len = abi.DIR4_BITS - (n.bit_length() - 1)
        last = first + n
        for length in range(0, abi.DIR4_BITS + 1):
            addrs = self._by_len.get((4, length))
            if not addrs:
                continue
            span = 1 << (abi.DIR4_BITS - length)
            if length <= range_len:
                # at most one prefix of this length covers the range
                shift = 32 - length
                a = ((first << _HOST_BITS) >> shift) << shift if length else 0
                cands: Iterable[int] = (a,) if a in addrs else ()
            else:
                cands = (a for a in addrs if first <= (a >> _HOST_BITS) < last)
            for a in cands:
                k = (4, a, length)
                lo = max((a >> _HOST_BITS) - first, 0)
                hi = min(lo + span, n)
                ent = self.src.get(k)
                if ent is not None:
                    src[lo:hi] = ent.idx
                g = self.dst.get(k)
                if g is not None:
                    grp[lo:hi] = g
        want = src | (grp << np.uint64(32))
        for b in self._long4:
            if first <= b < last:
                want[b - first] |= np.uint64(abi.ADDR_HOSTS << 48)
        return want

    # --- IPv6 --------------------------------------------------------------

    def _plan_lpm6(
        self, v6_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[tuple[int, int], tuple[int, int]], list[tuple[int, int]]]:
        if full:
            nodes = {(a, p) for (f, p), addrs in self._by_len.items() if f == 6 for a in addrs}
            consider = nodes | set(self._lpm6)
        else:
            consider = set()
            for key in v6_dirty:
                consider.add((key[1], key[2]))
                consider.update((k[1], k[2]) for k in self._descendants(key))
        adds: dict[tuple[int, int], tuple[int, int]] = {}
        dels: list[tuple[int, int]] = []
        for a, p in consider:
            key = (6, a, p)
            if key in self.src or key in self.dst:
                v = self._answer(key)
                if self._lpm6.get((a, p)) != v:
                    adds[(a, p)] = v
            elif (a, p) in self._lpm6:
                dels.append((a, p))
        if len(self._lpm6) + len(adds) > self._lpm6_t.max_entries:
            raise CapacityError(
                f"lpm6 needs {len(self._lpm6) + len(adds)} entries, capacity is "
                f"{self._lpm6_t.max_entries}: raise capacity.prefixes6 in the policy and restart"
            )
        return adds, dels

    @staticmethod
    def _lpm_key(a: int, p: int) -> abi.Lpm6Key:
        k = abi.Lpm6Key(prefixlen=p)
        k.addr[:] = _words(6, a)
        return k

    def _write_lpm6(self, adds: dict[tuple[int, int], tuple[int, int]]) -> None:
        if not adds:
            return
        pairs = [(self._lpm_key(a, p), abi.AddrInfo(src_entry=i, group=g)) for (a, p), (i, g) in adds.items()]
        # The LPM trie has no batch update before 6.x on every kernel; one by one is safe.
        for k, v in pairs:
            self._lpm6_t.set(k, v)
        self._lpm6.update(adds)

    def _delete_lpm6(self, dels: list[tuple[int, int]]) -> None:
        for a, p in dels:
            self._lpm6_t.delete(self._lpm_key(a, p))
            self._lpm6.pop((a, p), None)

    # --- reading back (tests, explain) -------------------------------------

    def kernel_answer(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
        """(src entry, group) as the kernel structures answer for addr."""
        if addr.version == 4:
            a = int(addr)
            slot = int(self._dir[a >> _HOST_BITS])
            if (slot >> 48) & abi.ADDR_HOSTS:
                got = self._host4_t.get(ct.c_uint32(_words(4, a)[0]))
                if got is not None:
                    return int(got.src_entry), int(got.group)
            return slot & 0xFFFFFFFF, (slot >> 32) & 0xFFFF
        # the trie answers the longest match for a /128 key
        got = self._lpm6_t.get(self._lpm_key(int(addr), 128))
        if got is None:
            return 0, 0
        return int(got.src_entry), int(got.group)

    def entry(self, idx: int) -> abi.SrcEntry:
        return abi.SrcEntry.from_buffer_copy(self._entries_mm, idx * self._entry_size)
