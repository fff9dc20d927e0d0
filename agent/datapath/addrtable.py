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
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from heapq import heapify, heappop, heappush
from typing import Any

import numpy as np
import structlog

from agent.contract import abi
from agent.contract.keys import IPAddress, IPNetwork, PrefixKey, Record, from_words, prefix_key, words
from agent.contract.keys import bits as family_bits

from .errors import CapacityError
from .maps import Maps

log = structlog.get_logger()

_DIR_SLOTS = 1 << abi.DIR4_BITS
_HOST_BITS = 32 - abi.DIR4_BITS
_FULL_REPAINT_SLOTS = 1 << 20
#: Up to this many slots, permanent entries are found by set lookups rather than np.isin.
_SET_LOOKUP_SLOTS = 1 << 16
_ENTRY_DTYPE = abi.SRC_ENTRY_DTYPE
_RECORD_DTYPE = abi.SRC_RECORD_DTYPE

BAN_KINDS = (abi.SRC_BAN, abi.SRC_BAN_MONITOR)
ALLOW_KINDS = (abi.SRC_ALLOW, abi.SRC_ALLOW_MONITOR)
SRC, DST = 0, 1
#: Stale expiry heap entries tolerated beyond as many as the heap held when last compacted.
_EXPIRY_SLACK = 1024

#: (expires, prefix, SRC_BAN or SRC_ALLOW, origin): one record's expiry, as pushed when it was set.
_Expiry = tuple[int, PrefixKey, int, int]
#: An edited slot of the model: ("ban" | "allow", prefix, origin), ("watch", prefix) or ("dst", prefix).
_Slot = tuple[Any, ...]
_U64 = 1 << 64
_U32 = 1 << 32


def check_record(record: Record) -> None:
    """ValueError unless every field fits the kernel's struct fg_src_record.

    Checked when a record enters the model, so that the model never holds
    something the kernel cannot: a record refused at commit would be listed
    and saved but never enforced.
    """
    expires, created, flags, reason = record
    if not (0 <= expires < _U64 and 0 <= created < _U64 and 0 <= flags < _U32 and 0 <= reason < _U32):
        raise ValueError(f"record {record} does not fit the kernel's record (u64 times, u32 flags and reason)")


@dataclass(frozen=True)
class SrcState:
    """Effective state of a source prefix (what the program reads)."""

    flags: int = 0
    ban_expires: int = 0
    ban_monitor_expires: int = 0
    allow_expires: int = 0
    allow_monitor_expires: int = 0


class _Entry:
    """A source prefix: its slot in src_entries, each origin's records, and its watch set (policy only)."""

    __slots__ = ("allow", "ban", "idx", "watch")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ban: list[Record | None] = [None] * abi.ORIGIN_MAX
        self.allow: list[Record | None] = [None] * abi.ORIGIN_MAX
        self.watch = 0

    def empty(self) -> bool:
        return not any(self.ban) and not any(self.allow) and not self.watch

    def records(self) -> tuple[Record, ...]:
        return tuple(r for r in (*self.ban, *self.allow) if r is not None)


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


class _Inflight:
    """What a commit changed in the model while planning, to put back if it fails."""

    __slots__ = ("allocated", "perm", "popped", "released", "wrote")

    def __init__(self) -> None:
        self.popped: list[tuple[PrefixKey, _Entry]] = []  # empty entries taken out of the model
        self.allocated: list[_Entry] = []  # entries given a slot in src_entries
        self.perm: dict[int, bool] = {}  # entry -> was it a permanent ban before
        self.wrote = False  # whether a kernel write had begun
        self.released = False  # whether the slots of the popped entries went back to the free list


