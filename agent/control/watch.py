"""Counters to detector transitions: rates, the learned baseline, and the series about to start.

Each tick the cumulative counters become rates (`meter.RateMeter`); the
detector compares every (group, class) series at once with its thresholds —
the static floors, the learned baseline and, where the policy sets a
per-destination floor, the busiest host — and the baseline learns from the
series that are calm. The samples of series on their way to a start are
kept, so that a new attack record starts with the evidence that led to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agent.contract.abi import LIMIT_CLASSES

from .baseline import Baseline
from .detect import Detector, Limits, Signals, Transitions
from .meter import DstRates, GroupRates, GroupRows, RateMeter
from .port import DstSnapshot, PacketSample
from .samples import TickSamples
from .settings import Settings

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

    @property
    def dt(self) -> float:
        return self.groups.dt


class Watch:
    """Rates, baseline and detector state of every series; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        d = settings.detection
        shape = (settings.rows, LIMIT_CLASSES)
        self.baseline = Baseline(shape, d.baseline.half_life, d.baseline.warmup)
        self.detector = Detector(shape, d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)
        self.meter = RateMeter()
        self._pending: dict[Series, deque[SampleTick]] = {}

    def step(
        self, now: int, groups: NDArray[np.uint64], dst: DstSnapshot, samples: TickSamples, s: Settings
    ) -> tuple[TickData, Transitions] | None:
        """Detect over this tick's counters; None on the first read (a count since boot is not a rate)."""
        rates = self.meter.update(now, groups, dst)
        if rates is None:
            return None
        g, d = rates
        gp, gb = _fit(g.pps, s.rows), _fit(g.bps, s.rows)
        hp, hb = _host_max(d, s)
        t_pps, t_bps = self.baseline.thresholds(
            s.detection.baseline.k, s.detection.baseline.min_pps, s.floor_pps, s.floor_bps
        )
        step = self.detector.step(
            now, Signals(gp, gb, hp, hb), Limits(t_pps, t_bps, s.host_floor_pps, s.host_floor_bps), s.eligible
        )
        self.baseline.learn(gp, gb, g.dt, step.learn)
        return TickData(now, g, d, samples, GroupRows(d)), step

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
        if any(o != n for o, n in moves.items()):
            # Counters are indexed by group id: a tick of rates over moved ids would be garbage.
            self.meter.reset()
            self._pending.clear()
        d = new.detection
        self.baseline.configure(d.baseline.half_life, d.baseline.warmup)
        self.detector.configure(d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)

    def warm_groups(self, s: Settings) -> int:
        """Groups with at least one class whose baseline has warmed up."""
        warm = self.baseline.warm & s.eligible
        return int(warm.any(axis=1).sum())


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
