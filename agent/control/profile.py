"""What each protected group's legitimate traffic looks like, learned from calm samples.

The baseline (`baseline.Baseline`) knows how much traffic a group gets per
class; this knows what it looks like: which UDP source and destination
ports, which ICMP types, which TCP destination ports, which other IP
protocols — and how fast its heaviest real sources send. A mitigation uses
it to say what legitimate traffic it could hit, and the judge uses it to
tell a flood from a surge:

* a drop rule on a shape is only chosen when this group's calm traffic
  hardly has that shape (a DNS reflection towards a web server: answers
  from port 53 that nobody asked for);
* an aggregate limit on a shape the group does have is set from the
  shape's learned normal rate with headroom, never a constant;
* a per-source limit is set from the heaviest legitimate source seen, with
  headroom: a CGNAT address or a proxy that is normally busy stays under it.

Learning is from calm series only (not during an attack), with the same
exponential forgetting as the baseline (``detection.baseline.half_life``),
so a daily cycle is followed and a flood never becomes "normal". Memory is
bounded: each counter keeps its heaviest keys.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.contract.abi import LIMIT_CLASSES, TrafficClass

from .port import PacketSample
from .samples import source_key

#: Keys kept per counter (ports, types, protocols).
KEYS_KEPT = 64
#: Seconds of samples over which a source's rate is estimated.
SOURCE_WINDOW_S = 10.0
#: Seconds a tick's samples wait before the profile learns them (see ``Profiles.learn``).
HINDSIGHT_S = 2.0
#: A source needs this many samples in the window before its rate counts.
MIN_SOURCE_SAMPLES = 3

C = TrafficClass


@dataclass
class _Decayed:
    """Counts that forget with a half-life; the heaviest keys only."""

    counts: dict[int, float] = field(default_factory=dict)
    total: float = 0.0

    def decay(self, factor: float) -> None:
        if factor >= 1.0 or not self.counts:
            self.total *= factor
            return
        self.total *= factor
        for k in list(self.counts):
            v = self.counts[k] * factor
            if v < 1e-3:
                del self.counts[k]
            else:
                self.counts[k] = v

    def add(self, counts: Counter[int]) -> None:
        mine = self.counts
        for k, n in counts.items():
            mine[k] = mine.get(k, 0.0) + n
            self.total += n
        if len(mine) > 2 * KEYS_KEPT:
            keep = sorted(mine.items(), key=lambda kv: -kv[1])[:KEYS_KEPT]
            self.counts = dict(keep)

    def share(self, lo: int, hi: int | None = None) -> float:
        """Share of the total with a key in [lo, hi] (one key when hi is None)."""
        if self.total <= 0:
            return 0.0
        if hi is None:
            return self.counts.get(lo, 0.0) / self.total
        return sum(v for k, v in self.counts.items() if lo <= k <= hi) / self.total


@dataclass
class _ClassProfile:
    sports: _Decayed = field(default_factory=_Decayed)  # UDP source ports; ICMP types (the parser's sport)
    dports: _Decayed = field(default_factory=_Decayed)
    protos: _Decayed = field(default_factory=_Decayed)
    heavy_source_pps: float = 0.0  # the heaviest legitimate source's rate, decayed
    samples: float = 0.0  # how much evidence the shares rest on (decayed)


class GroupProfile:
    """One group's learned shapes, per class."""

    def __init__(self) -> None:
        self.classes = [_ClassProfile() for _ in range(LIMIT_CLASSES)]
        self.source_windows: list[deque[tuple[float, Counter[int]]]] = [deque() for _ in range(LIMIT_CLASSES)]

    def share(self, cls: int, field_name: str, lo: int, hi: int | None = None) -> float:
        """Share of the class's calm samples whose ``field_name`` (sports, dports, protos) is in [lo, hi]."""
        counter: _Decayed = getattr(self.classes[cls], field_name)
        return counter.share(lo, hi)

    def evidence(self, cls: int) -> float:
        """Calm samples the class's shares rest on (decayed)."""
        return self.classes[cls].samples

    def heavy_source_pps(self, cls: int) -> float:
        return self.classes[cls].heavy_source_pps


