"""Counters the controller keeps for metrics: attacks by vector and time to mitigate.

The Prometheus collector reads `ControlStats` at scrape time; the histogram
is cumulative like Prometheus's own (bucket upper bounds, counts of
observations at or below each, a sum and a count).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: Seconds from the first tick over the threshold to the first mitigation written.
TTM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = TTM_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(TTM_BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound, observations <= it), ..., ("+Inf", count)]: HistogramMetricFamily's buckets."""
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append((f"{bound:g}", running))
        out.append(("+Inf", self.count))
        return out


@dataclass(frozen=True)
class ControlStats:
    """A snapshot for the metrics collector."""

    active_by_vector: dict[str, int]
    started_by_vector: dict[str, int]  # totals since the daemon started
    ended_total: int
    time_to_mitigate: list[tuple[str, int]]  # cumulative buckets
    time_to_mitigate_sum: float
    time_to_mitigate_count: int
    escalations_total: int
    bans_active: int
    bans_total: int
    rules_active: int
    groups_tightened: int
    groups_syn_auth: int
    ticks: int
    last_tick_seconds: float
    hook_ran: int
    hook_failed: int
    hook_dropped: int
