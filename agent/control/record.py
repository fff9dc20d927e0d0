"""The attack record: what ``floodguard attacks --json``, the hook and the dashboards read.

Rendered from an `attacks.Attack` whenever someone asks; nothing here is
state. Keys and values are an interface (operators' hooks parse them), so
they change only on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .attacks import Attack, MitigationEntry


def render(a: Attack, now_ns: int | None = None) -> dict[str, object]:
    """The record of one attack; ``now_ns`` dates an active attack's duration (default: its last tick)."""
    ttm = a.time_to_mitigate_s
    h, t = a.history, a.traffic
    end = a.end
    v = a.verdict
    out: dict[str, object] = {
        "id": a.id,
        "kind": str(a.kind),
        "active": a.active,
        "group": a.group,
        "target": {"group": a.group, "host": a.aim.host, "prefixes": a.aim.prefixes},
        "vector": str(a.vector),
        "flood": str(a.flood),
        "service": a.service,
        "class": a.traffic_class,
        "started_at": a.started_at,
        "ended_at": end.at if end is not None else None,
        "end_reason": end.reason if end is not None else None,
        "duration_s": round(a.duration_s(now_ns if now_ns is not None else t.updated_ns), 3),
        "threshold_pps": _num(a.thresholds.pps),
        "threshold_bps": _num(a.thresholds.bps),
        "host_threshold_pps": _num(a.thresholds.host_pps) if a.thresholds.host_pps is not None else None,
        "pps": round(t.pps),
        "bps": round(t.bps),
        "peak_pps": round(t.peak_pps),
        "peak_bps": round(t.peak_bps),
        "dropped_packets": round(t.dropped_packets),
        "hosts_hit": a.aim.hosts_hit,
        "top_destinations": a.aim.top_hosts(),
        "spoofed": a.evidence.spoofed,
        "spoof_reason": a.evidence.spoof_reason,
        "escalated": h.escalated,
        "escalations": [m.to_dict() for m in h.escalations],
        "monitor": a.monitor,
        "time_to_mitigate_s": round(ttm, 3) if ttm is not None else None,
        "ticks_to_mitigate": a.ticks_to_mitigate,
        "bans": h.bans,
        "banned": list(h.banned),
        "ladder_steps": [str(s) for s in a.ladder.steps],
        "mitigations": [entry(m) for m in h.mitigations],
        "notes": list(h.notes),
        "verdict": v.to_dict() if v is not None else None,
    }
    out.update(a.evidence.samples.summary())
    return out


def event(name: str, a: Attack, now_ns: int) -> dict[str, object]:
    """What the hook gets: the event's name and the record."""
    return {"event": name, **render(a, now_ns)}


def entry(m: MitigationEntry) -> dict[str, object]:
    """One mitigation entry; its own fields last, so that a detail never hides what was done."""
    return {**m.detail, "at": m.at, "tick": m.tick, "step": str(m.step), "action": m.action, "monitor": m.monitor}


def _num(x: float) -> float | None:
    """Finite numbers rounded; inf (no threshold of that kind) as null."""
    return round(x) if x != float("inf") else None
