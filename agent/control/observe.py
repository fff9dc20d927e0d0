"""Counters to detector transitions: rates, the learned baseline, and the series about to start.

Each tick the cumulative counters become rates (`meter.RateMeter`); the
detector compares every (group, class) series at once with its thresholds —
the static floors, the learned baseline and, where the policy sets a
per-destination floor, the busiest host — and the baseline learns from the
series that are calm. The samples of series on their way to a start are
kept, so that a new attack record starts with the evidence that led to it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agent.contract.abi import LIMIT_CLASSES, TrafficClass

from .baseline import Baseline
from .detect import Detector, Limits, Signals, Transitions
from .judge import Distress
from .meter import DstRates, GroupRates, GroupRows, RateMeter
from .port import DstSnapshot, PacketSample
from .profile import Profiles
from .samples import TickSamples, source_key
from .settings import Settings

#: Ticks of other-TCP sources kept to tell which SYN senders complete their handshakes.
ACK_WINDOW_TICKS = 10
#: Drops per second towards a group that mean its side hurts (a queue overflowing, not one lost packet).
DISTRESS_DROPS_PS = 10.0
#: Offered traffic over this share of a group's uplink capacity: its link is full.
DISTRESS_LOAD = 0.9

Series = tuple[int, int]  # (group id, class)
SampleTick = tuple[list[PacketSample], float]  # one tick's samples of a series, and the tick's length


@dataclass(frozen=True)
class TickData:
    """One tick's rates and samples, as every part of the controller reads them."""

    now: int
    groups: GroupRates
    dst: DstRates
    samples: TickSamples
    rows: GroupRows  # each group's rows in dst
    distress: dict[int, Distress]  # the groups whose side hurts this tick (others: not hurting)

    def distress_of(self, gid: int) -> Distress:
        return self.distress.get(gid, NO_DISTRESS)

    @property
    def dt(self) -> float:
        return self.groups.dt