class Profiles:
    """Every group's profile; fed each tick with the samples of its calm series."""

    def __init__(self, half_life_s: float, sample_every: int) -> None:
        self.half_life_s = half_life_s
        self.sample_every = max(sample_every, 1)
        self._groups: dict[int, GroupProfile] = {}
        # Ticks not folded in yet: (dt, samples of the calm series, calm series without samples).
        self._held: deque[tuple[float, dict[tuple[int, int], list[PacketSample]], set[tuple[int, int]]]] = deque()
        self._held_s = 0.0

    def configure(self, half_life_s: float, sample_every: int) -> None:
        self.half_life_s = half_life_s
        self.sample_every = max(sample_every, 1)

    def of(self, gid: int) -> GroupProfile:
        got = self._groups.get(gid)
        if got is None:
            got = self._groups[gid] = GroupProfile()
        return got

    def remap(self, moves: dict[int, int]) -> None:
        """Group ids changed on a reload (old -> new): profiles follow their group."""
        self._groups = {moves[g]: p for g, p in self._groups.items() if g in moves}
        self._held = deque((dt, {(moves[g], c): v for (g, c), v in held.items() if g in moves},
                            {(moves[g], c) for g, c in aged if g in moves}) for dt, held, aged in self._held)

    def learn(self, by_series: dict[tuple[int, int], list[PacketSample]], dt: float,
              calm: Callable[[tuple[int, int]], bool]) -> None:
        """Take one tick of samples of the series that are ``calm`` (group, class); decay everything.

        With hindsight: a tick is folded in only ``HINDSIGHT_S`` later, and a
        series that stops being calm meanwhile loses its held ticks. So the
        first ticks of a flood, still under the threshold while it ramps up,
        never teach the profile that the flood's sources are normal (they set
        the per-source limit an attack gets: ten times the heaviest source).
        """
        if dt <= 0:
            return
        factor = 0.5 ** (dt / self.half_life_s) if self.half_life_s > 0 else 1.0
        for p in self._groups.values():
            for cp in p.classes:
                cp.sports.decay(factor)
                cp.dports.decay(factor)
                cp.protos.decay(factor)
                cp.samples *= factor
                cp.heavy_source_pps *= factor
        seen = set(by_series) | {k for _, held, _ in self._held for k in held}
        hot = {k for k in seen if not calm(k)}
        if hot:
            for _, held, aged in self._held:
                for k in hot:
                    held.pop(k, None)
                    aged.discard(k)
        held = {k: v for k, v in by_series.items() if k[1] < LIMIT_CLASSES and v and calm(k)}
        # Only windows that hold something can age: a tick costs the active series, not every group.
        aged = {(gid, cls) for gid, prof in self._groups.items() for cls, window in enumerate(prof.source_windows)
                if window and (gid, cls) not in by_series and calm((gid, cls))}
        self._held.append((dt, held, aged))
        self._held_s += dt
        while self._held and self._held_s - self._held[0][0] >= HINDSIGHT_S:
            self._fold(*self._held.popleft())

    def _fold(self, dt: float, by_series: dict[tuple[int, int], list[PacketSample]],
              aged: set[tuple[int, int]]) -> None:
        self._held_s -= dt
        for (gid, cls), samples in by_series.items():
            prof = self.of(gid)
            cp = prof.classes[cls]
            cp.samples += len(samples)
            cp.sports.add(Counter(s.sport for s in samples))
            cp.dports.add(Counter(s.dport for s in samples))
            cp.protos.add(Counter(s.proto for s in samples))
            self._sources(prof, cls, samples, dt)
        # a calm series with no sample this tick still ages its source window
        for gid, cls in aged:
            if gid in self._groups:
                self._age(self._groups[gid], cls, dt)

    def _sources(self, prof: GroupProfile, cls: int, samples: list[PacketSample], dt: float) -> None:
        window = prof.source_windows[cls]
        window.append((dt, Counter(source_key(s.src) for s in samples)))
        self._trim(window)
        seconds = sum(w for w, _ in window)
        if seconds < min(SOURCE_WINDOW_S, 1.0):
            return
        merged: Counter[int] = Counter()
        for _, c in window:
            merged.update(c)
        if not merged:
            return
        top = merged.most_common(1)[0][1]
        if top < MIN_SOURCE_SAMPLES:
            return
        rate = top * self.sample_every / seconds
        cp = prof.classes[cls]
        cp.heavy_source_pps = max(cp.heavy_source_pps, rate)

    def _age(self, prof: GroupProfile, cls: int, dt: float) -> None:
        window = prof.source_windows[cls]
        if window:
            window.append((dt, Counter()))
            self._trim(window)

    @staticmethod
    def _trim(window: deque[tuple[float, Counter[int]]]) -> None:
        seconds = sum(w for w, _ in window)
        while len(window) > 1 and seconds - window[0][0] >= SOURCE_WINDOW_S:
            seconds -= window.popleft()[0]


def headroom_rate(normal: float, headroom: float, floor: float) -> int:
    """A limit from a learned normal rate: normal x headroom, never under ``floor``."""
    if not math.isfinite(normal) or normal < 0:
        normal = 0.0
    return max(math.ceil(normal * headroom), int(floor))
