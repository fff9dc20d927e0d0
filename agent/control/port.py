"""The control loop's window on the kernel: exactly what it reads and writes.

The controller never sees a map, a file descriptor or a ctypes structure.
It reads cumulative counters and sampled packet headers and writes
tightened limits, SYN authentication, rules and bans through `ControlPort`.
The daemon implements the port over ``agent.datapath.port.MapPort``
(converting with `sample_from_raw` and `DstSnapshot.from_raw`); tests use
`FakePort`, which keeps everything in memory and records every write.

Every write carries an absolute CLOCK_MONOTONIC expiry taken from
``now_ns()``, so a dead daemon leaves nothing behind for longer than the
policy's TTLs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from agent.datapath.abi import LIMIT_CLASSES
from agent.datapath.port import RuleSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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


@dataclass(frozen=True, slots=True)
class ClassLimit:
    """A per-source limit for one traffic class, in operator units (0 = unlimited)."""

    pps: int
    bps: int
    burst: int


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
        cls, keys: Sequence[tuple[int, int]], groups: Sequence[int], counters: Sequence[Any] | NDArray[np.uint64]
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
    def from_counters(cls, counters: Mapping[tuple[int, int], Any]) -> DstSnapshot:
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
        kd = np.dtype([("hi", ">u8"), ("lo", ">u8"), ("family", "u1"), ("pad", "u1", 3)])
        k = np.frombuffer(keys, dtype=kd, count=n)
        fam = k["family"].copy()
        hi = k["hi"].astype(np.uint64)
        lo = k["lo"].astype(np.uint64)
        v4 = fam == 4
        # IPv4 lives in the first 4 bytes of the 16: the top half of "hi".
        lo = np.where(v4, hi >> np.uint64(32), lo)
        hi = np.where(v4, np.uint64(0), hi)
        words = DST_KINDS * LIMIT_CLASSES + 1  # 18 counters, then group and padding
        v = np.frombuffer(values, dtype="<u8", count=n * ncpus * words).reshape(n, ncpus, words)
        counters = v[:, :, : words - 1].sum(axis=1, dtype=np.uint64).reshape(n, DST_KINDS, LIMIT_CLASSES)
        group = (v[:, :, words - 1] & np.uint64(0xFFFF)).max(axis=1).astype(np.int64)
        return cls(fam, hi, lo, group, counters)


def address_of(family: int, value: int) -> IPAddress:
    """The ``ipaddress`` object of a (family, int) key."""
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def _words_to_address(family: int, words: Sequence[int]) -> IPAddress:
    # The program stores addresses in network order; ctypes reads each u32 word little-endian.
    raw = b"".join(int(w).to_bytes(4, "little") for w in words)
    return ipaddress.IPv4Address(raw[:4]) if family == 4 else ipaddress.IPv6Address(raw)


def sample_from_raw(raw: Any) -> PacketSample:
    """Convert one ``abi.Sample`` (struct fg_sample) read from the samples ring."""
    fam = int(raw.family)
    return PacketSample(
        src=_words_to_address(fam, raw.src),
        dst=_words_to_address(fam, raw.dst),
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

    def tighten(self, gid: int, limits: Sequence[ClassLimit], expires_ns: int) -> None:
        """Replace the group's per-source limits (one per class) until expires_ns."""
        ...

    def relax(self, gid: int) -> None:
        """Back to the group's policy limits now."""
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


@dataclass(frozen=True)
class BanWrite:
    expires_ns: int
    monitor: bool
    reason: str


