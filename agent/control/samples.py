"""Sampled packet headers: who sends the flood, from which ports, and whether the sources are real.

The program copies 1 in ``sample_every`` packets; a count of samples times
``sample_every`` over the tick length estimates a rate. Per-source maps are
never scanned: everything about sources comes from here.

*Persistent abusive sources* (ban candidates) are those estimated above an
abusive rate in at least two consecutive ticks, with enough samples each
tick that the estimate is not one lucky sample times ``sample_every``.

*Spoofing*: a flood whose samples almost never repeat a source address
(distinct sources / samples above the policy's ``spoof_ratio``, over enough
samples) comes from forged addresses; banning them would ban innocent
bystanders and fill the ban table, so nobody is banned.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.contract.abi import Reason
from agent.contract.keys import IPAddress

from .port import PacketSample
from .sketch import TopK

#: A source needs this many samples in a tick before its rate estimate is trusted.
MIN_SOURCE_SAMPLES = 3
#: Ticks in a row above the abusive rate before a source is a ban candidate.
PERSISTENT_TICKS = 2
#: Samples needed before the distinct-source ratio says anything.
MIN_SPOOF_SAMPLES = 50
#: Ticks of samples kept for the spoofing estimate and the classification.
WINDOW_TICKS = 5
#: Samples of these reasons are not ban candidates: already allowlisted or banned.
_NOT_CANDIDATES = (int(Reason.ALLOWLISTED), int(Reason.BANNED))
_V6 = 1 << 128


def source_key(addr: IPAddress) -> int:
    """An address as a plain int key (IPv6 above 2**128): ipaddress objects hash slowly,
    and a spoofed flood brings tens of thousands of them per tick."""
    return int(addr) if addr.version == 4 else int(addr) | _V6


def source_address(key: int) -> IPAddress:
    return ipaddress.IPv6Address(key ^ _V6) if key >= _V6 else ipaddress.IPv4Address(key)


@dataclass
class TickSamples:
    """One tick's samples, split by (group, class) series."""

    samples: Sequence[PacketSample] = ()
    by_series: dict[tuple[int, int], list[PacketSample]] = field(default_factory=dict)

    @classmethod
    def build(cls, samples: Sequence[PacketSample]) -> TickSamples:
        out = cls(samples)
        by = out.by_series
        for s in samples:
            key = (s.group, s.cls)
            lst = by.get(key)
            if lst is None:
                by[key] = [s]
            else:
                lst.append(s)
        return out

    def sources(self) -> Counter[tuple[IPAddress, int]]:
        """Samples per (source, group): counted only when someone asks (``floodguard top``)."""
        return Counter((s.src, s.group) for s in self.samples)


@dataclass(frozen=True)
class SpoofVerdict:
    spoofed: bool
    why: str


@dataclass(frozen=True)
class SourceStats:
    """Who sent an attack's recent samples."""

    samples: int
    distinct: int
    top_share: float  # share of the samples from the heaviest sources listed in ``top``
    top: tuple[tuple[IPAddress, float, int], ...]  # (source, estimated pps, samples), heaviest first


#: TCP flags that tell floods apart (FIN, SYN, RST, ACK; PSH and URG vary within one kind).
TCP_KIND_MASK = 0x17


@dataclass
class SampleStats:
    """Counts over a set of samples: what classification and spoofing need, without the samples."""

    total: int = 0
    sources: Counter[int] = field(default_factory=Counter)  # by source_key
    sports: Counter[int] = field(default_factory=Counter)
    dports: Counter[int] = field(default_factory=Counter)
    protos: Counter[int] = field(default_factory=Counter)
    tcp_kinds: Counter[int] = field(default_factory=Counter)  # tcp_flags & TCP_KIND_MASK
    port_sports: Counter[int] = field(default_factory=Counter)  # source ports of samples that have one

    @classmethod
    def of(cls, samples: Sequence[PacketSample]) -> SampleStats:
        sports = Counter(s.sport for s in samples)
        return cls(
            total=len(samples),
            sources=Counter(source_key(s.src) for s in samples),
            sports=sports,
            dports=Counter(s.dport for s in samples),
            protos=Counter(s.proto for s in samples),
            tcp_kinds=Counter(s.tcp_flags & TCP_KIND_MASK for s in samples),
            port_sports=Counter({p: n for p, n in sports.items() if p}),
        )

    def merge_shape(self, other: SampleStats) -> None:
        """Add another's counts of everything but the sources."""
        self.total += other.total
        for mine, theirs in (
            (self.sports, other.sports),
            (self.dports, other.dports),
            (self.protos, other.protos),
            (self.tcp_kinds, other.tcp_kinds),
            (self.port_sports, other.port_sports),
        ):
            mine.update(theirs)


