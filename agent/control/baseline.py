"""The learned normal: an exponentially weighted mean and deviation per (group, class).

Why EWMA: it needs two numbers per series, forgets at a rate the operator
chooses (``half_life``), and follows slow changes such as the daily cycle
while a flood, which arrives in seconds, stands far above it. It learns
only from ticks that are not part of an attack (the caller passes that
mask), so a long flood never becomes the new normal.

The weights follow elapsed time, not tick counts, so a 100 ms tick and a
10 s tick learn the same baseline. The variance is West's incremental
exponentially weighted variance.

Two guards keep the threshold sane: the deviation is never taken as less
than ``MIN_DEV_RATIO`` of the mean (measured calm is calmer than real life:
flash crowds, backups and patch days double traffic without being attacks —
with the default k = 4 the learned threshold is at least twice the mean);
and until ``warmup`` seconds have been learned the deviation is taken as at
least ``WARMUP_DEV_RATIO`` of the mean, so a fresh start on a busy network
only reacts to large steps.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Float = NDArray[np.float64]
Bool = NDArray[np.bool_]

MIN_DEV_RATIO = 0.25
WARMUP_DEV_RATIO = 1.0
#: The bps part of the learned threshold is never below min_pps full-size frames.
FULL_FRAME_BITS = 1514 * 8


class Baseline:
    """EWMA mean and variance of pps and bps for an array of series (rows x classes)."""

    def __init__(self, shape: tuple[int, int], half_life_s: float, warmup_s: float) -> None:
        self.half_life_s = half_life_s
        self.warmup_s = warmup_s
        self.mean_pps = np.zeros(shape)
        self.var_pps = np.zeros(shape)
        self.mean_bps = np.zeros(shape)
        self.var_bps = np.zeros(shape)
        self.learned_s = np.zeros(shape)
        self.seen = np.zeros(shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mean_pps.shape[0]), int(self.mean_pps.shape[1]))

    def configure(self, half_life_s: float, warmup_s: float) -> None:
        """New settings from a reload; what was learned is kept."""
        self.half_life_s = half_life_s
        self.warmup_s = warmup_s

    def learn(self, pps: Float, bps: Float, dt: float, mask: Bool) -> None:
        """Fold one tick of rates into the rows where mask is true."""
        if dt <= 0:
            return
        alpha = 1.0 - 0.5 ** (dt / self.half_life_s)
        first = mask & ~self.seen
        # The first value is the best guess of the mean; starting from zero would
        # make the first minutes look like a flood to the variance.
        self.mean_pps[first] = pps[first]
        self.mean_bps[first] = bps[first]
        self.seen |= first
        rest = mask & ~first
        for mean, var, x in ((self.mean_pps, self.var_pps, pps), (self.mean_bps, self.var_bps, bps)):
            diff = x - mean
            incr = alpha * diff
            np.add(mean, np.where(rest, incr, 0.0), out=mean)  # in place: mean is self.mean_pps/bps
            var[...] = np.where(rest, (1.0 - alpha) * (var + diff * incr), var)
        self.learned_s += np.where(mask, dt, 0.0)

    @property
    def warm(self) -> Bool:
        out: Bool = self.learned_s >= self.warmup_s
        return out

    def thresholds(self, k: float, min_pps: float, floor_pps: Float, floor_bps: Float) -> tuple[Float, Float]:
        """Start thresholds: max(static floor, mean + k * deviation, minimum), for pps and bps.

        ``floor_*`` are the policy's static floors per row and class (0 = none).
        """
        ratio = np.where(self.warm, MIN_DEV_RATIO, WARMUP_DEV_RATIO)
        # A series never seen has no normal yet: it cannot start an attack before its first calm tick.
        unknown = np.where(self.seen, 0.0, np.inf)
        learned_pps = self.mean_pps + k * np.maximum(np.sqrt(self.var_pps), ratio * self.mean_pps) + unknown
        learned_bps = self.mean_bps + k * np.maximum(np.sqrt(self.var_bps), ratio * self.mean_bps) + unknown
        t_pps = np.maximum(np.maximum(floor_pps, learned_pps), min_pps)
        t_bps = np.maximum(np.maximum(floor_bps, learned_bps), min_pps * FULL_FRAME_BITS)
        return t_pps, t_bps

    def remap(self, rows: int, moves: dict[int, int]) -> Baseline:
        """A baseline with ``rows`` rows, row old -> new copied for each move (group ids changed)."""
        out = Baseline((rows, self.shape[1]), self.half_life_s, self.warmup_s)
        for old, new in moves.items():
            if old < self.shape[0] and new < rows:
                for name in ("mean_pps", "var_pps", "mean_bps", "var_bps", "learned_s", "seen"):
                    getattr(out, name)[new] = getattr(self, name)[old]
        return out
