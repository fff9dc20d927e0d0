"""When an attack starts and when it ends, per (group, class), with hysteresis.

Each series gets one number per tick, its *level*: the largest of its rates
divided by the matching threshold — group pps and bps against the start
thresholds (static floor, learned baseline, minimum), and the busiest host's
pps and bps against the policy's per-destination floors. Level > 1 is over.

* An attack starts after ``consecutive`` ticks over: one noisy tick starts
  nothing. Over-ticks at most ``pulse_gap`` apart count as in a row, so a
  pulse-wave flood (a burst, a pause, a burst) whose bursts are shorter
  than ``consecutive`` ticks is still caught at its next burst. A calm
  spell longer than ``pulse_gap`` starts the count again.
* At the start the thresholds are frozen. The attack ends only once its level
  against those frozen thresholds stays below ``release_ratio`` for
  ``hold_down`` seconds; any tick at or above the release level restarts the
  hold-down. A rate hovering around the start threshold therefore starts at
  most one attack and does not end it: no flapping.
* After an end, a new start needs ``consecutive`` ticks over again.

All of it is arrays over every group and class: a tick over 1,000 groups costs
tens of microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Float = NDArray[np.float64]
Bool = NDArray[np.bool_]


@dataclass(frozen=True)
class Signals:
    """One tick's rates per (group, class): the group's totals and its busiest host."""

    pps: Float
    bps: Float
    host_pps: Float
    host_bps: Float


@dataclass(frozen=True)
class Limits:
    """Thresholds per (group, class); inf where there is none (host floors unset)."""

    pps: Float
    bps: Float
    host_pps: Float
    host_bps: Float

    def take(self, mask: Bool) -> tuple[Float, Float, Float, Float]:
        return self.pps[mask], self.bps[mask], self.host_pps[mask], self.host_bps[mask]


def level(s: Signals, t: Limits) -> Float:
    """max(rate / threshold) over the four signals; < 1 is calm."""
    with np.errstate(divide="ignore", invalid="ignore"):
        parts = (
            s.pps / np.maximum(t.pps, 1.0),
            s.bps / np.maximum(t.bps, 1.0),
            np.where(np.isinf(t.host_pps), 0.0, s.host_pps / np.maximum(t.host_pps, 1.0)),
            np.where(np.isinf(t.host_bps), 0.0, s.host_bps / np.maximum(t.host_bps, 1.0)),
        )
    out: Float = np.maximum.reduce(parts)
    return out


@dataclass(frozen=True)
class Transitions:
    """What one tick changed."""

    started: list[tuple[int, int]]  # (row, class), most severe first
    ended: list[tuple[int, int]]
    level: Float  # against the current thresholds
    active_level: Float  # against the thresholds frozen at each active attack's start
    learn: Bool  # where the baseline may learn from this tick
    over: Bool  # over the threshold this tick, not yet an attack


class Detector:
    """Start/end state of every (group, class) series."""

    def __init__(
        self, shape: tuple[int, int], consecutive: int, hold_down_s: float, release_ratio: float,
        pulse_gap_s: float = 0.0,
    ) -> None:
        self.consecutive = consecutive
        self.hold_down_ns = int(hold_down_s * 1e9)
        self.release_ratio = release_ratio
        self.pulse_gap_ns = int(pulse_gap_s * 1e9)
        self.streak = np.zeros(shape, dtype=np.int64)
        self.first_over_ns = np.zeros(shape, dtype=np.int64)
        self.last_over_ns = np.zeros(shape, dtype=np.int64)
        self.active = np.zeros(shape, dtype=bool)
        self.below_since_ns = np.full(shape, -1, dtype=np.int64)
        self.frozen = Limits(*(np.full(shape, np.inf) for _ in range(4)))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.active.shape[0]), int(self.active.shape[1]))

    def configure(self, consecutive: int, hold_down_s: float, release_ratio: float, pulse_gap_s: float = 0.0) -> None:
        self.consecutive = consecutive
        self.hold_down_ns = int(hold_down_s * 1e9)
        self.release_ratio = release_ratio
        self.pulse_gap_ns = int(pulse_gap_s * 1e9)

    def step(self, now_ns: int, signals: Signals, limits: Limits, eligible: Bool, urgent: Bool | None = None
             ) -> Transitions:
        """One tick. ``urgent`` [row, class]: series whose target hurts start at their first tick over."""
        cur = level(signals, limits)
        frozen = level(signals, self.frozen)
        was_active = self.active.copy()

        over = (cur > 1.0) & eligible & ~was_active
        # A calm tick ends a streak once no later over-tick can be within
        # pulse_gap of the last one (pulse_gap 0 or up to the tick: at once).
        lapsed = (now_ns - self.last_over_ns >= self.pulse_gap_ns) | ~eligible | was_active
        self.streak = np.where(over, self.streak + 1, np.where(lapsed, 0, self.streak))
        self.first_over_ns = np.where(over & (self.streak == 1), now_ns, self.first_over_ns)
        self.last_over_ns = np.where(over, now_ns, self.last_over_ns)
        start = over & (self.streak >= self.consecutive)
        if urgent is not None:
            start |= over & urgent

        below = was_active & (frozen < self.release_ratio)
        self.below_since_ns = np.where(
            below, np.where(self.below_since_ns < 0, now_ns, self.below_since_ns), -1
        )
        end = below & (now_ns - self.below_since_ns >= self.hold_down_ns)

        if start.any():
            for arr, src in zip(
                (self.frozen.pps, self.frozen.bps, self.frozen.host_pps, self.frozen.host_bps),
                limits.take(start),
                strict=True,
            ):
                arr[start] = src
            self.active |= start
            self.streak[start] = 0
        if end.any():
            self.active &= ~end
            self.below_since_ns[end] = -1
            for arr in (self.frozen.pps, self.frozen.bps, self.frozen.host_pps, self.frozen.host_bps):
                arr[end] = np.inf

        started = [(int(r), int(c)) for r, c in zip(*np.nonzero(start), strict=True)]
        started.sort(key=lambda rc: -float(cur[rc]))
        ended = [(int(r), int(c)) for r, c in zip(*np.nonzero(end), strict=True)]
        learn = eligible & ~self.active & ~over & ~was_active
        return Transitions(started, ended, cur, np.where(self.active | end, frozen, 0.0), learn, over & ~start)

    def stop(self, row: int, cls: int) -> None:
        """End a series' attack from outside (its group left the policy)."""
        self.active[row, cls] = False
        self.streak[row, cls] = 0
        self.below_since_ns[row, cls] = -1
        for arr in (self.frozen.pps, self.frozen.bps, self.frozen.host_pps, self.frozen.host_bps):
            arr[row, cls] = np.inf

    def remap(self, rows: int, moves: dict[int, int]) -> Detector:
        """A detector with ``rows`` rows carrying the state of each moved row (old -> new)."""
        out = Detector((rows, self.shape[1]), self.consecutive, self.hold_down_ns / 1e9, self.release_ratio,
                       self.pulse_gap_ns / 1e9)
        for old, new in moves.items():
            if old < self.shape[0] and new < rows:
                out.streak[new] = self.streak[old]
                out.first_over_ns[new] = self.first_over_ns[old]
                out.last_over_ns[new] = self.last_over_ns[old]
                out.active[new] = self.active[old]
                out.below_since_ns[new] = self.below_since_ns[old]
                for a, b in zip(
                    (out.frozen.pps, out.frozen.bps, out.frozen.host_pps, out.frozen.host_bps),
                    (self.frozen.pps, self.frozen.bps, self.frozen.host_pps, self.frozen.host_bps),
                    strict=True,
                ):
                    a[new] = b[old]
        return out

    def frozen_at(self, row: int, cls: int) -> tuple[float, float, float, float]:
        """The thresholds frozen at the start of the attack on (row, cls)."""
        f = self.frozen
        return (float(f.pps[row, cls]), float(f.bps[row, cls]), float(f.host_pps[row, cls]),
                float(f.host_bps[row, cls]))
