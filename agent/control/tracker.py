"""The attacks' lifecycle: start a record, observe it every tick, act on it, end it.

Each tick an active attack is observed — who it hits (`target.locate`), its
rates, its samples, what kind of flood it is (`vectors.classify`), whether
its sources are forged — and then acted on: its ladder climbs, and the ban
step bans what it finds. Ending an attack drops its one `Attack` object from
the active ones; it is kept, finished, among the recent ones.
"""

from __future__ import annotations

import math
from collections import Counter, deque

from agent.contract.abi import TrafficClass
from agent.policy.model import Step

from .attacks import Attack, Ending, Evidence, Thresholds
from .banstep import BanStep
from .journal import Journal
from .ladder import Climber
from .samples import AttackSamples
from .settings import GroupView, Settings
from .target import locate
from .vectors import MIN_RANGE_SAMPLES, classify, top_protocols
from .watch import Series, TickData, Watch

#: A source is clearly abusive above this many times its group's per-source limit.
ABUSE_FACTOR = 2.0
#: Packets in a tick before the new-sources counter may call a flood spoofed.
MIN_SPOOF_PACKETS = 1000


class Tracker:
    """The active attacks by series, and the last ended ones (newest first)."""

    def __init__(self, journal: Journal, climber: Climber, bans: BanStep, keep_recent: int) -> None:
        self._journal = journal
        self._climber = climber
        self._bans = bans
        self.active: dict[Series, Attack] = {}
        self.recent: deque[Attack] = deque(maxlen=keep_recent)
        self.started_by_vector: Counter[str] = Counter()
        self.ended_total = 0
        self._seq = 0

    def start(self, gid: int, cls: int, t: TickData, watch: Watch, s: Settings) -> Attack:
        view = s.groups[gid]
        now = t.now
        t_pps, t_bps, h_pps, _h_bps = watch.detector.frozen_at(gid, cls)
        self._seq += 1
        stamps = self._journal.stamps
        a = Attack(
            id=f"{stamps.wall(now):%Y%m%dT%H%M%SZ}-{self._seq}",
            group=view.name,
            gid=gid,
            cls=TrafficClass(cls),
            start_ns=now,
            first_over_ns=int(watch.detector.first_over_ns[gid, cls]),
            started_at=stamps.iso(now),
            thresholds=Thresholds(t_pps, t_bps, h_pps if math.isfinite(h_pps) else None),
            monitor=view.monitor,
            evidence=Evidence(AttackSamples(s.detection.sample_every)),
        )
        a.evidence.samples.seed(watch.take_pending((gid, cls)), _abusive_pps(view, cls))
        self.active[(gid, cls)] = a
        scope = self._observe(a, t, s)
        self.started_by_vector[str(a.vector)] += 1
        self._journal.started(a, now)
        self._act(a, now, scope, s, first=True)
        return a

    def update(self, a: Attack, t: TickData, s: Settings) -> None:
        """A tick of an attack that was already running: observe, report, act."""
        before = (a.vector, a.service, a.target)
        scope = self._observe(a, t, s)
        self._journal.updated(a, t.now, before)
        self._act(a, t.now, scope, s, first=False)

    def end(self, a: Attack, now: int, reason: str) -> Attack:
        a.end = Ending(now, self._journal.stamps.iso(now), reason)
        a.evidence.samples.finish()
        self.active.pop((a.gid, a.cls), None)
        self.recent.appendleft(a)
        self.ended_total += 1
        self._journal.ended(a, now)
        return a

    def regroup(self, moves: dict[int, int]) -> None:
        """Group ids changed on a reload (old -> new): attacks follow their group."""
        moved = list(self.active.items())
        self.active.clear()
        for (gid, cls), a in moved:
            a.gid = moves[gid]
            self.active[(a.gid, cls)] = a

    def ordered(self) -> list[Attack]:
        """The active attacks, oldest first."""
        return sorted(self.active.values(), key=lambda a: a.start_ns)

    def _observe(self, a: Attack, t: TickData, s: Settings) -> tuple[float, float, float]:
        """Update the attack from this tick: target, rates, samples, shape, spoofing.
        Returns pps, bps and dropped pps of the attack's own scope (its host, or its group)."""
        view = s.groups[a.gid]
        g, d, cls = t.groups, t.dst, a.cls
        prev = a.aim.located
        known = prev.prefixes if prev is not None and prev.carpet else ()
        threshold = a.thresholds.pps
        fresh = locate(d, t.rows(a.gid), cls, threshold, view, s, known)
        hot = a.gid < g.groups and float(g.pps[a.gid, cls]) > threshold
        if fresh is not None and (prev is None or hot):
            # The target is what the flood hits: during the hold-down, what
            # remains is normal traffic and must not retarget the attack.
            a.aim.located = fresh
        tgt = a.aim.located

        if fresh is not None and fresh.row is not None:
            row = fresh.row
            pps, bps, dropped = float(d.pps[row, cls]), float(d.bps[row, cls]), float(d.dropped_pps[row, cls])
        elif a.gid < g.groups:
            pps, bps = float(g.pps[a.gid, cls]), float(g.bps[a.gid, cls])
            dropped = float(g.dropped_pps[a.gid, cls])
        else:
            pps = bps = dropped = 0.0
        a.traffic.add(t.now, pps, bps, dropped, t.dt)

        series = t.samples.by_series.get((a.gid, cls), [])
        if tgt is not None and tgt.host is not None:
            host = tgt.host
            series = [x for x in series if x.dst == host]
        a.evidence.samples.add_tick(series, t.dt, _abusive_pps(view, cls))
        t_pps, _ = a.scope_thresholds()
        shape = a.shape
        first = shape.classification is None
        if first or pps > t_pps:
            # Classify while the flood is there; during the hold-down what remains is
            # the normal traffic, which must not turn the attack into something else.
            # A thin window (the first tick of a pulse wave's next burst) never
            # replaces a classification made on more evidence: rules would flap.
            window = a.evidence.samples.window()
            if first or window.total >= MIN_RANGE_SAMPLES:
                shape.classification = classify(cls, window)
                shape.protocols = top_protocols(window, 2)
        self._judge_spoofing(a, t, view)
        return pps, bps, dropped

    def _act(self, a: Attack, now: int, scope: tuple[float, float, float], s: Settings, *, first: bool) -> None:
        """Climb the ladder and ban what the ban step finds."""
        view = s.groups[a.gid]
        self._climber.climb(a, now, view, s, scope, first=first)
        if Step.BAN in a.ladder.steps and not a.evidence.spoofed:
            self._bans.run(a, now, view, s)

    def _judge_spoofing(self, a: Attack, t: TickData, view: GroupView) -> None:
        """Once spoofed, always spoofed for this attack: never ban a forged address."""
        ev = a.evidence
        if ev.spoofed:
            return
        g = t.groups
        ratio = view.mitigation.spoof_ratio
        verdict = ev.samples.spoofing(ratio)
        why = verdict.why if verdict.spoofed else None
        if why is None and a.gid < g.groups:
            pps, new = float(g.pps[a.gid, a.cls]), float(g.new_sources_ps[a.gid, a.cls])
            if pps * g.dt >= MIN_SPOOF_PACKETS and new / pps > ratio:
                why = f"{new:.0f} new sources/s for {pps:.0f} packets/s (ratio {new / pps:.2f} > spoof_ratio {ratio})"
        if why is None:
            return
        ev.spoofed, ev.spoof_reason = True, f"sources look spoofed: {why}; nobody is banned"
        if Step.BAN in a.ladder.steps:
            self._journal.skip_once(a, t.now, Step.BAN, ev.spoof_reason)


def _abusive_pps(view: GroupView, cls: int) -> float:
    limit = view.limits[cls].pps
    return ABUSE_FACTOR * limit if limit else 0.0
