"""The control loop: each tick reads the counters, detects attacks, mitigates, and reports.

One `Controller.tick()` is one whole step, driven by the daemon every
``detection.tick`` seconds:

1. read the cumulative counters and drain the packet samples (`ControlPort`);
2. turn them into rates per (group, class) and per destination host;
3. run the detector over every group and class at once, and let the
   baseline learn from the series that are calm;
4. start, update and end attack records — target (host or carpet), vector,
   peaks, drops, sources, spoofing — and climb each attack's ladder;
5. write what the active attacks want (tightened limits, SYN
   authentication, rules) with refreshed expiries, and ban persistent
   abusive sources;
6. signal escalation when an uplink is full; hand records to the hook.

Time comes only from the port (``now_ns``), so tests replay hours of
traffic in milliseconds. Everything per group is arrays; Python loops only
run over active attacks, candidate sources and the tick's samples.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from agent.contract.abi import LIMIT_CLASSES, TrafficClass
from agent.contract.clock import NS
from agent.contract.keys import IPAddress, IPNetwork
from agent.contract.specs import RuleSpec
from agent.policy.compile import CompiledPolicy
from agent.policy.model import Policy

from .attacks import Attack, MitigationEntry
from .bans import BanBook, ban_prefix, why_not_ban
from .baseline import Baseline
from .detect import Detector, Limits, Signals, Step
from .enforce import Changes, Enforcer, Wanted
from .escalation import Signal, UplinkWatch
from .hook import HookRunner
from .meter import DstRates, GroupRates, RateMeter
from .mitigate import MAX_CARPET_PREFIXES, RulePlan, next_steps, passed_level, plan_rules, tightened
from .port import ControlPort, PacketSample
from .samples import AttackSamples, TickSamples
from .settings import GroupView, Settings
from .stats import ControlStats, Histogram
from .target import Target, locate
from .vectors import MIN_RANGE_SAMPLES, Classification, Vector, classify, top_protocols

#: A source is clearly abusive above this many times its group's per-source limit.
ABUSE_FACTOR = 2.0
#: Packets in a tick before the new-sources counter may call a flood spoofed.
MIN_SPOOF_PACKETS = 1000
#: attack_updated is logged when the peak grew by this factor since the last one…
UPDATE_GROWTH = 1.5
#: …and the top sources of `top()` come from this many seconds of samples.
TOP_WINDOW_S = 5.0


@dataclass(frozen=True)
class TickReport:
    """What one tick did (for the daemon's log and tests)."""

    at_ns: int
    started: list[str]
    ended: list[str]
    active: int
    seconds: float


class Controller:
    """Detection and mitigation for every protected group; see the module docstring.

    Not thread-safe: the daemon calls every method under its own lock (the
    control socket's threads included).
    """

    def __init__(
        self,
        policy: Policy,
        compiled: CompiledPolicy,
        port: ControlPort,
        *,
        ban_counts: Mapping[str, int] | None = None,
        auto_bans: Mapping[IPNetwork, int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        hook_timeout_s: float = 10.0,
        hook_queue: int = 32,
        keep_recent: int = 1000,
        update_every_s: float = 60.0,
    ) -> None:
        """``ban_counts``: repeat-offender counts saved by the daemon; ``auto_bans``:
        automatic bans found in the kernel at start (prefix -> expiry), so they count
        towards max_bans and are not written again."""
        self._port = port
        self._log = structlog.get_logger()
        self._mono0 = port.now_ns()
        self._wall0 = wall_clock()
        self._settings = Settings.build(policy, compiled)
        d = self._settings.detection
        shape = (self._settings.rows, LIMIT_CLASSES)
        self._baseline = Baseline(shape, d.baseline.half_life, d.baseline.warmup)
        self._detector = Detector(shape, d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)
        self._meter = RateMeter()
        self._enforcer = Enforcer(port)
        self._bans = BanBook(ban_counts)
        for net, exp in (auto_bans or {}).items():
            self._bans.active[net] = (exp, 0)
        self._uplinks = UplinkWatch()
        self._hook_timeout_s = hook_timeout_s
        self._hook_queue = hook_queue
        self._hook = self._make_hook(policy)
        self._update_every_ns = int(update_every_s * NS)
        self._active: dict[tuple[int, int], Attack] = {}
        self._recent: deque[Attack] = deque(maxlen=keep_recent)
        self._targets: dict[str, Target] = {}
        self._shapes: dict[str, Classification] = {}
        self._protocols: dict[str, list[int]] = {}
        self._applied: dict[str, set[str]] = {}
        self._pending: dict[tuple[int, int], deque[tuple[list[PacketSample], float]]] = {}
        self._seq = 0
        self._ticks = 0
        self._last_tick_s = 0.0
        self._started_by_vector: Counter[str] = Counter()
        self._ended_total = 0
        self._escalations = 0
        self._ttm = Histogram()
        self._last_rates: tuple[GroupRates, DstRates] | None = None
        self._top_window: deque[tuple[TickSamples, float]] = deque()

    # ------------------------------------------------------------------ the tick

    def tick(self) -> TickReport:
        """One whole step: read, detect, mitigate, report."""
        t0 = time.perf_counter()
        port, s = self._port, self._settings
        now = port.now_ns()
        groups = port.read_group_stats()
        dst = port.read_dst_stats()
        samples = TickSamples.build(port.drain_samples())
        self._bans.prune(now)
        if self._ticks % 600 == 0:
            self._bans.forget_old(now)
        self._ticks += 1
        rates = self._meter.update(now, groups, dst)
        if rates is None:
            self._last_tick_s = time.perf_counter() - t0
            return TickReport(now, [], [], len(self._active), self._last_tick_s)
        g, d = rates
        self._last_rates = rates
        self._remember_sources(samples, g.dt)

        gp, gb = _fit(g.pps, s.rows), _fit(g.bps, s.rows)
        hp, hb = self._host_max(d)
        t_pps, t_bps = self._baseline.thresholds(
            s.detection.baseline.k, s.detection.baseline.min_pps, s.floor_pps, s.floor_bps
        )
        step = self._detector.step(
            now, Signals(gp, gb, hp, hb), Limits(t_pps, t_bps, s.host_floor_pps, s.host_floor_bps), s.eligible
        )
        self._baseline.learn(gp, gb, g.dt, step.learn)

        rows_of = _GroupRows(d)
        ended: list[Attack] = []
        for gid, cls in step.ended:
            a = self._active.get((gid, cls))
            if a is not None:
                ended.append(self._end(a, now, "hold_down"))
        started: list[Attack] = []
        for gid, cls in step.started:
            started.append(self._start(gid, cls, now, g, d, samples, rows_of))
        for a in list(self._active.values()):
            if a.start_ns != now:
                self._update(a, now, g, d, samples, rows_of)
        self._track_pending(step, samples, g.dt)

        self._sync(now, ended)
        self._escalate(now, g)
        for a in started:
            self._to_hook("attack_started", a, now)
        for a in ended:
            self._to_hook("attack_ended", a, now)
        self._last_tick_s = time.perf_counter() - t0
        return TickReport(now, [a.id for a in started], [a.id for a in ended], len(self._active), self._last_tick_s)

    # ------------------------------------------------------------------ attacks

    def _start(
        self, gid: int, cls: int, now: int, g: GroupRates, d: DstRates, samples: TickSamples, rows_of: _GroupRows
    ) -> Attack:
        view = self._settings.groups[gid]
        t_pps, t_bps, h_pps, _h_bps = self._detector.frozen_at(gid, cls)
        self._seq += 1
        flood = Vector(classify(cls, []).vector)
        a = Attack(
            id=f"{self._wall(now):%Y%m%dT%H%M%SZ}-{self._seq}",
            group=view.name,
            gid=gid,
            cls=cls,
            traffic_class=TrafficClass(cls).label,
            vector=str(flood),
            flood=str(flood),
            start_ns=now,
            first_over_ns=int(self._detector.first_over_ns[gid, cls]),
            started_at=self._iso(now),
            threshold_pps=t_pps,
            threshold_bps=t_bps,
            host_threshold_pps=h_pps if math.isfinite(h_pps) else None,
            monitor=view.monitor,
            evidence=AttackSamples(self._settings.detection.sample_every),
        )
        abusive = self._abusive_pps(view, cls)
        a.evidence.seed(list(self._pending.pop((gid, cls), ())), abusive)
        self._active[(gid, cls)] = a
        self._applied[a.id] = set()
        scope = self._observe(a, now, g, d, samples, rows_of)
        self._started_by_vector[a.vector] += 1
        a.logged_peak_pps, a.logged_at_ns = a.peak_pps, now
        self._log.warning(
            "attack_started",
            **a.log_fields(),
            flood=a.flood,
            traffic_class=a.traffic_class,
            pps=round(a.pps),
            bps=round(a.bps),
            threshold_pps=_round(a.threshold_pps),
            threshold_bps=_round(a.threshold_bps),
            hosts_hit=a.hosts_hit,
            spoofed=a.spoofed,
            monitor=a.monitor,
        )
        self._act(a, now, scope, first=True)
        return a

    def _update(
        self, a: Attack, now: int, g: GroupRates, d: DstRates, samples: TickSamples, rows_of: _GroupRows
    ) -> None:
        """A tick of an attack that was already running: observe, report, act."""
        before = (a.vector, a.service, a.target)
        scope = self._observe(a, now, g, d, samples, rows_of)
        self._maybe_log_update(a, now, before)
        self._act(a, now, scope, first=False)

    def _observe(
        self, a: Attack, now: int, g: GroupRates, d: DstRates, samples: TickSamples, rows_of: _GroupRows
    ) -> tuple[float, float, float]:
        """Update the record from this tick: target, rates, samples, vector, spoofing.
        Returns pps, bps and dropped pps of the attack's own scope (its host, or its group)."""
        s = self._settings
        view = s.groups[a.gid]
        cls, dt = a.cls, g.dt
        a.updated_ns = now
        prev = self._targets.get(a.id)
        known = prev.prefixes if prev is not None and prev.carpet else ()
        fresh = locate(d, rows_of(a.gid), cls, a.threshold_pps, view, s, known)
        hot = a.gid < g.groups and float(g.pps[a.gid, cls]) > a.threshold_pps
        if fresh is not None and (prev is None or hot):
            # The target is what the flood hits: during the hold-down, what
            # remains is normal traffic and must not retarget the attack.
            self._targets[a.id] = fresh
            a.host = str(fresh.host) if fresh.host is not None else None
            a.prefixes = [str(n) for n in fresh.prefixes]
            a.hosts_hit = fresh.hits
            a.top_hosts = [{"destination": str(h), "pps": round(p)} for h, p in fresh.top_hosts]
        tgt = self._targets.get(a.id)

        if fresh is not None and fresh.row is not None:
            row = fresh.row
            pps, bps, dropped = float(d.pps[row, cls]), float(d.bps[row, cls]), float(d.dropped_pps[row, cls])
        elif a.gid < g.groups:
            pps, bps = float(g.pps[a.gid, cls]), float(g.bps[a.gid, cls])
            dropped = float(g.dropped_pps[a.gid, cls])
        else:
            pps = bps = dropped = 0.0
        a.pps, a.bps = pps, bps
        a.peak_pps, a.peak_bps = max(a.peak_pps, pps), max(a.peak_bps, bps)
        a.dropped_packets += dropped * dt

        series = samples.by_series.get((a.gid, cls), [])
        if tgt is not None and tgt.host is not None:
            host = tgt.host
            series = [x for x in series if x.dst == host]
        a.evidence.add_tick(series, dt, self._abusive_pps(view, cls))
        t_pps, _ = self._scope_thresholds(a)
        first = a.id not in self._shapes
        if first or pps > t_pps:
            # Classify while the flood is there; during the hold-down what remains is
            # the normal traffic, which must not turn the attack into something else.
            # A thin window (the first tick of a pulse wave's next burst) never
            # replaces a classification made on more evidence: rules would flap.
            window = a.evidence.window()
            if first or window.total >= MIN_RANGE_SAMPLES:
                self._shapes[a.id] = classify(cls, window)
                self._protocols[a.id] = top_protocols(window, 2)
        shape = self._shapes[a.id]
        a.flood = str(shape.vector)
        a.vector = str(Vector.CARPET_BOMBING) if tgt is not None and tgt.carpet else a.flood
        a.service = shape.service
        self._judge_spoofing(a, now, g, view)
        return pps, bps, dropped

    def _act(self, a: Attack, now: int, scope: tuple[float, float, float], *, first: bool) -> None:
        """Climb the ladder and ban what the ban step finds."""
        view = self._settings.groups[a.gid]
        self._climb(a, now, view, *scope, first)
        if "ban" in a.steps and not a.spoofed:
            self._ban(a, now, view)

    def _judge_spoofing(self, a: Attack, now: int, g: GroupRates, view: GroupView) -> None:
        """Once spoofed, always spoofed for this attack: never ban a forged address."""
        if a.spoofed:
            return
        ratio = view.mitigation.spoof_ratio
        verdict = a.evidence.spoofing(ratio)
        why = verdict.why if verdict.spoofed else None
        if why is None and a.gid < g.groups:
            pps, new = float(g.pps[a.gid, a.cls]), float(g.new_sources_ps[a.gid, a.cls])
            if pps * g.dt >= MIN_SPOOF_PACKETS and new / pps > ratio:
                why = f"{new:.0f} new sources/s for {pps:.0f} packets/s (ratio {new / pps:.2f} > spoof_ratio {ratio})"
        if why is None:
            return
        a.spoofed, a.spoof_reason = True, f"sources look spoofed: {why}; nobody is banned"
        if "ban" in a.steps:
            self._skip_once(a, now, "ban", a.spoof_reason)

    def _maybe_log_update(self, a: Attack, now: int, before: tuple[str, str | None, str]) -> None:
        changed = before != (a.vector, a.service, a.target)
        grew = a.peak_pps >= UPDATE_GROWTH * max(a.logged_peak_pps, 1.0)
        due = now - a.logged_at_ns >= self._update_every_ns
        if not (changed or grew or due):
            return
        a.logged_peak_pps, a.logged_at_ns = a.peak_pps, now
        self._log.info(
            "attack_updated",
            **a.log_fields(),
            pps=round(a.pps),
            bps=round(a.bps),
            peak_pps=round(a.peak_pps),
            peak_bps=round(a.peak_bps),
            dropped_packets=round(a.dropped_packets),
            hosts_hit=a.hosts_hit,
            why="changed" if changed else "peak" if grew else "periodic",
        )

    def _end(self, a: Attack, now: int, reason: str) -> Attack:
        a.end_ns, a.ended_at, a.end_reason = now, self._iso(now), reason
        a.evidence.finish()
        self._active.pop((a.gid, a.cls), None)
        self._recent.appendleft(a)
        self._ended_total += 1
        self._log.warning(
            "attack_ended",
            **a.log_fields(),
            reason=reason,
            duration_s=round(a.duration_s(now), 3),
            peak_pps=round(a.peak_pps),
            peak_bps=round(a.peak_bps),
            dropped_packets=round(a.dropped_packets),
            bans=a.bans,
            escalated=a.escalated,
        )
        return a

    def _track_pending(self, step: Step, samples: TickSamples, dt: float) -> None:
        """Keep the samples of series on their way to a start, so a new record has them."""
        streak = self._detector.streak
        pending = set(zip(*(x.tolist() for x in np.nonzero(streak > 0)), strict=True))
        for key in [k for k in self._pending if k not in pending]:
            del self._pending[key]
        for key in pending:
            q = self._pending.setdefault(key, deque(maxlen=max(self._detector.consecutive, 1)))
            if step.over[key]:  # the calm ticks between a pulse wave's bursts add nothing
                q.append((samples.by_series.get(key, []), dt))

    # ------------------------------------------------------------------ the ladder

    def _climb(self, a: Attack, now: int, view: GroupView, pps: float, bps: float, dropped: float, first: bool) -> None:
        ladder = view.mitigation.ladder
        if not ladder:
            a.note("ladder is empty: detect only")
            return
        if not first and a.last_step_ns >= now:
            return
        t_pps, t_bps = self._scope_thresholds(a)
        contained = passed_level(pps, bps, dropped, t_pps, t_bps) <= 1.0
        todo = next_steps(ladder, a.steps, contained, first=not a.steps, spoofed=a.spoofed)
        while todo:
            step = todo.pop(0)
            if step in a.steps:
                continue
            a.steps.append(step)
            a.last_step_ns = now
            skip = self._cannot(a, step)
            if skip is None:
                continue
            self._skip_once(a, now, step, skip)
            # A step that cannot act is no step: the next one goes in its place now.
            rest = [x for x in ladder if x not in a.steps and x not in todo]
            if rest:
                todo.append(rest[0])

    def _cannot(self, a: Attack, step: str) -> str | None:
        """Why a ladder step cannot act against this attack (None: it can)."""
        if step == "rule":
            plan = self._rules_for(a)
            return plan.why_none if not plan.rules else None
        if step == "ban" and a.spoofed:
            return a.spoof_reason
        if step == "ban" and self._settings.detection.sample_every == 0:
            return "sampling is off (detection.sample_every: 0): sources unknown"
        return None

    def _scope_thresholds(self, a: Attack) -> tuple[float, float]:
        """The attack's thresholds for its own scope: a host also has the per-destination floor."""
        if a.host is not None and a.host_threshold_pps is not None:
            return min(a.threshold_pps, a.host_threshold_pps), a.threshold_bps
        return a.threshold_pps, a.threshold_bps

    def _rules_for(self, a: Attack) -> RulePlan:
        tgt = self._targets.get(a.id)
        shape = self._shapes.get(a.id) or Classification(Vector(a.flood))
        nets = tgt.nets if tgt is not None else ()
        if tgt is None and len(self._settings.groups[a.gid].prefixes) <= MAX_CARPET_PREFIXES:
            nets = self._settings.groups[a.gid].prefixes
        t_pps, t_bps = self._scope_thresholds(a)
        return plan_rules(
            Vector(a.flood), shape, nets, a.gid, t_pps, t_bps, a.monitor, self._protocols.get(a.id, ()),
            spoofed=a.spoofed,
        )

    def _abusive_pps(self, view: GroupView, cls: int) -> float:
        limit = view.limits[cls].pps
        return ABUSE_FACTOR * limit if limit else 0.0

    # ------------------------------------------------------------------ bans

    def _ban(self, a: Attack, now: int, view: GroupView) -> None:
        s = self._settings
        m = view.mitigation
        in_group, in_all = self._bans.count(a.gid), self._bans.count()
        done: list[dict[str, Any]] = []
        for src, rate in a.evidence.persistent():
            net = ban_prefix(src, s.ipv6_ban_len)
            if self._bans.is_banned(net):
                continue
            why = why_not_ban(net, s)
            if why is not None:
                self._skip_once(a, now, "ban", f"never banned: {net} is {why}")
                continue
            if in_group >= m.max_bans or in_all >= s.mitigation.max_bans:
                self._skip_once(a, now, "ban", f"max_bans reached ({min(m.max_bans, s.mitigation.max_bans)})")
                break
            ttl, previous = self._bans.ttl_s(net, m)
            expires = now + int(ttl * NS)
            self._port.ban(net, expires, view.monitor, f"auto: {a.label} on {a.target} ({a.id}), ~{rate:.0f} pps")
            self._bans.add(net, a.gid, expires, now)
            a.record_ban(str(net))
            in_group += 1
            in_all += 1
            done.append({"prefix": str(net), "ttl_s": round(ttl, 1), "previous_bans": previous, "pps": round(rate)})
        if done:
            self._entry(a, now, "ban", "applied", {"count": len(done), "bans": done[:10]}, monitor=view.monitor)
            self._log.info(
                "mitigation_applied",
                attack_id=a.id,
                group=a.group,
                step="ban",
                target=a.target,
                count=len(done),
                prefixes=[b["prefix"] for b in done[:10]],
                ttl_s=[b["ttl_s"] for b in done[:10]],
                monitor=view.monitor,
            )

    def _skip_once(self, a: Attack, now: int, step: str, reason: str) -> None:
        if reason in a.notes:
            return
        a.note(reason)
        self._entry(a, now, step, "skipped", {"reason": reason})
        self._log.info("mitigation_skipped", attack_id=a.id, group=a.group, step=step, reason=reason)

    # ------------------------------------------------------------------ writing

    def _wanted(self) -> Wanted:
        w = Wanted()
        classes: dict[int, set[int]] = {}
        for a in sorted(self._active.values(), key=lambda x: -x.peak_pps):
            view = self._settings.groups.get(a.gid)
            if view is None:
                continue
            m = view.mitigation
            # Under SYN authentication only verified sources reach the per-source
            # SYN limits: tightening them would only slow real users down.
            syn_authenticated = a.flood == Vector.SYN_FLOOD and view.syn_auth != "off"
            if "tighten" in a.steps and not syn_authenticated:
                classes.setdefault(a.gid, set()).add(a.cls)
            if a.flood == Vector.SYN_FLOOD and view.syn_auth == "on_attack" and m.ladder:
                w.syn_auth[a.gid] = m.ttl
            if "rule" in a.steps:
                for r in self._rules_for(a).rules:
                    w.rules.append((a.id, r, m.ttl))
        for gid, cl in classes.items():
            view = self._settings.groups[gid]
            w.tight[gid] = (tightened(view.limits, view.mitigation.tighten_factor, cl), view.mitigation.ttl)
        return w

    def _sync(self, now: int, ended: Sequence[Attack]) -> None:
        ch = self._enforcer.apply(now, self._wanted())
        self._report(now, ch, ended)

    def _report(self, now: int, ch: Changes, ended: Sequence[Attack]) -> None:
        by_id = {a.id: a for a in self._active.values()}
        by_id.update({a.id: a for a in ended})
        for a in self._active.values():
            done = self._applied.setdefault(a.id, set())
            view = self._settings.groups[a.gid]
            if "tighten" in a.steps and "tighten" not in done and a.gid in self._enforcer.tight:
                done.add("tighten")
                limits, exp = self._enforcer.tight[a.gid]
                lim = limits[a.cls]
                self._applied_entry(a, now, "tighten", {
                    "traffic_class": a.traffic_class, "pps": lim.pps, "bps": lim.bps, "burst": lim.burst,
                    "factor": view.mitigation.tighten_factor, "expires_in_s": round((exp - now) / NS, 3),
                })
            if "syn_auth" not in done and a.flood == Vector.SYN_FLOOD and a.gid in self._enforcer.syn_auth:
                done.add("syn_auth")
                exp = self._enforcer.syn_auth[a.gid]
                self._applied_entry(a, now, "syn_auth", {"expires_in_s": round((exp - now) / NS, 3)})
            if "syn_auth" not in done and a.flood == Vector.SYN_FLOOD and view.syn_auth == "always":
                # The program challenges every unverified SYN to this group already:
                # the record says so, with nothing to write and nothing to expire.
                done.add("syn_auth_always")
                done.add("syn_auth")
                self._applied_entry(a, now, "syn_auth", {"always": True})
        for aid, rule in ch.rules_added:
            rec = by_id.get(aid)
            if rec is not None:
                self._applied_entry(rec, now, "rule", _rule_detail(rule, now))
        for aid, rule in ch.rules_removed:
            rec = by_id.get(aid)
            if rec is not None:
                self._removed_entry(rec, now, "rule", _rule_detail(rule, now))
        for aid, rule, why in ch.rules_refused:
            rec = by_id.get(aid)
            if rec is not None:
                self._skip_once(rec, now, "rule", f"rule for {rule.dst} not written: {why}")
        for a in ended:
            done = self._applied.pop(a.id, set())
            if "tighten" in done:
                self._removed_entry(a, now, "tighten", {"relaxed": a.gid in ch.relaxed})
            if "syn_auth" in done and "syn_auth_always" not in done:
                self._removed_entry(a, now, "syn_auth", {"stopped": a.gid in ch.syn_off})
            self._targets.pop(a.id, None)
            self._shapes.pop(a.id, None)
            self._protocols.pop(a.id, None)

    def _applied_entry(self, a: Attack, now: int, step: str, detail: dict[str, Any]) -> None:
        self._entry(a, now, step, "applied", detail, monitor=a.monitor)
        self._log.info(
            "mitigation_applied", attack_id=a.id, group=a.group, step=step, target=a.target, monitor=a.monitor,
            **detail,
        )

    def _removed_entry(self, a: Attack, now: int, step: str, detail: dict[str, Any]) -> None:
        self._entry(a, now, step, "removed", detail, monitor=a.monitor)
        self._log.info("mitigation_removed", attack_id=a.id, group=a.group, step=step, target=a.target, **detail)

    def _entry(
        self, a: Attack, now: int, step: str, action: str, detail: dict[str, Any], monitor: bool = False
    ) -> None:
        a.add(MitigationEntry(now, self._iso(now), step, action, monitor, detail))
        if action == "applied" and a.first_mitigation_ns is None:
            a.first_mitigation_ns = now
            ttm = a.time_to_mitigate_s
            if ttm is not None and not monitor:
                self._ttm.observe(ttm)

    # ------------------------------------------------------------------ escalation and hook

    def _escalate(self, now: int, g: GroupRates) -> None:
        s = self._settings
        active = list(self._active.values())
        signals = [
            self._uplinks.check("total", float(g.pps.sum()), float(g.bps.sum()), s.mitigation.uplink,
                                [a.id for a in active], need_attack=False)
        ]
        for gid, view in s.groups.items():
            if view.uplink is None or gid >= g.groups:
                continue
            ids = [a.id for a in active if a.gid == gid]
            signals.append(
                self._uplinks.check(f"group:{view.name}", float(g.pps[gid].sum()), float(g.bps[gid].sum()),
                                    view.uplink, ids)
            )
        by_id = {a.id: a for a in active}
        for sig in signals:
            if sig is not None:
                self._signal(now, sig, by_id)

    def _signal(self, now: int, sig: Signal, by_id: Mapping[str, Attack]) -> None:
        self._escalations += 1
        attacks = [by_id[i] for i in sig.attack_ids if i in by_id]
        self._log.error(
            "escalation_needed",
            scope=sig.scope,
            target=[a.target for a in attacks] or sig.scope,
            attack_ids=sig.attack_ids,
            pps=round(sig.pps),
            bps=round(sig.bps),
            capacity_pps=sig.capacity_pps,
            capacity_bps=sig.capacity_bps,
        )
        mark = {"at": self._iso(now), "scope": sig.scope, "pps": round(sig.pps), "bps": round(sig.bps),
                "capacity_pps": sig.capacity_pps, "capacity_bps": sig.capacity_bps}
        for a in attacks:
            a.escalated = True
            a.escalations.append(mark)
            self._to_hook("escalation_needed", a, now)
        if not attacks and self._hook is not None:
            self._hook.submit({"event": "escalation_needed", **mark})

    def _to_hook(self, event: str, a: Attack, now: int) -> None:
        if self._hook is not None:
            self._hook.submit({"event": event, **a.to_dict(now)})

    def _make_hook(self, policy: Policy) -> HookRunner | None:
        path = policy.mitigation.hook
        return HookRunner(path, self._hook_timeout_s, self._hook_queue) if path is not None else None

    # ------------------------------------------------------------------ helpers

    def _host_max(self, d: DstRates) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The busiest host's pps and bps per (group, class) — only where a per-destination floor exists."""
        s = self._settings
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

    def _remember_sources(self, samples: TickSamples, dt: float) -> None:
        self._top_window.append((samples, dt))
        total = sum(x[1] for x in self._top_window)
        while len(self._top_window) > 1 and total - self._top_window[0][1] >= TOP_WINDOW_S:
            total -= self._top_window.popleft()[1]

    def _wall(self, now_ns: int) -> datetime:
        return datetime.fromtimestamp(self._wall0 + (now_ns - self._mono0) / NS, UTC)

    def _iso(self, now_ns: int) -> str:
        return self._wall(now_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # ------------------------------------------------------------------ public API

    def attacks(self, active: bool = True, recent: int = 0) -> list[Attack]:
        """Active attacks (oldest first) if ``active``, then the ``recent`` last ended ones (newest first)."""
        out = sorted(self._active.values(), key=lambda a: a.start_ns) if active else []
        return out + list(self._recent)[: max(recent, 0)]

    def top(self, n: int = 10) -> dict[str, Any]:
        """Top destinations (from the counters) and sources (from the samples) by rate, and busiest groups."""
        s = self._settings
        names = {gid: v.name for gid, v in s.groups.items()}
        out: dict[str, Any] = {"destinations": [], "sources": [], "groups": []}
        if self._last_rates is None:
            return out
        g, d = self._last_rates
        if len(d):
            total = d.pps.sum(axis=1)
            k = min(n, len(total))
            idx = np.argpartition(-total, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
            for i in sorted(idx.tolist(), key=lambda i: -total[i]):
                if total[i] <= 0:
                    continue
                gid = int(d.group[i])
                out["destinations"].append({
                    "destination": str(d.address(i)),
                    "group": names.get(gid, "default"),
                    "pps": round(float(total[i])),
                    "bps": round(float(d.bps[i].sum())),
                    "dropped_pps": round(float(d.dropped_pps[i].sum())),
                    "classes": {TrafficClass(c).label: round(float(d.pps[i, c])) for c in range(LIMIT_CLASSES)
                                if d.pps[i, c] > 0},
                })
        seconds = sum(dt for _, dt in self._top_window)
        merged: Counter[tuple[IPAddress, int]] = Counter()
        for tick_samples, _ in self._top_window:
            merged.update(tick_samples.sources())
        scale = max(s.detection.sample_every, 1) / seconds if seconds > 0 else 0.0
        for (src, gid), count in merged.most_common(n):
            out["sources"].append({"source": str(src), "group": names.get(gid, "default"),
                                   "pps": round(count * scale), "samples": count})
        per_group = g.pps.sum(axis=1)
        for gid in np.argsort(-per_group)[:n].tolist():
            if per_group[gid] <= 0:
                break
            out["groups"].append({"group": names.get(gid, "default"), "pps": round(float(per_group[gid])),
                                  "bps": round(float(g.bps[gid].sum())),
                                  "attacks": [a.id for a in self._active.values() if a.gid == gid]})
        return out

    def stats(self) -> ControlStats:
        """Counters for the metrics collector."""
        h = self._hook
        return ControlStats(
            active_by_vector=dict(Counter(a.vector for a in self._active.values())),
            started_by_vector=dict(self._started_by_vector),
            ended_total=self._ended_total,
            time_to_mitigate=self._ttm.cumulative(),
            time_to_mitigate_sum=self._ttm.sum,
            time_to_mitigate_count=self._ttm.count,
            escalations_total=self._escalations,
            bans_active=self._bans.count(),
            bans_total=self._bans.total,
            rules_active=len(self._enforcer.rules),
            groups_tightened=len(self._enforcer.tight),
            groups_syn_auth=len(self._enforcer.syn_auth),
            ticks=self._ticks,
            last_tick_seconds=self._last_tick_s,
            hook_ran=h.ran if h else 0,
            hook_failed=h.failed if h else 0,
            hook_dropped=h.dropped if h else 0,
        )

    def status(self) -> dict[str, Any]:
        """A summary for `floodguard status`."""
        s = self._settings
        names = {gid: v.name for gid, v in s.groups.items()}
        warm = self._baseline.warm & s.eligible
        return {
            "ticks": self._ticks,
            "last_tick_seconds": round(self._last_tick_s, 6),
            "groups": len(s.groups),
            "baseline_warm_groups": int(warm.any(axis=1).sum()),
            "attacks_active": len(self._active),
            "attacks": [
                {"id": a.id, "group": a.group, "target": a.target, "vector": a.label, "pps": round(a.pps)}
                for a in self.attacks()
            ],
            "tightened": sorted(names.get(g, str(g)) for g in self._enforcer.tight),
            "syn_auth": sorted(names.get(g, str(g)) for g in self._enforcer.syn_auth),
            "rules": len(self._enforcer.rules),
            "bans_active": self._bans.count(),
            "uplinks_full": self._uplinks.overloaded,
            "hook": None if self._hook is None else {
                "path": str(self._hook.path), "queued": self._hook.queued, "ran": self._hook.ran,
                "failed": self._hook.failed, "dropped": self._hook.dropped,
            },
        }

    def gid(self, name: str) -> int:
        """The group id of a group name in the policy in force."""
        return self._settings.gids[name]

    def ban_counts(self) -> dict[str, int]:
        """Repeat-offender counts (prefix -> automatic bans so far), for the daemon to persist."""
        return dict(self._bans.counts)

    def update_policy(self, policy: Policy, compiled: CompiledPolicy) -> None:
        """Take a reloaded policy: groups that still exist (by name) keep their baseline and attacks."""
        old = self._settings
        new = Settings.build(policy, compiled)
        now = self._port.now_ns()
        moves = {old.gids[name]: gid for name, gid in new.gids.items() if name in old.gids}
        ended: list[Attack] = []
        for (gid, cls), a in list(self._active.items()):
            if gid not in moves:
                self._detector.stop(gid, cls)
                ended.append(self._end(a, now, "group removed from the policy"))
        # Rows follow names; a new group starts with a fresh baseline even on a reused id.
        self._baseline = self._baseline.remap(new.rows, moves)
        self._detector = self._detector.remap(new.rows, moves)
        self._pending = {k: q for k, q in self._pending.items() if moves.get(k[0]) == k[0]}
        if any(o != n for o, n in moves.items()):
            # Counters are indexed by group id: a tick of rates over moved ids would be garbage.
            self._meter.reset()
            self._pending.clear()
            moved = list(self._active.items())
            self._active.clear()
            for (gid, cls), a in moved:
                a.gid = moves[gid]
                self._active[(a.gid, cls)] = a
            self._enforcer.remap(moves)
        d = new.detection
        self._baseline.configure(d.baseline.half_life, d.baseline.warmup)
        self._detector.configure(d.consecutive, d.hold_down, d.release_ratio, d.pulse_gap)
        self._settings = new
        for a in self._active.values():
            a.monitor = new.groups[a.gid].monitor
        if (self._hook.path if self._hook else None) != policy.mitigation.hook:
            if self._hook is not None:
                self._hook.close()
            self._hook = self._make_hook(policy)
        self._unban_newly_protected(now)
        self._sync(now, ended)
        for a in ended:
            self._to_hook("attack_ended", a, now)

    def _unban_newly_protected(self, now: int) -> None:
        for net in list(self._bans.active):
            why = why_not_ban(net, self._settings)
            if why is not None:
                self._port.unban(net)
                self._bans.remove(net)
                self._log.info("mitigation_removed", step="ban", prefix=str(net), reason=f"now {why}")

    def close(self) -> None:
        """Stop the hook worker. Written mitigations stay until they expire."""
        if self._hook is not None:
            self._hook.close()


class _GroupRows:
    """Row indices of each group in one tick's DstRates, computed on first use.

    A few groups: one comparison over all rows each. Many: sort the rows by
    group once and cut the sorted order into slices.
    """

    FEW = 8

    def __init__(self, d: DstRates) -> None:
        self._d = d
        self._cache: dict[int, NDArray[np.int64]] = {}
        self._order: NDArray[np.int64] | None = None
        self._sorted: NDArray[np.int64] | None = None

    def __call__(self, gid: int) -> NDArray[np.int64]:
        rows = self._cache.get(gid)
        if rows is not None:
            return rows
        d = self._d
        if len(d) == 0:
            rows = np.zeros(0, dtype=np.int64)
        elif len(self._cache) < self.FEW:
            rows = np.flatnonzero(d.group == gid)
        else:
            if self._order is None:
                self._order = np.argsort(d.group, kind="stable")
                self._sorted = d.group[self._order]
            assert self._sorted is not None
            lo, hi = np.searchsorted(self._sorted, [gid, gid + 1])
            rows = self._order[lo:hi]
        self._cache[gid] = rows
        return rows


def _fit(a: NDArray[np.float64], rows: int) -> NDArray[np.float64]:
    """Rows of a [gid, class] array trimmed or zero-padded to the policy's group rows."""
    if a.shape[0] == rows:
        return a
    if a.shape[0] > rows:
        return a[:rows]
    out = np.zeros((rows, a.shape[1]))
    out[: a.shape[0]] = a
    return out


def _round(x: float) -> int | None:
    return round(x) if math.isfinite(x) else None


def _rule_detail(rule: RuleSpec, now: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rule_id": rule.rule_id,
        "dst": str(rule.dst),
        "proto": rule.proto,
        "rule_action": rule.action.name.lower(),
        "expires_in_s": round((rule.expires_ns - now) / NS, 3) if rule.expires_ns else None,
    }
    if rule.sport != (0, 65535):
        out["sport"] = list(rule.sport)
    if rule.dport != (0, 65535):
        out["dport"] = list(rule.dport)
    if rule.tcp_flags_mask:
        out["tcp_flags"] = {"mask": rule.tcp_flags_mask, "value": rule.tcp_flags_value}
    if rule.action.name == "RATE_LIMIT":
        out["pps"], out["bps"] = rule.pps, rule.bps
    return out

