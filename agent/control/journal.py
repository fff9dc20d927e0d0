"""What the controller tells: the attack_* and mitigation_* log events and the records' entries.

Every mitigation entry of a record has a log event with the same facts, so
the journal and ``floodguard attacks`` never disagree. ``attack_updated`` is
throttled: logged when the attack changed (vector, service, target), when
its peak grew by ``UPDATE_GROWTH``, or every ``update_every_s``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import structlog

from agent.contract.abi import RuleAction
from agent.contract.clock import NS
from agent.contract.specs import RuleSpec
from agent.policy.model import Step

from .attacks import SYN_AUTH, Action, Attack, Measure, MitigationEntry, SynAuthMark
from .enforce import Changes, Enforcer
from .judge import Kind, Verdict
from .settings import Settings
from .stats import Histogram
from .vectors import Vector

#: attack_updated is logged when the peak grew by this factor since the last one.
UPDATE_GROWTH = 1.5


class Stamps:
    """Wall-clock times for the port's monotonic clock, fixed at start."""

    def __init__(self, mono0_ns: int, wall0_s: float) -> None:
        self._mono0 = mono0_ns
        self._wall0 = wall0_s

    def wall(self, now_ns: int) -> datetime:
        return datetime.fromtimestamp(self._wall0 + (now_ns - self._mono0) / NS, UTC)

    def iso(self, now_ns: int) -> str:
        return self.wall(now_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    """Log events and record entries, and the time-to-mitigate histogram they feed."""

    def __init__(self, stamps: Stamps, update_every_s: float) -> None:
        self._log = structlog.get_logger()
        self.stamps = stamps
        self._update_every_ns = int(update_every_s * NS)
        self.ttm = Histogram()
        self.tick = 0  # the controller's tick count: records say when in ticks, which no machine's speed changes

    # ------------------------------------------------------------------ attacks

    def started(self, a: Attack, now: int) -> None:
        a.logged.peak_pps, a.logged.at_ns = a.traffic.peak_pps, now
        th = a.thresholds
        self._log.warning(
            "attack_started",
            **a.log_fields(),
            flood=str(a.flood),
            traffic_class=a.traffic_class,
            pps=round(a.traffic.pps),
            bps=round(a.traffic.bps),
            threshold_pps=_round(th.pps),
            threshold_bps=_round(th.bps),
            hosts_hit=a.aim.hosts_hit,
            spoofed=a.evidence.spoofed,
            monitor=a.monitor,
        )

    def updated(self, a: Attack, now: int, before: tuple[Vector, str | None, str]) -> None:
        t = a.traffic
        changed = before != (a.vector, a.service, a.target)
        grew = t.peak_pps >= UPDATE_GROWTH * max(a.logged.peak_pps, 1.0)
        due = now - a.logged.at_ns >= self._update_every_ns
        if not (changed or grew or due):
            return
        a.logged.peak_pps, a.logged.at_ns = t.peak_pps, now
        self._log.info(
            "attack_updated",
            **a.log_fields(),
            pps=round(t.pps),
            bps=round(t.bps),
            peak_pps=round(t.peak_pps),
            peak_bps=round(t.peak_bps),
            dropped_packets=round(t.dropped_packets),
            hosts_hit=a.aim.hosts_hit,
            why="changed" if changed else "peak" if grew else "periodic",
        )

    def ended(self, a: Attack, now: int) -> None:
        t = a.traffic
        assert a.end is not None
        self._log.warning(
            "attack_ended",
            **a.log_fields(),
            reason=a.end.reason,
            duration_s=round(a.duration_s(now), 3),
            peak_pps=round(t.peak_pps),
            peak_bps=round(t.peak_bps),
            dropped_packets=round(t.dropped_packets),
            bans=a.history.bans,
            escalated=a.history.escalated,
        )

    # ------------------------------------------------------------------ mitigations

    def applied(self, a: Attack, now: int, step: Measure, detail: dict[str, object]) -> None:
        self.entry(a, now, step, "applied", detail, monitor=a.monitor)
        self._log.info(
            "mitigation_applied", attack_id=a.id, group=a.group, step=str(step), target=a.target,
            monitor=a.monitor, **detail,
        )

    def bans_applied(self, a: Attack, now: int, done: Sequence[Mapping[str, object]], monitor: bool) -> None:
        """One entry and one event for all the bans of one tick."""
        self.entry(a, now, Step.BAN, "applied", {"count": len(done), "bans": list(done[:10])}, monitor=monitor)
        self._log.info(
            "mitigation_applied",
            attack_id=a.id,
            group=a.group,
            step=str(Step.BAN),
            target=a.target,
            count=len(done),
            prefixes=[b["prefix"] for b in done[:10]],
            ttl_s=[b["ttl_s"] for b in done[:10]],
            monitor=monitor,
        )

    def judged(self, a: Attack, previous: Verdict | None) -> None:
        """The verdict changed (or was first made): a note on the record and an event."""
        v = a.verdict
        if v is None:
            return
        a.history.note(f"{v.kind} ({v.lever}): {v.why}")
        self._log.info("attack_judged", **a.log_fields(), lever=str(v.lever), why=v.why,
                       previous=None if previous is None else f"{previous.kind}/{previous.lever}",
                       collateral=v.collateral or None)

    def removed(self, a: Attack, now: int, step: Measure, detail: dict[str, object]) -> None:
        self.entry(a, now, step, "removed", detail, monitor=a.monitor)
        self._log.info("mitigation_removed", attack_id=a.id, group=a.group, step=str(step), target=a.target,
                       **detail)

    def skip_once(self, a: Attack, now: int, step: Measure, reason: str) -> None:
        """A step that could not act, and why — once per reason and attack."""
        if reason in a.history.notes:
            return
        a.history.note(reason)
        self.entry(a, now, step, "skipped", {"reason": reason})
        self._log.info("mitigation_skipped", attack_id=a.id, group=a.group, step=str(step), reason=reason)

    def unbanned(self, prefix: str, why: str) -> None:
        self._log.info("mitigation_removed", step=str(Step.BAN), prefix=prefix, reason=f"now {why}")

    def entry(
        self, a: Attack, now: int, step: Measure, action: Action, detail: dict[str, object], monitor: bool = False
    ) -> None:
        h = a.history
        h.add(MitigationEntry(now, self.stamps.iso(now), step, action, monitor, detail, tick=self.tick))
        if action == "applied" and h.first_mitigation_ns is None:
            h.first_mitigation_ns = now
            h.first_mitigation_tick = self.tick
            ttm = a.time_to_mitigate_s
            if ttm is not None and not monitor:
                self.ttm.observe(ttm)

    # ------------------------------------------------------------------ what the enforcer wrote

    def changes(
        self, now: int, ch: Changes, active: Iterable[Attack], ended: Sequence[Attack], enforcer: Enforcer,
        settings: Settings,
    ) -> None:
        """Entries for what this tick's write put in force or lifted, per attack."""
        live = list(active)
        by_id = {a.id: a for a in live}
        by_id.update({a.id: a for a in ended})
        for a in live:
            self._in_force(a, now, enforcer, settings)
        for aid, rule in ch.rules_added:
            rec = by_id.get(aid)
            if rec is not None:
                self.applied(rec, now, step_of(rule), rule_detail(rule, now))
        for aid, rule in ch.rules_removed:
            rec = by_id.get(aid)
            if rec is not None:
                self.removed(rec, now, step_of(rule), rule_detail(rule, now))
        for aid, rule, why in ch.rules_refused:
            rec = by_id.get(aid)
            if rec is not None:
                self.skip_once(rec, now, step_of(rule), f"rule for {rule.dst} not written: {why}")
        for a in ended:
            if a.applied.syn_auth is SynAuthMark.WRITTEN:
                self.removed(a, now, SYN_AUTH, {"stopped": a.gid in ch.syn_off})

    def _in_force(self, a: Attack, now: int, enforcer: Enforcer, settings: Settings) -> None:
        done = a.applied
        view = settings.groups[a.gid]
        if done.syn_auth is not None or a.flood != Vector.SYN_FLOOD or a.kind is Kind.SURGE:
            return  # a surge is never mitigated: not even a challenge the group always sends is its doing
        if a.gid in enforcer.syn_auth:
            done.syn_auth = SynAuthMark.WRITTEN
            exp = enforcer.syn_auth[a.gid]
            self.applied(a, now, SYN_AUTH, {"expires_in_s": round((exp - now) / NS, 3)})
        elif view.syn_auth == "always":
            # The program challenges every unverified SYN to this group already:
            # the record says so, with nothing to write and nothing to expire.
            done.syn_auth = SynAuthMark.ALWAYS
            self.applied(a, now, SYN_AUTH, {"always": True})


def step_of(rule: RuleSpec) -> Step:
    """The ladder step a written rule belongs to: a per-source limit is the tighten step."""
    return Step.TIGHTEN if rule.action == RuleAction.SOURCE_LIMIT else Step.RULE


def rule_detail(rule: RuleSpec, now: int) -> dict[str, object]:
    out: dict[str, object] = {
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
    if rule.action in (RuleAction.RATE_LIMIT, RuleAction.SOURCE_LIMIT):
        out["pps"], out["bps"] = rule.pps, rule.bps
    if rule.traffic_class is not None:
        out["traffic_class"] = rule.traffic_class.label
    return out


def _round(x: float) -> int | None:
    return round(x) if math.isfinite(x) else None