class AttackSamples:
    """The sampled evidence of one attack, bounded in memory however long it lasts."""

    def __init__(self, sample_every: int) -> None:
        self.sample_every = max(sample_every, 1)
        self.sources: TopK[int] = TopK(256)  # by source_key
        self.sports: TopK[int] = TopK(64)
        self.dports: TopK[int] = TopK(64)
        self.count = 0
        self.seconds = 0.0
        self._window: deque[SampleStats] = deque(maxlen=WINDOW_TICKS)
        self._window_dt: deque[float] = deque(maxlen=WINDOW_TICKS)
        self._streaks: dict[int, int] = {}
        self._rates: dict[int, float] = {}

    def add_tick(self, samples: Sequence[PacketSample], dt: float, abusive_pps: float) -> None:
        """Fold in one tick of this attack's samples."""
        stats = SampleStats.of(samples)
        self.count += stats.total
        self.seconds += dt
        self._window.append(stats)
        self._window_dt.append(dt)
        self.sources.update(stats.sources)
        self.sports.update(stats.sports)
        self.dports.update(stats.dports)
        per_source = stats.sources
        excluded = Counter(source_key(s.src) for s in samples if s.reason in _NOT_CANDIDATES)
        if excluded:
            per_source = per_source - excluded
        scale = self.sample_every / dt if dt > 0 else 0.0
        streaks: dict[int, int] = {}
        rates: dict[int, float] = {}
        for src, n in per_source.items():
            pps = n * scale
            if n >= MIN_SOURCE_SAMPLES and pps > abusive_pps:
                streaks[src] = self._streaks.get(src, 0) + 1
                rates[src] = pps
        self._streaks, self._rates = streaks, rates

    def seed(self, ticks: Sequence[tuple[Sequence[PacketSample], float]], abusive_pps: float) -> None:
        """Take in the ticks that led up to the start (the detector's consecutive ticks)."""
        for samples, dt in ticks:
            self.add_tick(samples, dt, abusive_pps)

    def window(self) -> SampleStats:
        """Counts over the last few ticks' samples (for classification; without the sources)."""
        out = SampleStats()
        for stats in self._window:
            out.merge_shape(stats)
        return out

    def persistent(self) -> list[tuple[IPAddress, float]]:
        """Sources abusive in the last PERSISTENT_TICKS ticks, heaviest first, with their rate."""
        out = [(src, self._rates[src]) for src, n in self._streaks.items() if n >= PERSISTENT_TICKS]
        out.sort(key=lambda x: -x[1])
        return [(source_address(src), pps) for src, pps in out]

    def window_sources(self) -> Counter[int]:
        """Samples per source (`source_key`) over the recent window."""
        merged: Counter[int] = Counter()
        for stats in self._window:
            merged.update(stats.sources)
        return merged

    def source_stats(self, n: int = 10) -> SourceStats:
        """The recent samples' sources: how many, how concentrated, and the heaviest with their rates."""
        merged: Counter[int] = Counter()
        for stats in self._window:
            merged.update(stats.sources)
        total = sum(merged.values())
        seconds = sum(self._window_dt)
        top = merged.most_common(n)
        scale = self.sample_every / seconds if seconds > 0 else 0.0
        return SourceStats(
            samples=total,
            distinct=len(merged),
            top_share=sum(c for _, c in top) / total if total else 0.0,
            top=tuple((source_address(k), c * scale, c) for k, c in top),
        )

    def spoofing(self, spoof_ratio: float) -> SpoofVerdict:
        """Do the sources look forged? From the distinct-source ratio of the recent samples."""
        n = sum(stats.total for stats in self._window)
        if n < MIN_SPOOF_SAMPLES:
            return SpoofVerdict(False, f"{n} samples: too few to judge spoofing")
        distinct = len(set().union(*(stats.sources for stats in self._window)))
        ratio = distinct / n
        if ratio > spoof_ratio:
            return SpoofVerdict(
                True, f"{distinct} distinct sources in {n} samples (ratio {ratio:.2f} > spoof_ratio {spoof_ratio})"
            )
        return SpoofVerdict(False, f"{distinct} distinct sources in {n} samples (ratio {ratio:.2f})")

    def finish(self) -> None:
        """The attack ended: keep the summary, drop the working state (ended records are kept for long)."""
        self._window.clear()
        self._window_dt.clear()
        self._streaks, self._rates = {}, {}

    def rate(self, count: int) -> float:
        """A sample count over the whole attack as packets/s."""
        return count * self.sample_every / self.seconds if self.seconds > 0 else 0.0

    def summary(self, n: int = 10) -> dict[str, object]:
        """Top sources and ports for the attack record."""

        def rows(top: list[tuple[object, int]], key: str) -> list[dict[str, object]]:
            total = max(self.count, 1)
            return [{key: k, "pps": round(self.rate(c)), "share": round(c / total, 3)} for k, c in top]

        return {
            "samples": self.count,
            "top_sources": rows([(str(source_address(k)), c) for k, c in self.sources.top(n)], "source"),
            "top_source_ports": rows(list(self.sports.top(n)), "port"),
            "top_destination_ports": rows(list(self.dports.top(n)), "port"),
        }