class _Lengths:
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
        self.max_entries = self._entries_t.max_entries
        self._rows = np.frombuffer(self._entries_mm, dtype=_ENTRY_DTYPE, count=self.max_entries)
        self._dir_mm = maps["dir4"].mmap()
        self._dir = np.frombuffer(self._dir_mm, dtype=np.uint64, count=_DIR_SLOTS)

        self.src: dict[PrefixKey, _Entry] = {}
        self.dst: dict[PrefixKey, int] = {}
        self._src = _Lengths()
        self._dst = _Lengths()
        # IPv4 prefixes (of either kind) longer than the /24 slots, per /24 block
        self._long4: dict[int, set[PrefixKey]] = {}
        # what the kernel holds in host4 and lpm6, as we wrote it
        self._host4: dict[int, tuple[int, int, int]] = {}
        self._lpm6: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._free: list[int] = []
        # entries whose effective state is a permanent enforced ban and nothing
        # else: their address answers carry FG_ADDR_BANNED
        self._perm: set[int] = set()
        self._next_idx = 1
        self._dirty: set[PrefixKey] = set()
        # What each slot edited since the last commit held then (the first
        # edit wins): a failed commit puts these back, so that the model never
        # lists what the kernel does not hold.
        self._undo: dict[_Slot, Any] = {}
        self._inflight: _Inflight | None = None
        self._synced = False
        # Every record with an expiry has an entry here; entries whose record was
        # replaced or removed since are stale and skipped when they come up.
        self._expiries: list[_Expiry] = []
        self._expiry_limit = _EXPIRY_SLACK

    # --- lifetime ----------------------------------------------------------

    def close(self) -> None:
        del self._rows, self._dir
        self._dir_mm.close()
        self._entries_mm.close()

    def load_from_kernel(self) -> int:
        """Rebuild the source model from src_entries (after a restart).

        Destination prefixes are not stored in the kernel: the daemon sets
        them from the policy before the first commit. Returns the number of
        prefixes found.
        """
        rows = self._rows
        used = np.nonzero(rows["family"])[0]
        used = used[used > 0]
        self.src.clear()
        self._src = _Lengths()
        self._long4 = {}
        for dkey in self.dst:
            if dkey[0] == 4 and dkey[2] > abi.DIR4_BITS:
                self._long4.setdefault(dkey[1] >> _HOST_BITS, set()).add(dkey)
        fams = rows["family"][used].tolist()
        plens = rows["prefix_len"][used].tolist()
        addrs = rows["addr"][used].tolist()
        bans = rows["ban"][used].tolist()
        allows = rows["allow"][used].tolist()
        expiries: list[_Expiry] = []
        for i, idx in enumerate(used.tolist()):
            fam = fams[i]
            key: PrefixKey = (fam, from_words(fam, addrs[i]), plens[i])
            ent = _Entry(idx)
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
            self.src[key] = ent
            self._index(key, SRC)
        heapify(expiries)
        self._expiries = expiries
        self._expiry_limit = 2 * len(expiries) + _EXPIRY_SLACK
        perm = (rows["flags"][used] == abi.SRC_BAN) & (rows["ban_expires"][used] == 0) & (rows["watch"][used] == 0)
        self._perm = set(used[perm].tolist())
        taken = set(used.tolist())
        self._next_idx = max(taken, default=0) + 1
        self._free = [i for i in range(self._next_idx - 1, 0, -1) if i not in taken]
        self._dirty = set()
        self._undo = {}
        self._synced = False
        return len(self.src)

    # --- edits (nothing reaches the kernel before commit) ------------------

    def set_record(self, net: IPNetwork | PrefixKey, kind: int, origin: int, record: Record | None) -> bool:
        """Set (or with None, remove) one origin's ban or allow record on a
        prefix. Returns whether anything changed."""
        key = net if isinstance(net, tuple) else prefix_key(net)
        if record is not None:
            check_record(record)
        ent = self.src.get(key)
        if ent is None:
            if record is None:
                return False
            ent = _Entry(0)
            self.src[key] = ent
            self._index(key, SRC)
        ban = kind in BAN_KINDS
        slots = ent.ban if ban else ent.allow
        if slots[origin] == record:
            return False
        self._undo.setdefault(("ban" if ban else "allow", key, origin), slots[origin])
        slots[origin] = record
        self._dirty.add(key)
        if record is not None and record[0]:
            self._push_expiry((record[0], key, abi.SRC_BAN if ban else abi.SRC_ALLOW, origin))
        return True

    def get_record(self, key: PrefixKey, kind: int, origin: int) -> Record | None:
        ent = self.src.get(key)
        if ent is None:
            return None
        return (ent.ban if kind in BAN_KINDS else ent.allow)[origin]

    def replace_origin(
        self, origin: int, bans: dict[PrefixKey, Record], allows: dict[PrefixKey, Record]
    ) -> int:
        """Make one origin's records exactly these; other origins are untouched.

        Returns the number of prefixes whose records changed.
        """
        changed = 0
        for key, ent in list(self.src.items()):
            if ent.ban[origin] is not None and key not in bans:
                changed += self.set_record(key, abi.SRC_BAN, origin, None)
            if ent.allow[origin] is not None and key not in allows:
                changed += self.set_record(key, abi.SRC_ALLOW, origin, None)
        # The bulk of a policy load: set_record inlined, new prefixes indexed at once.
        src, dirty, undo = self.src, self._dirty, self._undo
        new: list[PrefixKey] = []
        for attr, kind, wanted in (("ban", abi.SRC_BAN, bans), ("allow", abi.SRC_ALLOW, allows)):
            for rec in wanted.values():
                check_record(rec)
            for key, rec in wanted.items():
                found = src.get(key)
                if found is None:
                    found = src[key] = _Entry(0)
                    new.append(key)
                slots = getattr(found, attr)
                if slots[origin] != rec:
                    undo.setdefault((attr, key, origin), slots[origin])
                    slots[origin] = rec
                    dirty.add(key)
                    changed += 1
                    if rec[0]:
                        self._push_expiry((rec[0], key, kind, origin))
        self._index_many(new, SRC)
        return changed

    def set_watch(self, watch: dict[PrefixKey, int]) -> int:
        """Make the watched source prefixes exactly these (prefix -> watch set id 1..255).

        A watched prefix gets an entry of its own (so that every address it
        covers finds the set id in the one lookup it already makes); entries
        inside it inherit the id, a longer watched prefix overriding. Returns
        how many prefixes changed.
        """
        changed = 0
        for key, ent in list(self.src.items()):
            if ent.watch and key not in watch:
                self._undo.setdefault(("watch", key), ent.watch)
                ent.watch = 0
                self._dirty.add(key)
                changed += 1
        new: list[PrefixKey] = []
        for key, wid in watch.items():
            found = self.src.get(key)
            if found is None:
                found = self.src[key] = _Entry(0)
                new.append(key)
            if found.watch != wid:
                self._undo.setdefault(("watch", key), found.watch)
                found.watch = wid
                self._dirty.add(key)
                changed += 1
        self._index_many(new, SRC)
        return changed

    def watched(self) -> dict[PrefixKey, int]:
        return {k: e.watch for k, e in self.src.items() if e.watch}

    def _watch_of(self, key: PrefixKey) -> int:
        """The watch set of the longest watched prefix covering key (itself included)."""
        fam, addr, plen = key
        for k in self._src.covering(fam, addr, plen):
            w = self.src[k].watch
            if w:
                return w
        return 0

    def set_destinations(self, dst: dict[PrefixKey, int]) -> None:
        """Make the protected prefixes exactly these (prefix -> group id)."""
        for key in list(self.dst):
            if key not in dst:
                self._undo.setdefault(("dst", key), self.dst[key])
                del self.dst[key]
                self._dirty.add(key)
                self._unindex(key, DST)
        for key, group in dst.items():
            if self.dst.get(key) != group:
                self._undo.setdefault(("dst", key), self.dst.get(key))
                if key not in self.dst:
                    self._index(key, DST)
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
        """Remove records whose expiry has passed; returns what was removed, soonest expiry first.

        Costs what is due, not what exists: the expiries are a heap."""
        gone: list[tuple[PrefixKey, int, int, Record]] = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            item = heappop(heap)
            rec = self._current(item)
            if rec is None:
                continue  # replaced or removed since this entry was pushed
            _exp, key, kind, origin = item
            gone.append((key, kind, origin, rec))
            self.set_record(key, kind, origin, None)
        return gone

    def _current(self, item: _Expiry) -> Record | None:
        """The record a heap entry stands for, if it is still the one in place."""
        rec = self.get_record(item[1], item[2], item[3])
        return rec if rec is not None and rec[0] == item[0] else None

    def _push_expiry(self, item: _Expiry) -> None:
        heappush(self._expiries, item)
        if len(self._expiries) > self._expiry_limit:
            # Drop the stale entries (and duplicates): each current record once.
            live = list({e for e in self._expiries if self._current(e) is not None})
            heapify(live)
            self._expiries = live
            self._expiry_limit = 2 * len(live) + _EXPIRY_SLACK

    @property
    def pending(self) -> int:
        return len(self._dirty)

    # --- lookups (the model's answer, as the program would give it) --------

    def lookup(self, addr: IPAddress) -> tuple[PrefixKey | None, PrefixKey | None]:
        """Longest source prefix and longest protected prefix covering addr."""
        fam, a, bits = addr.version, int(addr), family_bits(addr.version)
        src = next(self._src.covering(fam, a, bits), None)
        dst = next(self._dst.covering(fam, a, bits), None)
        return src, dst

    def covering_sources(self, addr: IPAddress) -> list[PrefixKey]:
        """Every source prefix covering addr, longest first (for explain)."""
        return list(self._src.covering(addr.version, int(addr), family_bits(addr.version)))

    def effective(self, key: PrefixKey, now: int) -> SrcState:
        return merge(self._covering_records(key), now)

    # --- commit ------------------------------------------------------------

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
        n = len(self._dirty)

        def write() -> None:
            if not self._synced:
                self._sync(now)
            elif n:
                self._commit(now, full=n > max(2000, len(self.src) // 4))

        self._transaction(now, write)
        return n

    def rollback(self, now: int) -> None:
        """Undo the edits since the last commit (a caller that gives up before committing)."""
        self._rollback(now)

    def _transaction(self, now: int, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException:
            self._rollback(now)
            raise
        self._inflight = None
        self._undo = {}

    def _sync(self, now: int) -> None:
        self._host4 = {}
        for k, v in self._host4_t.items():
            self._host4[from_words(4, (k.value, 0, 0, 0))] = (int(v.src_entry), int(v.group), int(v.flags))
        self._lpm6 = {}
        for k, v in self._lpm6_t.items():
            self._lpm6[(from_words(6, k.addr), int(k.prefixlen))] = (
                int(v.src_entry), int(v.group), int(v.flags))
        self._commit(now, full=True)
        self._synced = True

    def _rollback(self, now: int) -> None:
        """Put the model back as it was at the last commit; rewrite the kernel if a write had begun."""
        fl, self._inflight = self._inflight, None
        wrote = fl is not None and fl.wrote
        if fl is not None:
            for key, ent in fl.popped:
                self.src[key] = ent
                self._index(key, SRC)
            if fl.released:
                # Their slots went back to the free list: take them out again, or
                # two prefixes would one day share a slot.
                back = {ent.idx for _key, ent in fl.popped if ent.idx}
                self._free = [i for i in self._free if i not in back]
            if not wrote:
                for ent in fl.allocated:
                    self._free.append(ent.idx)
                    ent.idx = 0
                for idx, was in fl.perm.items():
                    (self._perm.add if was else self._perm.discard)(idx)
        undo, self._undo = self._undo, {}
        for slot, old in undo.items():
            self._put_back(slot, old)
        for key in {slot[1] for slot in undo}:
            made = self.src.get(key)
            if made is not None and made.empty() and made.idx == 0:  # created since the last commit
                del self.src[key]
                self._unindex(key, SRC)
        self._dirty = set()
        if wrote:
            # The kernel holds part of the failed commit: write the restored
            # model whole. If that fails too, the next commit tries again.
            self._synced = False
            try:
                self._sync(now)
            except Exception as e:  # noqa: BLE001 — the first error is the one the caller gets
                log.error("address_table_resync_failed", error=str(e),
                          hint="the next commit writes the whole table again")
            finally:
                self._inflight = None

    def _put_back(self, slot: _Slot, old: Any) -> None:
        what, key = slot[0], slot[1]
        if what == "dst":
            if old is None:
                if self.dst.pop(key, None) is not None:
                    self._unindex(key, DST)
            else:
                if key not in self.dst:
                    self._index(key, DST)
                self.dst[key] = old
            return
        ent = self.src.get(key)
        if ent is None:
            if old in (None, 0):
                return
            ent = self.src[key] = _Entry(0)
            self._index(key, SRC)
        if what == "watch":
            ent.watch = old
            return
        origin = slot[2]
        (ent.ban if what == "ban" else ent.allow)[origin] = old
        if old is not None and old[0]:
            self._push_expiry((old[0], key, abi.SRC_BAN if what == "ban" else abi.SRC_ALLOW, origin))

    def _commit(self, now: int, full: bool) -> None:
        fl = self._inflight = _Inflight()
        dirty = self._dirty
        self._dirty = set()

        # 1. Which source entries need their effective state (re)written:
        #    the dirty ones and every source prefix inside a dirty one.
        touched: set[PrefixKey]
        if full:
            touched = set(self.src)
        else:
            touched = {k for k in dirty if k in self.src}
            for key in dirty:
                if key[2] < family_bits(key[0]):
                    touched.update(self._src.inside(key))
        freed: list[int] = []
        for key in [k for k in touched if self.src[k].empty()]:
            ent = self.src.pop(key)
            fl.popped.append((key, ent))
            touched.discard(key)
            dirty.add(key)
            self._unindex(key, SRC)
            if ent.idx:
                freed.append(ent.idx)
        # Plan everything, and fail on capacity, before the first write.
        for key in touched:
            ent = self.src[key]
            if ent.idx == 0:
                ent.idx = self._alloc()
                fl.allocated.append(ent)
        rows = self._entry_rows(sorted(touched), now)  # also settles which entries are permanent bans
        for idx in freed:
            self._set_perm(idx, False)
        v4_dirty = [k for k in dirty if k[0] == 4]
        v6_dirty = [k for k in dirty if k[0] == 6]
        host_adds, host_dels = self._plan_host4(v4_dirty, full)
        lpm_adds, lpm_dels = self._plan_lpm6(v6_dirty, full)
        if len(self._host4) + len(host_adds) - len(host_dels) > self._host4_t.max_entries:
            raise CapacityError(
                f"host4 needs {len(self._host4) + len(host_adds) - len(host_dels)} entries, capacity "
                f"is {self._host4_t.max_entries}: raise capacity.hosts4 in the policy and restart"
            )

        # 2. Entries, then the lookup structures: additions, slots, removals.
        fl.wrote = True
        self._write_entries(rows)
        self._write_host4(host_adds)
        self._write_lpm6(lpm_adds)
        self._write_dir4(v4_dirty, full)
        self._delete_host4(host_dels)
        self._delete_lpm6(lpm_dels)
        # 3. Entries nothing points at any more.
        if freed:
            self._rows[np.array(freed, dtype=np.int64)] = np.zeros(1, dtype=_ENTRY_DTYPE)
            self._free.extend(freed)
            fl.released = True

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
        for k in self._src.covering(fam, addr, plen):
            yield from self.src[k].records()

    def _entry_rows(self, keys: list[PrefixKey], now: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The rows (effective state, prefix, own records) of these entries, and
        their indexes; notes which of them are permanent enforced bans."""
        if not keys:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=_ENTRY_DTYPE)
        n = len(keys)
        ents = [self.src[k] for k in keys]
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
        merged = _merge_cached
        walk = covered.tolist()
        for i, ent in enumerate(ents):
            st = merge(self._covering_records(keys[i]), now) if walk[i] else merged(ent.records(), now)
            eff_rows.append(
                (st.ban_expires, st.ban_monitor_expires, st.allow_expires, st.allow_monitor_expires, st.flags)
            )
            watch_ids.append(self._watch_of(keys[i]) if walk[i] else ent.watch)
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
        for idx, is_perm in zip(idxs.tolist(), perm.tolist(), strict=True):
            self._set_perm(idx, is_perm)
        return idxs, rows

    def _set_perm(self, idx: int, on: bool) -> None:
        was = idx in self._perm
        if was == on:
            return
        if self._inflight is not None:
            self._inflight.perm.setdefault(idx, was)
        (self._perm.add if on else self._perm.discard)(idx)

    def _write_entries(self, entries: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> None:
        """Write entries in one go.

        Existing entries change in place: their flags are first reduced to
        the flags kept, so no reader pairs an old flag with a new expiry;
        the new flags land with the full rows.
        """
        idxs, rows = entries
        if not len(idxs):
            return
        cur = self._rows[idxs]
        live = cur["family"] != 0
        if live.any():
            keep = cur["flags"][live] & rows["flags"][live]
            self._rows["flags"][idxs[live]] = keep
        self._rows[idxs] = rows

    def _has_ancestor4(self, addrs: np.ndarray[Any, Any], plens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """For each IPv4 prefix, whether a shorter source prefix covers it
        (one vectorised membership test per length in use)."""
        out = np.zeros(len(addrs), dtype=bool)
        for length in self._src.lengths(4):
            if length == 32:
                continue
            nets = self._src.by_len[(4, length)]
            cand = plens > length
            if not cand.any():
                continue
            mask = np.uint32(((1 << length) - 1) << (32 - length)) if length else np.uint32(0)
            table = np.fromiter(nets, dtype=np.uint32, count=len(nets))
            out |= cand & np.isin(addrs & mask, table)
        return out

    # --- indexes -----------------------------------------------------------

    def _index(self, key: PrefixKey, kind: int) -> None:
        (self._src if kind == SRC else self._dst).add(key)
        fam, addr, plen = key
        if fam == 4 and plen > abi.DIR4_BITS:
            self._long4.setdefault(addr >> _HOST_BITS, set()).add(key)

    def _index_many(self, keys: list[PrefixKey], kind: int) -> None:
        lens = self._src if kind == SRC else self._dst
        groups: dict[tuple[int, int], list[int]] = {}
        for fam, addr, plen in keys:
            groups.setdefault((fam, plen), []).append(addr)
        for (fam, plen), addrs in groups.items():
            for a in addrs[:1]:
                lens.add((fam, a, plen))
            lens.by_len[(fam, plen)].update(addrs)
            if fam == 4 and plen > abi.DIR4_BITS:
                long4 = self._long4
                for a in addrs:
                    long4.setdefault(a >> _HOST_BITS, set()).add((fam, a, plen))

    def _unindex(self, key: PrefixKey, kind: int) -> None:
        (self._src if kind == SRC else self._dst).discard(key)
        fam, addr, plen = key
        if fam == 4 and plen > abi.DIR4_BITS and key not in self.src and key not in self.dst:
            b = self._long4.get(addr >> _HOST_BITS)
            if b is not None:
                b.discard(key)
                if not b:
                    del self._long4[addr >> _HOST_BITS]

    # --- answers for a prefix node -----------------------------------------

    def _answer(self, fam: int, addr: int, plen: int) -> tuple[int, int, int]:
        """(src entry index, group, flags) of the longest source and
        destination prefixes covering addr/plen, itself included."""
        s = next(self._src.covering(fam, addr, plen), None)
        d = next(self._dst.covering(fam, addr, plen), None)
        idx = self.src[s].idx if s else 0
        return (idx, self.dst[d] if d else 0, self._flags_of(idx))

    def _flags_of(self, idx: int) -> int:
        return abi.ADDR_BANNED if idx and idx in self._perm else 0

    # --- IPv4: host table --------------------------------------------------

    def _block_hosts(self, block: int) -> dict[int, tuple[int, int, int]]:
        """Desired host4 entries of one /24: every address covered by a
        prefix longer than /24, answered over all prefixes."""
        out: dict[int, tuple[int, int, int]] = {}
        for key in self._long4.get(block, ()):
            _fam, addr, plen = key
            if plen == 32:
                # nothing is longer than a /32: its own entry, if it is a source
                if addr not in out:
                    ent = self.src.get(key)
                    d = next(self._dst.covering(4, addr, 32), None)
                    if ent is None:
                        s_ = next(self._src.covering(4, addr, 32), None)
                        idx = self.src[s_].idx if s_ else 0
                    else:
                        idx = ent.idx
                    out[addr] = (idx, self.dst[d] if d else 0, self._flags_of(idx))
                continue
            for a in range(addr, addr + (1 << (32 - plen))):
                if a not in out:
                    out[a] = self._answer(4, a, 32)
        return out

    def _plan_host4(
        self, v4_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[int, tuple[int, int, int]], list[int]]:
        if full:
            blocks = set(self._long4) | {a >> _HOST_BITS for a in self._host4}
        else:
            blocks = set()
            host_blocks = {a >> _HOST_BITS for a in self._host4}
            for _fam, addr, plen in v4_dirty:
                if plen > abi.DIR4_BITS:
                    blocks.add(addr >> _HOST_BITS)
                else:
                    first = addr >> _HOST_BITS
                    last = first + (1 << (abi.DIR4_BITS - plen))
                    if last - first <= len(self._long4):
                        blocks.update(b for b in range(first, last) if b in self._long4)
                    else:
                        blocks.update(b for b in self._long4 if first <= b < last)
                    if last - first <= len(host_blocks):
                        blocks.update(b for b in range(first, last) if b in host_blocks)
                    else:
                        blocks.update(b for b in host_blocks if first <= b < last)
        adds: dict[int, tuple[int, int, int]] = {}
        dels: list[int] = []
        have_by_block: dict[int, list[int]] = {}
        if full or len(blocks) > 64:
            for a in self._host4:
                b = a >> _HOST_BITS
                if b in blocks:
                    have_by_block.setdefault(b, []).append(a)
        else:
            for b in blocks:
                base = b << _HOST_BITS
                have_by_block[b] = [a for a in range(base, base + 256) if a in self._host4]
        for b in blocks:
            want = self._block_hosts(b)
            adds.update({a: v for a, v in want.items() if self._host4.get(a) != v})
            dels.extend(a for a in have_by_block.get(b, ()) if a not in want)
        return adds, dels

    def _write_host4(self, adds: dict[int, tuple[int, int, int]]) -> None:
        if not adds:
            return
        n = len(adds)
        keys = np.fromiter((a for a in adds), dtype=np.uint32, count=n).byteswap()
        vals = np.zeros(n, dtype=abi.ADDR_INFO_DTYPE)
        vals["src_entry"] = np.fromiter((v[0] for v in adds.values()), dtype=np.uint32, count=n)
        vals["group"] = np.fromiter((v[1] for v in adds.values()), dtype=np.uint16, count=n)
        vals["flags"] = np.fromiter((v[2] for v in adds.values()), dtype=np.uint8, count=n)
        from . import bpfsys

        bpfsys.update_batch(self._host4_t.fd, keys.tobytes(), vals.tobytes(), n)
        self._host4.update(adds)

    def _delete_host4(self, dels: list[int]) -> None:
        if not dels:
            return
        from . import bpfsys

        keys = np.array(dels, dtype=np.uint32).byteswap()
        bpfsys.delete_batch(self._host4_t.fd, keys.tobytes(), len(dels))
        for a in dels:
            self._host4.pop(a, None)

    # --- IPv4: /24 slots ---------------------------------------------------

    def _write_dir4(self, v4_dirty: list[PrefixKey], full: bool) -> None:
        if full:
            if self._count_short4() + len(self._long4) > 4096:
                self._repaint_all()
                return
            ranges = self._maximal_ranges()
            for first, n in ranges:
                self._repaint(first, n)
            # Slots still set outside every range belonged to prefixes that
            # are gone: cleared last.
            stale = np.flatnonzero(self._dir)
            if len(stale) and not ranges:  # nothing is left: every slot goes
                self._dir[stale] = 0
            elif len(stale):
                starts = np.array([f for f, _ in ranges], dtype=np.int64)
                ends = starts + np.array([n for _, n in ranges], dtype=np.int64)
                pos = np.searchsorted(starts, stale, side="right") - 1
                inside = (pos >= 0) & (stale < ends[np.maximum(pos, 0)])
                self._dir[stale[~inside]] = 0
            return
        ranges_d: dict[int, int] = {}
        total = 0
        for _fam, addr, plen in v4_dirty:
            length = min(plen, abi.DIR4_BITS)
            n = 1 << (abi.DIR4_BITS - length)
            first = (addr >> _HOST_BITS) & ~(n - 1)
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
            len(a) for lens in (self._src, self._dst) for (f, p), a in lens.by_len.items()
            if f == 4 and p <= abi.DIR4_BITS
        )

    def _maximal_ranges(self) -> list[tuple[int, int]]:
        """Slot ranges of IPv4 prefixes not inside another one, sorted."""
        cand: list[tuple[int, int]] = []
        for lens in (self._src, self._dst):
            for (f, length), addrs in lens.by_len.items():
                if f != 4:
                    continue
                if length <= abi.DIR4_BITS:
                    n = 1 << (abi.DIR4_BITS - length)
                    cand.extend((a >> _HOST_BITS, n) for a in addrs)
        cand.extend((b, 1) for b in self._long4)
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
        cur = self._dir[first : first + n]
        diff = np.flatnonzero(cur != want)
        cur[diff] = want[diff]

    def _repaint_all(self) -> None:
        """Every slot, vectorised; compared and written a chunk at a time."""
        src, grp = self._paint(0, _DIR_SLOTS)
        chunk = 1 << 20
        hosts = np.zeros(_DIR_SLOTS, dtype=bool)
        if self._long4:
            hosts[np.fromiter(self._long4, dtype=np.int64, count=len(self._long4))] = True
        flag = np.uint64(abi.ADDR_HOSTS << 48)
        perm = self._perm_array()
        banned = np.uint64(abi.ADDR_BANNED << 48)
        for first in range(0, _DIR_SLOTS, chunk):
            s = src[first : first + chunk]
            want = s.astype(np.uint64)
            want |= grp[first : first + chunk].astype(np.uint64) << np.uint64(32)
            want[hosts[first : first + chunk]] |= flag
            if len(perm):
                want[np.isin(s, perm)] |= banned
            cur = self._dir[first : first + chunk]
            diff = np.flatnonzero(cur != want)
            cur[diff] = want[diff]

    def _combine(self, first: int, src: np.ndarray[Any, Any], grp: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Slot values (struct fg_addr_info as a little-endian u64)."""
        n = len(src)
        want = src.astype(np.uint64) | (grp.astype(np.uint64) << np.uint64(32))
        if self._perm:
            if n <= _SET_LOOKUP_SLOTS:
                # A reload repaints thousands of small ranges: looking each slot's
                # entry up in the set beats building an array of every permanent entry each time.
                perm = self._perm
                banned = np.fromiter((v in perm for v in src.tolist()), dtype=bool, count=n)
            else:
                banned = np.isin(src, self._perm_array())
            want[banned] |= np.uint64(abi.ADDR_BANNED << 48)
        if n == 1:
            if first in self._long4:
                want[0] |= np.uint64(abi.ADDR_HOSTS << 48)
            return want
        if n <= len(self._long4):
            blocks = [b - first for b in range(first, first + n) if b in self._long4]
        else:
            blocks = [b - first for b in self._long4 if first <= b < first + n]
        if blocks:
            want[np.array(blocks, dtype=np.int64)] |= np.uint64(abi.ADDR_HOSTS << 48)
        return want

    def _perm_array(self) -> np.ndarray[Any, Any]:
        return np.fromiter(self._perm, dtype=np.uint32, count=len(self._perm))

    def _paint(self, first: int, n: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Source entry and group of each slot in [first, first + n), from
        the prefixes of length <= 24 (longer ones live in host4)."""
        src = np.zeros(n, dtype=np.uint32)
        grp = np.zeros(n, dtype=np.uint16)
        range_len = abi.DIR4_BITS - (n.bit_length() - 1)
        last = first + n
        for kind, lens in ((SRC, self._src), (DST, self._dst)):
            target = src if kind == SRC else grp
            for length in sorted(p for f, p in lens.by_len if f == 4 and p <= abi.DIR4_BITS):
                addrs = lens.by_len[(4, length)]
                span = 1 << (abi.DIR4_BITS - length)
                if length <= range_len:
                    # at most one prefix of this length covers the range
                    shift = 32 - length
                    a = ((first << _HOST_BITS) >> shift) << shift if length else 0
                    if a in addrs:
                        target[:] = self._value(kind, (4, a, length))
                    continue
                if len(addrs) > 64 * max(1, n // span) and n < _DIR_SLOTS:
                    # few slots, many prefixes: look the candidates up
                    found = [
                        a
                        for a in range(first << _HOST_BITS, last << _HOST_BITS, span << _HOST_BITS)
                        if a in addrs
                    ]
                else:
                    found = [a for a in addrs if first <= (a >> _HOST_BITS) < last]
                if not found:
                    continue
                starts = np.fromiter((a >> _HOST_BITS for a in found), dtype=np.int64, count=len(found)) - first
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
        return self.src[key].idx if kind == SRC else self.dst[key]

    # --- IPv6 --------------------------------------------------------------

    def _plan_lpm6(
        self, v6_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[tuple[int, int], tuple[int, int, int]], list[tuple[int, int]]]:
        if full:
            consider = {(a, p) for k in (self._src, self._dst) for (f, p), s in k.by_len.items() if f == 6 for a in s}
            consider |= set(self._lpm6)
        else:
            consider = set()
            for key in v6_dirty:
                consider.add((key[1], key[2]))
                for k in (*self._src.inside(key), *self._dst.inside(key)):
                    consider.add((k[1], k[2]))
        adds: dict[tuple[int, int], tuple[int, int, int]] = {}
        dels: list[tuple[int, int]] = []
        for a, p in consider:
            key = (6, a, p)
            if key in self.src or key in self.dst:
                v = self._answer(6, a, p)
                if self._lpm6.get((a, p)) != v:
                    adds[(a, p)] = v
            elif (a, p) in self._lpm6:
                dels.append((a, p))
        if len(self._lpm6) + len(adds) - len(dels) > self._lpm6_t.max_entries:
            raise CapacityError(
                f"lpm6 needs {len(self._lpm6) + len(adds) - len(dels)} entries, capacity is "
                f"{self._lpm6_t.max_entries}: raise capacity.prefixes6 in the policy and restart"
            )
        return adds, dels

    @staticmethod
    def _lpm_key(a: int, p: int) -> abi.Lpm6Key:
        k = abi.Lpm6Key(prefixlen=p)
        k.addr[:] = words(6, a)
        return k

    def _write_lpm6(self, adds: dict[tuple[int, int], tuple[int, int, int]]) -> None:
        # LPM tries have no batch update: one by one.
        for (a, p), (i, g, f) in adds.items():
            self._lpm6_t.set(self._lpm_key(a, p), abi.AddrInfo(src_entry=i, group=g, flags=f))
        self._lpm6.update(adds)

    def _delete_lpm6(self, dels: list[tuple[int, int]]) -> None:
        for a, p in dels:
            self._lpm6_t.delete(self._lpm_key(a, p))
            self._lpm6.pop((a, p), None)

    # --- reading back (tests, explain) -------------------------------------

    def kernel_answer(self, addr: IPAddress) -> tuple[int, int, int]:
        """(src entry, group, flags) as the kernel structures answer for addr
        (flags without FG_ADDR_HOSTS, which only steers the lookup)."""
        if addr.version == 4:
            a = int(addr)
            slot = int(self._dir[a >> _HOST_BITS])
            if (slot >> 48) & abi.ADDR_HOSTS:
                got = self._host4_t.get(ct.c_uint32(words(4, a)[0]))
                if got is not None:
                    return int(got.src_entry), int(got.group), int(got.flags)
            return slot & 0xFFFFFFFF, (slot >> 32) & 0xFFFF, ((slot >> 48) & 0xFF) & ~abi.ADDR_HOSTS
        got = self._lpm6_t.get(self._lpm_key(int(addr), 128))
        if got is None:
            return 0, 0, 0
        return int(got.src_entry), int(got.group), int(got.flags)

    def entry(self, idx: int) -> abi.SrcEntry:
        return abi.SrcEntry.from_buffer_copy(self._entries_mm, idx * self._entry_size)

    def index_of(self, key: PrefixKey) -> int:
        ent = self.src.get(key)
        return ent.idx if ent is not None else 0


@lru_cache(maxsize=4096)
def _merge_cached(records: tuple[Record, ...], now_bucket: int) -> SrcState:
    return merge(records, now_bucket)
