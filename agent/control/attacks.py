"""Attack records: what happened, to whom, how it was handled — for logs, the CLI, metrics and hooks.

A record is created when the detector starts an attack on a (group, class)
series and updated every tick until it ends. It is what ``floodguard
attacks`` shows and what the hook receives as JSON, so it explains itself:
the thresholds it crossed, why sources were or were not banned, every
mitigation with its time, and whether upstream help was asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .samples import AttackSamples

#: The record keeps the first banned prefixes by name; the count covers them all.
BANNED_LISTED = 50
#: Most mitigation entries kept per record (a week-long attack refreshes a lot).
MAX_ENTRIES = 200


@dataclass
class MitigationEntry:
    """One thing done (or deliberately not done) about an attack."""

    at_ns: int
    at: str  # wall-clock time, ISO 8601
    step: str  # tighten | rule | ban | syn_auth
    action: str  # applied | removed | skipped
    monitor: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # The entry's own fields last: a detail never hides what was done.
        return {**self.detail, "at": self.at, "step": self.step, "action": self.action, "monitor": self.monitor}


@dataclass
class Attack:
    """One attack on one protected group and traffic class."""

    id: str
    group: str
    gid: int
    cls: int
    traffic_class: str
    vector: str  # carpet_bombing when many hosts are hit, else the flood's own vector
    flood: str  # the flood's vector whatever the target shape (udp_reflection, syn_flood, …)
    start_ns: int
    first_over_ns: int  # the first tick over the threshold (the detector needs a few)
    started_at: str
    threshold_pps: float
    threshold_bps: float
    host_threshold_pps: float | None
    monitor: bool
    evidence: AttackSamples = field(repr=False, compare=False)
    service: str | None = None
    host: str | None = None
    prefixes: list[str] = field(default_factory=list)
    hosts_hit: int = 0
    top_hosts: list[dict[str, Any]] = field(default_factory=list)  # busiest destinations of the class
    end_ns: int | None = None
    ended_at: str | None = None
    end_reason: str | None = None
    pps: float = 0.0
    bps: float = 0.0
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    dropped_packets: float = 0.0
    spoofed: bool = False
    spoof_reason: str | None = None
    escalated: bool = False
    escalations: list[dict[str, Any]] = field(default_factory=list)
    mitigations: list[MitigationEntry] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # ladder steps armed so far
    last_step_ns: int = 0
    bans: int = 0
    banned: list[str] = field(default_factory=list)
    first_mitigation_ns: int | None = None
    logged_peak_pps: float = 0.0
    logged_at_ns: int = 0
    updated_ns: int = 0  # the last tick that saw it
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.end_ns is None

    @property
    def target(self) -> str:
        """What is attacked, for humans: a host, a list of prefixes, or the group."""
        if self.host:
            return self.host
        if self.prefixes:
            return ",".join(self.prefixes)
        return f"group:{self.group}"

    def log_fields(self) -> dict[str, Any]:
        """What every attack_* log event names: which attack, on what, of which kind."""
        return {"attack_id": self.id, "group": self.group, "target": self.target, "vector": self.vector,
                "service": self.service}

    @property
    def label(self) -> str:
        return f"{self.vector}/{self.service}" if self.service else self.vector

    @property
    def time_to_mitigate_s(self) -> float | None:
        """First tick over the threshold to the first mitigation written (None: nothing enforced)."""
        if self.first_mitigation_ns is None:
            return None
        return max(0.0, (self.first_mitigation_ns - self.first_over_ns) / 1e9)

    def duration_s(self, now_ns: int) -> float:
        return max(0, (self.end_ns if self.end_ns is not None else now_ns) - self.start_ns) / 1e9

    def note(self, text: str) -> None:
        """Record a decision once (e.g. why nobody was banned)."""
        if text not in self.notes:
            self.notes.append(text)

    def add(self, entry: MitigationEntry) -> None:
        if len(self.mitigations) >= MAX_ENTRIES:
            # Keep the first entries (how it was handled) and the latest.
            del self.mitigations[MAX_ENTRIES // 2]
        self.mitigations.append(entry)

    def record_ban(self, prefix: str) -> None:
        self.bans += 1
        if len(self.banned) < BANNED_LISTED:
            self.banned.append(prefix)

    def to_dict(self, now_ns: int | None = None) -> dict[str, Any]:
        """A JSON-ready view (the hook's stdin, the control socket's answer)."""
        ttm = self.time_to_mitigate_s
        out: dict[str, Any] = {
            "id": self.id,
            "active": self.active,
            "group": self.group,
            "target": {"group": self.group, "host": self.host, "prefixes": list(self.prefixes)},
            "vector": self.vector,
            "flood": self.flood,
            "service": self.service,
            "class": self.traffic_class,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "duration_s": round(self.duration_s(now_ns if now_ns is not None else self.updated_ns), 3),
            "threshold_pps": _num(self.threshold_pps),
            "threshold_bps": _num(self.threshold_bps),
            "host_threshold_pps": _num(self.host_threshold_pps) if self.host_threshold_pps is not None else None,
            "pps": round(self.pps),
            "bps": round(self.bps),
            "peak_pps": round(self.peak_pps),
            "peak_bps": round(self.peak_bps),
            "dropped_packets": round(self.dropped_packets),
            "hosts_hit": self.hosts_hit,
            "top_destinations": list(self.top_hosts),
            "spoofed": self.spoofed,
            "spoof_reason": self.spoof_reason,
            "escalated": self.escalated,
            "escalations": list(self.escalations),
            "monitor": self.monitor,
            "time_to_mitigate_s": round(ttm, 3) if ttm is not None else None,
            "bans": self.bans,
            "banned": list(self.banned),
            "ladder_steps": list(self.steps),
            "mitigations": [m.to_dict() for m in self.mitigations],
            "notes": list(self.notes),
        }
        out.update(self.evidence.summary())
        return out

    def to_json(self, now_ns: int | None = None) -> str:
        return json.dumps(self.to_dict(now_ns), sort_keys=True)


def _num(x: float) -> float | None:
    """Finite numbers rounded; inf (no threshold of that kind) as null."""
    return round(x) if x != float("inf") else None
