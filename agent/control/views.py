"""What ``floodguard top`` and ``floodguard status`` show of the control loop.

Both are read on request, never per tick: `top` from the last tick's rates
and the last few seconds of samples (`SourceWindow`), `status` from the
controller's parts.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence

import numpy as np

from agent.contract.abi import LIMIT_CLASSES, TrafficClass
from agent.contract.keys import IPAddress

from .attacks import Attack
from .hook import HookRunner
from .meter import DstRates, GroupRates
from .samples import TickSamples

#: The top sources of `top()` come from this many seconds of samples.
TOP_WINDOW_S = 5.0


class SourceWindow:
    """The last TOP_WINDOW_S seconds of samples (at least one tick's), for the top sources."""

    def __init__(self) -> None:
        self._ticks: deque[tuple[TickSamples, float]] = deque()

    def add(self, samples: TickSamples, dt: float) -> None:
        self._ticks.append((samples, dt))
        total = sum(x[1] for x in self._ticks)
        while len(self._ticks) > 1 and total - self._ticks[0][1] >= TOP_WINDOW_S:
            total -= self._ticks.popleft()[1]

    @property
    def seconds(self) -> float:
        return sum(dt for _, dt in self._ticks)

    def sources(self) -> Counter[tuple[IPAddress, int]]:
        """Samples per (source, group) over the window."""
        merged: Counter[tuple[IPAddress, int]] = Counter()
        for tick_samples, _ in self._ticks:
            merged.update(tick_samples.sources())
        return merged


def top(
    last: tuple[GroupRates, DstRates] | None, window: SourceWindow, names: Mapping[int, str], sample_every: int,
    active: Sequence[Attack], n: int = 10,
) -> dict[str, object]:
    """Top destinations (from the counters) and sources (from the samples) by rate, and busiest groups."""
    destinations: list[dict[str, object]] = []
    sources: list[dict[str, object]] = []
    groups: list[dict[str, object]] = []
    out: dict[str, object] = {"destinations": destinations, "sources": sources, "groups": groups}
    if last is None:
        return out
    g, d = last
    if len(d):
        total = d.pps.sum(axis=1)
        k = min(n, len(total))
        idx = np.argpartition(-total, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        for i in sorted(idx.tolist(), key=lambda i: -total[i]):
            if total[i] <= 0:
                continue
            gid = int(d.group[i])
            destinations.append({
                "destination": str(d.address(i)),
                "group": names.get(gid, "default"),
                "pps": round(float(total[i])),
                "bps": round(float(d.bps[i].sum())),
                "dropped_pps": round(float(d.dropped_pps[i].sum())),
                "classes": {TrafficClass(c).label: round(float(d.pps[i, c])) for c in range(LIMIT_CLASSES)
                            if d.pps[i, c] > 0},
            })
    seconds = window.seconds
    scale = max(sample_every, 1) / seconds if seconds > 0 else 0.0
    for (src, gid), count in window.sources().most_common(n):
        sources.append({"source": str(src), "group": names.get(gid, "default"), "pps": round(count * scale),
                        "samples": count})
    per_group = g.pps.sum(axis=1)
    for gid in np.argsort(-per_group)[:n].tolist():
        if per_group[gid] <= 0:
            break
        groups.append({"group": names.get(gid, "default"), "pps": round(float(per_group[gid])),
                       "bps": round(float(g.bps[gid].sum())),
                       "attacks": [a.id for a in active if a.gid == gid]})
    return out


def attack_line(a: Attack) -> dict[str, object]:
    """An active attack in one line of `status`."""
    return {"id": a.id, "group": a.group, "target": a.target, "vector": a.label, "pps": round(a.traffic.pps)}


def hook_status(hook: HookRunner | None) -> dict[str, object] | None:
    if hook is None:
        return None
    return {"path": str(hook.path), "queued": hook.queued, "ran": hook.ran, "failed": hook.failed,
            "dropped": hook.dropped}
