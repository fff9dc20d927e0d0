"""The address table's model: source prefixes with each origin's records and
their watch set, protected prefixes with their group, the indexes that answer
longest matches, and the log of edits since the last commit.

Nothing here touches the kernel; ``_addrcommit`` writes the model out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agent.contract import abi
from agent.contract.keys import IPAddress, IPNetwork, PrefixKey, Record, prefix_key
from agent.contract.keys import bits as family_bits

from ._expiries import Expiry, ExpiryHeap
from ._prefixlens import Lengths

HOST_BITS = 32 - abi.DIR4_BITS
BAN_KINDS = (abi.SRC_BAN, abi.SRC_BAN_MONITOR)
ALLOW_KINDS = (abi.SRC_ALLOW, abi.SRC_ALLOW_MONITOR)
SRC, DST = 0, 1

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


class Entry:
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


@lru_cache(maxsize=4096)
def merge_cached(records: tuple[Record, ...], now_bucket: int) -> SrcState:
    return merge(records, now_bucket)


class AddressModel:
    """Source and protected prefixes as the daemon wants them; edits are logged until committed."""

    def __init__(self) -> None:
        self.src: dict[PrefixKey, Entry] = {}
        self.dst: dict[PrefixKey, int] = {}
        self.src_lens = Lengths()
        self.dst_lens = Lengths()
        # IPv4 prefixes (of either kind) longer than the /24 slots, per /24 block
        self.long4: dict[int, set[PrefixKey]] = {}
        self.dirty: set[PrefixKey] = set()
        # What each slot edited since the last commit held then (the first
        # edit wins): a failed commit puts these back, so that the model never
        # lists what the kernel does not hold.
        self._undo: dict[_Slot, Any] = {}
        self.expiries = ExpiryHeap(self._current)

    def load(self, entries: list[tuple[PrefixKey, Entry]], expiries: list[Expiry]) -> None:
        """Make the source prefixes exactly these (read back from the kernel); nothing is pending."""
        self.src.clear()
        self.src_lens = Lengths()
        self.long4 = {}
        for dkey in self.dst:
            if dkey[0] == 4 and dkey[2] > abi.DIR4_BITS:
                self.long4.setdefault(dkey[1] >> HOST_BITS, set()).add(dkey)
        for key, ent in entries:
            self.src[key] = ent
            self.index(key, SRC)
        self.expiries.reset(expiries)
        self.dirty = set()
        self._undo = {}

    # --- edits -------------------------------------------------------------

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
            ent = Entry(0)
            self.src[key] = ent
            self.index(key, SRC)
        ban = kind in BAN_KINDS
        slots = ent.ban if ban else ent.allow
        if slots[origin] == record:
            return False
        self._undo.setdefault(("ban" if ban else "allow", key, origin), slots[origin])
        slots[origin] = record
        self.dirty.add(key)
        if record is not None and record[0]:
            self.expiries.push((record[0], key, abi.SRC_BAN if ban else abi.SRC_ALLOW, origin))
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
        src, dirty, undo = self.src, self.dirty, self._undo
        new: list[PrefixKey] = []
        for attr, kind, wanted in (("ban", abi.SRC_BAN, bans), ("allow", abi.SRC_ALLOW, allows)):
            for rec in wanted.values():
                check_record(rec)
            for key, rec in wanted.items():
                found = src.get(key)
                if found is None:
                    found = src[key] = Entry(0)
                    new.append(key)
                slots = getattr(found, attr)
                if slots[origin] != rec:
                    undo.setdefault((attr, key, origin), slots[origin])
                    slots[origin] = rec
                    dirty.add(key)
                    changed += 1
                    if rec[0]:
                        self.expiries.push((rec[0], key, kind, origin))
        self.index_many(new, SRC)
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
                self.dirty.add(key)
                changed += 1
        new: list[PrefixKey] = []
        for key, wid in watch.items():
            found = self.src.get(key)
            if found is None:
                found = self.src[key] = Entry(0)
                new.append(key)
            if found.watch != wid:
                self._undo.setdefault(("watch", key), found.watch)
                found.watch = wid
                self.dirty.add(key)
                changed += 1
        self.index_many(new, SRC)
        return changed

    def set_destinations(self, dst: dict[PrefixKey, int]) -> None:
        """Make the protected prefixes exactly these (prefix -> group id)."""
        for key in list(self.dst):
            if key not in dst:
                self._undo.setdefault(("dst", key), self.dst[key])
                del self.dst[key]
                self.dirty.add(key)
                self.unindex(key, DST)
        for key, group in dst.items():
            if self.dst.get(key) != group:
                self._undo.setdefault(("dst", key), self.dst.get(key))
                if key not in self.dst:
                    self.index(key, DST)
                self.dst[key] = group
                self.dirty.add(key)

    def expire(self, now: int) -> list[tuple[PrefixKey, int, int, Record]]:
        """Remove records whose expiry has passed; returns what was removed, soonest expiry first.

        Costs what is due, not what exists: the expiries are a heap."""
        gone: list[tuple[PrefixKey, int, int, Record]] = []
        for (_exp, key, kind, origin), rec in self.expiries.due(now):
            gone.append((key, kind, origin, rec))
            self.set_record(key, kind, origin, None)
        return gone

    def _current(self, item: Expiry) -> Record | None:
        """The record a heap entry stands for, if it is still the one in place."""
        rec = self.get_record(item[1], item[2], item[3])
        return rec if rec is not None and rec[0] == item[0] else None

    # --- the undo log ------------------------------------------------------

    def settled(self) -> None:
        """The edits reached the kernel: nothing to put back any more."""
        self._undo = {}

    def revert(self) -> None:
        """Put back what each slot held at the last commit; drop prefixes created since."""
        undo, self._undo = self._undo, {}
        for slot, old in undo.items():
            self._put_back(slot, old)
        for key in {slot[1] for slot in undo}:
            made = self.src.get(key)
            if made is not None and made.empty() and made.idx == 0:  # created since the last commit
                del self.src[key]
                self.unindex(key, SRC)
        self.dirty = set()

    def _put_back(self, slot: _Slot, old: Any) -> None:
        what, key = slot[0], slot[1]
        if what == "dst":
            if old is None:
                if self.dst.pop(key, None) is not None:
                    self.unindex(key, DST)
            else:
                if key not in self.dst:
                    self.index(key, DST)
                self.dst[key] = old
            return
        ent = self.src.get(key)
        if ent is None:
            if old in (None, 0):
                return
            ent = self.src[key] = Entry(0)
            self.index(key, SRC)
        if what == "watch":
            ent.watch = old
            return
        origin = slot[2]
        (ent.ban if what == "ban" else ent.allow)[origin] = old
        if old is not None and old[0]:
            self.expiries.push((old[0], key, abi.SRC_BAN if what == "ban" else abi.SRC_ALLOW, origin))

    # --- reading -----------------------------------------------------------

    def records(self, origin: int | None = None) -> Iterator[tuple[PrefixKey, int, int, Record]]:
        """(prefix, kind, origin, record) for every record, optionally of one origin."""
        for key, ent in self.src.items():
            for o in range(abi.ORIGIN_MAX) if origin is None else (origin,):
                b, a = ent.ban[o], ent.allow[o]
                if b is not None:
                    yield key, abi.SRC_BAN, o, b
                if a is not None:
                    yield key, abi.SRC_ALLOW, o, a

    def lookup(self, addr: IPAddress) -> tuple[PrefixKey | None, PrefixKey | None]:
        """Longest source prefix and longest protected prefix covering addr."""
        fam, a, bits = addr.version, int(addr), family_bits(addr.version)
        src = next(self.src_lens.covering(fam, a, bits), None)
        dst = next(self.dst_lens.covering(fam, a, bits), None)
        return src, dst

    def longest(self, fam: int, addr: int, plen: int) -> tuple[int, int]:
        """(src entry index, group) of the longest source and destination
        prefixes covering addr/plen, itself included."""
        s = next(self.src_lens.covering(fam, addr, plen), None)
        d = next(self.dst_lens.covering(fam, addr, plen), None)
        return (self.src[s].idx if s else 0), (self.dst[d] if d else 0)

    def covering_records(self, key: PrefixKey) -> Iterator[Record]:
        fam, addr, plen = key
        for k in self.src_lens.covering(fam, addr, plen):
            yield from self.src[k].records()

    def watch_of(self, key: PrefixKey) -> int:
        """The watch set of the longest watched prefix covering key (itself included)."""
        fam, addr, plen = key
        for k in self.src_lens.covering(fam, addr, plen):
            w = self.src[k].watch
            if w:
                return w
        return 0

    # --- indexes -----------------------------------------------------------

    def index(self, key: PrefixKey, kind: int) -> None:
        (self.src_lens if kind == SRC else self.dst_lens).add(key)
        fam, addr, plen = key
        if fam == 4 and plen > abi.DIR4_BITS:
            self.long4.setdefault(addr >> HOST_BITS, set()).add(key)

    def index_many(self, keys: list[PrefixKey], kind: int) -> None:
        lens = self.src_lens if kind == SRC else self.dst_lens
        groups: dict[tuple[int, int], list[int]] = {}
        for fam, addr, plen in keys:
            groups.setdefault((fam, plen), []).append(addr)
        for (fam, plen), addrs in groups.items():
            for a in addrs[:1]:
                lens.add((fam, a, plen))
            lens.by_len[(fam, plen)].update(addrs)
            if fam == 4 and plen > abi.DIR4_BITS:
                long4 = self.long4
                for a in addrs:
                    long4.setdefault(a >> HOST_BITS, set()).add((fam, a, plen))

    def unindex(self, key: PrefixKey, kind: int) -> None:
        (self.src_lens if kind == SRC else self.dst_lens).discard(key)
        fam, addr, plen = key
        if fam == 4 and plen > abi.DIR4_BITS and key not in self.src and key not in self.dst:
            b = self.long4.get(addr >> HOST_BITS)
            if b is not None:
                b.discard(key)
                if not b:
                    del self.long4[addr >> HOST_BITS]