@dataclass
class FakePort:
    """An in-memory `ControlPort` for pure-logic tests.

    Tests advance the clock, add traffic to the cumulative counters and queue
    samples; every write is kept (current state) and logged in ``writes``
    (history, with the clock at the time of the write).
    """

    groups: int = 16
    clock_ns: int = 1_000_000_000_000
    group_counters: NDArray[np.uint64] = field(init=False)
    hosts: dict[tuple[int, int], tuple[int, NDArray[np.uint64]]] = field(default_factory=dict)
    samples: list[PacketSample] = field(default_factory=list)
    tightened: dict[int, tuple[tuple[ClassLimit, ...], int]] = field(default_factory=dict)
    syn_auth: dict[int, int] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)
    bans: dict[IPNetwork, BanWrite] = field(default_factory=dict)
    writes: list[tuple[int, str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group_counters = np.zeros((self.groups, LIMIT_CLASSES, len(GROUP_FIELDS)), dtype=np.uint64)

    # --- feeding --------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.clock_ns += round(seconds * 1e9)

    def count_group(
        self, gid: int, cls: int, packets: int, nbytes: int, dropped: int = 0, dropped_bytes: int = 0,
        new_sources: int = 0,
    ) -> None:
        """Add to the cumulative counters of (gid, cls)."""
        self.group_counters[gid, cls] += np.array(
            [packets, nbytes, dropped, dropped_bytes, new_sources], dtype=np.uint64
        )

    def count_host(self, addr: IPAddress, gid: int, cls: int, packets: int, nbytes: int, dropped: int = 0) -> None:
        """Add to the cumulative counters of one destination host."""
        key = (addr.version, int(addr))
        if key not in self.hosts:
            self.hosts[key] = (gid, np.zeros((3, LIMIT_CLASSES), dtype=np.uint64))
        self.hosts[key][1][:, cls] += np.array([packets, nbytes, dropped], dtype=np.uint64)

    def forget_host(self, addr: IPAddress) -> None:
        """The LRU evicted the host's counters."""
        self.hosts.pop((addr.version, int(addr)), None)

    # --- ControlPort ------------------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock_ns

    def read_group_stats(self) -> NDArray[np.uint64]:
        return self.group_counters.copy()

    def read_dst_stats(self) -> DstSnapshot:
        keys = list(self.hosts)
        return DstSnapshot.build(keys, [self.hosts[k][0] for k in keys], [self.hosts[k][1] for k in keys])

    def drain_samples(self) -> list[PacketSample]:
        out, self.samples = self.samples, []
        return out

    def tighten(self, gid: int, limits: Sequence[ClassLimit], expires_ns: int) -> None:
        self.tightened[gid] = (tuple(limits), expires_ns)
        self.writes.append((self.clock_ns, "tighten", (gid, tuple(limits), expires_ns)))

    def relax(self, gid: int) -> None:
        self.tightened.pop(gid, None)
        self.writes.append((self.clock_ns, "relax", gid))

    def set_syn_auth(self, gid: int, expires_ns: int | None) -> None:
        if expires_ns is None:
            self.syn_auth.pop(gid, None)
        else:
            self.syn_auth[gid] = expires_ns
        self.writes.append((self.clock_ns, "syn_auth", (gid, expires_ns)))

    def set_auto_rules(self, rules: Sequence[RuleSpec]) -> None:
        self.rules = list(rules)
        self.writes.append((self.clock_ns, "rules", tuple(rules)))

    def ban(self, net: IPNetwork, expires_ns: int, monitor: bool, reason: str) -> None:
        self.bans[net] = BanWrite(expires_ns, monitor, reason)
        self.writes.append((self.clock_ns, "ban", (net, expires_ns, monitor, reason)))

    def unban(self, net: IPNetwork) -> None:
        self.bans.pop(net, None)
        self.writes.append((self.clock_ns, "unban", net))

    # --- inspection ---------------------------------------------------------------------------------

    def live_bans(self) -> dict[IPNetwork, BanWrite]:
        """Bans the kernel would still enforce now."""
        return {n: b for n, b in self.bans.items() if b.expires_ns > self.clock_ns}

    def written(self, kind: str) -> list[tuple[int, object]]:
        """(time, payload) of every write of one kind, oldest first."""
        return [(t, what) for t, k, what in self.writes if k == kind]


def _implements_the_port(port: FakePort) -> ControlPort:
    """Never called: mypy checks here that FakePort is a ControlPort."""
    return port
