"""The attacks' lifecycle: start a record, observe it every tick, act on it, end it.

Each tick an active attack is observed — who it hits (`target.locate`), its
rates, its samples, what kind of flood it is (`vectors.classify`), whether
its sources are forged — and then acted on: its ladder climbs, and the ban
step bans what it finds. Ending an attack drops its one `Attack` object from
the active ones; it is kept, finished, among the recent ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, deque

from agent.contract.abi import TrafficClass
from agent.contract.keys import IPAddress
from agent.policy.model import Step

from .attacks import Attack, Ending, Evidence, Thresholds
from .banstep import BanStep
from .journal import Journal
from .judge import Inputs, Kind, Lever, judge
from .ladder import Climber
from .observe import Observer, Series, TickData
from .samples import AttackSamples, SourceStats, SpoofVerdict, source_key
from .settings import GroupView, Settings
from .target import locate
from .vectors import MIN_RANGE_SAMPLES, Classification, classify, top_protocols

#: A source is clearly abusive above this many times its group's per-source limit...
ABUSE_FACTOR = 2.0
#: ... or this many times the per-source limit an attack set for it (its lever: sources).
SOURCE_ABUSE_FACTOR = 5.0
#: SYN samples needed before their senders' handshakes are judged one by one.
MIN_ACKED_SAMPLES = 20
#: Packets in a tick before the new-sources counter may call a flood spoofed.
MIN_SPOOF_PACKETS = 1000


class Tracker:
    """The active attacks by series, and the last ended ones (newest first)."""

    def __init__(self, journal: Journal, climber: Climber, bans: BanStep, keep_recent: int, observer: Observer) -> None:
        self._journal = journal
        self._observer = observer
        self._climber = climber
        self._bans = bans
        self.active: dict[Series, Attack] = {}
        self.recent: deque[Attack] = deque(maxlen=keep_recent)
        self.started_by_vector: Counter[str] = Counter()
        self.surges_total = 0
        self.ended_total = 0
        self._seq = 0

    def start(self, gid: int, cls: int, t: TickData, observer: Observer, s: Settings) -> Attack:
        view = s.groups[gid]
        now = t.now
        t_pps, t_bps, h_pps, _h_bps = observer.detector.frozen_at(gid, cls)
        self._seq += 1
        stamps = self._journal.stamps
        a = Attack(
            id=f"{stamps.wall(now):%Y%m%dT%H%M%SZ}-{self._seq}",
            group=view.name,
            gid=gid,
            cls=TrafficClass(cls),
            start_ns=now,
            first_over_ns=int(observer.detector.first_over_ns[gid, cls]),
            started_at=stamps.iso(now),
            thresholds=Thresholds(t_pps, t_bps, h_pps if math.isfinite(h_pps) else None),
            monitor=view.monitor,
            evidence=Evidence(AttackSamples(s.detection.sample_every)),
            start_tick=self._journal.tick,
        )
        a.evidence.samples.seed(observer.take_pending((gid, cls)), _abusive_pps(None, view, cls))
        self.active[(gid, cls)] = a
        self._observe(a, t, s, log_verdict=False)
        if a.kind is Kind.ATTACK:
            self.started_by_vector[str(a.vector)] += 1
        else:
            self.surges_total += 1
        self._journal.started(a, now)
        self._journal.judged(a, None)
        self._act(a, now, s)
        return a

    def update(self, a: Attack, t: TickData, s: Settings) -> None:
        """A tick of an attack that was already running: observe, report, act."""
        before = (a.vector, a.service, a.target)
        self._observe(a, t, s)
        self._journal.updated(a, t.now, before)
        self._act(a, t.now, s)

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

    def _observe(self, a: Attack, t: TickData, s: Settings, *, log_verdict: bool = True) -> None:
        """Update the attack from this tick: target, rates, samples, shape, spoofing, verdict."""
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
        a.evidence.samples.add_tick(series, t.dt, _abusive_pps(a, view, cls))
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
        if first or pps > t_pps or t.distress_of(a.gid).hurting:
            self._judge(a, t, view, log_verdict)

    def _acks_of(self, a: Attack, sources: SourceStats) -> dict[IPAddress, int]:
        """Other-TCP samples of a SYN attack's heaviest senders (empty for other classes)."""
        if a.cls is not TrafficClass.TCP_SYN:
            return {}
        acks = self._observer.acks_from(a.gid)
        return {src: acks.get(source_key(src), 0) for src, _pps, _n in sources.top}

    def _syns_of(self, a: Attack, sources: SourceStats) -> dict[IPAddress, int]:
        """SYN samples of an other-TCP attack's heaviest senders (empty for other classes)."""
        if a.cls is not TrafficClass.TCP_OTHER:
            return {}
        syns = self._observer.syns_from(a.gid)
        return {src: syns.get(source_key(src), 0) for src, _pps, _n in sources.top}

    def _acked_share(self, a: Attack) -> float | None:
        """Of a SYN attack's recent samples, the share from senders also sampled sending ACKs or data."""
        if a.cls is not TrafficClass.TCP_SYN:
            return None
        syn = a.evidence.samples.window_sources()
        total = sum(syn.values())
        if total < MIN_ACKED_SAMPLES:
            return None
        acks = self._observer.acks_from(a.gid)
        return sum(n for src, n in syn.items() if acks.get(src, 0)) / total

    def _judge(self, a: Attack, t: TickData, view: GroupView, log: bool) -> None:
        """Attack or surge, and the lever; an attack stays an attack, and a lever found is kept."""
        g, gid = t.groups, a.gid
        mean = self._observer.baseline.mean_pps

        def rate(cls: TrafficClass) -> float:
            return float(g.pps[gid, cls]) if gid < g.groups else 0.0

        def normal(cls: TrafficClass) -> float:
            return float(mean[gid, cls]) if gid < mean.shape[0] else 0.0

        def share(cls: TrafficClass) -> float | None:
            if gid >= g.groups:
                return None
            pps, bps = float(g.pps[gid].sum()), float(g.bps[gid].sum())
            parts = [float(g.pps[gid, cls]) / pps if pps > 0 else 0.0, float(g.bps[gid, cls]) / bps if bps > 0 else 0.0]
            return max(parts)

        ev = a.evidence
        spoof = SpoofVerdict(ev.spoofed, ev.spoof_reason or ev.samples.spoofing(view.mitigation.spoof_ratio).why)
        sources = ev.samples.source_stats(100)
        v = judge(Inputs(
            cls=a.cls, shape=a.shape.classification or Classification(a.flood), sources=sources,
            spoof=spoof, profile=self._observer.profiles.of(gid), class_pps=a.traffic.pps, normal_pps=normal(a.cls),
            syn_pps=rate(TrafficClass.TCP_SYN), syn_normal=normal(TrafficClass.TCP_SYN),
            other_pps=rate(TrafficClass.TCP_OTHER), other_normal=normal(TrafficClass.TCP_OTHER),
            distress=t.distress_of(gid), syn_auth=view.syn_auth, age_s=(t.now - a.first_over_ns) / 1e9,
            acks_from=self._acks_of(a, sources), syns_from=self._syns_of(a, sources),
            acked_share=self._acked_share(a),
            syn_undelivered_pps=float(g.dropped_pps[gid, TrafficClass.TCP_SYN]) if gid < g.groups else 0.0,
            class_share=share(a.cls),
            source_headroom=view.mitigation.source_headroom, shape_headroom=view.mitigation.shape_headroom,
        ))
        prev = a.verdict
        if prev is not None and prev.kind is Kind.ATTACK and v.kind is Kind.SURGE:
            return  # evidence thins out as a mitigation bites; an attack does not become a surge
        if prev is not None and prev.lever is not Lever.NONE and v.lever is Lever.NONE:
            return
        if prev is not None and (prev.kind, prev.lever) == (v.kind, v.lever):
            # The same lever: keep the limits it was given. The learned rates they come from drift a
            # little every tick, and a new limit would replace the rule (and restart the ladder's
            # wait before a ban) each time.
            v = dataclasses.replace(v, source_pps=prev.source_pps, shape_pps=prev.shape_pps)
        a.verdict = v
        if prev is not None and prev.kind is Kind.SURGE and v.kind is Kind.ATTACK:
            self.started_by_vector[str(a.vector)] += 1  # counted as an attack from now on
        if log and (prev is None or (prev.kind, prev.lever) != (v.kind, v.lever)):
            self._journal.judged(a, prev)

    def _act(self, a: Attack, now: int, s: Settings) -> None:
        """Climb the ladder and ban what the ban step finds (a surge: nothing)."""
        if a.kind is Kind.SURGE:
            return
        view = s.groups[a.gid]
        self._climber.climb(a, now, view, s)
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


def _abusive_pps(a: Attack | None, view: GroupView, cls: int) -> float:
    """Above this a source is clearly abusive: twice its per-source limit (the attack's own, when its
    lever limits sources; else the group's). No limit: no source is abusive."""
    v = a.verdict if a is not None else None
    if v is not None and v.lever is Lever.SOURCES and v.source_pps:
        return SOURCE_ABUSE_FACTOR * v.source_pps
    limit = view.limits[cls].pps
    return ABUSE_FACTOR * limit if limit else math.inf
