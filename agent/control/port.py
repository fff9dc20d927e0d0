"""The control loop's window on the kernel: exactly what it reads and writes.

The controller never sees a map, a file descriptor or a ctypes structure.
It reads cumulative counters and sampled packet headers and writes
SYN authentication, rules (per-source limits among them) and bans through `ControlPort`.
The daemon implements the port over ``agent.datapath.mapport.MapPort``
(agent/control/kernel.py, converting with `sample_from_raw` and
`DstSnapshot.from_raw`); unit tests use an in-memory fake (tests/unit/fakes.py).

Every write carries an absolute CLOCK_MONOTONIC expiry taken from
``now_ns()``, so a dead daemon leaves nothing behind for longer than the
policy's TTLs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from agent.contract import abi
from agent.contract.abi import LIMIT_CLASSES
from agent.contract.keys import HALVES_DTYPE, IPAddress, IPNetwork, address_from_words, address_of, halves
from agent.contract.specs import RuleSpec

#: One host's counters: [packets, bytes, dropped] rows of one value per class.
CounterBlock = NDArray[np.uint64] | Sequence[Sequence[int]]

#: Fields of the per (group, class) counters, in the order of struct fg_group_counter.
GROUP_FIELDS = ("packets", "bytes", "dropped_packets", "dropped_bytes", "new_sources")
F_PACKETS, F_BYTES, F_DROPPED_PACKETS, F_DROPPED_BYTES, F_NEW_SOURCES = range(len(GROUP_FIELDS))
#: Kinds of the per-destination counters, in the order of struct fg_dst_counter.
DST_KINDS = 3
D_PACKETS, D_BYTES, D_DROPPED = range(DST_KINDS)


@dataclass(frozen=True, slots=True)
class PacketSample:
    """One sampled packet header (struct fg_sample) in plain Python terms.

    ``cls`` is an ``abi.TrafficClass`` value, ``reason`` an ``abi.Reason``
    value, ``action`` the XDP verdict; ``monitor`` says a drop was only counted.
    """

    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    group: int
    length: int
    proto: int
    cls: int
    reason: int = 0
    tcp_flags: int = 0
    monitor: bool = False
    action: int = 2  # XDP_PASS
    ts_ns: int = 0


@dataclass(frozen=True)
class DstSnapshot:
    """Cumulative per-destination counters (the dst_stats map), as arrays.

    Row i is one host: ``family`` 4 or 6 and its address as two 64-bit halves
    (IPv4: ``addr_hi`` 0, ``addr_lo`` the address). ``counters`` is
    [host, kind, class] with kinds packets, bytes, dropped (struct
    fg_dst_counter's order); ``group`` is the protected group the kernel
    recorded when it first counted the host. Arrays, not objects: a tick
    over 100k hosts must not build 100k Python tuples.
    """

    family: NDArray[np.uint8]
    addr_hi: NDArray[np.uint64]
    addr_lo: NDArray[np.uint64]
    group: NDArray[np.int64]
    counters: NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.family.shape[0])

    def address(self, i: int) -> IPAddress:
        return address_of(int(self.family[i]), (int(self.addr_hi[i]) << 64) | int(self.addr_lo[i]))

    @classmethod
    def empty(cls) -> DstSnapshot:
        return cls.build([], [], [])

    @classmethod
    def build(
        cls,
        keys: Sequence[tuple[int, int]],
        groups: Sequence[int],
        counters: Sequence[CounterBlock] | NDArray[np.uint64],
    ) -> DstSnapshot:
        """From (family, address int) keys, group ids and [3, class] counter blocks."""
        n = len(keys)
        mask = (1 << 64) - 1
        return cls(
            np.fromiter((f for f, _ in keys), dtype=np.uint8, count=n),
            np.fromiter(((a >> 64) & mask for _, a in keys), dtype=np.uint64, count=n),
            np.fromiter((a & mask for _, a in keys), dtype=np.uint64, count=n),
            np.asarray(groups, dtype=np.int64).reshape(n),
            np.asarray(counters, dtype=np.uint64).reshape(n, DST_KINDS, LIMIT_CLASSES),
        )

    @classmethod
    def from_counters(cls, counters: Mapping[tuple[int, int], abi.DstCounter]) -> DstSnapshot:
        """From ``MapPort.read_dst_stats()``: values with ``packets``, ``bytes``,
        ``dropped`` (six each) and ``group``. Convenient but slow for 100k hosts:
        the daemon should prefer `from_raw`."""
        keys = list(counters)
        blocks = [[list(counters[k].packets), list(counters[k].bytes), list(counters[k].dropped)] for k in keys]
        return cls.build(keys, [int(counters[k].group) for k in keys], blocks)

    @classmethod
    def from_raw(cls, keys: bytes | memoryview, values: bytes | memoryview, n: int, ncpus: int) -> DstSnapshot:
        """From a batch read of the per-CPU dst_stats hash (``Table.read_raw()``):
        struct fg_dst_key keys and struct fg_dst_counter values, one per CPU."""
        if n == 0:
            return cls.empty()
        kd = np.dtype([*HALVES_DTYPE, ("family", "u1"), ("pad", "u1", 3)])
        k = np.frombuffer(keys, dtype=kd, count=n)
        fam = k["family"].copy()
        hi, lo = halves(fam, k["hi"], k["lo"])
        words = DST_KINDS * LIMIT_CLASSES + 1  # 18 counters, then group and padding
        v = np.frombuffer(values, dtype="<u8", count=n * ncpus * words).reshape(n, ncpus, words)
        counters = v[:, :, : words - 1].sum(axis=1, dtype=np.uint64).reshape(n, DST_KINDS, LIMIT_CLASSES)
        group = (v[:, :, words - 1] & np.uint64(0xFFFF)).max(axis=1).astype(np.int64)
        return cls(fam, hi, lo, group, counters)


def sample_from_raw(raw: abi.Sample) -> PacketSample:
    """Convert one ``abi.Sample`` (struct fg_sample) read from the samples ring."""
    fam = int(raw.family)
    return PacketSample(
        src=address_from_words(fam, raw.src),
        dst=address_from_words(fam, raw.dst),
        sport=int(raw.sport),
        dport=int(raw.dport),
        group=int(raw.group),
        length=int(raw.len),
        proto=int(raw.proto),
        cls=int(raw.cls),
        reason=int(raw.reason),
        tcp_flags=int(raw.tcp_flags),
        monitor=bool(raw.monitor),
        action=int(raw.action),
        ts_ns=int(raw.ts),
    )


class ControlPort(Protocol):
    """What the control loop needs from the kernel, and nothing more.

    Reads return cumulative counters (the controller differences them);
    writes are idempotent and always carry an expiry. Rules and bans written
    here have origin AUTO; the implementation keeps other origins untouched.
    """

    def now_ns(self) -> int:
        """CLOCK_MONOTONIC in nanoseconds: the clock the program checks expiries against."""
        ...

    def read_group_stats(self) -> NDArray[np.uint64]:
        """Cumulative per (group, class) counters: array [gid, class, field] (see GROUP_FIELDS)."""
        ...

    def read_dst_stats(self) -> DstSnapshot:
        """Cumulative per-destination-host counters."""
        ...

    def drain_samples(self) -> Sequence[PacketSample]:
        """Every packet sample queued since the last call."""
        ...

    def read_downstream(self) -> Mapping[int, int]:
        """Cumulative packets dropped on the way to each protected group (group id -> count): the
        gateway's interface towards it and that interface's queues. Groups whose way is not known
        are left out."""
        ...

    def set_syn_auth(self, gid: int, expires_ns: int | None) -> None:
        """Challenge unverified SYNs to the group until expires_ns; None stops now."""
        ...

    def set_auto_rules(self, rules: Sequence[RuleSpec]) -> None:
        """Make the automatic rules exactly these (origin AUTO); rules of other origins stay."""
        ...

    def ban(self, net: IPNetwork, expires_ns: int, monitor: bool, reason: str) -> None:
        """Ban a source prefix with origin AUTO until expires_ns; monitor = count only."""
        ...

    def unban(self, net: IPNetwork) -> None:
        """Remove the AUTO ban of a prefix (other origins' records stay)."""
        ...