class Observer:
    """Rates, baseline and detector state of every series; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        d = settings.detection
        shape = (settings.rows, LIMIT_CLASSES)
        self.baseline = Baseline(shape, d.baseline.half_life, d.baseline.warmup)
        self.detector = Detector(shape, d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)
        self.meter = RateMeter()
        self.profiles = Profiles(d.baseline.half_life, d.sample_every)
        # Who sent other TCP (ACKs, data) to each group lately: real clients complete their handshakes.
        self._acks: deque[dict[int, Counter[int]]] = deque(maxlen=ACK_WINDOW_TICKS)
        # Who sent SYNs to each group lately: a busy source of other TCP that opens its connections at
        # a real client's pace is one.
        self._syns: deque[dict[int, Counter[int]]] = deque(maxlen=ACK_WINDOW_TICKS)
        self._pending: dict[Series, deque[SampleTick]] = {}
        self._drops: dict[int, int] = {}

    def step(
        self, now: int, groups: NDArray[np.uint64], dst: DstSnapshot, samples: TickSamples, s: Settings,
        downstream: dict[int, int] | None = None,
    ) -> tuple[TickData, Transitions] | None:
        """Detect over this tick's counters; None on the first read (a count since boot is not a rate).

        ``downstream``: cumulative drops towards each group (`ControlPort.read_downstream`)."""
        rates = self.meter.update(now, groups, dst)
        drops = self._drops_ps(downstream or {}, rates[0].dt if rates is not None else 0.0)
        if rates is None:
            return None
        g, d = rates
        gp, gb = _fit(g.pps, s.rows), _fit(g.bps, s.rows)
        hp, hb = _host_max(d, s)
        t_pps, t_bps = self.baseline.thresholds(
            s.detection.baseline.k, s.detection.baseline.min_pps, s.floor_pps, s.floor_bps
        )
        distress = _distress(gp, gb, drops, s)
        urgent = np.zeros((s.rows, LIMIT_CLASSES), dtype=bool)
        for gid in distress:
            if gid < s.rows:
                urgent[gid] = True
        step = self.detector.step(
            now, Signals(gp, gb, hp, hb), Limits(t_pps, t_bps, s.host_floor_pps, s.host_floor_bps), s.eligible,
            urgent,
        )
        learn = _tcp_together(step.learn)
        self.baseline.learn(gp, gb, g.dt, learn)
        self.profiles.learn(samples.by_series, g.dt, lambda k: k[0] < learn.shape[0] and bool(learn[k]))
        self._acks.append({gid: Counter(source_key(x.src) for x in got)
                           for (gid, cls), got in samples.by_series.items() if cls == TrafficClass.TCP_OTHER})
        self._syns.append({gid: Counter(source_key(x.src) for x in got)
                           for (gid, cls), got in samples.by_series.items() if cls == TrafficClass.TCP_SYN})
        return TickData(now, g, d, samples, GroupRows(d), distress), step

    def _drops_ps(self, downstream: dict[int, int], dt: float) -> dict[int, float]:
        """Drops per second towards each group since the last tick."""
        out: dict[int, float] = {}
        if dt > 0:
            for gid, n in downstream.items():
                prev = self._drops.get(gid)
                if prev is not None and n >= prev:
                    out[gid] = (n - prev) / dt
        self._drops = dict(downstream)
        return out

    def acks_from(self, gid: int) -> Counter[int]:
        """Samples of other TCP to the group over the last few ticks, by source (`samples.source_key`)."""
        return self._window(self._acks, gid)

    def syns_from(self, gid: int) -> Counter[int]:
        """Samples of SYNs to the group over the last few ticks, by source."""
        return self._window(self._syns, gid)

    @staticmethod
    def _window(ticks: deque[dict[int, Counter[int]]], gid: int) -> Counter[int]:
        out: Counter[int] = Counter()
        for tick in ticks:
            got = tick.get(gid)
            if got:
                out.update(got)
        return out

    def take_pending(self, series: Series) -> list[SampleTick]:
        """The samples that led up to a start, handed to the new record."""
        return list(self._pending.pop(series, ()))

    def track_pending(self, step: Transitions, samples: TickSamples, dt: float) -> None:
        """Keep the samples of series on their way to a start, so a new record has them."""
        streak = self.detector.streak
        pending = set(zip(*(x.tolist() for x in np.nonzero(streak > 0)), strict=True))
        for key in [k for k in self._pending if k not in pending]:
            del self._pending[key]
        for key in pending:
            q = self._pending.setdefault(key, deque(maxlen=max(self.detector.consecutive, 1)))
            if step.over[key]:  # the calm ticks between a pulse wave's bursts add nothing
                q.append((samples.by_series.get(key, []), dt))

    def remap(self, new: Settings, moves: dict[int, int]) -> None:
        """Take a reloaded policy: rows follow group names (old id -> new id); the rest starts afresh."""
        # A new group starts with a fresh baseline even on a reused id.
        self.baseline = self.baseline.remap(new.rows, moves)
        self.detector = self.detector.remap(new.rows, moves)
        self._pending = {k: q for k, q in self._pending.items() if moves.get(k[0]) == k[0]}
        self.profiles.remap(moves)
        self._drops = {}
        if any(o != n for o, n in moves.items()):
            # Counters are indexed by group id: a tick of rates over moved ids would be garbage.
            self.meter.reset()
            self._pending.clear()
        d = new.detection
        self.profiles.configure(d.baseline.half_life, d.sample_every)
        self.baseline.configure(d.baseline.half_life, d.baseline.warmup)
        self.detector.configure(d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)

    def warm_groups(self, s: Settings) -> int:
        """Groups with at least one class whose baseline has warmed up."""
        warm = self.baseline.warm & s.eligible
        return int(warm.any(axis=1).sum())


NO_DISTRESS = Distress()


def _distress(gp: NDArray[np.float64], gb: NDArray[np.float64], drops: dict[int, float], s: Settings
              ) -> dict[int, Distress]:
    """The groups whose side hurts: drops towards them, or their uplink near capacity."""
    out: dict[int, Distress] = {}
    for gid, rate in drops.items():
        if rate >= DISTRESS_DROPS_PS and gid in s.groups:
            out[gid] = Distress(True, f"{rate:.0f} packets/s dropped on the way to it", drops_ps=rate)
    for view in s.uplinked:
        up = view.uplink
        if up is None or view.gid >= gp.shape[0]:
            continue
        loads = []
        if up.bps:
            loads.append(float(gb[view.gid].sum()) / up.bps)
        if up.pps:
            loads.append(float(gp[view.gid].sum()) / up.pps)
        load = max(loads, default=0.0)
        if load >= DISTRESS_LOAD:
            prev = out.get(view.gid)
            why = f"its link is {load:.0%} full" + (f"; {prev.why}" if prev is not None else "")
            out[view.gid] = Distress(True, why, drops_ps=prev.drops_ps if prev else 0.0, load=load)
    return out


def _host_max(d: DstRates, s: Settings) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The busiest host's pps and bps per (group, class) — only where a per-destination floor exists."""
    hp = np.zeros((s.rows, LIMIT_CLASSES))
    hb = np.zeros((s.rows, LIMIT_CLASSES))
    if len(d) == 0:
        return hp, hb
    gi = np.clip(d.group, 0, s.rows - 1)
    for c in range(LIMIT_CLASSES):
        for floor, rate, out in ((s.host_floor_pps, d.pps, hp), (s.host_floor_bps, d.bps, hb)):
            has = np.isfinite(floor[:, c])
            if not has.any():
                continue
            rows = has[gi]
            col = out[:, c].copy()
            np.maximum.at(col, gi[rows], rate[rows, c])
            out[:, c] = col
    return hp, hb


def _fit(a: NDArray[np.float64], rows: int) -> NDArray[np.float64]:
    """Rows of a [gid, class] array trimmed or zero-padded to the policy's group rows."""
    if a.shape[0] == rows:
        return a
    if a.shape[0] > rows:
        return a[:rows]
    out = np.zeros((rows, a.shape[1]))
    out[: a.shape[0]] = a
    return out


def _tcp_together(learn: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """A group's two TCP classes learn only together: handshake completion compares the surplus of
    one over the other's, so neither normal may drift while the other is frozen by a candidate (a
    load's ACKs learned as normal while its SYNs were not would hide the next crowd's ACKs)."""
    out = learn.copy()
    both = learn[:, TrafficClass.TCP_SYN] & learn[:, TrafficClass.TCP_OTHER]
    out[:, TrafficClass.TCP_SYN] = both
    out[:, TrafficClass.TCP_OTHER] = both
    return out
